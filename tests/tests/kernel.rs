//! The kernel paths, run in the kernel lab's VM (`cargo xtask kernel-lab`):
//! Debian's 6.1 kernel with the WireGuard module, where `--backend auto`
//! picks the kernel backend, as on every real node. On a host without the
//! module these tests are ignored, never passed: `cargo xtask test` runs
//! them in the VM. World names start with `kern`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use meshgate_e2e::{one_cluster, Capture, World};

const PODS: [&str; 6] = ["n1-a", "n1-b", "n2-a", "n2-b", "n3-a", "n3-b"];
const NEEDS: &str =
    "needs a kernel with WireGuard: runs in the kernel lab (cargo xtask kernel-lab)";

#[test]
#[ignore = "needs a kernel with WireGuard: runs in the kernel lab (cargo xtask kernel-lab)"]
fn kernel_backend_is_picked_and_every_pod_reaches_every_pod_with_nothing_in_clear() {
    assert!(
        std::path::Path::new("/sys/module/wireguard").exists(),
        "{NEEDS}; this kernel has no WireGuard module loaded"
    );
    let world = World::up("kernreach", &one_cluster("kernreach", 3));
    for n in ["n1", "n2", "n3"] {
        let st = world.status("c1", n);
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
    let dir = tempfile::tempdir().unwrap();
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
