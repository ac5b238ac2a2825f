//! `mg_mesh_cidrs`: the pod CIDRs of every cluster of the mesh. Strict mode
//! (`from_pod`) drops pod traffic into any of them that would leave by an
//! interface other than the mesh device, whether or not `mg_ipcache` knows
//! the address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};

use super::{is_not_found, map_err, typed};
use crate::error::Result;
use crate::layout::{IpcacheAddr, MeshCidrValue};

pub(crate) const NAME: &str = "mg_mesh_cidrs";

pub struct MeshCidrs {
    map: LpmTrie<MapData, IpcacheAddr, MeshCidrValue>,
}

fn key(addr: Ipv4Addr, prefix_len: u8) -> Key<IpcacheAddr> {
    Key::new(u32::from(prefix_len.min(32)), addr.octets())
}

impl MeshCidrs {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: typed(NAME, map, LpmTrie::try_from)?,
        })
    }

    /// Adds or replaces `addr/prefix_len` as a pod CIDR of cluster `cluster_id`.
    pub fn set(&mut self, addr: Ipv4Addr, prefix_len: u8, cluster_id: u8) -> Result<()> {
        let value = MeshCidrValue {
            cluster_id: u32::from(cluster_id),
        };
        self.map
            .insert(&key(addr, prefix_len), value, 0)
            .map_err(map_err(NAME, "inserting a mesh CIDR"))
    }

    /// Removes `addr/prefix_len`; false if it was not there.
    pub fn remove(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<bool> {
        match self.map.remove(&key(addr, prefix_len)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(NAME, "removing a mesh CIDR")(e)),
        }
    }

    /// Every CIDR (address, prefix length) with its cluster ID.
    pub fn entries(&self) -> Result<BTreeMap<(Ipv4Addr, u8), u8>> {
        self.map
            .iter()
            .map(|r| {
                r.map(|(k, v)| {
                    (
                        (Ipv4Addr::from(k.data()), k.prefix_len() as u8),
                        u8::try_from(v.cluster_id).unwrap_or(0),
                    )
                })
                .map_err(map_err(NAME, "listing mesh CIDRs"))
            })
            .collect()
    }
}
