//! The kernel paths, run in the kernel lab's VM (`cargo xtask kernel-lab`):
//! Debian's 6.1 kernel with the WireGuard module, where `--backend auto`
//! picks the kernel backend, as on every real node. On a host without the
//! module these tests are ignored, never passed: `cargo xtask test` runs
//! them in the VM. World names start with `kern`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use meshgate_e2e::gateways::{assert_failover_within_bound, gateway_pair_world};
use meshgate_e2e::{one_cluster, Capture, World};

const PODS: [&str; 6] = ["n1-a", "n1-b", "n2-a", "n2-b", "n3-a", "n3-b"];
const NEEDS: &str =
    "needs a kernel with WireGuard: runs in the kernel lab (cargo xtask kernel-lab)";

/// Panics (these tests are ignored, not skipped, where it is missing)
/// unless this kernel has WireGuard loaded.
fn require_wireguard() {
    assert!(
        std::path::Path::new("/sys/module/wireguard").exists(),
        "{NEEDS}; this kernel has no WireGuard module loaded"
    );
}

#[test]
#[ignore = "needs a kernel with WireGuard: runs in the kernel lab (cargo xtask kernel-lab)"]
fn kernel_backend_is_picked_and_every_pod_reaches_every_pod_with_nothing_in_clear() {
    require_wireguard();
    // The eBPF datapath (VXLAN inside kernel WireGuard); below Linux 6.6
    // (no TCX) its programs attach with tc clsact.
    let yaml =
        one_cluster("kernreach", 3).replacen("\nclusters:", "\ndatapath: ebpf\nclusters:", 1);
    let world = World::up("kernreach", &yaml);
    let tcx = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| {
            let mut v = r
                .trim()
                .split(['.', '-'])
                .map(|p| p.parse::<u32>().unwrap_or(0));
            Some((v.next()?, v.next()?))
        })
        .is_some_and(|v| v >= (6, 6));
    for n in ["n1", "n2", "n3"] {
        let st = world.status("c1", n);
        let attach = st
            .datapath
            .as_ref()
            .map(|d| d.attach.clone())
            .unwrap_or_default();
        assert_eq!(
            attach,
            if tcx { "tcx" } else { "tc" },
            "c1/{n}: the eBPF datapath's attach mode on this kernel"
        );
        assert_eq!(
            st.backend, "kernel",
            "c1/{n}: --backend auto picked {} on a kernel with WireGuard",
            st.backend
        );
        let wg = world.in_ns(&world.node_ns("c1", n), &["wg", "show", "mg-wg0", "peers"]);
        assert_eq!(
            String::from_utf8_lossy(&wg.stdout).lines().count(),
            2,
            "c1/{n}: the kernel device mg-wg0 does not list its 2 peers: {wg:?}"
        );
    }
    let ips: BTreeMap<&str, String> = PODS
        .iter()
        .map(|p| (*p, world.ip(&format!("c1/{p}"))))
        .collect();
    let dir = meshgate_e2e::tempdir();
    let capture = Capture::start(
        &world.node_ns("c1", "n1"),
        "eth0",
        dir.path().join("n1.pcap"),
    );
    for from in PODS {
        for to in PODS {
            if from == to {
                continue;
            }
            let s = world.ping("c1", from, &ips[to], 2, "0.1");
            assert_eq!(
                s.received, 2,
                "{from} -> {to} ({}) lost packets: {s:?}",
                ips[to]
            );
        }
    }
    capture.assert_nothing_in_clear("net 10.1.0.0/16", 10);
}

/// 600 pings at 10 ms from n1-a to n2-a, with `during` run after 1 s.
fn ping_through(world: &World, during: impl FnOnce()) -> meshgate_e2e::PingStats {
    ping_count_through(world, 600, during)
}

/// `count` pings at 10 ms from n1-a to n2-a, with `during` run after 1 s.
fn ping_count_through(world: &World, count: u32, during: impl FnOnce()) -> meshgate_e2e::PingStats {
    let to = world.ip("c1/n2-a");
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.01",
            "-W",
            "2",
            &to,
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    during();
    let out = ping.wait_with_output().unwrap();
    meshgate_e2e::parse_ping(&String::from_utf8_lossy(&out.stdout))
}

#[test]
#[ignore = "needs a kernel with WireGuard: runs in the kernel lab (cargo xtask kernel-lab)"]
fn kernel_backend_rotates_keys_and_restarts_under_a_10ms_ping_losing_nothing() {
    require_wireguard();
    let world = World::up("kernrot", &one_cluster("kernrot", 2));
    let before = (
        world.status("c1", "n1").public_key,
        world.status("c1", "n2").public_key,
    );
    let s = ping_through(&world, || {
        world.lab("rotate-key", "c1/n2");
        std::thread::sleep(Duration::from_millis(1500));
        world.lab("rotate-key", "c1/n1");
    });
    assert_eq!(s.sent, 600, "{s:?}");
    assert_eq!(
        s.lost(),
        0,
        "kernel key rotation lost {} of {} pings",
        s.lost(),
        s.sent
    );
    let (n1, n2) = (world.status("c1", "n1"), world.status("c1", "n2"));
    assert_ne!(n1.public_key, before.0, "n1 did not rotate");
    assert_ne!(n2.public_key, before.1, "n2 did not rotate");
    assert_eq!(
        n1.peers[0].public_key, n2.public_key,
        "n1 lacks n2's new key"
    );
    assert_eq!(
        n2.peers[0].public_key, n1.public_key,
        "n2 lacks n1's new key"
    );

    // An agent restart: the kernel device keeps forwarding meanwhile, on
    // the sessions it has (the new agent sets the same key: no peer has
    // to handshake again).
    let handshakes = || {
        let o = world.in_ns(
            &world.node_ns("c1", "n2"),
            &["wg", "show", "mg-wg0", "latest-handshakes"],
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let sessions = handshakes();
    let old_pid = world.status("c1", "n2").pid;
    let s = ping_through(&world, || {
        world.lab("restart", "c1/n2");
    });
    assert_eq!(s.sent, 600, "{s:?}");
    assert_eq!(
        s.lost(),
        0,
        "a kernel-backend agent restart lost {} of {} pings",
        s.lost(),
        s.sent
    );
    let st = world.status("c1", "n2");
    assert_ne!(st.pid, old_pid, "the agent was not restarted");
    assert_eq!(st.backend, "kernel");
    assert_eq!(
        handshakes(),
        sessions,
        "the restarted agent made its peers handshake again (were the sessions expired?)"
    );
}

#[test]
#[ignore = "needs a kernel with WireGuard: runs in the kernel lab (cargo xtask kernel-lab)"]
fn kernel_backend_fails_over_cluster_gateways_within_2s_and_back() {
    require_wireguard();
    let world = gateway_pair_world("kerngw");
    for (c, n) in [
        ("c1", "g1"),
        ("c1", "g2"),
        ("c1", "n3"),
        ("c2", "g1"),
        ("c2", "n3"),
    ] {
        let st = world.status(c, n);
        assert_eq!(st.backend, "kernel", "{c}/{n} runs {}", st.backend);
    }
    // Receive ages come from the kernel's counters: a gateway's peers hear
    // from it (heartbeats) well within the liveness bound.
    let st = world.status("c1", "n3");
    let g1 = st
        .peers
        .iter()
        .find(|p| p.cluster == "c1" && p.node == "g1")
        .unwrap();
    assert!(
        g1.last_rx_age_ms.is_some_and(|ms| ms < 900) && g1.last_handshake_age_ms.is_some(),
        "c1/n3 has no fresh receive or handshake age for c1/g1 from the kernel: {g1:?}"
    );
    assert_failover_within_bound(&world);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the kernel lab (cargo xtask kernel-lab)"]
fn ipsec_mesh_carries_only_esp_rotates_and_restarts_losing_nothing() {
    let yaml =
        one_cluster("kernesp", 3).replacen("\nclusters:", "\nencryption: ipsec\nclusters:", 1);
    ipsec_mesh(&World::up("kernesp", &yaml), "kernesp");
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the kernel lab (cargo xtask kernel-lab)"]
fn ipsec_mesh_with_the_ebpf_datapath_in_strict_mode_carries_only_esp() {
    // VXLAN inside ESP, tc clsact on 6.1: nothing but ESP may leave.
    let yaml = one_cluster("kernespx", 3).replacen(
        "\nclusters:",
        "\nencryption: ipsec\ndatapath: ebpf\nstrict: true\nclusters:",
        1,
    );
    ipsec_mesh(&World::up("kernespx", &yaml), "kernespx");
}

/// Every pair as ESP only, a secret rotation and an agent restart under a
/// 10 ms ping losing nothing.
fn ipsec_mesh(world: &World, name: &str) {
    for n in ["n1", "n2", "n3"] {
        let st = world.status("c1", n);
        assert_eq!(st.backend, "ipsec", "c1/{n}");
        let ipsec = st
            .ipsec
            .unwrap_or_else(|| panic!("c1/{n} shows no ipsec status"));
        assert_eq!(ipsec.generation, 1, "c1/{n}: {ipsec:?}");
        // virtio/veth have no ESP offload: the fallback is reported.
        assert!(ipsec.offload.starts_with("software ("), "c1/{n}: {ipsec:?}");
    }
    let ips: BTreeMap<&str, String> = PODS
        .iter()
        .map(|p| (*p, world.ip(&format!("c1/{p}"))))
        .collect();
    let dir = meshgate_e2e::tempdir();
    let capture = Capture::start(
        &world.node_ns("c1", "n1"),
        "eth0",
        dir.path().join("n1.pcap"),
    );
    for from in PODS {
        for to in PODS {
            if from != to {
                let s = world.ping("c1", from, &ips[to], 2, "0.1");
                assert_eq!(
                    s.received, 2,
                    "{from} -> {to} ({}) over IPsec: {s:?}",
                    ips[to]
                );
            }
        }
    }
    capture.assert_only_carried_by("esp", "ESP", "net 10.1.0.0/16", 10);

    // The mesh secret's next generation, under a 10 ms ping stream.
    let s = ping_count_through(world, 1000, || {
        let said = meshgate_e2e::meshgate(&["lab", "rotate-secret", "--world", name]);
        assert!(said.contains("1 → 2"), "{said}");
    });
    assert_eq!(s.sent, 1000, "{s:?}");
    assert_eq!(
        s.lost(),
        0,
        "the IPsec secret rotation lost {} of {}",
        s.lost(),
        s.sent
    );
    for n in ["n1", "n2", "n3"] {
        let ipsec = world.status("c1", n).ipsec.unwrap();
        assert_eq!((ipsec.generation, ipsec.rotating), (2, false), "c1/{n}");
    }
    let s = world.ping("c1", "n3-a", &ips["n2-b"], 3, "0.1");
    assert_eq!(s.received, 3, "after the rotation: {s:?}");

    // An agent restart: the kernel's SAs and policies keep forwarding.
    let s = ping_through(world, || {
        world.lab("restart", "c1/n2");
    });
    assert_eq!(s.sent, 600, "{s:?}");
    assert_eq!(
        s.lost(),
        0,
        "an IPsec agent restart lost {} of {}",
        s.lost(),
        s.sent
    );
    assert_eq!(world.status("c1", "n2").ipsec.unwrap().generation, 2);
}
