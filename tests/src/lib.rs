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

pub mod gateways;
pub mod netns;
mod services;
pub mod stream;
mod tempdir;
mod tls;
pub use tempdir::{tempdir, TempDir};
pub mod vxlan;

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

/// How long the policy tests' TCP probe waits for its connection (ms): one
/// across the lab's veths takes milliseconds once the tunnels are up, and a
/// denied one waits all of it (an allowed probe that misses gets one retry).
pub const TCP_PROBE_WAIT_MS: &str = "500";

/// Seconds `World::up` gives `lab up` (its `--timeout`) when set; `lab up`'s
/// own default (30 s) otherwise.
pub const UP_TIMEOUT_ENV: &str = "MESHGATE_LAB_UP_TIMEOUT";

/// A lab world, torn down on drop.
pub struct World {
    pub name: String,
    _dir: TempDir,
}

impl World {
    /// Writes `yaml` to a file and runs `meshgate lab up` on it with `extra` flags.
    pub fn up_with(name: &str, yaml: &str, extra: &[&str]) -> World {
        require_host();
        // A world of this name left by an earlier crashed run goes first.
        let _ = meshgate_output(&["lab", "down", name]);
        let dir = tempdir();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let world = World {
            name: name.to_string(),
            _dir: dir,
        };
        let mut args = vec!["lab", "up", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        // A slower machine (the kernel lab's emulated VM) gives `lab up`
        // longer to reach a full mesh.
        let timeout = std::env::var(UP_TIMEOUT_ENV).ok();
        if let Some(t) = timeout.as_deref().filter(|_| !extra.contains(&"--timeout")) {
            args.extend(["--timeout", t]);
        }
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

/// Processes started in pods (servers, probes), killed on drop.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        Capture::start_with(ns, iface, file, &[])
    }

    /// Like [`Capture::start`], but every packet is handed to tcpdump at
    /// once (`--immediate-mode`): without it, packets of a short exchange
    /// can sit in the kernel's capture buffer when the capture stops, and
    /// are lost.
    pub fn start_immediate(ns: &str, iface: &str, file: PathBuf) -> Capture {
        Capture::start_with(ns, iface, file, &["--immediate-mode"])
    }

    fn start_with(ns: &str, iface: &str, file: PathBuf, extra: &[&str]) -> Capture {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-n", "-U"])
            .args(extra)
            .args(["-i", iface, "-w"])
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

    /// Stops the capture and asserts what crossed this underlay: at least
    /// `min_wireguard` WireGuard packets, nothing but WireGuard, ARP and the
    /// discovery control plane (TCP 7100), and no packet whose IP header
    /// matches the tcpdump filter `pod_nets` (pod addresses in clear).
    pub fn assert_nothing_in_clear(self, pod_nets: &str, min_wireguard: usize) {
        self.assert_only_carried_by("udp port 51820", "WireGuard", pod_nets, min_wireguard)
    }

    /// [`Capture::assert_nothing_in_clear`] for any carrier: at least `min`
    /// packets matching the tcpdump filter `carrier` (`esp` for IPsec),
    /// nothing but them, ARP and discovery (TCP 7100), and no packet
    /// matching `pod_nets`.
    pub fn assert_only_carried_by(self, carrier: &str, name: &str, pod_nets: &str, min: usize) {
        let other = format!("not arp and not ({carrier}) and not (tcp port 7100)");
        let ns = self.ns.clone();
        let file = self.file.clone();
        let counts = self.stop_and_count(&[carrier, &other, pod_nets]);
        assert!(
            counts[0] > min,
            "{ns}: only {} {name} packets seen; did the traffic cross it?",
            counts[0]
        );
        if counts[1] != 0 {
            let shown = Command::new("tcpdump")
                .arg("-nr")
                .arg(&file)
                .args(other.split_whitespace())
                .output()
                .expect("reading the capture");
            panic!(
                "{ns}: {} packets crossed the underlay outside {name}:\n{}",
                counts[1],
                String::from_utf8_lossy(&shown.stdout)
            );
        }
        assert_eq!(
            counts[2], 0,
            "{ns}: {} pod packets crossed the underlay in clear",
            counts[2]
        );
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

/// `clusters` federated clusters c1..cN (id i, pod CIDR 10.i.0.0/16), each
/// with `nodes` nodes n1..nM and one pod per node (`nJ-a`, app=web on odd
/// nodes, app=db on even ones).
pub fn clusters(name: &str, clusters: u8, nodes: usize) -> String {
    let mut y = format!("name: {name}\nclusters:\n");
    for c in 1..=clusters {
        y.push_str(&format!(
            "  - name: c{c}\n    id: {c}\n    podCIDR: 10.{c}.0.0/16\n    nodes:\n"
        ));
        for n in 1..=nodes {
            let app = if n % 2 == 1 { "web" } else { "db" };
            y.push_str(&format!(
                "      - name: n{n}\n        pods:\n          - name: n{n}-a\n            labels: {{app: {app}}}\n"
            ));
        }
    }
    y
}

impl World {
    /// The discovery namespace of a cluster.
    pub fn discovery_ns(&self, cluster: &str) -> String {
        format!("mg-{}-{cluster}-d", self.name)
    }

    /// Runs `meshgate ARGS` inside a namespace (to reach lab addresses),
    /// panicking with its output on failure.
    pub fn meshgate_in(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(meshgate_bin())
            .args(args)
            .env("MESHGATE_LOG", "warn")
            .output()
            .expect("running meshgate in a namespace");
        assert!(
            out.status.success(),
            "meshgate {} in {ns} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `meshgate nodes --json` of a discovery (by its URL), run from
    /// `cluster`'s discovery namespace: `cluster/name` of every node.
    /// The query goes over mutual TLS with the certificate of agent
    /// `<from_cluster>/n1`, to `of_cluster`'s discovery.
    pub fn discovery_nodes(&self, from_cluster: &str, of_cluster: &str) -> Vec<String> {
        let mut args = vec!["nodes".to_string(), "--json".to_string()];
        args.extend(self.nodes_flags(of_cluster, &format!("{from_cluster}/n1")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.meshgate_in(&self.discovery_ns(from_cluster), &args);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("meshgate nodes --json is not JSON ({e}): {out}"));
        let mut names: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("meshgate nodes --json is not a list: {out}"))
            .iter()
            .map(|n| {
                format!(
                    "{}/{}",
                    n["cluster"].as_str().unwrap(),
                    n["name"].as_str().unwrap()
                )
            })
            .collect();
        names.sort();
        names
    }

    /// `meshgate federation --json` of a cluster's own discovery.
    pub fn federation(&self, cluster: &str) -> serde_json::Value {
        let mut args = vec!["federation".to_string(), "--json".to_string()];
        args.extend(self.nodes_flags(cluster, &format!("{cluster}/n1")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.meshgate_in(&self.discovery_ns(cluster), &args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("meshgate federation --json is not JSON ({e}): {out}"))
    }

    /// IP → (cluster, identity) from a node's `ipcache.json` (empty if none yet).
    pub fn ipcache(
        &self,
        cluster: &str,
        node: &str,
    ) -> std::collections::BTreeMap<String, (String, u64)> {
        let path = format!(
            "/run/meshgate/lab/{}/{cluster}/nodes/{node}/ipcache.json",
            self.name
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Default::default();
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
        v["entries"]
            .as_object()
            .unwrap_or_else(|| panic!("{path} has no entries object: {text}"))
            .iter()
            .map(|(ip, e)| {
                (
                    ip.clone(),
                    (
                        e["cluster"].as_str().unwrap_or_default().to_string(),
                        e["identity"].as_u64().unwrap(),
                    ),
                )
            })
            .collect()
    }

    /// Pings `to_ip` from a pod of `cluster`.
    pub fn ping(
        &self,
        cluster: &str,
        pod: &str,
        to_ip: &str,
        count: u32,
        interval: &str,
    ) -> PingStats {
        let out = self.in_ns(
            &self.pod_ns(cluster, pod),
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "1",
                to_ip,
            ],
        );
        parse_ping(&String::from_utf8_lossy(&out.stdout))
    }
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

    #[test]
    fn cluster_worlds_are_valid_scenarios() {
        let y = clusters("w", 3, 2);
        assert!(
            y.contains("name: c3\n    id: 3\n    podCIDR: 10.3.0.0/16"),
            "{y}"
        );
        assert!(
            y.contains("- name: n2-a\n            labels: {app: db}"),
            "{y}"
        );
    }
}
