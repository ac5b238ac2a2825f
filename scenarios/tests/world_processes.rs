//! Root tier: the lab's process supervision (`up`, status, stop/start,
//! restart, rotate-key, exec, `down`) driven against a stand-in `meshgate`
//! script, so it runs without a working agent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshgate_lab::{LabError, UpOptions};

struct WorldGuard {
    name: String,
    dir: PathBuf,
}

impl Drop for WorldGuard {
    fn drop(&mut self) {
        if let Err(e) = meshgate_lab::down(Some(&self.name)) {
            eprintln!("cleanup of world {} failed: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, veth)");
    }
    let py = Command::new("python3").arg("-c").arg("pass").output();
    if !py.map(|o| o.status.success()).unwrap_or(false) {
        return Some("needs python3 for the stand-in discovery");
    }
    None
}

/// A world dir with the scenario and the stand-in binary named `meshgate`.
fn setup(world: &str, no_peers: bool) -> (WorldGuard, PathBuf, UpOptions) {
    let dir = std::env::temp_dir().join(format!("mg-lab-{world}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dir.join("meshgate");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-meshgate.sh");
    std::fs::copy(&script, &bin).expect("copy stand-in meshgate");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if no_peers {
        std::fs::write(dir.join("no-peers"), "").expect("flag");
    }
    let file = dir.join("w.yaml");
    let yaml = format!(
        "name: {world}\nclusters:\n  - name: c1\n    id: 1\n    podCIDR: 10.1.0.0/16\n    nodes:\n      - name: n1\n        pods:\n          - name: a\n      - name: n2\n"
    );
    std::fs::write(&file, yaml).expect("write scenario");
    let mut opts = UpOptions::new(bin);
    opts.timeout = Duration::from_secs(5);
    let guard = WorldGuard {
        name: world.to_string(),
        dir,
    };
    (guard, file, opts)
}

fn world_namespaces(world: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("mg-{world}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn up_drives_processes_and_down_stops_them() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: up_drives_processes_and_down_stops_them {why}");
        return;
    }
    let world = format!("p{}", std::process::id() % 1_000_000);
    let (guard, file, opts) = setup(&world, false);

    let summary = meshgate_lab::up(&file, &opts).unwrap_or_else(|e| panic!("up failed: {e}"));
    assert_eq!(summary.nodes.len(), 2);
    assert!(summary.nodes.iter().all(|n| n.peers == 1), "{summary}");
    let text = summary.to_string();
    assert!(text.contains("c1/n2 0.0s"), "{text}");

    let again = meshgate_lab::up(&file, &opts);
    assert!(matches!(again, Err(LabError::WorldUp { .. })), "{again:?}");

    let status = meshgate_lab::status(Some(&world)).expect("status");
    assert!(status.contains("discovery 198.18.1.2:7100 pid"), "{status}");
    assert!(
        status.contains("node n1 (198.18.1.10): agent pid"),
        "{status}"
    );
    assert!(status.contains("peer c1/n2"), "{status}");

    let n1 = format!("{world}:c1/n1");
    let rotated = meshgate_lab::rotate_key(&n1).expect("rotate-key");
    assert!(rotated.contains(" → "), "{rotated}");
    let st = meshgate_lab::agent_status(&world, "c1", "n1").expect("agent status");
    assert_eq!(st.key_rotations, 1);

    assert_eq!(
        meshgate_lab::exec(&n1, &["true".to_string()]).expect("exec"),
        0
    );
    let three = ["sh", "-c", "exit 3"].map(String::from);
    assert_eq!(
        meshgate_lab::exec(&format!("{world}:c1/a"), &three).expect("exec"),
        3
    );

    let pod_stop = meshgate_lab::stop(&format!("{world}:c1/a"));
    assert!(
        matches!(pod_stop, Err(LabError::Target { .. })),
        "{pod_stop:?}"
    );

    let n2 = format!("{world}:c1/n2");
    let stopped = meshgate_lab::stop(&n2).expect("stop");
    assert!(stopped.contains("stopped"), "{stopped}");
    assert!(matches!(
        meshgate_lab::stop(&n2),
        Err(LabError::NotRunning { .. })
    ));
    let started = meshgate_lab::start(&n2, &opts.meshgate_bin).expect("start");
    assert!(started.contains("started"), "{started}");
    assert!(matches!(
        meshgate_lab::start(&n2, &opts.meshgate_bin),
        Err(LabError::AlreadyRunning { .. })
    ));
    let restarted = meshgate_lab::restart(&n2, &opts.meshgate_bin).expect("restart node");
    assert!(restarted.contains("started"), "{restarted}");
    let d = format!("{world}:c1/discovery");
    meshgate_lab::restart(&d, &opts.meshgate_bin).expect("restart discovery");

    let said = meshgate_lab::down(Some(&world)).expect("down");
    assert!(said.contains("stopped 3 processes"), "{said}");
    assert!(world_namespaces(&world).is_empty());
    drop(guard);
}

#[test]
fn failed_up_names_the_missing_handshake_and_tears_down() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: failed_up_names_the_missing_handshake_and_tears_down {why}");
        return;
    }
    let world = format!("q{}", std::process::id() % 1_000_000);
    let (guard, file, mut opts) = setup(&world, true);
    opts.timeout = Duration::from_secs(2);

    let err = meshgate_lab::up(&file, &opts).expect_err("up without peers must fail");
    let text = err.to_string();
    assert!(matches!(err, LabError::NoHandshake { .. }), "{text}");
    assert!(
        text.contains("c1/n1 lacks a handshake with c1/n2: peer not listed"),
        "{text}"
    );
    assert!(
        text.contains("fake agent c1/n1 starting"),
        "log tail missing: {text}"
    );
    assert!(
        world_namespaces(&world).is_empty(),
        "failed up left namespaces"
    );
    assert!(!meshgate_lab::plan::world_dir(&world).exists());
    drop(guard);
}
