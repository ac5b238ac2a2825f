//! `mg_egress` and `mg_egress_ct`: egress gateway routes and the gateway
//! each flow was given. The datapath side is `bpf/egress.h` (which says what
//! from_pod, to_mesh and from_mesh do with them); the agent also owns the
//! routing by mark and the SNAT ([`crate::MARK_EGRESS`], [`crate::MARK_SNAT`]).
//!
//! A route is keyed by (source pod, destination prefix): the source
//! matches exactly, the destination by longest prefix, so an excluded CIDR
//! is a longer prefix whose route says `excluded`.

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData};
use ipnet::Ipv4Net;

use super::{is_not_found, map_err, typed};
use crate::error::{Error, Result};
use crate::layout::{
    CtKey, EgressAddrs, EgressCtValue, EgressValue, EGRESS_FQDN_TAG_SHIFT, EGRESS_F_EXCLUDED,
    EGRESS_F_FQDN, EGRESS_F_GATEWAY_ONLY, EGRESS_MAX_GWS,
};

pub(crate) const NAME: &str = "mg_egress";
pub(crate) const CT_NAME: &str = "mg_egress_ct";

/// The most gateways one route can list.
pub const EGRESS_MAX_GATEWAYS: usize = EGRESS_MAX_GWS;

/// What the datapath does with traffic of a (source, destination prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRoute {
    /// An excluded CIDR of the policy: the traffic is left alone.
    pub excluded: bool,
    /// On a gateway node: the SNAT index (1..255) the agent's nft rule for
    /// the egress IP matches; 0 = this node is not a gateway of the route.
    pub snat_index: u8,
    /// Tunnel IPs of the gateway nodes; empty = the traffic is dropped
    /// (`no-egress-gateway`), never sent with the pod's own address.
    pub gateways: Vec<Ipv4Addr>,
    /// 0: a CIDR route (the agent's). Else the tag of the destinationFQDNs
    /// policy the DNS proxy wrote this /32 route for (kept in the flags,
    /// `MG_EGRESS_F_FQDN`); the datapath steers it like any other route,
    /// and the agent leaves such routes to the proxy.
    pub fqdn_tag: u16,
    /// On a gateway node: a route only `from_mesh` uses, to SNAT traffic
    /// that another node steered here (`MG_EGRESS_F_GATEWAY_ONLY`; for
    /// destinationFQDNs policies, whose addresses only the source node's
    /// DNS proxy saw). `from_pod` never steers by it.
    pub gateway_only: bool,
}

/// A flow steered to a gateway, as `mg_egress_ct` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressFlow {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// The gateway's tunnel IP.
    pub gateway: Ipv4Addr,
    /// `bpf_ktime_get_ns()` of the flow's last packet.
    pub last_seen_ns: u64,
}

fn raw(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn key(src: Ipv4Addr, dst: Ipv4Net) -> Key<EgressAddrs> {
    let dst = dst.trunc();
    Key::new(
        32 + u32::from(dst.prefix_len()),
        EgressAddrs {
            saddr: raw(src),
            daddr: raw(dst.addr()),
        },
    )
}

impl EgressRoute {
    fn to_raw(&self, src: Ipv4Addr, dst: Ipv4Net) -> Result<EgressValue> {
        if self.gateways.len() > EGRESS_MAX_GATEWAYS {
            return Err(Error::TooManyEgressGateways {
                src,
                dst,
                count: self.gateways.len(),
            });
        }
        let mut flags = if self.excluded { EGRESS_F_EXCLUDED } else { 0 };
        if self.gateway_only {
            flags |= EGRESS_F_GATEWAY_ONLY;
        }
        if self.fqdn_tag != 0 {
            flags |= EGRESS_F_FQDN | u32::from(self.fqdn_tag) << EGRESS_FQDN_TAG_SHIFT;
        }
        let mut v = EgressValue {
            flags,
            snat_index: u32::from(self.snat_index),
            count: self.gateways.len() as u32,
            gateways: [0; EGRESS_MAX_GWS],
        };
        for (slot, gw) in v.gateways.iter_mut().zip(&self.gateways) {
            *slot = raw(*gw);
        }
        Ok(v)
    }

    fn from_raw(v: &EgressValue) -> Self {
        let count = (v.count as usize).min(EGRESS_MAX_GWS);
        Self {
            excluded: v.flags & EGRESS_F_EXCLUDED != 0,
            gateway_only: v.flags & EGRESS_F_GATEWAY_ONLY != 0,
            snat_index: u8::try_from(v.snat_index).unwrap_or(0),
            gateways: v.gateways[..count].iter().map(|g| ip(*g)).collect(),
            fqdn_tag: if v.flags & EGRESS_F_FQDN != 0 {
                (v.flags >> EGRESS_FQDN_TAG_SHIFT) as u16
            } else {
                0
            },
        }
    }
}

pub struct Egress {
    routes: LpmTrie<MapData, EgressAddrs, EgressValue>,
    ct: HashMap<MapData, CtKey, EgressCtValue>,
}

impl Egress {
    pub(crate) fn new(routes: Map, ct: Map) -> Result<Self> {
        Ok(Self {
            routes: typed(NAME, routes, LpmTrie::try_from)?,
            ct: typed(CT_NAME, ct, HashMap::try_from)?,
        })
    }

    /// Sets the route of traffic from `src` to `dst` (replacing it in one
    /// update). Flows already steered keep their gateway while `route` still
    /// lists it; the others pick again on their next packet.
    pub fn set(&mut self, src: Ipv4Addr, dst: Ipv4Net, route: &EgressRoute) -> Result<()> {
        let value = route.to_raw(src, dst)?;
        self.routes
            .insert(&key(src, dst), value, 0)
            .map_err(map_err(NAME, "writing a route"))
    }

    /// Removes the route of `src` to `dst`; false if there was none.
    pub fn remove(&mut self, src: Ipv4Addr, dst: Ipv4Net) -> Result<bool> {
        match self.routes.remove(&key(src, dst)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(NAME, "removing a route")(e)),
        }
    }

    /// Every route: (source, destination prefix, route).
    pub fn routes(&self) -> Result<Vec<(Ipv4Addr, Ipv4Net, EgressRoute)>> {
        self.routes
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_err(NAME, "listing routes"))?;
                let data = k.data();
                let prefix = k.prefix_len().saturating_sub(32).min(32) as u8;
                let dst = Ipv4Net::new(ip(data.daddr), prefix)
                    .unwrap_or_else(|_| unreachable!("prefix is clamped to 32"));
                Ok((ip(data.saddr), dst, EgressRoute::from_raw(&v)))
            })
            .collect()
    }

    /// Every flow steered to a gateway (until the LRU map evicts it).
    pub fn flows(&self) -> Result<Vec<EgressFlow>> {
        self.ct
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_err(CT_NAME, "listing flows"))?;
                Ok(EgressFlow {
                    saddr: ip(k.saddr),
                    daddr: ip(k.daddr),
                    sport: k.sport,
                    dport: k.dport,
                    proto: k.proto,
                    gateway: ip(v.gateway),
                    last_seen_ns: v.last_seen_ns,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn routes_are_kept_in_network_order() {
        let route = EgressRoute {
            excluded: false,
            snat_index: 3,
            gateways: vec![Ipv4Addr::new(100, 64, 0, 7), Ipv4Addr::new(100, 64, 0, 8)],
            fqdn_tag: 0,
            gateway_only: false,
        };
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let v = route.to_raw(src, net("0.0.0.0/0")).expect("raw");
        assert_eq!(v.count, 2);
        assert_eq!(v.snat_index, 3);
        assert_eq!(v.gateways[0].to_ne_bytes(), [100, 64, 0, 7]);
        assert_eq!(v.gateways[2], 0);
        assert_eq!(EgressRoute::from_raw(&v), route);

        let k = key(src, net("203.0.113.77/24"));
        assert_eq!(k.prefix_len(), 56);
        assert_eq!(k.data().saddr.to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(
            k.data().daddr.to_ne_bytes(),
            [203, 0, 113, 0],
            "host bits cleared"
        );
    }

    #[test]
    fn excluded_and_gatewayless_routes_round_trip() {
        let route = EgressRoute {
            excluded: true,
            snat_index: 0,
            gateways: vec![],
            fqdn_tag: 0,
            gateway_only: false,
        };
        let v = route
            .to_raw(Ipv4Addr::LOCALHOST, net("10.0.0.0/8"))
            .expect("raw");
        assert_eq!(v.flags, EGRESS_F_EXCLUDED);
        assert_eq!(EgressRoute::from_raw(&v), route);
    }

    #[test]
    fn an_fqdn_route_keeps_its_tag_in_the_flags() {
        let route = EgressRoute {
            excluded: false,
            snat_index: 1,
            gateways: vec![Ipv4Addr::new(100, 64, 0, 7)],
            fqdn_tag: 0xbeef,
            gateway_only: false,
        };
        let v = route
            .to_raw(Ipv4Addr::new(10, 0, 0, 1), net("203.0.113.7/32"))
            .expect("raw");
        assert_eq!(v.flags, EGRESS_F_FQDN | 0xbeef << 16);
        assert_eq!(v.flags & EGRESS_F_EXCLUDED, 0, "the datapath steers it");
        assert_eq!(EgressRoute::from_raw(&v), route);
        // Tag bits without the flag (no writer does that) are no tag.
        let untagged = EgressValue {
            flags: 0x1234 << 16,
            ..v
        };
        assert_eq!(EgressRoute::from_raw(&untagged).fqdn_tag, 0);
    }

    #[test]
    fn more_than_sixteen_gateways_is_an_error() {
        let route = EgressRoute {
            excluded: false,
            snat_index: 0,
            gateways: (0..17).map(|i| Ipv4Addr::new(100, 64, 0, i)).collect(),
            fqdn_tag: 0,
            gateway_only: false,
        };
        let err = route
            .to_raw(Ipv4Addr::new(10, 0, 0, 1), net("0.0.0.0/0"))
            .expect_err("17 gateways");
        assert!(
            matches!(err, Error::TooManyEgressGateways { count: 17, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at most 16"), "{err}");
    }
}
