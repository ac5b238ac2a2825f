//! End-to-end: cluster gateways for isolated underlays (root required; see
//! the crate docs). Every test runs `scenarios/gateways.yaml` under its own
//! world name: c1 and c2 are isolated, each with gateways g1 and g2 and
//! ordinary nodes (c1: n3, n4; c2: n3); c3 is routable with one node n1.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use meshgate_e2e::gateways::{active_gateway, assert_failover_within_bound, gateways_world};
use meshgate_e2e::{meshgate_output, require_host, Capture, World};

/// (cluster, node) of every node; each runs one pod `<node>-a`.
const NODES: [(&str, &str); 8] = [
    ("c1", "g1"),
    ("c1", "g2"),
    ("c1", "n3"),
    ("c1", "n4"),
    ("c2", "g1"),
    ("c2", "g2"),
    ("c2", "n3"),
    ("c3", "n1"),
];
const POD_NETS: &str = "net 10.1.0.0/16 or net 10.2.0.0/16 or net 10.3.0.0/16";
/// Pings `ip` from `ns` once; whether a reply came back.
fn reaches(world: &World, ns: &str, ip: &str) -> bool {
    world
        .in_ns(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", ip])
        .status
        .success()
}

#[test]
fn every_pod_reaches_every_pod_across_isolated_clusters_through_gateways_encrypted() {
    let world = gateways_world("gwreach");
    let pods: BTreeMap<(&str, &str), String> = NODES
        .iter()
        .map(|(c, n)| ((*c, *n), world.ip(&format!("{c}/{n}-a"))))
        .collect();
    let dir = meshgate_e2e::tempdir();
    let captures: Vec<Capture> = NODES
        .iter()
        .map(|(c, n)| {
            Capture::start(
                &world.node_ns(c, n),
                "eth0",
                dir.path().join(format!("{c}-{n}.pcap")),
            )
        })
        .collect();
    for (fc, fnode) in NODES {
        for ((tc, tn), ip) in &pods {
            if (fc, fnode) == (*tc, *tn) {
                continue;
            }
            let mut s = world.ping(fc, &format!("{fnode}-a"), ip, 2, "0.05");
            if s.received != 2 {
                // One late reply on a loaded machine is not a missing path:
                // the pair must then answer a second round in full.
                eprintln!("{fc}/{fnode}-a -> {tc}/{tn}-a: {s:?}; trying again");
                s = world.ping(fc, &format!("{fnode}-a"), ip, 3, "0.05");
                assert_eq!(
                    s.received, 3,
                    "{fc}/{fnode}-a -> {tc}/{tn}-a ({ip}) lost packets twice"
                );
            }
        }
    }
    // Full-size packets (the pods' MTU, don't fragment) cross both gateways.
    let big = world.in_ns(
        &world.pod_ns("c1", "n3-a"),
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.05",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1392",
            &pods[&("c2", "n3")],
        ],
    );
    assert!(
        big.status.success(),
        "1420-byte packets do not pass c1/n3 -> c1/g1 -> c2/g1 -> c2/n3:\n{}",
        String::from_utf8_lossy(&big.stdout)
    );
    for cap in captures {
        cap.assert_nothing_in_clear(POD_NETS, 10);
    }
    // The ordinary nodes of isolated clusters have WireGuard sessions only
    // inside their cluster, and send other clusters' traffic to g1.
    for (c, n) in [("c1", "n3"), ("c1", "n4"), ("c2", "n3")] {
        let st = world.status(c, n);
        let outside: Vec<String> = st
            .peers
            .iter()
            .filter(|p| p.cluster != c)
            .map(|p| format!("{}/{}", p.cluster, p.node))
            .collect();
        assert!(
            outside.is_empty(),
            "{c}/{n} peers outside its cluster: {outside:?}"
        );
        let g1 = st.peers.iter().find(|p| p.node == "g1").unwrap();
        let foreign = if c == "c1" {
            "10.2.0.0/24"
        } else {
            "10.1.0.0/24"
        };
        assert!(
            g1.allowed_ips.iter().any(|a| a == foreign),
            "{c}/{n}: {c}/g1 does not carry {foreign}: {:?}",
            g1.allowed_ips
        );
        assert_eq!(
            active_gateway(&world, c, n, c).as_deref(),
            Some(&*format!("{c}/g1"))
        );
    }
    // The routable cluster's node reaches c1 and c2 through their gateways.
    let st = world.status("c3", "n1");
    let mut peers: Vec<String> = st
        .peers
        .iter()
        .map(|p| format!("{}/{}", p.cluster, p.node))
        .collect();
    peers.sort();
    assert_eq!(peers, vec!["c1/g1", "c1/g2", "c2/g1", "c2/g2"]);
    let status = meshgate_e2e::meshgate(&["lab", "status", "gwreach"]);
    assert!(
        status.contains("cluster-gateway of c1: active c1/g1"),
        "lab status does not show the active gateway:\n{status}"
    );
}

#[test]
fn ordinary_nodes_of_an_isolated_cluster_cannot_reach_other_clusters_underlay() {
    let world = gateways_world("gwiso");
    let n3 = world.node_ns("c1", "n3");
    let g1 = world.node_ns("c1", "g1");
    let c3 = world.node_ns("c3", "n1");
    // Inside its cluster, and its discovery: reachable.
    for t in ["c1/g1", "c1/n4", "c1/discovery"] {
        assert!(reaches(&world, &n3, &world.ip(t)), "c1/n3 cannot reach {t}");
    }
    // Other clusters' nodes and discovery: not, in either direction.
    for t in ["c2/g1", "c2/n3", "c3/n1", "c2/discovery"] {
        assert!(
            !reaches(&world, &n3, &world.ip(t)),
            "c1/n3 reaches {t} directly"
        );
    }
    assert!(
        !reaches(&world, &c3, &world.ip("c1/n3")),
        "c3/n1 reaches c1/n3 directly"
    );
    // Not merely ARP: with c2/g1's MAC given by hand, IP frames are still dropped.
    let c2g1 = world.node_ns("c2", "g1");
    let mac = String::from_utf8(
        world
            .in_ns(&c2g1, &["cat", "/sys/class/net/eth0/address"])
            .stdout,
    )
    .unwrap();
    let target = world.ip("c2/g1");
    let out = world.in_ns(
        &n3,
        &[
            "ip",
            "neigh",
            "replace",
            &target,
            "lladdr",
            mac.trim(),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !reaches(&world, &n3, &target),
        "c1/n3 reaches c2/g1 with a static neighbour"
    );
    // The gateways do reach the other clusters.
    for t in ["c2/g1", "c2/g2", "c3/n1"] {
        assert!(reaches(&world, &g1, &world.ip(t)), "c1/g1 cannot reach {t}");
    }
}

#[test]
fn killing_the_active_gateway_moves_traffic_to_the_other_within_2s_and_back() {
    assert_failover_within_bound(&gateways_world("gwfail"));
}

#[test]
fn an_isolated_cluster_without_a_gateway_is_refused_before_anything_is_built() {
    require_host();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/gateways.yaml");
    let yaml = std::fs::read_to_string(path)
        .unwrap()
        .replace("\nname: gw\n", "\nname: gwbad\n")
        .replace("roles: [cluster-gateway]", "roles: [egress-gateway]");
    let dir = meshgate_e2e::tempdir();
    let file = dir.path().join("gateways.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = meshgate_output(&["lab", "up", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lab up accepted it");
    for cluster in ["clusters[0]", "clusters[1]"] {
        assert!(
            err.contains(&format!("gateways.yaml: {cluster}.underlay: cluster")),
            "no error for {cluster}: {err}"
        );
    }
    assert!(
        err.contains("give one or two of its nodes `roles: [cluster-gateway]`"),
        "{err}"
    );
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("mg-gwbad-"),
        "namespaces left behind"
    );
}
