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
use meshgate_tunnel::netlink::{Route, RouteType};

use super::plan::VXLAN_DEV;

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
    /// The route of this kind to `net` in [`super::ROUTE_TABLE`].
    pub fn route(self, net: Ipv4Net) -> Route {
        match self {
            RouteKind::Dev => Route::via_dev(net, VXLAN_DEV),
            RouteKind::Unreachable => Route::unreachable(net),
            RouteKind::Throw => Route::throw(net),
        }
        .in_table(super::ROUTE_TABLE)
    }

    /// The prefix and kind of a route read from the table; `None` for
    /// routes this table never holds.
    pub fn of(route: &Route) -> Option<(Ipv4Net, RouteKind)> {
        let kind = match route.kind {
            RouteType::Unicast if route.dev.as_deref() == Some(VXLAN_DEV) => RouteKind::Dev,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Throw => RouteKind::Throw,
            _ => return None,
        };
        Some((route.dst, kind))
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
    fn each_kind_is_its_route_in_the_table_and_reads_back() {
        for (kind, text) in [
            (RouteKind::Dev, "10.1.1.0/24 dev mg-vx0 table 28007"),
            (
                RouteKind::Unreachable,
                "unreachable 10.1.1.0/24 table 28007",
            ),
            (RouteKind::Throw, "throw 10.1.1.0/24 table 28007"),
        ] {
            let r = kind.route(net("10.1.1.0/24"));
            assert_eq!(r.to_string(), text);
            assert_eq!(RouteKind::of(&r), Some((net("10.1.1.0/24"), kind)));
        }
        // Not ours: a unicast route through another device, another type.
        let other = Route::via_dev(net("10.1.1.0/24"), "eth0").in_table(28_007);
        assert_eq!(RouteKind::of(&other), None);
        let blackhole = Route {
            kind: RouteType::Other(6),
            ..Route::unreachable(net("10.1.1.0/24"))
        };
        assert_eq!(RouteKind::of(&blackhole), None);
    }
}
