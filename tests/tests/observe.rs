//! Visibility end to end: flow events of the eBPF datapath streamed by
//! `meshgate lab observe` (merged over nodes, or one node; filters) and the
//! agents' Prometheus metrics, scraped over HTTP inside the node namespace.
//! Real packets from pods: allowed pings, and pings with a spoofed or
//! unknown source address that `from_pod` drops. Each test has its own
//! `obs*` world.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use meshgate_e2e::{meshgate, meshgate_output, one_cluster, parse_ping, wait_until, World};
use serde_json::Value;

/// `one_cluster` with the eBPF datapath.
fn ebpf(yaml: String) -> String {
    let (first, rest) = yaml.split_once('\n').unwrap();
    format!("{first}\ndatapath: ebpf\n{rest}")
}

/// The IP -> identity map of a node once it knows every address of `ips`.
fn identities(world: &World, node: &str, ips: &[&str]) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    wait_until(Duration::from_secs(10), || {
        seen = world
            .ipcache("c1", node)
            .into_iter()
            .map(|(ip, (_, id))| (ip, id))
            .collect();
        ips.iter().all(|ip| seen.contains_key(*ip))
    })
    .unwrap_or_else(|| panic!("c1/{node} never learned {ips:?}: {seen:?}"));
    seen
}

/// `GET /metrics` of a node's agent (curl inside the node's namespace),
/// parsed from the text format: `name{labels}` -> value.
fn scrape(world: &World, node: &str) -> BTreeMap<String, f64> {
    let out = world.in_ns(
        &world.node_ns("c1", node),
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-D",
            "/dev/stderr",
            "http://127.0.0.1:9962/metrics",
        ],
    );
    let head = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && head.contains("200 OK"),
        "scraping c1/{node}: {head}"
    );
    assert!(
        head.contains("text/plain; version=0.0.4"),
        "not the Prometheus text format: {head}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut typed = std::collections::BTreeSet::new();
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            typed.insert(t.split_whitespace().next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let family = key.split('{').next().unwrap();
            assert!(typed.contains(family), "{family} has no # TYPE:\n{text}");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{line:?}: value {e}"));
            m.insert(key.to_string(), v);
        }
    }
    m
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in the metrics: {:?}", m.keys()))
}

/// `meshgate lab observe ARGS --json`: the flows printed.
fn observe(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["lab", "observe"];
    all.extend_from_slice(args);
    all.push("--json");
    meshgate(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Pings `to` from a pod with source address `from`, which the pod is given
/// first; every one must be dropped.
fn ping_from(world: &World, pod: &str, from: &str, to: &str, count: u32) {
    let ns = world.pod_ns("c1", pod);
    let _ = world.in_ns(
        &ns,
        &["ip", "addr", "add", &format!("{from}/32"), "dev", "eth0"],
    );
    let out = world.in_ns(
        &ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
            "-I",
            from,
            to,
        ],
    );
    let s = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (s.sent, s.received),
        (count, 0),
        "pings from {from} must all be sent and dropped"
    );
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

#[test]
fn lab_observe_shows_drops_with_reason_pods_and_identities_filters_work_and_metrics_count_them() {
    let name = "obsflow";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let a = world.ip("c1/n1-a");
    let nb = world.ip("c1/n1-b");
    let b = world.ip("c1/n2-b");
    let ids = identities(&world, "n1", &[&a, &nb, &b]);
    let before = scrape(&world, "n1");
    let spoofed_key = "meshgate_drops_total{reason=\"source-spoofed\"}";
    let unknown_key = "meshgate_drops_total{reason=\"unknown-source\"}";

    // Allowed: one new flow n1-a -> n2-b, seen by n1 (from_pod) and n2 (from_mesh).
    let ok = world.ping("c1", "n1-a", &b, 3, "0.1");
    assert_eq!(ok.received, 3, "n1-a -> n2-b: {ok:?}");
    // Denied: n1-a sends as n1-b (source-spoofed), and as an address no
    // pod has (unknown-source).
    ping_from(&world, "n1-a", &nb, &b, 5);
    ping_from(&world, "n1-a", "10.1.0.99", &b, 2);

    // Every node merged, denied only: the 7 drops, each with its reason,
    // pods and identities.
    let denied = observe(&[
        name,
        "--verdict",
        "denied",
        "--count",
        "7",
        "--last",
        "1000",
        "--timeout",
        "10",
    ]);
    assert_eq!(denied.len(), 7, "{denied:#?}");
    assert!(
        denied.iter().all(|f| f["verdict"] == "denied"),
        "--verdict denied let other flows through: {denied:#?}"
    );
    let spoofed: Vec<&Value> = denied
        .iter()
        .filter(|f| f["reason"] == "source-spoofed")
        .collect();
    assert_eq!(spoofed.len(), 5, "{denied:#?}");
    for f in &spoofed {
        assert_eq!(s(f, &["node"]), "c1/n1", "{f}");
        assert_eq!(s(f, &["point"]), "from-pod", "{f}");
        assert_eq!(s(f, &["proto"]), "icmp", "{f}");
        assert_eq!(s(f, &["src", "pod"]), "default/n1-b", "{f}");
        assert_eq!(s(f, &["src", "ip"]), nb, "{f}");
        assert_eq!(f["src"]["identity"].as_u64(), Some(ids[&nb]), "{f}");
        assert_eq!(s(f, &["src", "cluster"]), "c1", "{f}");
        assert_eq!(s(f, &["dst", "pod"]), "default/n2-b", "{f}");
        assert_eq!(f["dst"]["identity"].as_u64(), Some(ids[&b]), "{f}");
        assert_eq!(s(f, &["dst", "labels", "app"]), "db", "{f}");
    }
    let unknown: Vec<&Value> = denied
        .iter()
        .filter(|f| f["reason"] == "unknown-source")
        .collect();
    assert_eq!(unknown.len(), 2, "{denied:#?}");
    for f in &unknown {
        assert_eq!(s(f, &["src", "ip"]), "10.1.0.99", "{f}");
        assert!(f["src"].get("pod").is_none(), "no pod has 10.1.0.99: {f}");
        assert_eq!(s(f, &["src", "reserved"]), "unknown", "{f}");
        assert_eq!(s(f, &["dst", "pod"]), "default/n2-b", "{f}");
    }

    // Without filters, both nodes' allowed events of the ping are there.
    let all = observe(&[name, "--last", "1000", "--timeout", "10"]);
    let allowed_at = |node: &str, point: &str| {
        all.iter().any(|f| {
            f["verdict"] == "allowed"
                && f["node"] == node
                && f["point"] == point
                && s(f, &["src", "pod"]) == "default/n1-a"
                && s(f, &["dst", "pod"]) == "default/n2-b"
                && f["src"]["identity"].as_u64() == Some(ids[&a])
        })
    };
    assert!(allowed_at("c1/n1", "from-pod"), "{all:#?}");
    assert!(allowed_at("c1/n2", "from-mesh"), "{all:#?}");
    // Time order across nodes.
    let times: Vec<u64> = all.iter().map(|f| f["unix_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Filters.
    let allowed = observe(&[name, "--verdict", "allowed", "--last", "1000"]);
    assert!(!allowed.is_empty() && allowed.iter().all(|f| f["verdict"] == "allowed"));
    let by_reason = observe(&[name, "--reason", "unknown-source", "--last", "1000"]);
    assert_eq!(by_reason.len(), 2, "{by_reason:#?}");
    let by_pod = observe(&[name, "--pod", "n1-b", "--last", "1000"]);
    assert_eq!(
        by_pod.len(),
        5,
        "only the spoofed pings involve n1-b: {by_pod:#?}"
    );
    let by_pod = observe(&[name, "--pod", "default/n1-a", "--last", "1000"]);
    assert!(
        !by_pod.is_empty()
            && by_pod.iter().all(|f| f["verdict"] == "allowed"
                && (s(f, &["src", "pod"]) == "default/n1-a"
                    || s(f, &["dst", "pod"]) == "default/n1-a")),
        "{by_pod:#?}"
    );
    // One node only.
    let n2 = observe(&[name, "c1/n2", "--last", "1000"]);
    assert!(
        !n2.is_empty()
            && n2
                .iter()
                .all(|f| f["node"] == "c1/n2" && f["verdict"] == "allowed"),
        "{n2:#?}"
    );
    // The human-readable line.
    let text = meshgate(&[
        "lab",
        "observe",
        name,
        "c1/n1",
        "--reason",
        "source-spoofed",
        "--last",
        "1",
    ]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("default/n1-b:")
            && text.contains(&format!(
                "(id {}, c1) -> default/n2-b (id {}, c1) icmp DENIED source-spoofed",
                ids[&nb], ids[&b]
            )),
        "{text}"
    );
    // Bad filter values are refused with the valid ones.
    let bad = meshgate_output(&["lab", "observe", name, "--reason", "spoofed"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("source-spoofed, no-tunnel-endpoint"),
        "{err}"
    );
    let bad = meshgate_output(&["lab", "observe", name, "--verdict", "dropped"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("allowed or denied"),
        "{err}"
    );

    // Live: a follower started before the drop gets it.
    let follower = std::process::Command::new(meshgate_e2e::meshgate_bin())
        .args([
            "lab",
            "observe",
            name,
            "--follow",
            "--last",
            "0",
            "--count",
            "1",
            "--verdict",
            "denied",
            "--json",
            "--timeout",
            "15",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    ping_from(&world, "n1-a", &nb, &b, 1);
    let out = follower.wait_with_output().unwrap();
    let live = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "follower: {live}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_str(live.trim()).unwrap();
    assert_eq!(f["reason"], "source-spoofed", "{f}");

    // Metrics: the counters grew by exactly the drops caused (6 spoofed, 2
    // unknown), bytes by the frame size of each (84-byte IPv4 ping + 14 of
    // Ethernet), and the agent read every event.
    let after = scrape(&world, "n1");
    assert_eq!(
        metric(&after, spoofed_key) - metric(&before, spoofed_key),
        6.0
    );
    assert_eq!(
        metric(&after, unknown_key) - metric(&before, unknown_key),
        2.0
    );
    let bytes_key = "meshgate_drop_bytes_total{reason=\"source-spoofed\"}";
    assert_eq!(
        metric(&after, bytes_key) - metric(&before, bytes_key),
        6.0 * 98.0
    );
    let events = "meshgate_flow_events_total{verdict=\"denied\"}";
    assert_eq!(metric(&after, events) - metric(&before, events), 8.0);
    assert_eq!(metric(&after, "meshgate_flow_events_lost_total"), 0.0);
    assert_eq!(metric(&after, "meshgate_discovery_connected"), 1.0);
    assert_eq!(metric(&after, "meshgate_wireguard_peers"), 1.0);
    assert!(
        metric(
            &after,
            "meshgate_wireguard_peer_last_handshake_seconds{peer=\"c1/n2\"}"
        ) < 180.0
    );
    assert!(
        metric(
            &after,
            "meshgate_wireguard_peer_tx_bytes_total{peer=\"c1/n2\"}"
        ) > 0.0
    );
    assert_eq!(metric(&after, "meshgate_ipcache_entries"), 4.0);
    assert_eq!(metric(&after, "meshgate_datapath_ipcache_entries"), 4.0);
    // No policy is loaded in this world.
    assert_eq!(metric(&after, "meshgate_policy_entries"), 0.0);
    // The other node dropped nothing.
    let n2 = scrape(&world, "n2");
    assert_eq!(metric(&n2, spoofed_key), 0.0);

    // While n1's agent is gone (SIGKILL), the pinned datapath goes on
    // dropping and queues the events in the ring buffer; the next agent
    // reads them (and only them: the old agent consumed the earlier ones),
    // and the pinned counters kept counting.
    world.lab("fail", "c1/n1");
    ping_from(&world, "n1-a", &nb, &b, 3);
    // Meanwhile the world's other node is still shown, the missing one named.
    let partial = meshgate_output(&["lab", "observe", name, "--last", "1000", "--json"]);
    let (out, err) = (
        String::from_utf8_lossy(&partial.stdout),
        String::from_utf8_lossy(&partial.stderr),
    );
    assert!(partial.status.success(), "{err}");
    assert!(err.contains("c1/n1") && err.contains("lab start"), "{err}");
    assert!(
        !out.is_empty() && out.lines().all(|l| l.contains("\"node\":\"c1/n2\"")),
        "{out}"
    );
    world.lab("recover", "c1/n1");
    let mut got = Vec::new();
    wait_until(Duration::from_secs(15), || {
        let out = meshgate_output(&[
            "lab",
            "observe",
            name,
            "c1/n1",
            "--reason",
            "source-spoofed",
            "--last",
            "1000",
            "--json",
        ]);
        got = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        out.status.success() && got.len() >= 3
    })
    .unwrap_or_else(|| panic!("events queued while the agent was down never showed: {got:#?}"));
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got.iter().all(|f| s(f, &["src", "pod"]) == "default/n1-b"),
        "{got:#?}"
    );
    let mut m = BTreeMap::new();
    wait_until(Duration::from_secs(10), || {
        let out = world.in_ns(
            &world.node_ns("c1", "n1"),
            &[
                "curl",
                "-sf",
                "--max-time",
                "2",
                "http://127.0.0.1:9962/metrics",
            ],
        );
        out.status.success() && {
            m = scrape(&world, "n1");
            true
        }
    })
    .expect("the restarted agent serves metrics");
    assert_eq!(metric(&m, spoofed_key) - metric(&before, spoofed_key), 9.0);

    // `meshgate observe --state-dir` (outside the lab) reads the same socket.
    let dir = format!("/run/meshgate/lab/{name}/c1/nodes/n1");
    let plain = meshgate(&["observe", "--state-dir", &dir, "--reason", "source-spoofed"]);
    assert_eq!(plain.lines().count(), 3, "{plain}");

    // A burst of 20,000 spoofed datagrams: every drop is either read by the
    // agent or counted as a lost event, none unaccounted for.
    let burst = 20_000;
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{nb}', 0))\nfor _ in range({burst}):\n    s.sendto(b'x' * 64, ('{b}', 9))\n"
    );
    let start = scrape(&world, "n1");
    let sent = world.in_ns(&world.pod_ns("c1", "n1-a"), &["python3", "-c", &script]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let read = "meshgate_flow_events_total{verdict=\"denied\"}";
    let lost = "meshgate_flow_events_lost_total";
    let overflow = "meshgate_flow_events_overflow_total";
    let mut end = BTreeMap::new();
    let diff = |end: &BTreeMap<String, f64>, k: &str| metric(end, k) - metric(&start, k);
    wait_until(Duration::from_secs(10), || {
        end = scrape(&world, "n1");
        diff(&end, spoofed_key) == f64::from(burst)
            && diff(&end, read) + diff(&end, lost) + diff(&end, overflow) == f64::from(burst)
    })
    .unwrap_or_else(|| {
        panic!(
            "{burst} datagrams: dropped {}, events read {}, lost in the ring {}, overflowed {}",
            diff(&end, spoofed_key),
            diff(&end, read),
            diff(&end, lost),
            diff(&end, overflow)
        )
    });
    eprintln!(
        "burst of {burst} spoofed datagrams: events read {}, lost in the ring {}, overflowed {}",
        diff(&end, read),
        diff(&end, lost),
        diff(&end, overflow)
    );
}

#[test]
fn observe_explains_a_world_without_the_ebpf_datapath_and_a_stopped_agent() {
    let name = "obsplain";
    let world = World::up(name, &one_cluster(name, 2));
    let out = meshgate_output(&["lab", "observe", name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("plain datapath") && err.contains("datapath: ebpf"),
        "{err}"
    );
    // Metrics are served with the plain datapath too, without drop counters.
    let m = scrape(&world, "n1");
    assert_eq!(metric(&m, "meshgate_wireguard_peers"), 1.0);
    assert!(
        !m.keys().any(|k| k.starts_with("meshgate_drops_total")),
        "{m:?}"
    );
    drop(world);

    let name = "obsstop";
    let world = World::up(name, &ebpf(one_cluster(name, 1)));
    world.lab("stop", "c1/n1");
    let out = meshgate_output(&["lab", "observe", name, "c1/n1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("meshgate lab start {name}:c1/n1")),
        "{err}"
    );
}
