//! Helpers for meshgate's end-to-end tests. Every test builds its own lab
//! world with a unique name through [`World::up`], and the world is torn
//! down when the guard drops, even when the test panics.
//!
//! The tests need root (network namespaces) and the `meshgate` binary: set
//! `MESHGATE_BIN`, or build it first (`cargo build -p meshgate-gateway`);
//! `cargo xtask test` does both. They panic, never silently pass, when
//! something they need is missing.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use meshgate_lab::AgentStatus;

/// The `meshgate` binary under test.
pub fn meshgate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MESHGATE_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("meshgate");
        if p.is_file() {
            return p;
        }
    }
    panic!("no meshgate binary: set MESHGATE_BIN or run `cargo build -p meshgate-gateway` (cargo xtask test does)");
}

/// Panics with the reason unless the host can run lab worlds.
pub fn require_host() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("end-to-end tests need root (network namespaces, veth, TUN): run them as root, e.g. via `cargo xtask test`");
    }
    for tool in ["ip", "ping", "tcpdump"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "end-to-end tests need `{tool}`: run `cargo xtask deps` to install it"
        );
    }
}

/// Runs `meshgate ARGS`, panicking with its output on failure.
pub fn meshgate(args: &[&str]) -> String {
    let out = meshgate_output(args);
    assert!(
        out.status.success(),
        "meshgate {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn meshgate_output(args: &[&str]) -> Output {
    Command::new(meshgate_bin())
        .args(args)
        .env("MESHGATE_LOG", "warn")
        .output()
        .expect("running meshgate")
}

/// A lab world, torn down on drop.
pub struct World {
    pub name: String,
    _dir: tempfile::TempDir,
}

impl World {
    /// Writes `yaml` to a file and runs `meshgate lab up` on it with `extra` flags.
    pub fn up_with(name: &str, yaml: &str, extra: &[&str]) -> World {
        require_host();
        // A world of this name left by an earlier crashed run goes first.
        let _ = meshgate_output(&["lab", "down", name]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let world = World {
            name: name.to_string(),
            _dir: dir,
        };
        let mut args = vec!["lab", "up", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        meshgate(&args);
        world
    }

    pub fn up(name: &str, yaml: &str) -> World {
        World::up_with(name, yaml, &[])
    }

    pub fn target(&self, t: &str) -> String {
        format!("{}:{t}", self.name)
    }

    /// The IP of a pod, node or discovery (`cluster/name`).
    pub fn ip(&self, t: &str) -> String {
        meshgate(&["lab", "ip", &self.target(t)]).trim().to_string()
    }

    pub fn lab(&self, cmd: &str, t: &str) -> String {
        meshgate(&["lab", cmd, &self.target(t)])
    }

    /// Namespace of a node or pod.
    pub fn node_ns(&self, cluster: &str, node: &str) -> String {
        format!("mg-{}-{cluster}-n-{node}", self.name)
    }

    pub fn pod_ns(&self, cluster: &str, pod: &str) -> String {
        format!("mg-{}-{cluster}-p-{pod}", self.name)
    }

    pub fn status(&self, cluster: &str, node: &str) -> AgentStatus {
        meshgate_lab::agent_status(&self.name, cluster, node)
            .unwrap_or_else(|e| panic!("status of {cluster}/{node}: {e}"))
    }

    /// Runs a command in a namespace and returns its output.
    pub fn in_ns(&self, ns: &str, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .output()
            .expect("running ip netns exec")
    }

    /// Starts a command in a namespace in the background.
    pub fn spawn_in_ns(&self, ns: &str, argv: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ip netns exec")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let out = meshgate_output(&["lab", "down", &self.name]);
        if !out.status.success() {
            eprintln!(
                "lab down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Ping statistics parsed from iputils `ping` output.
#[derive(Debug, Clone, Copy)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.sent - self.received
    }
}

pub fn parse_ping(out: &str) -> PingStats {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in:\n{out}"));
    let num = |word: &str| -> u32 {
        let parts: Vec<&str> = line.split(',').collect();
        let part = parts
            .iter()
            .find(|p| p.contains(word))
            .unwrap_or_else(|| panic!("no {word} in {line}"));
        part.split_whitespace().next().unwrap().parse().unwrap()
    };
    PingStats {
        sent: num("transmitted"),
        received: num("received"),
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes;
/// returns how long it took, or None on timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A packet capture running in a namespace, written to a pcap file.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
    ns: String,
}

impl Capture {
    pub fn start(ns: &str, iface: &str, file: PathBuf) -> Capture {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-n", "-U", "-i", iface, "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        let cap = Capture {
            child,
            file,
            ns: ns.to_string(),
        };
        // tcpdump creates the file once it listens.
        let ready = wait_until(Duration::from_secs(5), || cap.file.exists());
        assert!(ready.is_some(), "tcpdump in {ns} did not start");
        std::thread::sleep(Duration::from_millis(200));
        cap
    }

    /// Stops the capture and returns the number of packets matching each
    /// tcpdump filter expression.
    pub fn stop_and_count(mut self, filters: &[&str]) -> Vec<usize> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: sending SIGINT to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        filters
            .iter()
            .map(|f| {
                let out = Command::new("tcpdump")
                    .arg("-nr")
                    .arg(&self.file)
                    .args(f.split_whitespace())
                    .stderr(Stdio::null())
                    .output()
                    .expect("reading the capture");
                String::from_utf8_lossy(&out.stdout).lines().count()
            })
            .collect()
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scenario used by most tests: one cluster, `nodes` nodes with two pods each.
pub fn one_cluster(name: &str, nodes: usize) -> String {
    let mut y = format!(
        "name: {name}\nclusters:\n  - name: c1\n    id: 1\n    podCIDR: 10.1.0.0/16\n    nodes:\n"
    );
    for n in 1..=nodes {
        y.push_str(&format!(
            "      - name: n{n}\n        pods:\n          - name: n{n}-a\n            labels: {{app: web}}\n          - name: n{n}-b\n            labels: {{app: db}}\n"
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let s = parse_ping(
            "...\n500 packets transmitted, 497 received, 0.6% packet loss, time 5000ms\n",
        );
        assert_eq!((s.sent, s.received, s.lost()), (500, 497, 3));
        let s = parse_ping("3 packets transmitted, 0 received, +3 errors, 100% packet loss\n");
        assert_eq!(s.received, 0);
    }
}
