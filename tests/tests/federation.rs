//! End-to-end: federation of several clusters' discoveries (root required;
//! see the crate docs). Every discovery is started with `--remote` for every
//! other cluster of the world.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshgate_e2e::{clusters, meshgate_bin, wait_until, Capture, World};

const CLUSTERS: [(&str, u64); 3] = [("c1", 1), ("c2", 2), ("c3", 3)];
const NODES: [&str; 2] = ["n1", "n2"];

#[test]
fn three_clusters_reach_each_other_encrypted_with_identities_in_their_own_ranges() {
    let world = World::up("e2e-fed3", &clusters("e2e-fed3", 3, 2));
    // (cluster, pod) → IP
    let pods: BTreeMap<(&str, &str), String> = CLUSTERS
        .iter()
        .flat_map(|(c, _)| ["n1-a", "n2-a"].map(|p| (*c, p)))
        .map(|(c, p)| ((c, p), world.ip(&format!("{c}/{p}"))))
        .collect();
    let dir = meshgate_e2e::tempdir();
    let captures: Vec<Capture> = CLUSTERS
        .iter()
        .flat_map(|(c, _)| NODES.map(|n| (*c, n)))
        .map(|(c, n)| {
            Capture::start(
                &world.node_ns(c, n),
                "eth0",
                dir.path().join(format!("{c}-{n}.pcap")),
            )
        })
        .collect();
    for (fc, fp) in pods.keys() {
        for ((tc, tp), ip) in &pods {
            if (fc, fp) == (tc, tp) {
                continue;
            }
            let s = world.ping(fc, fp, ip, 2, "0.05");
            assert_eq!(s.received, 2, "{fc}/{fp} -> {tc}/{tp} ({ip}) lost packets");
        }
    }
    for cap in captures {
        cap.assert_nothing_in_clear("net 10.1.0.0/16 or net 10.2.0.0/16 or net 10.3.0.0/16", 20);
    }
    // Every agent's ipcache: all 6 pods, each with an identity of its own cluster.
    let want: BTreeMap<&String, &str> = pods.iter().map(|((c, _), ip)| (ip, *c)).collect();
    for (c, _) in CLUSTERS {
        for n in NODES {
            let complete = || {
                let cache = world.ipcache(c, n);
                want.keys().all(|ip| cache.contains_key(*ip))
            };
            assert!(
                wait_until(Duration::from_secs(5), complete).is_some(),
                "{c}/{n}'s ipcache never listed all pods: {:?}",
                world.ipcache(c, n)
            );
            for (ip, (cluster, identity)) in world.ipcache(c, n) {
                let id = CLUSTERS.iter().find(|(x, _)| *x == cluster).unwrap().1;
                assert_eq!(Some(&cluster.as_str()), want.get(&ip), "{c}/{n}: {ip}");
                assert_eq!(
                    identity >> 16,
                    id,
                    "{c}/{n}: {ip} of {cluster} has identity {identity}, not in {cluster}'s range"
                );
            }
        }
    }
    // Every discovery lists all six nodes and its two remotes, connected.
    for (c, _) in CLUSTERS {
        assert_eq!(world.discovery_nodes(c, c).len(), 6, "{c}'s discovery");
        let f = world.federation(c);
        let remotes = f["remotes"].as_array().unwrap();
        assert_eq!(remotes.len(), 2, "{f}");
        for r in remotes {
            assert_eq!(r["connected"], true, "{c}: {r}");
            assert_eq!(r["nodes"], 2, "{c}: {r}");
            assert_eq!(r["rejected"], serde_json::json!({}), "{c}: {r}");
        }
    }
}

/// A `meshgate` process started by the test inside a world namespace,
/// logging to a file; killed on drop (`lab down` would get it too).
struct Rogue(Child);

impl Rogue {
    fn start(ns: &str, args: &[&str], log: &std::path::Path) -> Rogue {
        let log = File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(meshgate_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting meshgate in a namespace");
        Rogue(child)
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_remote_claiming_another_clusters_id_is_rejected_and_counted() {
    let world = World::up("e2e-rogue", &clusters("e2e-rogue", 3, 1));
    // c3 is replaced by a discovery (and an agent) that claim cluster ID 1.
    world.lab("stop", "c3/n1");
    world.lab("stop", "c3/discovery");
    let dir = meshgate_e2e::tempdir();
    let certs = world.certs_dir();
    let d_log = dir.path().join("rogue-discovery.log");
    let a_log = dir.path().join("rogue-agent.log");
    let state = |n: &str| dir.path().join(n).display().to_string();
    let endpoints = format!(
        "/run/meshgate/lab/{}/c3/nodes/n1/endpoints.yaml",
        world.name
    );
    let _discovery = Rogue::start(
        &world.discovery_ns("c3"),
        &[
            "discovery",
            "--listen",
            "198.18.3.2:7100",
            "--cluster",
            "c3",
            "--cluster-id",
            "1",
            "--state-dir",
            &state("rogue-d"),
            // The lab's own c3 certificate: the rogue is a trusted member
            // that lies about its cluster ID, which is the case to catch.
            "--tls-cert",
            &certs.join("clusters/c3.pem").display().to_string(),
            "--tls-key",
            &certs.join("clusters/c3-key.pem").display().to_string(),
            "--client-ca",
            &certs.join("ca.pem").display().to_string(),
        ],
        &d_log,
    );
    std::thread::sleep(Duration::from_millis(300));
    let _agent = Rogue::start(
        &world.node_ns("c3", "n1"),
        &[
            "agent",
            "--node",
            "n1",
            "--cluster",
            "c3",
            "--cluster-id",
            "1",
            "--discovery",
            "https://198.18.3.2:7100",
            "--underlay-ip",
            "198.18.3.10",
            "--pod-cidr",
            "10.3.0.0/24",
            "--state-dir",
            &state("rogue-a"),
            "--endpoints",
            &endpoints,
            "--tls-ca",
            &certs.join("ca.pem").display().to_string(),
            "--tls-cert",
            &certs.join("agents/c3/n1.pem").display().to_string(),
            "--tls-key",
            &certs.join("agents/c3/n1-key.pem").display().to_string(),
        ],
        &a_log,
    );
    let logs = || {
        format!(
            "rogue discovery log:\n{}\nrogue agent log:\n{}",
            std::fs::read_to_string(&d_log).unwrap_or_default(),
            std::fs::read_to_string(&a_log).unwrap_or_default()
        )
    };
    // The rogue does claim a node (with an endpoint in cluster 1's identity range).
    let claimed = wait_until(Duration::from_secs(10), || {
        world.discovery_nodes("c1", "c3") == ["c3/n1"]
    });
    assert!(
        claimed.is_some(),
        "the rogue never registered its node\n{}",
        logs()
    );
    // Both other discoveries reject it, naming the conflict, and count it.
    for c in ["c1", "c2"] {
        let counted = wait_until(Duration::from_secs(15), || {
            let f = world.federation(c);
            let r = f["remotes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == "c3")
                .cloned()
                .unwrap();
            r["rejected"]["cluster_id"].as_u64().unwrap_or(0) >= 1
                && r["connected"] == false
                && r["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("claims cluster id 1")
        });
        assert!(
            counted.is_some(),
            "{c} did not count the rogue's cluster ID: {}\n{}",
            world.federation(c),
            logs()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    // Nothing of it appears anywhere.
    let c3_pod = world.ip("c3/n1-a");
    for c in ["c1", "c2"] {
        let nodes = world.discovery_nodes(c, c);
        assert_eq!(nodes, ["c1/n1", "c2/n1"], "{c}'s discovery");
        let s = world.status(c, "n1");
        assert!(
            s.peers.iter().all(|p| p.cluster != "c3"),
            "{c}/n1 peers with c3: {:?}",
            s.peers
        );
        let cache = world.ipcache(c, "n1");
        assert!(!cache.contains_key(&c3_pod), "{c}/n1's ipcache: {cache:?}");
        assert!(cache.values().all(|(cl, _)| cl != "c3"), "{cache:?}");
    }
    // And the legitimate clusters still reach each other.
    let s = world.ping("c1", "n1-a", &world.ip("c2/n1-a"), 3, "0.1");
    assert_eq!(s.received, 3, "c1 -> c2 after the rogue appeared");
}

#[test]
fn a_stopped_discovery_leaves_cross_cluster_traffic_and_peers_untouched() {
    let world = World::up("e2e-fedstop", &clusters("e2e-fedstop", 2, 1));
    let to = world.ip("c2/n1-a");
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "250", "-i", "0.02", "-W", "1", &to,
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    world.lab("stop", "c2/discovery");
    let out = ping.wait_with_output().unwrap();
    let s = meshgate_e2e::parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        s.lost(),
        0,
        "c1 -> c2 lost {} of {} pings across c2's discovery stopping",
        s.lost(),
        s.sent
    );
    // c1 still lists c2's node (kept until the remote timeout, 60 s) ...
    let f = world.federation("c1");
    let r = &f["remotes"][0];
    assert_eq!(
        (r["name"].as_str(), r["nodes"].as_u64()),
        (Some("c2"), Some(1)),
        "{f}"
    );
    assert_eq!(r["connected"], false, "{f}");
    let peer = world
        .status("c1", "n1")
        .peers
        .into_iter()
        .find(|p| p.cluster == "c2" && p.node == "n1");
    assert!(peer.is_some(), "c1/n1 dropped its c2 peer");
    assert!(!world.status("c2", "n1").discovery_connected);
    // ... and when c2's discovery is back, the resync changes nothing.
    let key = peer.unwrap().public_key;
    world.lab("start", "c2/discovery");
    let back = wait_until(Duration::from_secs(15), || {
        world.federation("c1")["remotes"][0]["connected"] == true
    });
    assert!(
        back.is_some(),
        "c1 did not reconnect to c2: {}",
        world.federation("c1")
    );
    let s = world.ping("c1", "n1-a", &to, 20, "0.02");
    assert_eq!(s.received, 20, "c1 -> c2 after c2's discovery came back");
    let after = world.status("c1", "n1");
    let peer = after.peers.iter().find(|p| p.cluster == "c2").unwrap();
    assert_eq!(peer.public_key, key);
}
