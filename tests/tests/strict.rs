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

    let dir = tempfile::tempdir().unwrap();
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
