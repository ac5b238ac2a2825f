//! End-to-end behaviour of the encrypted node mesh, each test in its own
//! lab world (root required; see the crate docs).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshgate_e2e::{one_cluster, parse_ping, wait_until, Capture, World};

const PODS: [&str; 6] = ["n1-a", "n1-b", "n2-a", "n2-b", "n3-a", "n3-b"];

fn ping(
    world: &World,
    from_pod: &str,
    to_ip: &str,
    count: u32,
    interval: &str,
) -> meshgate_e2e::PingStats {
    let out = world.in_ns(
        &world.pod_ns("c1", from_pod),
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            to_ip,
        ],
    );
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn every_pod_reaches_every_pod_and_nothing_crosses_the_underlay_in_clear() {
    let world = World::up("e2e-reach", &one_cluster("e2e-reach", 3));
    let ips: BTreeMap<&str, String> = PODS
        .iter()
        .map(|p| (*p, world.ip(&format!("c1/{p}"))))
        .collect();
    let dir = meshgate_e2e::tempdir();
    let captures: Vec<Capture> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            Capture::start(
                &world.node_ns("c1", n),
                "eth0",
                dir.path().join(format!("{n}.pcap")),
            )
        })
        .collect();
    // Every pod to every other pod, and a TCP stream across nodes.
    for from in PODS {
        for to in PODS {
            if from == to {
                continue;
            }
            let s = ping(&world, from, &ips[to], 2, "0.05");
            assert_eq!(s.received, 2, "{from} -> {to} ({}) lost packets", ips[to]);
        }
    }
    let mut server = world.spawn_in_ns(
        &world.pod_ns("c1", "n2-a"),
        &["iperf3", "-s", "-1", "-p", "5201"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = world.in_ns(
        &world.pod_ns("c1", "n1-a"),
        &["iperf3", "-c", &ips["n2-a"], "-p", "5201", "-n", "2M"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        client.status.success(),
        "iperf3 across nodes failed: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    for cap in captures {
        cap.assert_nothing_in_clear("net 10.1.0.0/16", 50);
    }
}

#[test]
fn a_node_that_leaves_disappears_from_every_peer_list_within_2s() {
    let world = World::up("e2e-leave", &one_cluster("e2e-leave", 3));
    assert_eq!(world.status("c1", "n1").peers.len(), 2);
    let start = Instant::now();
    world.lab("stop", "c1/n3");
    let gone = wait_until(Duration::from_secs(2), || {
        ["n1", "n2"].iter().all(|n| {
            let s = world.status("c1", n);
            s.peers.len() == 1 && s.peers.iter().all(|p| p.node != "n3")
        })
    });
    assert!(
        gone.is_some(),
        "n3 still listed as a peer 2 s after it left"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // Its interface went with it.
    let link = world.in_ns(
        &world.node_ns("c1", "n3"),
        &["ip", "link", "show", "mg-wg0"],
    );
    assert!(
        !link.status.success(),
        "mg-wg0 still exists on n3 after it left"
    );
    // And it can come back.
    world.lab("start", "c1/n3");
    let back = wait_until(Duration::from_secs(10), || {
        world
            .status("c1", "n1")
            .peers
            .iter()
            .any(|p| p.node == "n3" && p.last_handshake_age_ms.is_some())
    });
    assert!(back.is_some(), "n3 did not rejoin");
}

#[test]
fn a_crashed_node_is_removed_when_its_lease_runs_out() {
    let world = World::up_with(
        "e2e-lease",
        &one_cluster("e2e-lease", 3),
        &["--lease-ttl", "1"],
    );
    let pid = world.status("c1", "n3").pid;
    // SAFETY: killing the agent process the lab started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let gone = wait_until(Duration::from_secs(4), || {
        ["n1", "n2"]
            .iter()
            .all(|n| world.status("c1", n).peers.iter().all(|p| p.node != "n3"))
    });
    let took = gone.expect("n3 still a peer 4 s after its agent died with a 1 s lease");
    assert!(
        took >= Duration::from_millis(500),
        "removed after {took:?}: before the lease ran out?"
    );
}

#[test]
fn key_rotation_during_continuous_ping_loses_nothing() {
    let world = World::up("e2e-rotate", &one_cluster("e2e-rotate", 2));
    let to = world.ip("c1/n2-a");
    let keys_before = (
        world.status("c1", "n1").public_key,
        world.status("c1", "n2").public_key,
    );
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "600", "-i", "0.01", "-W", "1", &to,
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    world.lab("rotate-key", "c1/n2");
    std::thread::sleep(Duration::from_millis(1500));
    world.lab("rotate-key", "c1/n1");
    let out = ping.wait_with_output().unwrap();
    let s = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(s.sent, 600);
    assert_eq!(
        s.lost(),
        0,
        "key rotation lost {} of {} pings",
        s.lost(),
        s.sent
    );
    let (n1, n2) = (world.status("c1", "n1"), world.status("c1", "n2"));
    assert_ne!(n1.public_key, keys_before.0);
    assert_ne!(n2.public_key, keys_before.1);
    // Each side has learned the other's new key.
    assert_eq!(n1.peers[0].public_key, n2.public_key);
    assert_eq!(n2.peers[0].public_key, n1.public_key);
    // And the new key is in use: a fresh handshake happened.
    assert!(n1.peers[0].last_handshake_age_ms.unwrap() < 10_000);
}

#[test]
fn agent_restart_during_continuous_ping_loses_under_2_percent() {
    let world = World::up("e2e-restart", &one_cluster("e2e-restart", 2));
    let to = world.ip("c1/n2-a");
    let old_pid = world.status("c1", "n2").pid;
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "500", "-i", "0.01", "-W", "1", &to,
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    world.lab("restart", "c1/n2");
    let out = ping.wait_with_output().unwrap();
    let s = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(s.sent, 500);
    assert!(
        s.lost() * 50 < s.sent,
        "agent restart lost {} of {} pings (2% allowed)",
        s.lost(),
        s.sent
    );
    let st = world.status("c1", "n2");
    assert_ne!(st.pid, old_pid, "the agent was not restarted");
    assert!(s.lost() < s.sent);
}

#[test]
fn discovery_restart_loses_no_state_and_an_outage_keeps_the_mesh() {
    let world = World::up("e2e-disc", &one_cluster("e2e-disc", 3));
    let before: BTreeMap<String, (String, String)> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            let s = world.status("c1", n);
            (n.to_string(), (s.tunnel_ip, s.public_key))
        })
        .collect();
    // Discovery down: the mesh keeps working on the last known peers.
    world.lab("stop", "c1/discovery");
    let disconnected = wait_until(Duration::from_secs(20), || {
        !world.status("c1", "n1").discovery_connected
    });
    assert!(
        disconnected.is_some(),
        "n1 never noticed discovery was gone"
    );
    let s = ping(&world, "n1-a", &world.ip("c1/n3-b"), 5, "0.05");
    assert_eq!(
        s.received, 5,
        "pods lost each other while discovery was down"
    );
    assert_eq!(world.status("c1", "n1").peers.len(), 2);

    // Stop every agent without leaving (as a crash would), so only
    // discovery's own store can know the nodes; then restart discovery.
    for n in ["n1", "n2", "n3"] {
        let pid = world.status("c1", n).pid;
        // SAFETY: signalling the agent process the lab started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    }
    std::thread::sleep(Duration::from_millis(500));
    world.lab("start", "c1/discovery");
    let mut argv = vec![
        meshgate_e2e::meshgate_bin().display().to_string(),
        "nodes".to_string(),
        "--json".to_string(),
    ];
    argv.extend(world.nodes_flags("c1", "c1/n1"));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = world.in_ns(&world.node_ns("c1", "n1"), &argv);
    assert!(
        out.status.success(),
        "meshgate nodes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let after: BTreeMap<String, (String, String)> = nodes
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                (
                    n["tunnel_ip"].as_str().unwrap().to_string(),
                    n["public_key"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(
        after, before,
        "discovery lost or changed registrations across its restart"
    );

    // Agents come back, and later changes still propagate.
    for n in ["n1", "n2", "n3"] {
        world.lab("start", &format!("c1/{n}"));
    }
    let connected = wait_until(Duration::from_secs(10), || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| world.status("c1", n).discovery_connected)
    });
    assert!(
        connected.is_some(),
        "agents did not reconnect to the restarted discovery"
    );
    world.lab("rotate-key", "c1/n3");
    let new_key = world.status("c1", "n3").public_key;
    let seen = wait_until(Duration::from_secs(3), || {
        world
            .status("c1", "n1")
            .peers
            .iter()
            .any(|p| p.node == "n3" && p.public_key == new_key)
    });
    assert!(
        seen.is_some(),
        "n1 never learned n3's rotated key after the discovery restart"
    );
    let s = ping(&world, "n1-a", &world.ip("c1/n3-b"), 5, "0.05");
    assert_eq!(s.received, 5);
}

#[test]
fn scheduled_key_rotation_during_continuous_ping_loses_nothing() {
    let yaml = one_cluster("e2e-rotint", 2).replace(
        "      - name: n2\n",
        "      - name: n2\n        rotateInterval: 2\n",
    );
    assert!(yaml.contains("rotateInterval"));
    let world = World::up("e2e-rotint", &yaml);
    let to = world.ip("c1/n2-a");
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "600", "-i", "0.01", "-W", "1", &to,
        ],
    );
    let out = ping.wait_with_output().unwrap();
    let s = parse_ping(&String::from_utf8_lossy(&out.stdout));
    let n2 = world.status("c1", "n2");
    assert!(
        n2.key_rotations >= 2,
        "only {} scheduled rotations in ~6 s",
        n2.key_rotations
    );
    assert_eq!(
        s.lost(),
        0,
        "scheduled rotations lost {} of {} pings",
        s.lost(),
        s.sent
    );
    let n1 = world.status("c1", "n1");
    let seen = wait_until(Duration::from_secs(3), || {
        world.status("c1", "n1").peers[0].public_key == world.status("c1", "n2").public_key
    });
    assert!(
        seen.is_some(),
        "n1 never learned n2's latest key ({:?})",
        n1.peers
    );
}
