//! End-to-end FQDN policy through each node's DNS proxy (`meshgate
//! dnsproxy`), on the worlds of `scenarios/fqdn.yaml` and
//! `scenarios/fqdn-egress.yaml`: pods resolve through 10.96.0.10, which
//! the proxy intercepts; the upstream is the lab's DNS server. Every
//! external answers TCP 8080 with the source address it saw. World names
//! start with `fq`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meshgate_e2e::{meshgate, meshgate_output, wait_until, World};
use serde_yaml::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_mg-probe");
const DNS: &str = "10.96.0.10";
const API: &str = "203.0.113.10";
const SHORT: &str = "203.0.113.11";
const DEEP: &str = "203.0.113.12";
const UNLISTED: &str = "203.0.113.13";
/// The fresh names' and the big name's addresses, all answered by the
/// `api` external (a local route in its namespace).
const RANGES: &str = "172.16.0.0/15";
const ECHO_PORT: &str = "9000";

fn scenario(file: &str, world_name: &str) -> Value {
    let path = format!("{}/../scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["name"] = Value::from(world_name);
    v
}

/// `scenarios/fqdn.yaml` with 1,000 fresh names `n<i>.fresh.example.com`
/// (each its own address), TTLs honoured as given (minTTL 0), and the
/// fqdn-client pods also allowed `*.fresh.example.com` and the echo port.
fn fqdn_world(name: &str) -> World {
    let mut v = scenario("fqdn.yaml", name);
    v["dns"]["minTTL"] = Value::from(0);
    let records = v["dns"]["records"].as_mapping_mut().unwrap();
    for i in 0..1000u32 {
        records.insert(
            Value::from(format!("n{i}.fresh.example.com")),
            Value::from(vec![Value::from(format!(
                "172.17.{}.{}",
                i / 250,
                i % 250 + 1
            ))]),
        );
    }
    records.insert(
        Value::from("a.b.example.com"),
        Value::from(vec![Value::from(UNLISTED)]),
    );
    let client = v["policies"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["metadata"]["name"] == "fqdn-client")
        .unwrap();
    let rule = &mut client["spec"]["egress"][1];
    rule["toFQDNs"]
        .as_sequence_mut()
        .unwrap()
        .push(serde_yaml::from_str("{matchPattern: \"*.fresh.example.com\"}").unwrap());
    rule["toPorts"][0]["ports"]
        .as_sequence_mut()
        .unwrap()
        .push(serde_yaml::from_str(&format!("{{port: \"{ECHO_PORT}\", protocol: TCP}}")).unwrap());
    let w = World::up(name, &serde_yaml::to_string(&v).unwrap());
    route_ranges_to_api(&w, &["n1", "n2"]);
    w
}

/// The `api` external answers for every address of [`RANGES`].
fn route_ranges_to_api(w: &World, nodes: &[&str]) {
    let x = format!("mg-{}-x-api", w.name);
    ip(&["-n", &x, "route", "add", "local", RANGES, "dev", "lo"]);
    for n in nodes {
        let ns = w.node_ns("c1", n);
        ip(&[
            "-n", &ns, "route", "add", RANGES, "via", API, "dev", "eth0", "onlink",
        ]);
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn probe(w: &World, pod: &str, args: &[&str]) -> String {
    let mut argv = vec![PROBE];
    argv.extend_from_slice(args);
    let out = w.in_ns(&w.pod_ns("c1", pod), &argv);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (RCODE, addresses) of a lookup from `pod`.
fn lookup(w: &World, pod: &str, name: &str) -> (String, Vec<String>) {
    let out = probe(w, pod, &["dns-query", DNS, name]);
    let mut lines = out.lines().map(str::to_string);
    let rcode = lines.next().unwrap_or_default();
    (rcode, lines.collect())
}

fn connects(w: &World, pod: &str, addr: &str, port: &str) -> bool {
    w.in_ns(&w.pod_ns("c1", pod), &[PROBE, "connect", addr, port, "900"])
        .status
        .success()
}

/// What the external at `addr` saw as the source of a connection from `pod`.
fn seen_as(w: &World, pod: &str, addr: &str) -> String {
    let out = probe(w, pod, &["conns", addr, "8080", "1", "0", "1500"]);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn names_resolve_and_open_only_what_the_policy_allows() {
    let w = fqdn_world("fq");

    // Not looked up yet: closed, even dialled directly.
    assert!(!connects(&w, "app2", API, "8080"), "app2 before any lookup");
    assert_eq!(
        lookup(&w, "app2", "api.example.com"),
        ("NOERROR".into(), vec![API.into()])
    );
    assert!(connects(&w, "app2", API, "8080"), "app2 after its lookup");
    // A CNAME to an allowed name.
    assert_eq!(
        lookup(&w, "app1", "www.example.com"),
        ("NOERROR".into(), vec![API.into()])
    );
    assert!(connects(&w, "app1", API, "8080"));
    // toPorts: only TCP 8080 (and the echo port) are opened.
    assert!(
        !connects(&w, "app1", API, "8081"),
        "a port the rule does not list"
    );

    // Patterns: `*.example.com` is one label; `**.example.net` any depth.
    assert_eq!(lookup(&w, "app1", "short.example.com").0, "NOERROR");
    assert!(connects(&w, "app1", SHORT, "8080"), "*.example.com");
    assert_eq!(lookup(&w, "app1", "x.y.example.net").0, "NOERROR");
    assert!(connects(&w, "app1", DEEP, "8080"), "**.example.net");
    assert_eq!(
        lookup(&w, "app1", "a.b.example.com"),
        ("NOERROR".into(), vec![UNLISTED.into()]),
        "its DNS rule lets app1 look any name up"
    );
    assert!(
        !connects(&w, "app1", UNLISTED, "8080"),
        "a.b.example.com is two labels under example.com: `*.example.com` does not open it"
    );

    // other1 may look up api.example.com only, and reach nothing by name.
    assert_eq!(lookup(&w, "other1", "www.example.com").0, "REFUSED");
    assert_eq!(lookup(&w, "other1", "api.example.com").0, "NOERROR");
    assert!(
        !connects(&w, "other1", API, "8080"),
        "no toFQDNs rule for other1"
    );
    // free1 has no policy at all.
    assert!(connects(&w, "free1", UNLISTED, "8080"));

    // 1,000 fresh names, each connected to right after its answer with
    // less time than one SYN retransmission: no first packet is dropped.
    let out = probe(
        &w,
        "app1",
        &[
            "dns-connect",
            DNS,
            "n{}.fresh.example.com",
            "0",
            "1000",
            "8080",
            "900",
        ],
    );
    assert!(
        out.contains("resolved 1000 connected 1000"),
        "fresh names: {out}"
    );

    // A name with 1,000 addresses (over TCP after truncation); the last works.
    let (rcode, many) = lookup(&w, "app1", "many.example.com");
    assert_eq!((rcode.as_str(), many.len()), ("NOERROR", 1000));
    assert!(connects(&w, "app1", many.last().unwrap(), "8080"));

    // A rotating name: each answer a new address, each reachable at once.
    for _ in 0..5 {
        let (_, a) = lookup(&w, "app1", "rotate.example.com");
        assert_eq!(a.len(), 1);
        assert!(connects(&w, "app1", &a[0], "8080"), "rotated to {}", a[0]);
    }

    // DNS events name the query, the verdict and the answer.
    let events = meshgate(&[
        "lab",
        "observe",
        "fq",
        "--protocol",
        "dns",
        "--last",
        "2000",
    ]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("www.example.com refused REFUSED")),
        "{events}"
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("api.example.com allowed NOERROR -> 203.0.113.10")),
        "{events}"
    );
}

#[test]
fn an_expired_name_closes_new_connections_but_not_live_ones() {
    let w = fqdn_world("fqx");
    let x = format!("mg-{}-x-short", w.name);
    let mut echo = w.spawn_in_ns(&x, &[PROBE, "serve", ECHO_PORT]);
    // short.example.com has a 2 s TTL (and the world no minimum).
    assert_eq!(
        lookup(&w, "app1", "short.example.com"),
        ("NOERROR".into(), vec![SHORT.into()])
    );
    let ns = w.pod_ns("c1", "app1");
    let live = w.spawn_in_ns(&ns, &[PROBE, "rr", SHORT, ECHO_PORT, "6"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !connects(&w, "app1", SHORT, ECHO_PORT),
        "a new connection after the TTL"
    );
    let out = live.wait_with_output().unwrap();
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(
        out.status.success(),
        "the live connection outlasts the expiry: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Looking it up again opens it again.
    assert_eq!(lookup(&w, "app1", "short.example.com").0, "NOERROR");
    assert!(connects(&w, "app1", SHORT, ECHO_PORT) || connects(&w, "app1", SHORT, "8080"));

    // The upstream gone: SERVFAIL at once, never a hang.
    let dns_ns = format!("mg-{}-dns", w.name);
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &dns_ns])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) };
    }
    let began = std::time::Instant::now();
    assert_eq!(lookup(&w, "app1", "api.example.com").0, "SERVFAIL");
    assert!(
        began.elapsed() < Duration::from_millis(1800),
        "SERVFAIL took {:?}",
        began.elapsed()
    );
}

fn load_result(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("no summary in {out}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    (n[0], n[2])
}

#[test]
fn dns_fails_no_query_across_agent_and_proxy_restarts() {
    let w = fqdn_world("fqr");
    let ns = w.pod_ns("c1", "app1");
    let load = w.spawn_in_ns(
        &ns,
        &[PROBE, "dns-load", DNS, "api.example.com", "200", "12"],
    );
    std::thread::sleep(Duration::from_secs(2));
    // The agent restarts (its pins and the proxy stay).
    w.lab("restart", "c1/n1");
    std::thread::sleep(Duration::from_secs(2));
    // The agent is killed outright, and started again 2 s later: the proxy
    // answers from what the agent last wrote.
    let pid = w.status("c1", "n1").pid;
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(2));
    let start = meshgate_output(&["lab", "start", &w.target("c1/n1")]);
    assert!(
        start.status.success(),
        "lab start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));
    // The proxy restarts: the new one takes the sockets, the old one
    // finishes its queries.
    let said = meshgate(&["lab", "restart-dns", &w.target("c1/n1")]);
    assert!(said.contains("handed its sockets"), "{said}");
    let out = load.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let (sent, failed) = load_result(&out);
    assert!(sent >= 2000, "{out}");
    assert_eq!(failed, 0, "queries failed across the restarts:\n{out}");
    // And the names still open what they should.
    assert!(wait_until(Duration::from_secs(10), || {
        lookup(&w, "app1", "api.example.com").0 == "NOERROR" && connects(&w, "app1", API, "8080")
    })
    .is_some());
}

#[test]
fn an_fqdn_egress_policy_sends_the_answered_addresses_through_the_gateway() {
    let v = scenario("fqdn-egress.yaml", "fqe");
    let w = World::up("fqe", &serde_yaml::to_string(&v).unwrap());
    let node_ip = w.ip("c1/n1");
    // Before any lookup: the policy knows no address of the name.
    assert_eq!(seen_as(&w, "app1", API), format!("ok:{node_ip}"));
    assert_eq!(
        lookup(&w, "app1", "api.example.com").1,
        vec![API.to_string()]
    );
    assert_eq!(
        seen_as(&w, "app1", API),
        "ok:203.0.113.50",
        "through g1, SNATed"
    );
    // Another name, and an unselected pod, leave as before.
    assert_eq!(lookup(&w, "app1", "other.example.com").0, "NOERROR");
    assert_eq!(seen_as(&w, "app1", SHORT), format!("ok:{node_ip}"));
    assert_eq!(lookup(&w, "other1", "api.example.com").0, "NOERROR");
    assert_eq!(seen_as(&w, "other1", API), format!("ok:{node_ip}"));
}
