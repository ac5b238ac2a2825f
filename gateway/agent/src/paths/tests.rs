#![allow(clippy::unwrap_used)]

use super::*;

const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

fn node(cluster: &str, id: u8, name: &str, i: u8, gateway: bool) -> (String, pb::Node) {
    (
        format!("{cluster}/{name}"),
        pb::Node {
            name: name.into(),
            cluster: cluster.into(),
            cluster_id: u32::from(id),
            underlay_ip: format!("198.18.{id}.{}", 10 + i),
            listen_port: 51820,
            wg_public_key: KEY.into(),
            pod_cidrs: vec![format!("10.{id}.{i}.0/24")],
            tunnel_ip: format!("100.64.{}.{}", id * 64, i + 1),
            encryption: String::new(),
            labels: Default::default(),
            addresses: Default::default(),
            roles: if gateway {
                vec![CLUSTER_GATEWAY.into()]
            } else {
                vec![]
            },
        },
    )
}

/// c1 and c2 have gateways g1, g2 and an ordinary node n3; c3 has none.
fn world() -> BTreeMap<String, pb::Node> {
    let mut m = BTreeMap::new();
    for (c, id) in [("c1", 1), ("c2", 2)] {
        m.extend([
            node(c, id, "g1", 0, true),
            node(c, id, "g2", 1, true),
            node(c, id, "n3", 2, false),
        ]);
    }
    m.insert(
        node("c3", 3, "n1", 0, false).0,
        node("c3", 3, "n1", 0, false).1,
    );
    m
}

fn allowed(p: &Paths, peer: &str) -> Vec<String> {
    p.peers[peer]
        .allowed_ips
        .iter()
        .map(|n| n.to_string())
        .collect()
}

fn all_up(_: &str) -> Health {
    Health::Up
}

#[test]
fn without_gateways_every_node_is_a_direct_peer() {
    let mut nodes = BTreeMap::new();
    nodes.extend([
        node("c1", 1, "n1", 0, false),
        node("c1", 1, "n2", 1, false),
        node("c2", 2, "n1", 0, false),
    ]);
    let me = Me {
        name: "c1/n1",
        cluster: "c1",
        gateway: false,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &nodes, all_up);
    assert_eq!(p.peers.keys().collect::<Vec<_>>(), vec!["c1/n2", "c2/n1"]);
    assert!(p.peers.values().all(|p| p.keepalive_ms.is_none()));
    assert!(p.gateways.is_empty() && p.problems.is_empty());
}

#[test]
fn an_ordinary_node_behind_gateways_sends_everything_foreign_to_its_active_gateway() {
    let me = Me {
        name: "c1/n3",
        cluster: "c1",
        gateway: false,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &world(), all_up);
    // Only its own cluster's nodes are peers; both gateways keep a session.
    assert_eq!(p.peers.keys().collect::<Vec<_>>(), vec!["c1/g1", "c1/g2"]);
    assert_eq!(
        allowed(&p, "c1/g1"),
        vec![
            "10.1.0.0/24",
            "100.64.64.1/32",
            "10.2.0.0/24",
            "100.64.128.1/32",
            "10.2.1.0/24",
            "100.64.128.2/32",
            "10.2.2.0/24",
            "100.64.128.3/32",
            "10.3.0.0/24",
            "100.64.192.1/32"
        ]
    );
    assert_eq!(allowed(&p, "c1/g2"), vec!["10.1.1.0/24", "100.64.64.2/32"]);
    assert!(p
        .peers
        .values()
        .all(|p| p.keepalive_ms == Some(KEEPALIVE_MS)));
    assert_eq!(p.gateways.len(), 1);
    assert_eq!(p.gateways[0].cluster, "c1");
    assert_eq!(p.gateways[0].active, "c1/g1");
}

#[test]
fn when_the_active_gateway_dies_its_prefixes_move_to_the_other() {
    let me = Me {
        name: "c1/n3",
        cluster: "c1",
        gateway: false,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &world(), |n| {
        if n == "c1/g1" {
            Health::Down
        } else {
            Health::Up
        }
    });
    assert_eq!(allowed(&p, "c1/g1"), vec!["10.1.0.0/24", "100.64.64.1/32"]);
    assert!(allowed(&p, "c1/g2").contains(&"10.2.2.0/24".to_string()));
    assert_eq!(p.gateways[0].active, "c1/g2");
    assert_eq!(p.gateways[0].health["c1/g1"], "down");
}

#[test]
fn a_gateway_reaches_other_gateways_directly_and_ordinary_nodes_through_theirs() {
    let me = Me {
        name: "c1/g2",
        cluster: "c1",
        gateway: true,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &world(), |n| {
        if n == "c2/g1" {
            Health::Down
        } else {
            Health::Up
        }
    });
    assert_eq!(
        p.peers.keys().collect::<Vec<_>>(),
        vec!["c1/g1", "c1/n3", "c2/g1", "c2/g2", "c3/n1"]
    );
    // c2's ordinary node goes through c2's live gateway.
    assert_eq!(
        allowed(&p, "c2/g2"),
        vec![
            "10.2.1.0/24",
            "100.64.128.2/32",
            "10.2.2.0/24",
            "100.64.128.3/32"
        ]
    );
    assert_eq!(allowed(&p, "c1/n3"), vec!["10.1.2.0/24", "100.64.64.3/32"]);
    // A gateway keeps every peer alive (they watch it).
    assert!(p
        .peers
        .values()
        .all(|p| p.keepalive_ms == Some(KEEPALIVE_MS)));
    assert_eq!(p.gateways.len(), 1);
    assert_eq!(p.gateways[0].active, "c2/g2");
}

#[test]
fn a_node_of_a_routable_cluster_reaches_isolated_ones_through_their_gateways() {
    let me = Me {
        name: "c3/n1",
        cluster: "c3",
        gateway: false,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &world(), all_up);
    assert_eq!(
        p.peers.keys().collect::<Vec<_>>(),
        vec!["c1/g1", "c1/g2", "c2/g1", "c2/g2"]
    );
    assert!(allowed(&p, "c1/g1").contains(&"10.1.2.0/24".to_string()));
    assert!(allowed(&p, "c2/g1").contains(&"10.2.2.0/24".to_string()));
    assert!(!allowed(&p, "c1/g2").contains(&"10.1.2.0/24".to_string()));
    // Keepalives only towards gateways.
    assert!(p.peers.values().all(|p| p.keepalive_ms.is_some()));
    assert_eq!(
        p.gateways
            .iter()
            .map(|g| g.cluster.as_str())
            .collect::<Vec<_>>(),
        vec!["c1", "c2"]
    );
}

#[test]
fn every_prefix_belongs_to_exactly_one_peer_on_every_node() {
    let nodes = world();
    for (name, n) in &nodes {
        let me = Me {
            name,
            cluster: &n.cluster,
            gateway: n.roles.iter().any(|r| r == CLUSTER_GATEWAY),
            encryption: Default::default(),

            egress_gateway: false,
        };
        let p = plan(&me, &nodes, all_up);
        let mut seen = std::collections::BTreeSet::new();
        for peer in p.peers.values() {
            for net in &peer.allowed_ips {
                assert!(seen.insert(*net), "{name}: {net} on two peers");
            }
        }
        // Every other node's prefixes are reachable from every node.
        assert_eq!(seen.len(), 2 * (nodes.len() - 1), "{name}: {seen:?}");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }
}

#[test]
fn bad_gateway_records_are_reported_not_applied() {
    let mut nodes = world();
    for g in ["c1/g1", "c1/g2"] {
        nodes.get_mut(g).unwrap().wg_public_key = "short".into();
    }
    let me = Me {
        name: "c3/n1",
        cluster: "c3",
        gateway: false,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &nodes, all_up);
    assert!(p.problems.iter().any(|e| e.contains("c1/g1")));
    assert!(
        p.problems
            .iter()
            .any(|e| e.contains("c1/n3") && e.contains("no usable cluster-gateway in cluster c1")),
        "{:?}",
        p.problems
    );
    assert!(!p.peers.contains_key("c1/n3"));
}

#[test]
fn a_node_that_encrypts_otherwise_is_not_peered_and_says_why() {
    let mut nodes = BTreeMap::new();
    nodes.extend([node("c1", 1, "n1", 0, false), node("c1", 1, "n2", 1, false)]);
    let mut odd = node("c1", 1, "n3", 2, false);
    odd.1.encryption = "ipsec".into();
    nodes.insert(odd.0, odd.1);
    let me = Me {
        name: "c1/n1",
        cluster: "c1",
        gateway: false,
        encryption: Default::default(),
        egress_gateway: false,
    };
    let p = plan(&me, &nodes, all_up);
    assert_eq!(p.peers.keys().collect::<Vec<_>>(), vec!["c1/n2"]);
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(
        p.problems[0].contains("c1/n3 encrypts with ipsec but this node with wireguard")
            && p.problems[0].contains("same --encryption"),
        "{}",
        p.problems[0]
    );
}

#[test]
fn an_egress_gateway_sends_every_peer_fast_keepalives_and_others_do_not() {
    let mut nodes = BTreeMap::new();
    nodes.extend([
        node("c1", 1, "n1", 0, false),
        node("c1", 1, "n2", 1, false),
        node("c1", 1, "g1", 2, false),
    ]);
    let me = |name, egress_gateway| Me {
        name,
        cluster: "c1",
        gateway: false,
        encryption: Default::default(),
        egress_gateway,
    };
    let p = plan(&me("c1/g1", true), &nodes, all_up);
    for peer in ["c1/n1", "c1/n2"] {
        assert_eq!(
            p.peers[peer].keepalive_ms,
            Some(super::super::liveness::EGRESS_KEEPALIVE_MS),
            "{peer}"
        );
    }
    let p = plan(&me("c1/n1", false), &nodes, all_up);
    assert!(p.peers.values().all(|p| p.keepalive_ms.is_none()));
}
