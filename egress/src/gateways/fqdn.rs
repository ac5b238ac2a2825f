//! The `destinationFQDNs` half of the planner: per policy, what this node's
//! DNS proxy needs to route the answered addresses ([`FqdnRoutes`]), taken
//! from the same selection, gateways and SNAT as the policy's CIDR routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::dnsproxy::state::FqdnEgress;
use crate::EgressPolicy;

/// One `destinationFQDNs` policy as this node applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FqdnRoutes {
    /// What the DNS proxy's file holds for it, with `snat_index` left 0:
    /// SNAT indices are the agent's (see [`FqdnRoutes::to_proxy`]).
    pub egress: FqdnEgress,
    /// This node's egress IP when it is one of the policy's usable
    /// gateways (as [`super::Route::snat`] of its CIDR routes).
    pub snat: Option<Ipv4Addr>,
}

impl FqdnRoutes {
    /// The proxy's entry, with the SNAT index the agent gave `snat` (0 when
    /// none, as for an `mg_egress` route).
    pub fn to_proxy(&self, indices: &BTreeMap<Ipv4Addr, u8>) -> FqdnEgress {
        FqdnEgress {
            snat_index: self
                .snat
                .and_then(|ip| indices.get(&ip).copied())
                .unwrap_or(0),
            ..self.egress.clone()
        }
    }
}

/// The tag of a policy's FQDN routes in `mg_egress`: FNV-1a (32 bits) of
/// its name folded to 16 bits, never 0 (0 is "no tag"; a name folding to 0
/// gets 1). Stable across nodes and restarts; two names may collide, which
/// [`super::plan`] reports.
pub fn fqdn_tag(policy: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in policy.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // The fold keeps the low 16 bits of `(h >> 16) ^ h`.
    match ((h >> 16) ^ (h & 0xffff)) as u16 {
        0 => 1,
        t => t,
    }
}

/// What one policy's pass over the endpoints gathers for its FQDN routes.
#[derive(Default)]
pub(super) struct Gather {
    sources: BTreeSet<Ipv4Addr>,
    /// The usable gateways of the first local source, and whether another
    /// local source had a different list.
    gateways: Option<Vec<Ipv4Addr>>,
    differ: bool,
    snat: BTreeSet<Ipv4Addr>,
}

impl Gather {
    /// A selected endpoint on this node, with its usable gateways.
    pub fn source(&mut self, ip: Ipv4Addr, gateways: &[Ipv4Addr]) {
        self.sources.insert(ip);
        match &self.gateways {
            None => self.gateways = Some(gateways.to_vec()),
            Some(g) if g != gateways => self.differ = true,
            Some(_) => {}
        }
    }

    /// This node SNATs some selected endpoint's traffic to `ip`.
    pub fn snat(&mut self, ip: Ipv4Addr) {
        self.snat.insert(ip);
    }

    /// The policy's entry (`None` when this node has neither a source nor
    /// a SNAT for it), and its problems. `mine`: the usable gateways of
    /// this cluster's endpoints, for a node without sources.
    pub fn finish(
        self,
        p: &EgressPolicy,
        tag: u16,
        mine: Vec<Ipv4Addr>,
        problems: &mut BTreeSet<String>,
    ) -> Option<FqdnRoutes> {
        if self.sources.is_empty() && self.snat.is_empty() {
            return None;
        }
        if self.differ {
            problems.insert(format!(
                "egress policy {}: this node's pods have different gateways (pods of several \
                 clusters?); their FQDN routes use those of the first pod",
                p.name
            ));
        }
        let mut snat = self.snat.iter().copied();
        let first = snat.next();
        if snat.next().is_some() {
            let all: Vec<String> = self.snat.iter().map(|ip| ip.to_string()).collect();
            problems.insert(format!(
                "egress policy {}: this node SNATs the policy's traffic to several egress IPs \
                 ({}) for pods of different clusters; its FQDN routes use the first",
                p.name,
                all.join(", ")
            ));
        }
        Some(FqdnRoutes {
            egress: FqdnEgress {
                policy: p.name.clone(),
                tag,
                names: p.destinations.fqdns.clone(),
                sources: self.sources.into_iter().collect(),
                excluded: p.destinations.excluded.clone(),
                snat_index: 0,
                gateways: self.gateways.unwrap_or(mine),
            },
            snat: first,
        })
    }
}
