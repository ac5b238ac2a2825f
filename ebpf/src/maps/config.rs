//! `mg_config`: datapath-wide switches.

use std::net::Ipv4Addr;

use aya::maps::{Array, Map, MapData};

use super::{map_err, typed};
use crate::error::Result;
use crate::layout::{Config, CFG_F_DNS_PROXY, CFG_F_STRICT};

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

    /// Whether the node's DNS proxy runs: with `true`, a pod's UDP or TCP
    /// packet to port 53 (not one the load balancer translated, not a reply)
    /// goes to the host stack without the source's egress policy and without
    /// egress gateway steering, marked `MARK_MAGIC | identity`, for the
    /// proxy's DNAT rule (which must be in place first: until it is, such
    /// packets go where they were sent, unjudged). Strict mode and a local
    /// destination's ingress policy still apply. Other flags are kept.
    pub fn set_dns_proxy(&mut self, on: bool) -> Result<()> {
        let mut cfg = self.get()?;
        if on {
            cfg.flags |= CFG_F_DNS_PROXY;
        } else {
            cfg.flags &= !CFG_F_DNS_PROXY;
        }
        self.map.set(0, cfg, 0).map_err(map_err(NAME, "writing"))
    }

    /// The flag set by [`Self::set_dns_proxy`].
    pub fn dns_proxy(&self) -> Result<bool> {
        Ok(self.get()?.flags & CFG_F_DNS_PROXY != 0)
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
