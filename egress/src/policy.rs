//! A parsed `CiliumEgressGatewayPolicy`, as plain types.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_discovery::identity::Labels;
use meshgate_discovery::policy::Selector;

/// One `CiliumEgressGatewayPolicy` (cluster-scoped: a name, no namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    pub name: String,
    /// `spec.selectors`: an endpoint is selected when any of them matches.
    /// Never empty.
    pub selectors: Vec<EndpointSelector>,
    /// `spec.destinationCIDRs` / `spec.excludedCIDRs`.
    pub destinations: Destinations,
    /// `spec.egressGateway`, or the entries of `spec.egressGateways`, in the
    /// order written. Never empty.
    pub gateways: Vec<GatewaySpec>,
}

/// Where the selected traffic goes through the gateways.
///
/// Today only CIDRs. `destinationFQDNs` is refused by the parser until the
/// DNS proxy exists; it will add a field here (the FQDN patterns), whose
/// resolved addresses the agent turns into more routes beside `cidrs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    /// `destinationCIDRs`: IPv4, no host bits, no duplicates; never empty.
    pub cidrs: Vec<Ipv4Net>,
    /// `excludedCIDRs`: traffic to these leaves as it would without the
    /// policy. None of them is also in `cidrs`.
    pub excluded: Vec<Ipv4Net>,
}

/// One entry of `spec.selectors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSelector {
    /// `podSelector`, matched against the endpoint's identity labels (which
    /// hold its namespace and cluster, see
    /// [`meshgate_discovery::policy::NAMESPACE_LABEL`] and
    /// [`meshgate_discovery::policy::CLUSTER_LABEL`]). Absent: every pod.
    pub pods: Selector,
    /// `namespaceSelector`: requirements on
    /// [`meshgate_discovery::policy::NAMESPACE_NAME_LABEL`] only, matched
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
                meshgate_discovery::policy::NAMESPACE_NAME_LABEL.to_string(),
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
    /// [`meshgate_discovery::policy::CLUSTER_LABEL`] it picks nodes of the
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
