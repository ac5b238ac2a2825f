//! `mg_config`: datapath-wide switches.

use std::net::Ipv4Addr;

use aya::maps::{Array, Map, MapData};

use super::{map_err, typed};
use crate::error::Result;
use crate::layout::{Config, CFG_F_STRICT};

pub(crate) const NAME: &str = "mg_config";

pub struct ConfigMap {
    map: Array<MapData, Config>,
}

impl ConfigMap {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: typed(NAME, map, Array::try_from)?,
        })
    }

    pub fn get(&self) -> Result<Config> {
        self.map.get(&0, 0).map_err(map_err(NAME, "reading"))
    }

    /// Strict mode: pod traffic to a remote node's endpoint that would leave
    /// by any interface but `mesh_ifindex` (the encrypted path) is dropped
    /// with reason `StrictUnencrypted`. `None` turns it off.
    pub fn set_strict(&mut self, mesh_ifindex: Option<u32>) -> Result<()> {
        let mut cfg = self.get()?;
        match mesh_ifindex {
            Some(ifindex) => {
                cfg.flags |= CFG_F_STRICT;
                cfg.mesh_ifindex = ifindex;
            }
            None => {
                cfg.flags &= !CFG_F_STRICT;
                cfg.mesh_ifindex = 0;
            }
        }
        self.map.set(0, cfg, 0).map_err(map_err(NAME, "writing"))
    }

    /// This node's tunnel IP: an egress route whose chosen gateway is this
    /// address is SNATed here (`MARK_SNAT`) instead of being sent into the
    /// mesh. `None` unsets it (this node is then never its own gateway).
    pub fn set_tunnel_ip(&mut self, tunnel_ip: Option<Ipv4Addr>) -> Result<()> {
        let mut cfg = self.get()?;
        cfg.tunnel_ip = tunnel_ip.map_or(0, |ip| u32::from_ne_bytes(ip.octets()));
        self.map.set(0, cfg, 0).map_err(map_err(NAME, "writing"))
    }

    /// The tunnel IP set by [`Self::set_tunnel_ip`].
    pub fn tunnel_ip(&self) -> Result<Option<Ipv4Addr>> {
        let raw = self.get()?.tunnel_ip;
        Ok((raw != 0).then(|| Ipv4Addr::from(raw.to_ne_bytes())))
    }
}
