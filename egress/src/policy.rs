//! A parsed `CiliumEgressGatewayPolicy`, as plain types.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_model::identity::Labels;
use meshgate_model::policy::Selector;

use crate::fqdn::NameMatch;

/// One `CiliumEgressGatewayPolicy` (cluster-scoped: a name, no namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    pub name: String,
    /// `spec.selectors`: an endpoint is selected when any of them matches.
    /// Never empty.
    pub selectors: Vec<EndpointSelector>,
    /// `spec.destinationCIDRs` / `spec.destinationFQDNs` / `spec.excludedCIDRs`.
    pub destinations: Destinations,
    /// `spec.egressGateway`, or the entries of `spec.egressGateways`, in the
    /// order written. Never empty.
    pub gateways: Vec<GatewaySpec>,
}

/// Where the selected traffic goes through the gateways: `cidrs`, `fqdns`
/// or both, never neither.
///
/// Cilium itself requires `destinationCIDRs` (it has no
/// `destinationFQDNs` in the open-source kind); meshgate also takes a policy
/// with names only. The addresses the DNS proxy answers for a matching name
/// get routes beside those of `cidrs` (planned as
/// [`crate::EgressPlan::fqdn`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    /// `destinationCIDRs`: IPv4, no host bits, no duplicates.
    pub cidrs: Vec<Ipv4Net>,
    /// `destinationFQDNs`: names and patterns as in `toFQDNs`, checked,
    /// normalised, no duplicates.
    pub fqdns: Vec<NameMatch>,
    /// `excludedCIDRs`: traffic to these leaves as it would without the
    /// policy (also when a name answers an address in them). None of them
    /// is also in `cidrs`.
    pub excluded: Vec<Ipv4Net>,
}

/// One entry of `spec.selectors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSelector {
    /// `podSelector`, matched against the endpoint's identity labels (which
    /// hold its namespace and cluster, see
    /// [`meshgate_model::policy::NAMESPACE_LABEL`] and
    /// [`meshgate_model::policy::CLUSTER_LABEL`]). Absent: every pod.
    pub pods: Selector,
    /// `namespaceSelector`: requirements on
    /// [`meshgate_model::policy::NAMESPACE_NAME_LABEL`] only, matched
    /// against the endpoint's namespace name.
    pub namespaces: Option<Selector>,
    /// `nodeSelector`: matched against the labels of the endpoint's node.
    pub nodes: Option<Selector>,
}

impl EndpointSelector {
    /// Whether an endpoint in `namespace` with identity `labels`, on a node
    /// with `node_labels` (`None`: the node is not known), is selected.
    pub fn matches(&self, labels: &Labels, namespace: &str, node_labels: Option<&Labels>) -> bool {
        if !self.pods.matches(labels) {
            return false;
        }
        if let Some(ns) = &self.namespaces {
            let ns_labels = Labels::from([(
                meshgate_model::policy::NAMESPACE_NAME_LABEL.to_string(),
                namespace.to_string(),
            )]);
            if !ns.matches(&ns_labels) {
                return false;
            }
        }
        match (&self.nodes, node_labels) {
            (None, _) => true,
            (Some(sel), Some(l)) => sel.matches(l),
            (Some(_), None) => false,
        }
    }
}

/// One `egressGateway` (or `egressGateways[]` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    /// `nodeSelector`, matched against node labels. Without a requirement on
    /// [`meshgate_model::policy::CLUSTER_LABEL`] it picks nodes of the
    /// endpoint's own cluster only; with one, nodes of any cluster that
    /// match (a node's labels count its cluster under that key).
    pub nodes: Selector,
    pub egress_ip: EgressIpSource,
}

/// Which address a gateway node SNATs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EgressIpSource {
    /// `egressIP`: must be one of the node's addresses.
    Ip(Ipv4Addr),
    /// `interface`: the first IPv4 address on it.
    Interface(String),
    /// Neither given (Cilium's default): the first IPv4 address of the
    /// interface holding the node's default route.
    DefaultRoute,
}

impl std::fmt::Display for EgressIpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EgressIpSource::Ip(ip) => write!(f, "egress IP {ip}"),
            EgressIpSource::Interface(i) => write!(f, "interface {i}"),
            EgressIpSource::DefaultRoute => f.write_str("default-route interface"),
        }
    }
}
