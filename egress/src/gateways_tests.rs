//! The gateway planner, without root: worlds of nodes and pods in, plans out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::testworld::{
    addr, excluded, ip, kv, net, policies, policy, routes, via, web_out, west, World,
};
use crate::{EgressPlan, MAX_GATEWAYS};

#[test]
fn worker_routes_selected_pods_through_the_gateways_and_skips_excluded() {
    let w = west();
    let p = w.plan("west/a", &web_out());
    assert_eq!(
        p.routes,
        routes(&[
            (
                "10.1.0.5",
                "0.0.0.0/0",
                via(&["100.64.0.11", "100.64.0.12"], None)
            ),
            ("10.1.0.5", "10.0.0.0/8", excluded()),
        ]),
        "only the app=web pod"
    );
    assert!(p.snat.is_empty());
    assert!(!p.gateway_of_any);
    assert_eq!(
        p.watched,
        BTreeSet::from(["west/gw1".to_string(), "west/gw2".to_string()])
    );
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let [s] = &p.status[..] else {
        panic!("{:?}", p.status)
    };
    assert_eq!((s.name.as_str(), s.endpoints), ("out", 1));
    let gws: Vec<_> = s
        .gateways
        .iter()
        .map(|g| {
            (
                g.node.as_str(),
                g.egress_ip.as_deref(),
                g.health.as_str(),
                g.usable,
                g.flows,
            )
        })
        .collect();
    assert_eq!(
        gws,
        vec![
            ("west/gw1", Some("192.0.2.11"), "up", true, 0),
            ("west/gw2", Some("192.0.2.12"), "up", true, 0),
        ]
    );
}

#[test]
fn gateway_accepts_and_snats_the_traffic_of_other_nodes_pods() {
    let w = west();
    let p = w.plan("west/gw1", &web_out());
    assert_eq!(
        p.routes,
        routes(&[
            (
                "10.1.0.5",
                "0.0.0.0/0",
                via(&["100.64.0.11", "100.64.0.12"], Some("192.0.2.11"))
            ),
            ("10.1.0.5", "10.0.0.0/8", excluded()),
        ])
    );
    assert_eq!(
        p.snat,
        BTreeMap::from([(ip("192.0.2.11"), "eth0".to_string())])
    );
    assert!(p.gateway_of_any);
    assert!(p.watched.is_empty(), "no pod of its own: {:?}", p.watched);
    assert_eq!(p.status[0].endpoints, 0);
    assert_eq!(p.status[0].gateways.len(), 2);

    // A node that is neither the pods' node nor a gateway has nothing to do.
    let mut w = west();
    w.node("west/b", &[], "100.64.0.2", "192.0.2.2");
    let p = w.plan("west/b", &web_out());
    assert!(p.routes.is_empty() && p.snat.is_empty() && !p.gateway_of_any);
    assert_eq!(
        p.status[0].gateways.len(),
        2,
        "status still lists the gateways"
    );
}

#[test]
fn a_gateway_snats_its_own_pods_when_it_is_among_their_gateways() {
    let mut w = west();
    w.pod("10.1.1.7", "west/gw2", "shop", &[("app", "web")]);
    let p = w.plan("west/gw2", &web_out());
    let gws = ["100.64.0.11", "100.64.0.12"];
    assert_eq!(
        p.routes.get(&(ip("10.1.1.7"), net("0.0.0.0/0"))),
        Some(&via(&gws, Some("192.0.2.12")))
    );
    assert_eq!(
        p.routes.get(&(ip("10.1.0.5"), net("0.0.0.0/0"))),
        Some(&via(&gws, Some("192.0.2.12")))
    );
    assert_eq!(p.status[0].endpoints, 1);
    assert_eq!(p.watched, BTreeSet::from(["west/gw1".to_string()]));
}

#[test]
fn unusable_gateways_are_listed_with_why_and_left_out_of_routes() {
    let mut w = west();
    w.gateway("west/gw3", "100.64.0.13", "192.0.2.13").tunnel_ip = None;
    w.gateway("west/gw4", "100.64.0.14", "192.0.2.14");
    w.down.insert("west/gw4".into());
    w.gateway("west/gw5", "100.64.0.15", "192.0.2.15").addresses =
        vec![addr("eth0", "192.0.2.15", false)];
    let pol = web_out();
    let p = w.plan("west/a", &pol);
    assert_eq!(
        p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))],
        via(&["100.64.0.11", "100.64.0.12"], None)
    );
    let st: Vec<_> = p.status[0]
        .gateways
        .iter()
        .map(|g| {
            (
                g.node.as_str(),
                g.health.as_str(),
                g.usable,
                g.problem.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        st,
        vec![
            ("west/gw1", "up", true, None),
            ("west/gw2", "up", true, None),
            (
                "west/gw3",
                "up",
                false,
                Some("node west/gw3 has no tunnel IP")
            ),
            ("west/gw4", "down", false, Some("node west/gw4 is down")),
            (
                "west/gw5",
                "up",
                false,
                Some(
                    "node west/gw5 has no IPv4 address on an interface holding the default \
                     route; give egressIP or interface"
                )
            ),
        ]
    );
    assert_eq!(
        p.watched.len(),
        5,
        "every candidate is watched, usable or not: {:?}",
        p.watched
    );
    // Configuration problems are reported; health is in the status.
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(
        p.problems[0].starts_with("egress policy out: node west/gw5"),
        "{:?}",
        p.problems
    );

    // egressIP and interface that the node does not have.
    let pol = policies(&format!(
        "{}{}",
        policy(
            "ip",
            "{app: web}",
            "[192.0.2.0/24]",
            "[]",
            "{egress: \"true\"}",
            ", egressIP: 192.0.2.99"
        ),
        policy(
            "if",
            "{app: db}",
            "[192.0.2.0/24]",
            "[]",
            "{egress: \"true\"}",
            ", interface: eg0"
        ),
    ));
    let p = west().plan("west/a", &pol);
    assert_eq!(
        p.routes[&(ip("10.1.0.5"), net("192.0.2.0/24"))],
        via(&[], None),
        "no usable gateway: the route stays, empty, so the traffic is dropped"
    );
    assert_eq!(
        p.routes[&(ip("10.1.0.6"), net("192.0.2.0/24"))],
        via(&[], None)
    );
    let problem = |name: &str| -> Vec<String> {
        let s = p.status.iter().find(|s| s.name == name).expect("status");
        s.gateways
            .iter()
            .map(|g| g.problem.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        problem("ip"),
        vec![
            "egress IP 192.0.2.99 is not an address of node west/gw1",
            "egress IP 192.0.2.99 is not an address of node west/gw2"
        ]
    );
    assert_eq!(
        problem("if"),
        vec![
            "node west/gw1 has no IPv4 address on interface eg0",
            "node west/gw2 has no IPv4 address on interface eg0"
        ]
    );
    assert_eq!(p.problems.len(), 4, "{:?}", p.problems);
    assert!(p
        .status
        .iter()
        .all(|s| s.gateways.iter().all(|g| g.egress_ip.is_none())));
}

#[test]
fn egress_ip_resolution_by_address_interface_and_default_route() {
    let mut w = west();
    for name in ["west/gw1", "west/gw2"] {
        let n = w.nodes.iter_mut().find(|n| n.name == name).expect("node");
        let last = if name == "west/gw1" { 11 } else { 12 };
        n.addresses = vec![
            addr("eth1", &format!("198.51.100.{last}"), false),
            addr("eth0", &format!("192.0.2.{last}"), false),
            addr("eth0", &format!("192.0.2.{}", last + 100), true),
            addr("eg0", &format!("203.0.113.{last}"), false),
            addr("eg0", &format!("203.0.113.{}", last + 100), false),
        ];
    }
    let egress_ips = |extra: &str| -> Vec<Option<String>> {
        let pol = policies(&policy(
            "out",
            "{app: web}",
            "[0.0.0.0/0]",
            "[]",
            "{egress: \"true\"}",
            extra,
        ));
        let p = w.plan("west/gw1", &pol);
        p.status[0]
            .gateways
            .iter()
            .map(|g| g.egress_ip.clone())
            .collect()
    };
    // Default: the first address of the interface holding the default route.
    assert_eq!(
        egress_ips(""),
        vec![Some("192.0.2.11".into()), Some("192.0.2.12".into())]
    );
    assert_eq!(
        egress_ips(", interface: eg0"),
        vec![Some("203.0.113.11".into()), Some("203.0.113.12".into())]
    );
    // The SNAT address keeps its interface.
    let pol = policies(&policy(
        "out",
        "{app: web}",
        "[0.0.0.0/0]",
        "[]",
        "{egress: \"true\"}",
        ", egressIP: 203.0.113.111",
    ));
    let p = w.plan("west/gw1", &pol);
    assert_eq!(
        p.snat,
        BTreeMap::from([(ip("203.0.113.111"), "eg0".to_string())])
    );
    let st = &p.status[0].gateways;
    assert!(st[0].usable && !st[1].usable, "{st:?}");
    assert_eq!(
        p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))],
        via(&["100.64.0.11"], Some("203.0.113.111"))
    );
}

#[test]
fn gateways_going_down_and_back_do_not_reorder_the_others() {
    let mut w = west();
    w.gateway("west/gw0", "100.64.0.10", "192.0.2.10");
    let key = (ip("10.1.0.5"), net("0.0.0.0/0"));
    let gws = |w: &World| w.plan("west/a", &web_out()).routes[&key].gateways.clone();
    let all = vec![ip("100.64.0.10"), ip("100.64.0.11"), ip("100.64.0.12")];
    assert_eq!(gws(&w), all, "hash order is by node name, not by insertion");
    w.down.insert("west/gw1".into());
    assert_eq!(gws(&w), vec![ip("100.64.0.10"), ip("100.64.0.12")]);
    w.down.insert("west/gw0".into());
    assert_eq!(gws(&w), vec![ip("100.64.0.12")]);
    w.down.clear();
    assert_eq!(gws(&w), all);
    // Input order of nodes and pods does not matter.
    w.nodes.reverse();
    w.pods.reverse();
    assert_eq!(gws(&w), all);
}

#[test]
fn snat_only_when_this_node_is_a_usable_gateway() {
    let mut w = west();
    w.down.insert("west/gw2".into());
    // gw2 is down as seen by others; as itself it is up, but without its egress IP it is unusable.
    w.nodes
        .iter_mut()
        .find(|n| n.name == "west/gw2")
        .expect("gw2")
        .addresses
        .clear();
    let p = w.plan("west/gw2", &web_out());
    assert!(p.routes.is_empty(), "{:?}", p.routes);
    assert!(p.snat.is_empty());
    assert!(p.gateway_of_any, "still a candidate");
    let me = p.status[0]
        .gateways
        .iter()
        .find(|g| g.node == "west/gw2")
        .expect("me");
    assert_eq!((me.health.as_str(), me.usable), ("up", false));
    // A down gateway is left out of the worker's routes.
    let p = w.plan("west/a", &web_out());
    assert_eq!(
        p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))],
        via(&["100.64.0.11"], None)
    );
}

#[test]
fn node_selectors_name_other_clusters_to_route_through_their_gateways() {
    let mut w = west();
    w.node("east/x", &[], "100.65.0.1", "198.51.100.1");
    w.gateway("east/gw1", "100.65.0.11", "198.51.100.11");
    w.pod("10.2.0.9", "east/x", "shop", &[("app", "web")]);
    // Without a cluster requirement, each cluster's pods use their own cluster's gateways.
    let local = web_out();
    let p = w.plan("east/x", &local);
    assert_eq!(
        p.routes[&(ip("10.2.0.9"), net("0.0.0.0/0"))],
        via(&["100.65.0.11"], None)
    );
    assert_eq!(p.watched, BTreeSet::from(["east/gw1".to_string()]));
    let p = w.plan("west/gw1", &local);
    assert!(
        !p.routes.contains_key(&(ip("10.2.0.9"), net("0.0.0.0/0"))),
        "west's gateway does not serve east's pods"
    );
    // Naming the cluster reaches west's gateways from east.
    let cross = policies(&policy(
        "out",
        "{app: web}",
        "[0.0.0.0/0]",
        "[]",
        "{egress: \"true\", io.cilium.k8s.policy.cluster: west}",
        "",
    ));
    let p = w.plan("east/x", &cross);
    assert_eq!(
        p.routes[&(ip("10.2.0.9"), net("0.0.0.0/0"))],
        via(&["100.64.0.11", "100.64.0.12"], None)
    );
    assert_eq!(
        p.status[0].gateways.len(),
        2,
        "status lists west's gateways"
    );
    assert_eq!(
        p.watched,
        BTreeSet::from(["west/gw1".to_string(), "west/gw2".to_string()])
    );
    let p = w.plan("west/gw1", &cross);
    assert_eq!(
        p.routes[&(ip("10.2.0.9"), net("0.0.0.0/0"))],
        via(&["100.64.0.11", "100.64.0.12"], Some("192.0.2.11"))
    );
    assert_eq!(
        p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))],
        via(&["100.64.0.11", "100.64.0.12"], Some("192.0.2.11"))
    );
    let p = w.plan("east/gw1", &cross);
    assert!(!p.gateway_of_any && p.routes.is_empty(), "{p:?}");
}

#[test]
fn selectors_match_namespaces_and_the_pods_node() {
    let mut w = west();
    w.nodes[0].labels = kv(&[("zone", "a")]);
    w.node("west/b", &[("zone", "b")], "100.64.0.2", "192.0.2.2");
    w.pod("10.1.2.1", "west/b", "shop", &[("app", "web")]);
    w.pod("10.1.0.7", "west/a", "dev", &[("app", "web")]);
    let pol = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: out}\nspec:\n\
         \x20 selectors:\n\
         \x20 - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}\n\
         \x20   nodeSelector: {matchLabels: {zone: a}}\n\
         \x20 destinationCIDRs: [192.0.2.0/24]\n\
         \x20 egressGateway: {nodeSelector: {matchLabels: {egress: \"true\"}}}\n",
    );
    let p = w.plan("west/a", &pol);
    let sources: BTreeSet<Ipv4Addr> = p.routes.keys().map(|(s, _)| *s).collect();
    assert_eq!(
        sources,
        BTreeSet::from([ip("10.1.0.5"), ip("10.1.0.6")]),
        "shop's pods on zone a (every pod: no podSelector)"
    );
    assert_eq!(p.status[0].endpoints, 2);
    let p = w.plan("west/gw1", &pol);
    assert!(
        !p.routes.keys().any(|(s, _)| *s == ip("10.1.2.1")),
        "zone b"
    );
}

#[test]
fn overlapping_policies_the_first_by_name_wins_and_both_are_named() {
    let text = format!(
        "{}{}",
        policy(
            "zeta",
            "{app: web}",
            "[0.0.0.0/0, 192.0.2.0/24]",
            "[]",
            "{egress: \"true\"}",
            ", egressIP: 192.0.2.12"
        ),
        policy(
            "alpha",
            "{app: web}",
            "[0.0.0.0/0]",
            "[192.0.2.0/24]",
            "{egress: \"true\"}",
            ", egressIP: 192.0.2.11"
        ),
    );
    let pol = policies(&text);
    let p = west().plan("west/a", &pol);
    assert_eq!(
        p.routes,
        routes(&[
            ("10.1.0.5", "0.0.0.0/0", via(&["100.64.0.11"], None)),
            ("10.1.0.5", "192.0.2.0/24", excluded()),
        ]),
        "alpha's routes"
    );
    let names: Vec<_> = p.status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["alpha", "zeta"], "status in name order");
    // Each policy's egress IP is on one gateway only (reported), and the overlap.
    assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
    assert_eq!(
        p.problems[2],
        "egress policies alpha and zeta both route 10.1.0.5 to 0.0.0.0/0 (and 1 more routes); \
         alpha is applied (the first by name): make the policies select different pods or \
         destinations"
    );
    // The losing policy's gateway SNATs nothing for the shadowed routes.
    let p = west().plan("west/gw2", &pol);
    assert!(p.snat.is_empty(), "{:?}", p.snat);
    assert!(p.routes.is_empty(), "{:?}", p.routes);
}

#[test]
fn a_node_picked_by_two_gateway_specs_keeps_the_first() {
    let pol = policies(
        "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: out}\nspec:\n\
         \x20 selectors: [{podSelector: {matchLabels: {app: web}}}]\n\
         \x20 destinationCIDRs: [0.0.0.0/0]\n\
         \x20 egressGateways:\n\
         \x20 - {nodeSelector: {matchLabels: {kubernetes.io/hostname: gw2}}, egressIP: 192.0.2.12}\n\
         \x20 - {nodeSelector: {matchLabels: {egress: \"true\"}}, interface: nope}\n",
    );
    let mut w = west();
    w.nodes[2]
        .labels
        .insert("kubernetes.io/hostname".into(), "gw2".into());
    let p = w.plan("west/a", &pol);
    let st: Vec<_> = p.status[0]
        .gateways
        .iter()
        .map(|g| (g.node.as_str(), g.usable, g.egress_ip.as_deref()))
        .collect();
    assert_eq!(
        st,
        vec![
            ("west/gw1", false, None),
            ("west/gw2", true, Some("192.0.2.12"))
        ],
        "gw2 keeps the first spec's egress IP; gw1 only matches the second"
    );
    assert_eq!(
        p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))],
        via(&["100.64.0.12"], None)
    );
}

#[test]
fn more_than_max_gateways_keeps_the_first_by_name() {
    let mut w = west();
    for i in 3..=20 {
        w.gateway(
            &format!("west/gw{i:02}"),
            &format!("100.64.1.{i}"),
            &format!("192.0.2.{}", 100 + i),
        );
    }
    // gw1, gw2 and gw03..gw20: 20 usable; by name: gw03..gw09, gw1, gw10..gw17 are
    // the first 16.
    let p = w.plan("west/a", &web_out());
    let route = &p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))];
    assert_eq!(route.gateways.len(), MAX_GATEWAYS);
    assert_eq!(route.gateways[0], ip("100.64.1.3"));
    assert_eq!(route.gateways[7], ip("100.64.0.11"), "gw1");
    assert_eq!(route.gateways[MAX_GATEWAYS - 1], ip("100.64.1.17"));
    let st = &p.status[0].gateways;
    assert_eq!(st.len(), 20);
    assert_eq!(st.iter().filter(|g| g.usable).count(), MAX_GATEWAYS);
    assert_eq!(p.problems.len(), 4, "{:?}", p.problems);
    assert!(
        p.problems[0].contains("more than 16 usable gateways"),
        "{:?}",
        p.problems
    );
    // One going down lets the 17th in.
    w.down.insert("west/gw05".into());
    let p = w.plan("west/a", &web_out());
    let route = &p.routes[&(ip("10.1.0.5"), net("0.0.0.0/0"))];
    assert_eq!(route.gateways.len(), MAX_GATEWAYS);
    assert_eq!(route.gateways[MAX_GATEWAYS - 1], ip("100.64.1.18"));
}

#[test]
fn no_policies_or_no_endpoints_plan_nothing() {
    let w = west();
    assert_eq!(w.plan("west/a", &[]), EgressPlan::default());
    let mut empty = World::default();
    empty.node("west/a", &[], "100.64.0.1", "192.0.2.1");
    let p = empty.plan("west/a", &web_out());
    assert!(p.routes.is_empty() && p.watched.is_empty());
    assert_eq!(p.status.len(), 1);
    assert!(p.status[0].gateways.is_empty());
}
