//! Root tier, opt-in: `up` of scenarios/one-cluster.yaml with the real
//! `meshgate` binary named by MESHGATE_BIN (the agents must complete their
//! WireGuard handshakes). Skipped loudly when MESHGATE_BIN is unset.

use std::path::PathBuf;
use std::time::Duration;

use meshgate_lab::UpOptions;

struct WorldGuard {
    name: String,
    file: PathBuf,
}

impl Drop for WorldGuard {
    fn drop(&mut self) {
        if let Err(e) = meshgate_lab::down(Some(&self.name)) {
            eprintln!("cleanup of world {} failed: {e}", self.name);
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn one_cluster_with_real_agents() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: one_cluster_with_real_agents needs root");
        return;
    }
    let Some(bin) = std::env::var_os("MESHGATE_BIN").map(PathBuf::from) else {
        eprintln!("SKIP: one_cluster_with_real_agents needs MESHGATE_BIN=path/to/meshgate");
        return;
    };
    let world = format!("r{}", std::process::id() % 1_000_000);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("one-cluster.yaml");
    let yaml = std::fs::read_to_string(&src)
        .expect("read one-cluster.yaml")
        .replace("name: one\n", &format!("name: {world}\n"));
    let file = std::env::temp_dir().join(format!("mg-lab-{world}.yaml"));
    std::fs::write(&file, yaml).expect("write scenario");
    let guard = WorldGuard {
        name: world.clone(),
        file: file.clone(),
    };
    let mut opts = UpOptions::new(bin);
    opts.timeout = Duration::from_secs(30);
    let summary = meshgate_lab::up(&file, &opts).unwrap_or_else(|e| panic!("up failed: {e}"));
    eprintln!("{summary}");
    assert_eq!(summary.nodes.len(), 3);
    assert!(summary.nodes.iter().all(|n| n.peers == 2), "{summary}");

    // Pod to pod across nodes, through the tunnel.
    let to = meshgate_lab::ip(&format!("{world}:c1/n2-a")).expect("ip of n2-a");
    let ping = ["ping", "-c1", "-W2", &to.to_string()].map(String::from);
    let code = meshgate_lab::exec(&format!("{world}:c1/n1-a"), &ping).expect("exec ping");
    assert_eq!(
        code, 0,
        "pod n1-a cannot ping pod n2-a ({to}) through the mesh"
    );
    drop(guard);
}
