//! Bad input gets a clear error that names the problem and leaves nothing
//! half-built (root required; see the crate docs).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use meshgate_e2e::{meshgate_bin, meshgate_output, one_cluster, require_host};

fn leftovers(world: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let mut left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("mg-{world}-")))
        .map(str::to_string)
        .collect();
    if Path::new("/run/meshgate/lab").join(world).exists() {
        left.push(format!("/run/meshgate/lab/{world}"));
    }
    left
}

fn lab_up_fails(world: &str, yaml: &str, extra: &[&str]) -> String {
    require_host();
    let _ = meshgate_output(&["lab", "down", world]);
    let dir = meshgate_e2e::tempdir();
    let file = dir.path().join(format!("{world}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let mut args = vec!["lab", "up", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = meshgate_output(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "lab up of a bad world succeeded:\n{err}"
    );
    assert_eq!(
        leftovers(world),
        Vec::<String>::new(),
        "a failed lab up left things behind"
    );
    err
}

#[test]
fn invalid_scenarios_are_refused_with_the_file_and_field_named() {
    let base = one_cluster("e2e-bad", 2);
    let dup_id = format!(
        "{base}  - name: c2\n    id: 1\n    podCIDR: 10.2.0.0/16\n    nodes:\n      - name: m1\n"
    );
    let err = lab_up_fails("e2e-bad", &dup_id, &[]);
    assert!(
        err.contains("e2e-bad.yaml") && err.contains("clusters[1].id"),
        "{err}"
    );

    let overlap = format!(
        "{base}  - name: c2\n    id: 2\n    podCIDR: 10.1.128.0/17\n    nodes:\n      - name: m1\n"
    );
    let err = lab_up_fails("e2e-bad", &overlap, &[]);
    assert!(err.contains("overlap"), "{err}");

    let err = lab_up_fails("e2e-bad", "name: e2e-bad\nclusters: [oops", &[]);
    assert!(err.contains("e2e-bad.yaml"), "{err}");

    let unknown = base.replace("podCIDR", "podCidr");
    let err = lab_up_fails("e2e-bad", &unknown, &[]);
    assert!(err.contains("podCidr"), "{err}");
}

#[test]
fn a_lab_up_that_fails_midway_tears_down_what_it_built() {
    // Zero seconds is too short for any handshake: up must fail after
    // building namespaces and starting processes, and remove all of it.
    let err = lab_up_fails("e2e-half", &one_cluster("e2e-half", 2), &["--timeout", "0"]);
    assert!(
        err.contains("handshake") || err.contains("within 0 s"),
        "{err}"
    );
    let procs = Command::new("pgrep")
        .args(["-f", "mg-e2e-half"])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}

#[test]
fn the_lab_refuses_to_run_without_root() {
    require_host();
    let dir = meshgate_e2e::tempdir();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, one_cluster("e2e-user", 1)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(meshgate_bin())
        .args(["lab", "up"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("root"), "{err}");
    assert_eq!(leftovers("e2e-user"), Vec::<String>::new());
}

#[test]
fn the_kernel_backend_says_clearly_when_the_kernel_lacks_wireguard() {
    require_host();
    let dir = meshgate_e2e::tempdir();
    let out = Command::new(meshgate_bin())
        .args([
            "agent",
            "--node",
            "k1",
            "--cluster",
            "c1",
            "--cluster-id",
            "1",
            "--discovery",
            "http://127.0.0.1:9",
            "--underlay-ip",
            "127.0.0.1",
            "--pod-cidr",
            "10.77.0.0/24",
            "--backend",
            "kernel",
            "--interface",
            "mgk-test0",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if Path::new("/sys/module/wireguard").exists() {
        // This kernel has WireGuard: the probe must not refuse it.
        assert!(!err.contains("unavailable"), "{err}");
        let _ = Command::new("ip")
            .args(["link", "del", "mgk-test0"])
            .status();
    } else {
        assert!(!out.status.success());
        assert!(
            err.contains("kernel WireGuard backend is unavailable"),
            "{err}"
        );
        assert!(err.contains("--backend userspace"), "{err}");
        assert!(
            !Path::new("/sys/class/net/mgk-test0").exists(),
            "an interface was left behind"
        );
    }
}

#[test]
fn the_agent_names_a_missing_setting() {
    let out = Command::new(meshgate_bin())
        .args(["agent", "--node", "n1", "--cluster", "c1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--cluster-id"), "{err}");
}

#[test]
fn a_second_agent_on_a_node_is_refused_and_the_first_keeps_running() {
    let world = meshgate_e2e::World::up("e2e-busy", &one_cluster("e2e-busy", 2));
    let first = world.status("c1", "n1");
    let dir = meshgate_e2e::tempdir();
    let out = world.in_ns(
        &world.node_ns("c1", "n1"),
        &[
            meshgate_bin().to_str().unwrap(),
            "agent",
            "--node",
            "n1",
            "--cluster",
            "c1",
            "--cluster-id",
            "1",
            "--discovery",
            "http://198.18.1.2:7100",
            "--underlay-ip",
            "198.18.1.10",
            "--pod-cidr",
            "10.1.0.0/24",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second agent started: {err}");
    assert!(err.contains("another agent still running"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(600));
    let after = world.status("c1", "n1");
    assert_eq!(after.pid, first.pid);
    assert!(after.peers[0].last_handshake_age_ms.is_some());
    let s = world.in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.1",
            "-W",
            "1",
            &world.ip("c1/n2-a"),
        ],
    );
    assert!(s.status.success(), "the first agent stopped forwarding");
}
