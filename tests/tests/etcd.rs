//! Discovery on etcd with two replicas: agents fail over when the replica
//! they use dies, later changes still reach every agent, and a cluster
//! whose discovery is entirely gone keeps its traffic (each test in its own
//! lab world; root required).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use meshgate_e2e::{meshgate_bin, wait_until, World};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn scenario(name: &str) -> String {
    let mut y = format!(
        "name: {name}\nclusters:\n  - name: c1\n    id: 1\n    podCIDR: 10.1.0.0/16\n    \
         discovery: {{replicas: 2, store: etcd}}\n    nodes:\n"
    );
    for n in NODES {
        y.push_str(&format!(
            "      - name: {n}\n        pods:\n          - name: {n}-a\n            labels: {{app: web}}\n"
        ));
    }
    y
}

/// The discovery address (`IP:7100`) a node's agent has a connection to.
fn connected_to(world: &World, node: &str) -> Vec<String> {
    let out = world.in_ns(
        &world.node_ns("c1", node),
        &["ss", "-Htn", "state", "established", "( dport = :7100 )"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

fn peers(world: &World, node: &str) -> Vec<String> {
    let mut p: Vec<String> = world
        .status("c1", node)
        .peers
        .iter()
        .map(|p| p.node.clone())
        .collect();
    p.sort();
    p
}

/// Waits up to `timeout` until every agent is connected to `replica` (and
/// only to it); panics naming where each agent is otherwise.
fn assert_all_moved_to(world: &World, replica: &str, timeout: Duration) {
    let moved = wait_until(timeout, || {
        std::thread::sleep(Duration::from_millis(200));
        NODES.iter().all(|n| {
            connected_to(world, n) == [replica] && world.status("c1", n).discovery_connected
        })
    });
    assert!(
        moved.is_some(),
        "agents did not move to replica 2 ({replica}): {:?}",
        NODES.map(|n| connected_to(world, n))
    );
}

/// Waits up to 10 s until n1 and n2 no longer list n3 as a peer.
fn assert_n3_left(world: &World, context: &str) {
    let gone = wait_until(Duration::from_secs(10), || {
        ["n1", "n2"]
            .iter()
            .all(|n| !peers(world, n).contains(&"n3".to_string()))
    });
    assert!(
        gone.is_some(),
        "n3's departure did not reach n1/n2{context}: {:?} {:?}",
        peers(world, "n1"),
        peers(world, "n2")
    );
}

fn all_reach_all(world: &World, what: &str) {
    for from in NODES {
        for to in NODES {
            if from == to {
                continue;
            }
            let ip = world.ip(&format!("c1/{to}-a"));
            let s = world.ping("c1", &format!("{from}-a"), &ip, 2, "0.05");
            assert_eq!(
                s.received, 2,
                "{what}: {from}-a -> {to}-a ({ip}) lost packets"
            );
        }
    }
}

/// Processes whose command line names this world's lab directory (its
/// discoveries, agents and etcd).
fn world_processes(world: &str) -> Vec<String> {
    let needle = format!("/run/meshgate/lab/{world}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

#[test]
fn killing_the_replica_agents_use_keeps_the_mesh_and_later_changes_propagate() {
    let name = "etcd-fail";
    let world = World::up(name, &scenario(name));
    let replica1 = format!("{}:7100", world.ip("c1/discovery"));
    let replica2 = format!("{}:7100", world.ip("c1/discovery-2"));
    assert_ne!(replica1, replica2);
    assert!(
        world_processes(name).iter().any(|c| c.contains("etcd")),
        "the lab started no etcd for c1"
    );
    // Agents use the first replica.
    for n in NODES {
        assert_eq!(
            connected_to(&world, n),
            std::slice::from_ref(&replica1),
            "agent {n}"
        );
    }
    all_reach_all(&world, "before the kill");

    world.lab("stop", "c1/discovery");
    // Every agent moves to the other replica and is connected again.
    assert_all_moved_to(&world, &replica2, Duration::from_secs(15));
    all_reach_all(&world, "after replica 1 died");
    cli_asks_the_replica_that_answers(&world, &replica1, &replica2);

    // A change after the kill reaches every agent: n3 leaves, then comes back.
    world.lab("stop", "c1/n3");
    assert_n3_left(&world, "");
    world.lab("start", "c1/n3");
    let back = wait_until(Duration::from_secs(15), || {
        ["n1", "n2"].iter().all(|n| {
            world
                .status("c1", n)
                .peers
                .iter()
                .any(|p| p.node == "n3" && p.last_handshake_age_ms.is_some())
        }) && peers(&world, "n3") == ["n1", "n2"]
    });
    assert!(
        back.is_some(),
        "n3's return did not reach every agent: n1 {:?}, n2 {:?}, n3 {:?}",
        peers(&world, "n1"),
        peers(&world, "n2"),
        peers(&world, "n3")
    );
    all_reach_all(&world, "after n3 came back through replica 2");

    drop(world);
    let left = world_processes(name);
    assert!(left.is_empty(), "lab down left processes: {left:?}");
}

/// With replica 1 dead: `meshgate nodes` given both replicas answers
/// through replica 2; given only dead ones, it names each and why.
fn cli_asks_the_replica_that_answers(world: &World, dead: &str, alive: &str) {
    let ns = format!("{}2", world.discovery_ns("c1"));
    let run = |discovery: &str| {
        let mut args = vec!["nodes".to_string(), "--json".into(), "--discovery".into()];
        args.push(discovery.to_string());
        args.extend(world.tls_flags("c1", "c1/n1"));
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(meshgate_bin())
            .args(&args)
            .env("MESHGATE_LOG", "warn")
            .output()
            .expect("running meshgate nodes")
    };
    let out = run(&format!("https://{dead},https://{alive}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && NODES.iter().all(|n| stdout.contains(&format!("\"{n}\""))),
        "meshgate nodes with replica 1 dead did not list c1's nodes through replica 2:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bogus = format!("{}:7199", dead.rsplit_once(':').map_or(dead, |(ip, _)| ip));
    let out = run(&format!("https://{dead},https://{bogus}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("no replica of discovery answered")
            && stderr.contains(&format!("https://{dead}:"))
            && stderr.contains(&format!("https://{bogus}:")),
        "meshgate nodes with no live replica should name each one and why:\n{stderr}"
    );
}

#[test]
fn killing_every_discovery_replica_leaves_existing_traffic_untouched() {
    let name = "etcd-alloff";
    let world = World::up(name, &scenario(name));
    all_reach_all(&world, "at start");
    let to = world.ip("c1/n2-a");
    // A ping runs across the whole outage.
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &["ping", "-n", "-q", "-c", "40", "-i", "0.1", "-W", "1", &to],
    );
    std::thread::sleep(Duration::from_millis(500));
    world.lab("stop", "c1/discovery");
    world.lab("stop", "c1/discovery-2");
    let out = ping.wait_with_output_or_kill();
    let stats = meshgate_e2e::parse_ping(&out);
    assert_eq!(
        (stats.sent, stats.received),
        (40, 40),
        "traffic was disturbed while every discovery replica died:\n{out}"
    );
    // Later traffic too, and the agents keep their peers.
    all_reach_all(&world, "with no discovery at all");
    for n in NODES {
        assert_eq!(peers(&world, n).len(), 2, "agent {n} lost peers");
        assert!(!world.status("c1", n).discovery_connected);
    }
}

trait WaitOutput {
    fn wait_with_output_or_kill(self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_or_kill(mut self) -> String {
        let waited = wait_until(Duration::from_secs(20), || {
            self.try_wait().ok().flatten().is_some()
        });
        if waited.is_none() {
            let _ = self.kill();
        }
        let out = self.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn agents_leave_a_replica_cut_off_the_underlay() {
    let name = "etcd-cut";
    let world = World::up(name, &scenario(name));
    let replica2 = format!("{}:7100", world.ip("c1/discovery-2"));
    all_reach_all(&world, "at start");
    // Replica 1 drops off the network: no FIN or RST reaches anyone, the
    // agents notice only by their renewals timing out.
    let cut = world.in_ns(
        &format!("mg-{name}-c1-d"),
        &["ip", "link", "set", "eth0", "down"],
    );
    assert!(
        cut.status.success(),
        "cutting replica 1 off failed: {cut:?}"
    );
    assert_all_moved_to(&world, &replica2, Duration::from_secs(25));
    all_reach_all(&world, "with replica 1 cut off");
    // Changes still go through: n3 leaves and every other agent sees it.
    world.lab("stop", "c1/n3");
    assert_n3_left(&world, " with replica 1 cut off");
}

/// Another cluster imports a replicated cluster through whichever replica
/// is alive: its federation link moves to replica 2 when replica 1 dies, and
/// later changes of c1 still reach c2's agents.
#[test]
fn another_cluster_follows_a_replicated_discovery_to_its_surviving_replica() {
    let name = "etcd-fed";
    let mut y = scenario(name);
    y.push_str(
        "  - name: c2\n    id: 2\n    podCIDR: 10.2.0.0/16\n    nodes:\n      - name: n1\n        pods:\n          - name: n1-a\n            labels: {app: web}\n",
    );
    let world = World::up(name, &y);
    let c2_peers_of_c1 = || -> Vec<String> {
        let mut p: Vec<String> = world
            .status("c2", "n1")
            .peers
            .iter()
            .filter(|p| p.cluster == "c1")
            .map(|p| p.node.clone())
            .collect();
        p.sort();
        p
    };
    assert_eq!(c2_peers_of_c1(), NODES, "c2/n1 before the kill");
    let s = world.ping("c2", "n1-a", &world.ip("c1/n3-a"), 2, "0.05");
    assert_eq!(s.received, 2, "c2 -> c1 before the kill");

    world.lab("stop", "c1/discovery");
    // A change of c1 made after the kill reaches c2's agent: c2's discovery
    // imports c1 through replica 2 now (through replica 1 only, c2 would keep
    // c1's last state until the 60 s remote timeout).
    world.lab("stop", "c1/n3");
    let gone = wait_until(Duration::from_secs(10), || c2_peers_of_c1() == ["n1", "n2"]);
    assert!(
        gone.is_some(),
        "c1/n3's departure did not reach c2/n1: {:?}",
        c2_peers_of_c1()
    );
    world.lab("start", "c1/n3");
    let back = wait_until(Duration::from_secs(15), || c2_peers_of_c1() == NODES);
    assert!(
        back.is_some(),
        "c1/n3's return did not reach c2/n1: {:?}",
        c2_peers_of_c1()
    );
    let ok = wait_until(Duration::from_secs(10), || {
        world
            .ping("c2", "n1-a", &world.ip("c1/n3-a"), 1, "0.05")
            .received
            == 1
    });
    assert!(ok.is_some(), "c2 -> c1/n3 after it came back");
}
