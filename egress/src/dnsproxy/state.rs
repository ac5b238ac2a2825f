//! What the agent tells the DNS proxy: a JSON file the agent rewrites
//! (atomically, by rename) whenever identities, policies, egress gateways
//! or global services change, and the proxy re-reads. The proxy works from
//! the last file it read while the agent is down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::fqdn::NameMatch;

/// The proxy's whole view of policy on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPolicy {
    /// Increases with each write by one agent process.
    pub revision: u64,
    /// Every identity the agent knows that a local pod may have, with its
    /// DNS rules (an identity without any has a default entry). A query
    /// from an identity not listed here is answered SERVFAIL (the client
    /// retries) and logged: the agent has not told the proxy about it yet.
    pub identities: BTreeMap<u32, IdentityDns>,
    /// FQDN egress gateway policies (`destinationFQDNs`).
    pub egress: Vec<FqdnEgress>,
    /// MCS names the proxy answers itself:
    /// `<svc>.<ns>.svc.clusterset.local` (normalised) -> the service's VIP.
    pub clusterset: BTreeMap<String, Ipv4Addr>,
}

/// The DNS rules of one identity, as [`crate::dns_policy::identity_dns`]
/// computes them from the identity policies. Names and patterns are
/// normalised ([`NameMatch`]); match queries with [`NameMatch::matches`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityDns {
    /// `toPorts[].rules.dns` of the rules that apply to it: the names it may
    /// look up at all. `None`: no DNS rule, lookups are not restricted.
    pub lookups: Option<Vec<NameMatch>>,
    /// Its `toFQDNs` rules: the addresses answered for a matching name may
    /// be reached on these ports (the rule's `toPorts`; empty = any port).
    pub reach: Vec<FqdnReach>,
}

/// One `toFQDNs` rule of an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnReach {
    pub names: Vec<NameMatch>,
    /// (IP protocol, port): protocol 0 = any, port 0 = any port. Empty =
    /// any port of any protocol.
    pub ports: Vec<(u8, u16)>,
}

/// One `CiliumEgressGatewayPolicy` with `destinationFQDNs`, as this node
/// applies it: the answered addresses of a matching name, for a source pod
/// listed here, get an `mg_egress` route with these gateways. Planned by
/// [`crate::plan`] ([`crate::EgressPlan::fqdn`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnEgress {
    pub policy: String,
    /// Marks the policy's routes in `mg_egress` so the agent can refresh
    /// their gateways on failover and remove them with the policy:
    /// [`crate::gateways::fqdn_tag`] of the name, never 0, unique among the
    /// entries of one file (the planner drops the second of two that
    /// collide).
    pub tag: u16,
    pub names: Vec<NameMatch>,
    /// The local pods the policy selects.
    pub sources: Vec<Ipv4Addr>,
    /// `excludedCIDRs`: answered addresses inside them get no route.
    pub excluded: Vec<ipnet::Ipv4Net>,
    /// On a gateway node: its SNAT index for the policy; 0 otherwise (the
    /// agent's index of the planned egress IP,
    /// [`crate::gateways::FqdnRoutes::to_proxy`]).
    pub snat_index: u8,
    /// Tunnel IPs of the usable gateways (empty: the traffic is dropped),
    /// in hash order: those of the policy's CIDR routes for these sources.
    pub gateways: Vec<Ipv4Addr>,
}
