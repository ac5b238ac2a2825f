//! Cluster gateways: the world of `scenarios/gateways.yaml` and the
//! failover check, shared by the host suite (`tests/gateways.rs`) and the
//! kernel lab's (`tests/kernel.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stream::{longest_gap, unix_now, PingStream};
use crate::{wait_until, World};

/// The failover bound the gateways must meet.
pub const FAILOVER_BOUND: f64 = 2.0;

/// `scenarios/gateways.yaml` under world name `name`.
pub fn gateways_world(name: &str) -> World {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/gateways.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    assert!(
        yaml.contains("\nname: gw\n"),
        "{path} no longer names world gw"
    );
    World::up(
        name,
        &yaml.replace("\nname: gw\n", &format!("\nname: {name}\n")),
    )
}

/// The smallest world [`assert_failover_within_bound`] runs in: clusters
/// c1 and c2, isolated, each with gateways g1, g2 and one node n3 (for the
/// kernel lab, where every agent costs seconds under emulation).
pub fn gateway_pair_world(name: &str) -> World {
    let mut y = format!("name: {name}\nclusters:\n");
    for (c, id) in [("c1", 1), ("c2", 2)] {
        y.push_str(&format!(
            "  - name: {c}\n    id: {id}\n    podCIDR: 10.{id}.0.0/16\n    underlay: isolated\n    nodes:\n"
        ));
        for (n, gw) in [("g1", true), ("g2", true), ("n3", false)] {
            y.push_str(&format!("      - name: {n}\n"));
            if gw {
                y.push_str("        roles: [cluster-gateway]\n");
            }
            y.push_str(&format!("        pods:\n          - name: {n}-a\n"));
        }
    }
    World::up(name, &y)
}

/// Which gateway `cluster/node` uses towards cluster `of`.
pub fn active_gateway(world: &World, cluster: &str, node: &str, of: &str) -> Option<String> {
    world
        .status(cluster, node)
        .gateways
        .iter()
        .find(|g| g.cluster == of)
        .map(|g| g.active.clone())
}

/// What the nodes on the ping's path saw, sampled every 100 ms while the
/// failover check runs: printed when it fails, so a gap can be traced to
/// a node that switched late or a peer that still looked alive.
struct Timeline {
    stop: Arc<AtomicBool>,
    lines: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Timeline {
    fn start(world: &World, t0: f64) -> Timeline {
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (s, l, name) = (stop.clone(), lines.clone(), world.name.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut line = format!("{:7.2}", unix_now() - t0);
                for (c, n) in [
                    ("c1", "n3"),
                    ("c1", "g1"),
                    ("c2", "g1"),
                    ("c2", "g2"),
                    ("c2", "n3"),
                ] {
                    let Ok(st) = meshgate_lab::agent_status(&name, c, n) else {
                        line.push_str(&format!(" | {c}/{n} -"));
                        continue;
                    };
                    let gws: Vec<String> = st
                        .gateways
                        .iter()
                        .map(|g| format!("{}:{}", g.cluster, g.active))
                        .collect();
                    let ages: Vec<String> = st
                        .peers
                        .iter()
                        .filter(|p| p.node.starts_with('g'))
                        .map(|p| {
                            let age = p.last_rx_age_ms.map_or("-".into(), |a| a.to_string());
                            format!("{}/{}={age}", p.cluster, p.node)
                        })
                        .collect();
                    line.push_str(&format!(
                        " | {c}/{n} {} [{}]",
                        gws.join(","),
                        ages.join(" ")
                    ));
                }
                l.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Timeline {
            stop,
            lines,
            thread: Some(thread),
        }
    }

    /// The samples so far, one line each, then what the kernel shows on the
    /// nodes of the path: WireGuard counters and handshakes before and
    /// after 2 s of c1/g1's underlay traffic, and the neighbour tables.
    fn report(&self, world: &World) -> String {
        let mut out = String::from(
            "what the nodes saw (active gateway per cluster [receive age ms per gateway peer]):\n",
        );
        out.push_str(
            &self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("\n"),
        );
        // What crosses c1/g1's underlay link for 2 s, and which WireGuard
        // counters and handshakes move meanwhile on the path's nodes.
        let path = [("c1", "g1"), ("c1", "n3"), ("c2", "g1")];
        let dumps = |when: &str| {
            let mut text = String::new();
            for (c, n) in path {
                let o = world.in_ns(&world.node_ns(c, n), &["wg", "show", "all", "dump"]);
                text.push_str(&format!(
                    "--- {c}/{n} wg dump {when}:\n{}",
                    String::from_utf8_lossy(&o.stdout)
                ));
            }
            text
        };
        out.push('\n');
        out.push_str(&dumps("before"));
        let cap = world.in_ns(
            &world.node_ns("c1", "g1"),
            &["timeout", "2", "tcpdump", "-n", "-i", "eth0", "-c", "60"],
        );
        out.push_str(&format!(
            "--- c1/g1 eth0 for 2 s:\n{}{}",
            String::from_utf8_lossy(&cap.stdout),
            String::from_utf8_lossy(&cap.stderr)
        ));
        out.push_str(&dumps("after"));
        for (c, n) in path {
            let o = world.in_ns(&world.node_ns(c, n), &["ip", "neigh"]);
            out.push_str(&format!(
                "--- {c}/{n}: ip neigh\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        out
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fails a gateway with `lab fail` and returns when it happened.
fn fail(world: &World, target: &str) -> f64 {
    let at = unix_now();
    world.lab("fail", target);
    at
}

/// Kills each side's active gateway under a 20 ms ping stream (c1/n3-a to
/// c2/n3-a) and brings one back: traffic moves to the other gateway and
/// back, never stopping for [`FAILOVER_BOUND`].
pub fn assert_failover_within_bound(world: &World) {
    let to = world.ip("c2/n3-a");
    // 50 replies a second for the whole test, c1/n3 → c1 gateway → c2 gateway → c2/n3.
    // A count, not a deadline (`-w`): with a deadline, iputils ping exits at
    // the first ICMP error, which a kernel path may send while a gateway dies.
    let stream = PingStream::new(world.spawn_in_ns(
        &world.pod_ns("c1", "n3-a"),
        &[
            "ping", "-D", "-n", "-i", "0.02", "-W", "1", "-c", "1000", &to,
        ],
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = unix_now();
    let timeline = Timeline::start(world, t0);

    // The sending side's active gateway dies.
    let t1 = fail(world, "c1/g1");
    let moved = wait_until(Duration::from_secs(3), || {
        active_gateway(world, "c1", "n3", "c1").as_deref() == Some("c1/g2")
            && active_gateway(world, "c2", "g1", "c1").as_deref() == Some("c1/g2")
    });
    assert!(
        moved.is_some(),
        "c1/n3 and c2/g1 never switched to c1/g2; {}",
        timeline.report(world)
    );
    std::thread::sleep(Duration::from_secs(2));

    // It comes back: traffic returns to it (after its hold) without a stop.
    let t2 = unix_now();
    world.lab("recover", "c1/g1");
    let back = wait_until(Duration::from_secs(5), || {
        active_gateway(world, "c1", "n3", "c1").as_deref() == Some("c1/g1")
    });
    assert!(
        back.is_some(),
        "c1/n3 never went back to c1/g1; {}",
        timeline.report(world)
    );
    std::thread::sleep(Duration::from_secs(1));

    // The receiving side's active gateway dies.
    let t3 = fail(world, "c2/g1");
    let moved = wait_until(Duration::from_secs(3), || {
        active_gateway(world, "c2", "n3", "c2").as_deref() == Some("c2/g2")
    });
    assert!(
        moved.is_some(),
        "c2/n3 never switched to c2/g2; {}",
        timeline.report(world)
    );
    let (replies, out) = stream.finish();
    let end = replies.last().copied().unwrap_or(t3);
    assert!(
        end > t3 + FAILOVER_BOUND,
        "no replies after the second failure:\n{out}"
    );
    let gaps = [
        ("c1/g1 killed", longest_gap(&replies, t1, t2)),
        ("c1/g1 back", longest_gap(&replies, t2, t3)),
        ("c2/g1 killed", longest_gap(&replies, t3, end)),
    ];
    eprintln!("longest gaps in the ping stream (20 ms interval): {gaps:?}");
    for (what, gap) in gaps {
        assert!(
            gap < FAILOVER_BOUND,
            "after {what}, traffic stopped for {gap:.2} s (bound {FAILOVER_BOUND} s); \
             c1/g1 failed at {:.2} s, back at {:.2} s, c2/g1 failed at {:.2} s; \
             {}",
            t1 - t0,
            t2 - t0,
            t3 - t0,
            timeline.report(world),
        );
    }
    // The failover really happened through the other gateway: still flowing
    // while both g1s are failed.
    assert!(
        world.ping("c1", "n3-a", &to, 5, "0.05").received == 5,
        "c1/n3-a cannot reach c2/n3-a through c2/g2"
    );
}
