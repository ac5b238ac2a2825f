//! `mg_ipcache`: IPv4 prefix -> identity and tunnel endpoint.

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};

use super::{is_not_found, map_err, typed};
use crate::error::Result;
use crate::layout::{IpcacheAddr, IpcacheValue, IPCACHE_F_LOCAL, IPCACHE_F_WORLD};

pub(crate) const NAME: &str = "mg_ipcache";

/// What the datapath knows about the addresses of a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcacheEntry {
    /// Security identity (24 bits).
    pub identity: u32,
    /// Tunnel IP of the node that hosts the prefix; `None` for local endpoints
    /// and for destinations that are not in the mesh.
    pub tunnel_ip: Option<Ipv4Addr>,
    /// An endpoint of this node (its traffic enters through `from_pod`).
    pub local: bool,
    /// Local endpoints: the host-side interface index its packets must come
    /// from (anti-spoofing); 0 = not checked.
    pub ifindex: u32,
    /// A world prefix written for policy (a CIDR rule's prefix, a
    /// kube-apiserver address): its identity is what policy sees, the
    /// address is a world address for all else, and the entry never applies
    /// inside a mesh pod CIDR.
    pub world: bool,
}

impl IpcacheEntry {
    /// A pod on this node behind the host-side interface `ifindex` (0 = unchecked).
    pub fn local(identity: u32, ifindex: u32) -> Self {
        Self {
            identity,
            tunnel_ip: None,
            local: true,
            ifindex,
            world: false,
        }
    }

    /// A pod on another node, reached through that node's tunnel IP.
    pub fn remote(identity: u32, tunnel_ip: Ipv4Addr) -> Self {
        Self {
            identity,
            tunnel_ip: Some(tunnel_ip),
            local: false,
            ifindex: 0,
            world: false,
        }
    }

    /// A world prefix with the identity policy gives it (a CIDR identity,
    /// or kube-apiserver).
    pub fn world(identity: u32) -> Self {
        Self {
            identity,
            tunnel_ip: None,
            local: false,
            ifindex: 0,
            world: true,
        }
    }

    /// A node's own address (its underlay, tunnel or interface address):
    /// `host` (1) for this node, `remote-node` (6) for the others. Neither a
    /// mesh endpoint (no tunnel IP: nothing is tunnelled to it) nor world.
    pub fn node(identity: u32) -> Self {
        Self {
            identity,
            tunnel_ip: None,
            local: false,
            ifindex: 0,
            world: false,
        }
    }

    /// Written by [`Self::node`].
    pub fn is_node(&self) -> bool {
        !self.local && !self.world && self.tunnel_ip.is_none()
    }

    fn to_raw(self) -> IpcacheValue {
        IpcacheValue {
            identity: self.identity,
            tunnel_ip: self
                .tunnel_ip
                .map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
            ifindex: self.ifindex,
            flags: if self.local { IPCACHE_F_LOCAL } else { 0 }
                | if self.world { IPCACHE_F_WORLD } else { 0 },
        }
    }

    fn from_raw(v: IpcacheValue) -> Self {
        Self {
            identity: v.identity,
            tunnel_ip: (v.tunnel_ip != 0).then(|| Ipv4Addr::from(v.tunnel_ip.to_ne_bytes())),
            local: v.flags & IPCACHE_F_LOCAL != 0,
            ifindex: v.ifindex,
            world: v.flags & IPCACHE_F_WORLD != 0,
        }
    }
}

pub struct IpCache {
    map: LpmTrie<MapData, IpcacheAddr, IpcacheValue>,
}

fn key(addr: Ipv4Addr, prefix_len: u8) -> Key<IpcacheAddr> {
    Key::new(u32::from(prefix_len.min(32)), addr.octets())
}

impl IpCache {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: typed(NAME, map, LpmTrie::try_from)?,
        })
    }

    /// Adds or replaces the entry for `addr/prefix_len`.
    pub fn upsert(&mut self, addr: Ipv4Addr, prefix_len: u8, entry: IpcacheEntry) -> Result<()> {
        self.map
            .insert(&key(addr, prefix_len), entry.to_raw(), 0)
            .map_err(map_err(NAME, "inserting an entry"))
    }

    /// Removes `addr/prefix_len`; false if it was not there.
    pub fn remove(&mut self, addr: Ipv4Addr, prefix_len: u8) -> Result<bool> {
        match self.map.remove(&key(addr, prefix_len)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(NAME, "removing an entry")(e)),
        }
    }

    /// The entry the datapath would use for `addr` (longest prefix match).
    pub fn lookup(&self, addr: Ipv4Addr) -> Result<Option<IpcacheEntry>> {
        match self.map.get(&key(addr, 32), 0) {
            Ok(v) => Ok(Some(IpcacheEntry::from_raw(v))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(NAME, "looking up an address")(e)),
        }
    }

    /// Every prefix and its entry.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, u8, IpcacheEntry)>> {
        self.map
            .iter()
            .map(|r| {
                r.map(|(k, v)| {
                    (
                        Ipv4Addr::from(k.data()),
                        k.prefix_len() as u8,
                        IpcacheEntry::from_raw(v),
                    )
                })
                .map_err(map_err(NAME, "listing entries"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_ip_is_kept_in_network_order() {
        let e = IpcacheEntry::remote(0x01_0100, Ipv4Addr::new(100, 64, 0, 7));
        let raw = e.to_raw();
        assert_eq!(raw.tunnel_ip.to_ne_bytes(), [100, 64, 0, 7]);
        assert_eq!(IpcacheEntry::from_raw(raw), e);
        let l = IpcacheEntry::local(300, 12);
        assert_eq!(l.to_raw().flags, IPCACHE_F_LOCAL);
        assert_eq!(IpcacheEntry::from_raw(l.to_raw()), l);
        let w = IpcacheEntry::world(0x100);
        assert_eq!(w.to_raw().flags, IPCACHE_F_WORLD);
        assert_eq!(IpcacheEntry::from_raw(w.to_raw()), w);
        let n = IpcacheEntry::node(6);
        assert_eq!((n.to_raw().flags, n.to_raw().tunnel_ip), (0, 0));
        assert_eq!(IpcacheEntry::from_raw(n.to_raw()), n);
        assert!(n.is_node() && !l.is_node() && !w.is_node() && !e.is_node());
    }
}
