//! `cargo xtask bench tunnel`: pod to pod through meshgate, beside a raw
//! veth pair and wireguard-go over a veth pair, all in one run: one and
//! four TCP streams, 64-byte UDP datagrams a second, CPU per gigabit, ping
//! RTT and TCP_RR; then meshgate once per offload step, so each step's gain
//! is measured in the same run. `MESHGATE_BENCH_BASELINE_BIN=<older
//! meshgate>` adds that build as a column, for before/after figures
//! (`MESHGATE_BENCH_BASELINE_NAME` names it in docs/benchmarks.md).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::iperf::{self, Run, SECONDS};
use super::latency;
use super::report::{self, Machine};
use crate::lab::World;
use crate::util::{self, in_netns, output, ChildGuard, NetnsGuard, Steps};

const SCENARIO: &str = "scenarios/bench-two-nodes.yaml";
const WORLD: &str = "bench";
const COMMAND: &str = "cargo xtask bench tunnel";
const BASELINE_ENV: &str = "MESHGATE_BENCH_BASELINE_BIN";
/// The agent's offload switch (meshgate_tunnel::userspace::OFFLOADS_ENV).
const OFFLOADS_ENV: &str = "MESHGATE_USERSPACE_OFFLOADS";
/// The offload steps, each measured on its own, in the order they build up.
const STEPS: [(&str, &str); 3] = [
    (
        "none",
        "no offloads: batched TUN reads, recvmmsg, 8 MiB socket buffers, encryption in place",
    ),
    (
        "tso,uso,gro",
        "+ TUN offloads: TSO/USO super-packets split, GRO writes",
    ),
    ("tso,uso,gro,udp-gso", "+ UDP GSO: one send per burst"),
];

/// Everything measured on one path.
struct Figures {
    one: Run,
    four: f64,
    udp_pps: f64,
    ping_ms: f64,
    rr: f64,
}

fn measure(server_ns: &str, client_ns: &str, ip: &str) -> Result<Figures> {
    let addr: Ipv4Addr = ip.parse().with_context(|| format!("{ip} is not IPv4"))?;
    Ok(Figures {
        one: iperf::tcp_streams(server_ns, client_ns, ip, 1)?,
        four: iperf::tcp_streams(server_ns, client_ns, ip, 4)?.bps,
        udp_pps: iperf::udp_pps(server_ns, client_ns, ip, 64)?,
        ping_ms: latency::ping_avg_ms(client_ns, ip)?,
        rr: latency::tcp_rr(server_ns, client_ns, addr)?,
    })
}

pub fn run() -> Result<()> {
    let baseline = std::env::var_os(BASELINE_ENV).map(PathBuf::from);
    let mut steps = Steps::new(5 + STEPS.len() + usize::from(baseline.is_some()));
    steps.step("build meshgate (release)", || {
        util::run(util::cargo().args(["build", "-p", "meshgate-gateway", "--release"]))
    })?;
    let load = report::load_average();
    let bin = util::meshgate_bin();
    let raw = steps.step("raw veth", raw_veth)?;
    let wg_go = steps.step("wireguard-go over veth", wireguard_go)?;
    let (mesh, backend) = steps.step("meshgate pod to pod", || meshgate(&bin, None))?;
    let before = match &baseline {
        Some(b) => Some(
            steps
                .step(&format!("meshgate baseline build {}", b.display()), || {
                    meshgate(b, None)
                })?
                .0,
        ),
        None => None,
    };
    let mut offload_steps = Vec::new();
    for (env, what) in STEPS {
        let bps = steps.step(&format!("meshgate, offloads {env}"), || {
            meshgate_one_stream(&bin, env)
        })?;
        offload_steps.push((env, what, bps));
    }

    let machine = Machine::detect();
    let table = table(&raw, &wg_go, &mesh, before.as_ref(), &backend);
    let steps_table = steps_table(&offload_steps, mesh.one.bps);
    println!("\non {machine}, load average {load} before\n\n{table}\n{steps_table}");
    steps.step("docs/benchmarks.md", || {
        report::write_section(
            "tunnel",
            &section(&machine, &load, &table, &steps_table, baseline.as_deref()),
        )
    })?;
    Ok(())
}

fn gbps(bps: f64) -> f64 {
    bps / 1e9
}

fn table(
    raw: &Figures,
    wg: &Figures,
    mesh: &Figures,
    before: Option<&Figures>,
    backend: &str,
) -> String {
    let mut t = format!(
        "meshgate: {backend}.\n\n| | raw veth | wireguard-go | meshgate | meshgate / wireguard-go |{}\n|---|---:|---:|---:|---:|{}\n",
        if before.is_some() { " meshgate before | now / before |" } else { "" },
        if before.is_some() { "---:|---:|" } else { "" },
    );
    type Get = fn(&Figures) -> f64;
    let rows: [(&str, Get, usize); 6] = [
        ("1 TCP stream, Gbit/s", |f| gbps(f.one.bps), 2),
        ("4 TCP streams, Gbit/s", |f| gbps(f.four), 2),
        ("UDP 64 B, kpps received", |f| f.udp_pps / 1e3, 1),
        (
            "CPU s per Gbit (1 stream, whole machine)",
            |f| f.one.cpu_per_gbit(),
            3,
        ),
        ("ping RTT, ms (avg of 100)", |f| f.ping_ms, 3),
        ("TCP_RR, transactions/s", |f| f.rr, 0),
    ];
    for (name, get, digits) in rows {
        t.push_str(&format!(
            "| {name} | {:.digits$} | {:.digits$} | {:.digits$} | {:.2} |",
            get(raw),
            get(wg),
            get(mesh),
            get(mesh) / get(wg),
        ));
        if let Some(b) = before {
            t.push_str(&format!(
                " {:.digits$} | {:.2} |",
                get(b),
                get(mesh) / get(b)
            ));
        }
        t.push('\n');
    }
    t.push_str(&format!(
        "\nmeshgate / wireguard-go, one stream: **{:.2}**\n",
        mesh.one.bps / wg.one.bps
    ));
    t
}

fn steps_table(steps: &[(&str, &str, f64)], all: f64) -> String {
    let mut t = String::from(
        "| offloads (`MESHGATE_USERSPACE_OFFLOADS`) | step | 1 TCP stream, Gbit/s | gain over the step before |\n|---|---|---:|---:|\n",
    );
    let mut prev: Option<f64> = None;
    let all_row = ("all", "+ UDP GRO: the default", all);
    for (env, what, bps) in steps.iter().copied().chain(std::iter::once(all_row)) {
        let gain = prev.map_or("".to_string(), |p| format!("{:.2} x", bps / p));
        t.push_str(&format!(
            "| `{env}` | {what} | {:.2} | {gain} |\n",
            gbps(bps)
        ));
        prev = Some(bps);
    }
    t
}

fn section(
    machine: &Machine,
    load: &str,
    table: &str,
    steps: &str,
    baseline: Option<&Path>,
) -> String {
    let before = match baseline {
        Some(b) => format!(
            "\n\n\"meshgate before\" is {} (`{BASELINE_ENV}`), measured in the same run.",
            std::env::var("MESHGATE_BENCH_BASELINE_NAME")
                .map(|n| format!("the build of {n}"))
                .unwrap_or_else(|_| format!("the build at `{}`", b.display()))
        ),
        None => String::new(),
    };
    format!(
        "Measured {date} on {machine} with `{COMMAND}`\n\
         (1-minute load average {load} before the runs).\n\n\
         Paths measured in the same run:\n\n\
         - **raw veth**: two namespaces joined by a veth pair, no tunnel (the ceiling);\n\
         - **wireguard-go over veth**: the same, with a `wireguard-go` interface (MTU 1420)\n  \
           in each namespace (the userspace WireGuard anchor);\n\
         - **meshgate pod to pod**: `{SCENARIO}` (two nodes, one pod each): pod veth,\n  \
           node routing, the meshgate agent's WireGuard, the underlay bridge, and back.\n\n\
         iperf3 `-t {SECONDS} -J` (received rate; `-P 4` for four streams; `-u -b 0 -l 64`\n\
         for UDP, datagrams received a second); CPU is the busy time of every core\n\
         over the one-stream run (/proc/stat), per gigabit moved; ping `-c 100 -i 0.01`;\n\
         TCP_RR is one byte each way, one transaction in flight, {rr} s.{before}\n\n\
         {table}\n\
         Each offload step on its own (meshgate, one stream, same run):\n\n\
         {steps}",
        date = report::today(),
        rr = latency::RR_SECONDS,
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

fn raw_veth() -> Result<Figures> {
    let (a, b) = veth_pair("mgb-a", "mgb-b", "mgb-va", "mgb-vb", "198.18.200")?;
    measure(b.name(), a.name(), "198.18.200.2")
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

fn wireguard_go() -> Result<Figures> {
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
    measure(b.name(), a.name(), "198.18.202.2")
}

/// The figures pod to pod, and the WireGuard backend the agents picked
/// with its offloads;
/// `offloads` sets the agents' offload switch.
fn meshgate(bin: &Path, offloads: Option<&str>) -> Result<(Figures, String)> {
    let world = world_up(bin, offloads)?;
    let backend = status_field("n1", "backend")?
        .as_str()
        .map(str::to_string)
        .context("status.json has no backend")?;
    let backend = format!("{backend} backend; offloads {}", agent_offloads()?);
    let p2 = world.ip("c1/p2")?;
    let figures = measure(&pod_ns("p2"), &pod_ns("p1"), &p2)?;
    Ok((figures, backend))
}

fn meshgate_one_stream(bin: &Path, offloads: &str) -> Result<f64> {
    let world = world_up(bin, Some(offloads))?;
    let p2 = world.ip("c1/p2")?;
    iperf::tcp_stream(&pod_ns("p2"), &pod_ns("p1"), &p2)
}

/// What the agent reports in use (docs/contracts.md, `offloads`).
fn agent_offloads() -> Result<String> {
    let v = status_field("n1", "offloads")?;
    Ok(if v.is_null() {
        "none reported (an older build, or not the userspace backend)".to_string()
    } else {
        format!("`{v}`")
    })
}

fn world_up(bin: &Path, offloads: Option<&str>) -> Result<World> {
    // The lab's agents inherit the environment.
    match offloads {
        Some(v) => std::env::set_var(OFFLOADS_ENV, v),
        None => std::env::remove_var(OFFLOADS_ENV),
    }
    let world = World::up(bin, WORLD, &util::repo_root().join(SCENARIO), &[]);
    std::env::remove_var(OFFLOADS_ENV);
    world
}

fn pod_ns(pod: &str) -> String {
    format!("mg-{WORLD}-c1-p-{pod}")
}

/// A field of a bench node's `status.json` (docs/contracts.md).
fn status_field(node: &str, field: &str) -> Result<serde_json::Value> {
    let path = PathBuf::from(crate::lab::LAB_STATE)
        .join(WORLD)
        .join("c1/nodes")
        .join(node)
        .join("status.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let status: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(status
        .get(field)
        .cloned()
        .unwrap_or(serde_json::Value::Null))
}
