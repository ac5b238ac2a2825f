//! End-to-end strict encryption mode (`strict: true`, agents' `--strict`):
//! pod traffic to another node that the node's routing would send out of
//! the underlay in clear, around the mesh device, is dropped and counted
//! (`strict-unencrypted`), never sent. The same misroute with strict off
//! does leak, so the test can fail. World names start with `strict`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use meshgate_e2e::{one_cluster, wait_until, Capture, World};

/// The agents' routing table for the eBPF datapath (consulted before main).
const ROUTE_TABLE: &str = "28007";

fn strict_ebpf(yaml: String) -> String {
    let (first, rest) = yaml.split_once('\n').unwrap();
    format!("{first}\ndatapath: ebpf\nstrict: true\n{rest}")
}

fn strict_drops(world: &World, cluster: &str, node: &str) -> (bool, u64) {
    let st = world.status(cluster, node);
    let d = st
        .datapath
        .expect("the node reports no eBPF datapath status");
    (
        d.strict,
        d.drops.get("strict-unencrypted").copied().unwrap_or(0),
    )
}

/// UDP datagrams from a pod (python3 in the pod namespace), `count` of them.
fn send_udp(world: &World, cluster: &str, pod: &str, to: &str, port: u16, count: u32) {
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range({count}):\n    s.sendto(b'strict-probe-%d' % i, ('{to}', {port}))\n    time.sleep(0.02)\n"
    );
    let out = world.in_ns(&world.pod_ns(cluster, pod), &["python3", "-c", &script]);
    assert!(
        out.status.success(),
        "sending UDP from {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn strict_mode_drops_and_counts_pod_traffic_misrouted_around_the_mesh_and_off_it_leaks() {
    let name = "strictmr";
    let world = World::up(name, &strict_ebpf(one_cluster(name, 2)));
    let b = world.ip("c1/n2-b");
    let n2_underlay = world.ip("c1/n2");
    let n1 = world.node_ns("c1", "n1");

    // The normal path works in strict mode (through mg-vx0 and WireGuard).
    let ok = wait_until(Duration::from_secs(15), || {
        world.ping("c1", "n1-a", &b, 1, "0.2").received == 1
    });
    assert!(
        ok.is_some(),
        "n1-a -> n2-b never worked in the strict world"
    );
    let (strict, before) = strict_drops(&world, "c1", "n1");
    assert!(strict, "n1's status does not report strict mode");
    assert_eq!(before, 0, "strict drops on the normal, encrypted path");

    // Misroute: n2-b straight out of the underlay to n2, around mg-vx0/mg-wg0.
    let route = format!("{b}/32");
    let add = world.in_ns(
        &n1,
        &[
            "ip",
            "route",
            "add",
            &route,
            "via",
            &n2_underlay,
            "dev",
            "eth0",
            "table",
            ROUTE_TABLE,
        ],
    );
    assert!(
        add.status.success(),
        "adding the misroute: {}",
        String::from_utf8_lossy(&add.stderr)
    );

    let dir = meshgate_e2e::tempdir();
    let clear_filter = format!("host {b}");
    let cap = Capture::start_immediate(&n1, "eth0", dir.path().join("strict.pcap"));
    send_udp(&world, "c1", "n1-a", &b, 9000, 20);
    let ping = world.ping("c1", "n1-a", &b, 5, "0.05");
    let counts = cap.stop_and_count(&[&clear_filter]);
    assert_eq!(
        counts[0], 0,
        "strict on: {} packets to {b} left n1's underlay in clear",
        counts[0]
    );
    assert_eq!(ping.received, 0, "strict on: pings went through: {ping:?}");
    let mut after = 0;
    let counted = wait_until(Duration::from_secs(5), || {
        after = strict_drops(&world, "c1", "n1").1;
        after >= before + 25
    });
    assert!(
        counted.is_some(),
        "strict-unencrypted counted {after} drops, expected at least 25 (20 UDP + 5 ping)"
    );
    let status = meshgate_e2e::meshgate(&["lab", "status", name]);
    assert!(
        status.contains("strict (strict-unencrypted drops"),
        "lab status does not show the strict drop counter:\n{status}"
    );
    eprintln!("strict on: 0 packets in clear, strict-unencrypted drops {before} -> {after}");

    // The same misroute with strict off (the pinned config map, as an
    // agent without --strict would set it) leaks: the test can fail.
    let pins = PathBuf::from(format!("/sys/fs/bpf/meshgate/lab/{name}/c1-n1/maps"));
    let mut maps = meshgate_ebpf::Maps::open_pinned(&pins).unwrap();
    maps.config.set_strict(None).unwrap();
    let cap = Capture::start_immediate(&n1, "eth0", dir.path().join("off.pcap"));
    send_udp(&world, "c1", "n1-a", &b, 9000, 20);
    let counts = cap.stop_and_count(&[&format!("{clear_filter} and udp port 9000")]);
    assert!(
        counts[0] >= 20,
        "strict off: only {} of 20 misrouted datagrams seen in clear on n1's underlay; \
         the misroute does not leak, so the strict check above proves nothing",
        counts[0]
    );
    eprintln!("strict off: {} datagrams to {b} in clear", counts[0]);
}

/// `meshgate lab observe WORLD c1/n1 --reason strict-unencrypted --json`:
/// the flows of that reason.
fn strict_flows(world: &World) -> Vec<serde_json::Value> {
    meshgate_e2e::meshgate(&[
        "lab",
        "observe",
        &world.name,
        "c1/n1",
        "--reason",
        "strict-unencrypted",
        "--json",
    ])
    .lines()
    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
    .collect()
}

fn route_table(world: &World, ns: &str) -> String {
    let out = world.in_ns(ns, &["ip", "route", "show", "table", ROUTE_TABLE]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `argv` in `ns`; panics with its stderr if it fails.
fn run_ok(world: &World, ns: &str, argv: &[&str]) {
    let out = world.in_ns(ns, argv);
    assert!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives node namespace `ns` a default route out of its underlay via `via`,
/// as every real node has, and shows it carries a pod's datagrams to a world
/// address in clear: a leak in the checks that follow would be seen.
fn add_leaking_default_route(world: &World, ns: &str, via: &str, dir: &std::path::Path) {
    run_ok(
        world,
        ns,
        &[
            "ip", "route", "replace", "default", "via", via, "dev", "eth0",
        ],
    );
    let cap = Capture::start_immediate(ns, "eth0", dir.join("world.pcap"));
    send_udp(world, "c1", "n1-a", "192.0.2.7", 9000, 5);
    let counts = cap.stop_and_count(&["host 192.0.2.7"]);
    assert!(
        counts[0] >= 5,
        "a datagram to the world was not seen leaving by the default route ({} of 5): \
         the leak checks that follow would prove nothing",
        counts[0]
    );
}

/// 20 UDP datagrams from c1/n1-a to `to`: how many crossed the underlay of
/// node namespace `ns` in clear.
fn sent_in_clear(world: &World, ns: &str, to: &str, pcap: std::path::PathBuf) -> usize {
    let cap = Capture::start_immediate(ns, "eth0", pcap);
    send_udp(world, "c1", "n1-a", to, 9000, 20);
    cap.stop_and_count(&[&format!("host {to}")])[0]
}

/// Waits until c1/n1 counted at least `n` strict-unencrypted drops more than
/// `before`; panics naming `what` with the count seen.
fn wait_strict_drops(world: &World, before: u64, n: u64, what: &str) {
    let mut after = before;
    let counted = wait_until(Duration::from_secs(5), || {
        after = strict_drops(world, "c1", "n1").1;
        after >= before + n
    });
    assert!(
        counted.is_some(),
        "strict-unencrypted counted {} drops for {n} datagrams to {what}",
        after - before
    );
}

/// Strict mode covers the mesh's pod CIDRs, not just the addresses the
/// ipcache knows; and with or without strict mode, a departed node's pod
/// CIDR never falls through to the main table's default route. n1 gets a
/// default route out of its underlay (as every real node has), and the
/// test shows that route does carry traffic in clear, so a leak would show.
#[test]
fn strict_mode_guards_every_address_of_the_mesh_pod_cidrs_and_departed_nodes_never_leak() {
    let name = "strictcidr";
    let world = World::up(name, &strict_ebpf(one_cluster(name, 3)));
    let n1 = world.node_ns("c1", "n1");
    let n2_underlay = world.ip("c1/n2");
    let n2b = world.ip("c1/n2-b");
    // An address inside n2's pod CIDR that no pod holds.
    let octets: Vec<&str> = n2b.split('.').collect();
    let unheld = format!("{}.{}.{}.200", octets[0], octets[1], octets[2]);
    let ok = wait_until(Duration::from_secs(15), || {
        world.ping("c1", "n1-a", &n2b, 1, "0.2").received == 1
    });
    assert!(
        ok.is_some(),
        "n1-a -> n2-b never worked in the strict world"
    );

    // The agent knows the cluster's pod CIDR (from discovery's --pod-cidr)
    // and keeps it unreachable below the nodes' routes.
    let ok = wait_until(Duration::from_secs(10), || {
        route_table(&world, &n1).contains("unreachable 10.1.0.0/16")
    });
    assert!(
        ok.is_some(),
        "n1's table {ROUTE_TABLE} has no unreachable route for the cluster's pod CIDR:\n{}",
        route_table(&world, &n1)
    );

    let dir = meshgate_e2e::tempdir();
    add_leaking_default_route(&world, &n1, &n2_underlay, dir.path());

    // 1. Misroute an address no pod holds around the mesh: dropped, counted
    //    and sent as a flow event, nothing in clear.
    let (_, before) = strict_drops(&world, "c1", "n1");
    let route = format!("{unheld}/32");
    run_ok(
        &world,
        &n1,
        &[
            "ip",
            "route",
            "add",
            &route,
            "via",
            &n2_underlay,
            "dev",
            "eth0",
            "table",
            ROUTE_TABLE,
        ],
    );
    let clear = sent_in_clear(&world, &n1, &unheld, dir.path().join("unheld.pcap"));
    assert_eq!(
        clear, 0,
        "strict on: {clear} packets to {unheld} (in n2's pod CIDR, no pod) left n1's underlay in clear"
    );
    wait_strict_drops(&world, before, 20, &unheld);
    let mut flows = Vec::new();
    let seen = wait_until(Duration::from_secs(5), || {
        flows = strict_flows(&world);
        flows.iter().any(|f| f["dst"]["ip"] == unheld.as_str())
    });
    assert!(
        seen.is_some(),
        "no strict-unencrypted flow event to {unheld}: {flows:?}"
    );
    run_ok(
        &world,
        &n1,
        &["ip", "route", "del", &route, "table", ROUTE_TABLE],
    );

    // 2. n2 leaves: its /24 goes from n1's table, the cluster CIDR's
    //    unreachable route stays, and n2's pod address does not fall
    //    through to the default route, with strict mode on and off.
    world.lab("stop", "c1/n2");
    let n2_cidr = format!("{}.{}.{}.0/24", octets[0], octets[1], octets[2]);
    let gone = wait_until(Duration::from_secs(5), || {
        !route_table(&world, &n1).contains(&n2_cidr)
    });
    assert!(
        gone.is_some(),
        "n2's pod CIDR is still routed on n1 after n2 left:\n{}",
        route_table(&world, &n1)
    );
    let table = route_table(&world, &n1);
    assert!(
        table.contains("unreachable 10.1.0.0/16"),
        "the cluster's unreachable route went with n2:\n{table}"
    );
    let (_, before) = strict_drops(&world, "c1", "n1");
    let clear = sent_in_clear(&world, &n1, &n2b, dir.path().join("departed.pcap"));
    assert_eq!(
        clear, 0,
        "strict on: {clear} packets to departed n2's pod {n2b} left n1's underlay in clear"
    );
    wait_strict_drops(&world, before, 20, &format!("departed {n2b}"));
    // Strict off (as an agent without --strict sets the pinned config): the
    // unreachable route alone keeps the departed CIDR off the default route.
    let pins = PathBuf::from(format!("/sys/fs/bpf/meshgate/lab/{name}/c1-n1/maps"));
    let mut maps = meshgate_ebpf::Maps::open_pinned(&pins).unwrap();
    maps.config.set_strict(None).unwrap();
    let clear = sent_in_clear(&world, &n1, &n2b, dir.path().join("departed-off.pcap"));
    assert_eq!(
        clear, 0,
        "strict off: {clear} packets to departed n2's pod {n2b} fell through to the default route in clear"
    );
    eprintln!(
        "unheld {unheld} and departed {n2b}: 0 packets in clear; the world address 192.0.2.7 \
         left by the default route as it should"
    );
}

/// The plain datapath (no eBPF): the cluster's pod CIDR is unreachable in
/// the main table below the nodes' routes, so a departed node's pod address
/// does not fall through to the default route in clear.
#[test]
fn on_the_plain_datapath_a_departed_nodes_pods_never_leave_by_the_default_route() {
    let name = "strictplain";
    let world = World::up(name, &one_cluster(name, 3));
    let n1 = world.node_ns("c1", "n1");
    let n2_underlay = world.ip("c1/n2");
    let n2b = world.ip("c1/n2-b");
    let unreachable = || {
        let out = world.in_ns(&n1, &["ip", "route", "show", "type", "unreachable"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = wait_until(Duration::from_secs(10), || {
        unreachable().contains("10.1.0.0/16")
    });
    assert!(
        ok.is_some(),
        "n1's main table has no unreachable route for the cluster's pod CIDR: {:?}",
        unreachable()
    );
    let dir = meshgate_e2e::tempdir();
    add_leaking_default_route(&world, &n1, &n2_underlay, dir.path());

    world.lab("stop", "c1/n2");
    let routes = || {
        let out = world.in_ns(&n1, &["ip", "route", "show"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let gone = wait_until(Duration::from_secs(5), || !routes().contains("10.1.1.0/24"));
    assert!(
        gone.is_some(),
        "n2's pod CIDR is still routed on n1:\n{}",
        routes()
    );
    let clear = sent_in_clear(&world, &n1, &n2b, dir.path().join("departed.pcap"));
    assert_eq!(
        clear, 0,
        "{clear} packets to departed n2's pod {n2b} fell through to the default route in clear"
    );
    assert!(
        unreachable().contains("10.1.0.0/16"),
        "the unreachable route went with n2"
    );
    // Leaving removes it.
    world.lab("stop", "c1/n1");
    let removed = wait_until(Duration::from_secs(5), || {
        !unreachable().contains("10.1.0.0/16")
    });
    assert!(
        removed.is_some(),
        "n1 left the mesh but kept {:?}",
        unreachable()
    );
}
