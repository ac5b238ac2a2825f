//! `cargo xtask bench tunnel`: one TCP stream pod to pod through meshgate,
//! beside a raw veth pair and wireguard-go over a veth pair.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::iperf::{self, SECONDS};
use super::report::{self, Machine};
use crate::lab::World;
use crate::util::{self, in_netns, output, ChildGuard, NetnsGuard, Steps};

const SCENARIO: &str = "scenarios/bench-two-nodes.yaml";
const WORLD: &str = "bench";
const COMMAND: &str = "cargo xtask bench tunnel";

pub fn run() -> Result<()> {
    let mut steps = Steps::new(5);
    steps.step("build meshgate (release)", || {
        util::run(util::cargo().args(["build", "-p", "meshgate-gateway", "--release"]))
    })?;
    let load = report::load_average();
    let raw = steps.step("raw veth", raw_veth)?;
    let wg_go = steps.step("wireguard-go over veth", wireguard_go)?;
    let (mesh, backend) = steps.step("meshgate pod to pod", meshgate)?;

    let machine = Machine::detect();
    let table = table(raw, wg_go, mesh, &backend);
    println!(
        "\nsingle TCP stream, iperf3 -t {SECONDS}, on {machine}, load average {load} before\n\n{table}"
    );
    steps.step("docs/benchmarks.md", || {
        report::write_section("tunnel", &section(&machine, &load, &table))
    })?;
    Ok(())
}

fn gbps(bps: f64) -> f64 {
    bps / 1e9
}

fn table(raw: f64, wg_go: f64, mesh: f64, backend: &str) -> String {
    let mut t = String::from("| method | Gbit/s | ratio to raw veth |\n|---|---:|---:|\n");
    for (name, bps) in [
        ("raw veth", raw),
        ("wireguard-go over veth", wg_go),
        (&format!("meshgate pod to pod ({backend} backend)"), mesh),
    ] {
        t.push_str(&format!(
            "| {name} | {:.2} | {:.3} |\n",
            gbps(bps),
            bps / raw
        ));
    }
    t.push_str(&format!(
        "\nmeshgate / wireguard-go: **{:.2}**\n",
        mesh / wg_go
    ));
    t
}

fn section(machine: &Machine, load: &str, table: &str) -> String {
    format!(
        "Measured {date} on {machine} with `{COMMAND}`\n\
         (1-minute load average {load} before the runs).\n\n\
         One TCP stream (`iperf3 -t {SECONDS} -J`, `end.sum_received.bits_per_second`),\n\
         three paths measured in the same run:\n\n\
         - **raw veth**: two namespaces joined by a veth pair, no tunnel (the ceiling);\n\
         - **wireguard-go over veth**: the same, with a `wireguard-go` interface (MTU 1420)\n  \
           in each namespace (the userspace WireGuard anchor);\n\
         - **meshgate pod to pod**: `{SCENARIO}` (two nodes, one pod each): pod veth,\n  \
           node routing, the meshgate agent's WireGuard, the underlay bridge, and back.\n\n\
         {table}",
        date = report::today(),
    )
}

/// Two fresh namespaces joined by a veth pair, `prefix.1/24` and `prefix.2/24`.
fn veth_pair(
    ns_a: &str,
    ns_b: &str,
    if_a: &str,
    if_b: &str,
    prefix: &str,
) -> Result<(NetnsGuard, NetnsGuard)> {
    let a = NetnsGuard::create(ns_a)?;
    let b = NetnsGuard::create(ns_b)?;
    util::run(Command::new("ip").args([
        "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
    ]))?;
    for (ns, dev, host) in [(ns_a, if_a, 1), (ns_b, if_b, 2)] {
        util::run(in_netns(ns, "ip").args([
            "addr",
            "add",
            &format!("{prefix}.{host}/24"),
            "dev",
            dev,
        ]))?;
        util::run(in_netns(ns, "ip").args(["link", "set", dev, "up"]))?;
    }
    Ok((a, b))
}

fn raw_veth() -> Result<f64> {
    let (a, b) = veth_pair("mgb-a", "mgb-b", "mgb-va", "mgb-vb", "198.18.200")?;
    iperf::tcp_stream(b.name(), a.name(), "198.18.200.2")
}

/// Folder for key files, removed when dropped.
struct KeyDir(PathBuf);

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `wg genkey` into `dir/name.key` (0600); returns the file and `wg pubkey` of it.
fn keypair(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    use std::os::unix::fs::OpenOptionsExt;
    let private = output(Command::new("wg").arg("genkey"))?;
    let path = dir.join(format!("{name}.key"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `wg pubkey`")?;
    child
        .stdin
        .take()
        .context("no stdin for `wg pubkey`")?
        .write_all(private.as_bytes())
        .context("feeding `wg pubkey`")?;
    let out = child.wait_with_output().context("running `wg pubkey`")?;
    if !out.status.success() {
        bail!("`wg pubkey` failed ({})", out.status);
    }
    Ok((
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Starts `wireguard-go IFACE` in the foreground inside `ns` and waits for its UAPI socket.
fn start_wireguard_go(ns: &str, iface: &str) -> Result<ChildGuard> {
    let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
    let mut child = ChildGuard::spawn(
        in_netns(ns, "wireguard-go")
            .arg(iface)
            .env("WG_PROCESS_FOREGROUND", "1")
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        &format!("wireguard-go {iface} in {ns}"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("wireguard-go {iface} in {ns} exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!(
                "wireguard-go {iface} in {ns} made no {} within 10 s",
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn wireguard_go() -> Result<f64> {
    // Interfaces are named apart: wireguard-go's UAPI sockets share /var/run/wireguard.
    let (a, b) = veth_pair("mgb-wa", "mgb-wb", "mgb-wva", "mgb-wvb", "198.18.201")?;
    let keys = KeyDir(std::env::temp_dir().join(format!("mgb-wg-keys-{}", std::process::id())));
    std::fs::create_dir_all(&keys.0).with_context(|| format!("creating {}", keys.0.display()))?;
    let (key_a, pub_a) = keypair(&keys.0, "a")?;
    let (key_b, pub_b) = keypair(&keys.0, "b")?;
    // Declared after the namespaces: dropped (stopped) before they are deleted.
    let _wg_a = start_wireguard_go(a.name(), "mgbwga")?;
    let _wg_b = start_wireguard_go(b.name(), "mgbwgb")?;
    let sides = [
        (a.name(), "mgbwga", &key_a, &pub_b, "198.18.201.2", 1, 2),
        (b.name(), "mgbwgb", &key_b, &pub_a, "198.18.201.1", 2, 1),
    ];
    for (ns, iface, key, peer, endpoint, me, other) in sides {
        util::run(
            in_netns(ns, "wg")
                .args(["set", iface, "private-key"])
                .arg(key)
                .args(["listen-port", "51820", "peer", peer])
                .args(["endpoint", &format!("{endpoint}:51820")])
                .args(["allowed-ips", &format!("198.18.202.{other}/32")]),
        )?;
        util::run(in_netns(ns, "ip").args([
            "addr",
            "add",
            &format!("198.18.202.{me}/24"),
            "dev",
            iface,
        ]))?;
        util::run(in_netns(ns, "ip").args(["link", "set", iface, "mtu", "1420", "up"]))?;
    }
    // One ping first, so the handshake is not part of the measurement.
    util::run(in_netns(a.name(), "ping").args(["-c", "3", "-i", "0.2", "-W", "2", "198.18.202.2"]))
        .context("wireguard-go tunnel does not pass traffic")?;
    iperf::tcp_stream(b.name(), a.name(), "198.18.202.2")
}

/// Bits per second pod to pod, and the WireGuard backend the agents picked.
fn meshgate() -> Result<(f64, String)> {
    let bin = util::meshgate_bin();
    let world = World::up(&bin, WORLD, &util::repo_root().join(SCENARIO), &[])?;
    let backend = agent_backend("n1")?;
    let p2 = world.ip("c1/p2")?;
    let bps = iperf::tcp_stream(
        &format!("mg-{WORLD}-c1-p-p2"),
        &format!("mg-{WORLD}-c1-p-p1"),
        &p2,
    )?;
    Ok((bps, backend))
}

/// `backend` of a bench node's `status.json` (docs/contracts.md).
fn agent_backend(node: &str) -> Result<String> {
    let path = PathBuf::from(crate::lab::LAB_STATE)
        .join(WORLD)
        .join("c1/nodes")
        .join(node)
        .join("status.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let status: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    status
        .get("backend")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{} has no backend", path.display()))
}
