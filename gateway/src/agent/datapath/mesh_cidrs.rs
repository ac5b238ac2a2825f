//! The mesh's address space on this node (pure): which prefixes are mesh
//! pod addresses (`mg_mesh_cidrs`, for strict mode) and what the datapath's
//! routing table holds for them.
//!
//! - Every cluster's pod CIDRs (from discovery: its own `--pod-cidr` and
//!   each remote's) and every node's pod CIDRs are mesh addresses: strict
//!   mode drops pod traffic into them that would leave other than through
//!   the mesh device, known to the ipcache or not.
//! - Routing table [`super::ROUTE_TABLE`] (consulted before main): another
//!   node's pod CIDR goes into the VXLAN device; a cluster CIDR gets an
//!   `unreachable` route below those, so an address of a departed node (its
//!   /24 gone) never falls through to the main table's default route; this
//!   node's own pod CIDR, if a cluster CIDR covers it, gets a `throw` route,
//!   so its pods are still found in the main table.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

/// A route of the datapath's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    /// Into the VXLAN device (another node's pods).
    Dev,
    /// Dropped with "unreachable" (mesh addresses no node holds now).
    Unreachable,
    /// Looked up in the next table (this node's pods, in main).
    Throw,
}

impl RouteKind {
    /// The route type word of `ip route`, if any.
    pub fn ip_type(self) -> Option<&'static str> {
        match self {
            RouteKind::Dev => None,
            RouteKind::Unreachable => Some("unreachable"),
            RouteKind::Throw => Some("throw"),
        }
    }
}

/// The table wanted: `pod_routes` (other nodes' CIDRs) as [`RouteKind::Dev`],
/// every cluster CIDR that is not itself a node's as unreachable, and
/// `own` as throw when some cluster CIDR covers it.
pub fn table(
    pod_routes: &BTreeSet<Ipv4Net>,
    clusters: &BTreeMap<Ipv4Net, u8>,
    own: Ipv4Net,
) -> BTreeMap<Ipv4Net, RouteKind> {
    let mut t: BTreeMap<Ipv4Net, RouteKind> =
        pod_routes.iter().map(|n| (*n, RouteKind::Dev)).collect();
    let own = own.trunc();
    for net in clusters.keys() {
        if *net != own {
            t.entry(*net).or_insert(RouteKind::Unreachable);
        }
    }
    if clusters.keys().any(|c| c.contains(&own)) {
        t.entry(own).or_insert(RouteKind::Throw);
    }
    t
}

/// `mg_mesh_cidrs`: the cluster CIDRs and the nodes' CIDRs (the latter cover
/// clusters whose discovery has no `--pod-cidr`), each with its cluster ID.
pub fn map_entries(
    clusters: &BTreeMap<Ipv4Net, u8>,
    nodes: impl IntoIterator<Item = (Ipv4Net, u8)>,
) -> BTreeMap<Ipv4Net, u8> {
    let mut m = clusters.clone();
    for (net, id) in nodes {
        m.entry(net.trunc()).or_insert(id);
    }
    m
}

/// Reads one line of `ip route show table N`: the prefix and its kind;
/// `None` for lines this table never holds.
pub fn parse_route(line: &str) -> Option<(Ipv4Net, RouteKind)> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let (kind, prefix) = match first {
        "unreachable" => (RouteKind::Unreachable, words.next()?),
        "throw" => (RouteKind::Throw, words.next()?),
        prefix => (RouteKind::Dev, prefix),
    };
    Some((prefix.parse().ok()?, kind))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn departed_nodes_fall_on_the_cluster_unreachable_and_own_pods_go_to_main() {
        let clusters: BTreeMap<Ipv4Net, u8> =
            [(net("10.1.0.0/16"), 1), (net("10.2.0.0/16"), 2)].into();
        let routes: BTreeSet<Ipv4Net> = [net("10.1.1.0/24"), net("10.2.0.0/24")].into();
        let t = table(&routes, &clusters, net("10.1.0.0/24"));
        assert_eq!(
            t,
            [
                (net("10.1.0.0/16"), RouteKind::Unreachable),
                (net("10.1.0.0/24"), RouteKind::Throw),
                (net("10.1.1.0/24"), RouteKind::Dev),
                (net("10.2.0.0/16"), RouteKind::Unreachable),
                (net("10.2.0.0/24"), RouteKind::Dev),
            ]
            .into()
        );
        // Without cluster CIDRs (a discovery without --pod-cidr): only the
        // nodes' routes, as before.
        let t = table(&routes, &BTreeMap::new(), net("10.1.0.0/24"));
        assert!(t.values().all(|k| *k == RouteKind::Dev), "{t:?}");
        // A cluster CIDR that is exactly a node's stays that node's route.
        let one: BTreeMap<Ipv4Net, u8> = [(net("10.2.0.0/24"), 2)].into();
        assert_eq!(
            table(&routes, &one, net("10.1.0.0/24"))[&net("10.2.0.0/24")],
            RouteKind::Dev
        );
    }

    #[test]
    fn map_holds_cluster_and_node_cidrs() {
        let clusters: BTreeMap<Ipv4Net, u8> = [(net("10.1.0.0/16"), 1)].into();
        let m = map_entries(
            &clusters,
            [(net("10.1.2.0/24"), 1), (net("10.3.0.5/24"), 3)],
        );
        assert_eq!(
            m,
            [
                (net("10.1.0.0/16"), 1),
                (net("10.1.2.0/24"), 1),
                (net("10.3.0.0/24"), 3)
            ]
            .into()
        );
    }

    #[test]
    fn reads_each_kind_of_route() {
        assert_eq!(
            parse_route("10.1.1.0/24 dev mg-vx0 scope link"),
            Some((net("10.1.1.0/24"), RouteKind::Dev))
        );
        assert_eq!(
            parse_route("unreachable 10.1.0.0/16"),
            Some((net("10.1.0.0/16"), RouteKind::Unreachable))
        );
        assert_eq!(
            parse_route("throw 10.1.0.0/24"),
            Some((net("10.1.0.0/24"), RouteKind::Throw))
        );
        assert_eq!(parse_route("default via 1.2.3.4"), None);
    }
}
