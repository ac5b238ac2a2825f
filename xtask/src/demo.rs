//! `cargo xtask demo`: one cluster of three nodes; pods talk across nodes, and
//! the underlay carries nothing but WireGuard, the control plane and ARP; an
//! agent restart during a 10 ms ping stream loses nothing.
//! Then egress gateways (`scenarios/egress.yaml`): a selected pod's
//! connection reaches the external host from a gateway's egress IP, an
//! unselected pod's from its node. Last, FQDN policy (`scenarios/fqdn.yaml`):
//! an allowed name resolves through the node's DNS proxy and its address
//! opens; a refused name gets REFUSED, and its address stays closed even
//! dialled directly. When containerd is there (`cargo xtask deps` installs
//! it), two of the first world's nodes run it, and two real containers made
//! through `ctr run --cni` (so `meshgate-cni`) reach each other and a pod;
//! the demo says which it uses.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::World;
use crate::util::{self, in_netns, output, ChildGuard, Steps};

const WORLD: &str = "one";
const SCENARIO: &str = "scenarios/one-cluster.yaml";
const POD_NET: &str = "10.1.0.0/16";

/// Pod pairs across nodes: every ordered pair of nodes once.
const PAIRS: &[(&str, &str)] = &[
    ("n1-a", "n2-a"),
    ("n2-b", "n3-a"),
    ("n3-b", "n1-b"),
    ("n2-a", "n1-b"),
    ("n3-a", "n2-b"),
    ("n1-b", "n3-b"),
];

pub fn run() -> Result<()> {
    let mut steps = Steps::new(13);
    steps.step("deps", crate::deps::run)?;
    steps.step("build meshgate (release)", || {
        util::run(util::cargo().args(["build", "-p", "meshgate-gateway", "--release"]))
    })?;
    let bin = util::meshgate_bin();
    let containerd = containerd_works();
    let scenario = match &containerd {
        Ok(()) => {
            eprintln!("containerd works here: nodes n1 and n2 run it, and the demo makes real containers there");
            with_containerd(&util::repo_root().join(SCENARIO))?
        }
        Err(why) => {
            eprintln!("containerd is not usable here ({why:#}): pods are network namespaces only");
            util::repo_root().join(SCENARIO)
        }
    };
    // Dropped last: the world goes down whatever happens below.
    let world = steps.step("lab up", || World::up(&bin, WORLD, &scenario, &[]))?;
    steps.step("lab status", || {
        util::run(world.cmd().args(["lab", "status", WORLD]))
    })?;
    steps.step("pods ping across nodes", || ping_pairs(&world))?;
    steps.step("underlay capture on n1", || capture(&world))?;
    steps.step("agent restart during a ping stream", || {
        restart_under_ping(&world)
    })?;
    if containerd.is_ok() {
        steps.step(
            "real containers through containerd and meshgate-cni",
            || containers(&world),
        )?;
    } else {
        steps.step("real containers (skipped: no containerd)", || Ok(()))?;
    }
    drop(world);
    if containerd.is_ok() {
        let _ = std::fs::remove_file(&scenario);
    }
    let scenario = util::repo_root().join(EGRESS_SCENARIO);
    let egress = steps.step("lab up (egress gateways)", || {
        World::up(&bin, EGRESS_WORLD, &scenario, &[])
    })?;
    steps.step(
        "pods call the internet host through egress gateways",
        || egress_calls(&egress),
    )?;
    drop(egress);
    let scenario = util::repo_root().join(FQDN_SCENARIO);
    let fqdn = steps.step("lab up (FQDN policy, DNS proxies)", || {
        World::up(&bin, FQDN_WORLD, &scenario, &[])
    })?;
    steps.step("an allowed and a refused name", || fqdn_calls(&fqdn))?;
    drop(fqdn);
    steps.step("Kubernetes manifests, rendered offline", || {
        kubernetes(&bin)
    })?;
    let containers_said = if containerd.is_ok() {
        "real containers joined the mesh through meshgate-cni, "
    } else {
        ""
    };
    eprintln!(
        "\ndemo done: pods reach each other across nodes, n1's underlay carried no clear pod \
         packet, {containers_said}selected pods reach the internet from their gateways' egress \
         IPs, pods reach by name only what their DNS policy allows, and the Kubernetes \
         manifests render with least-privilege RBAC"
    );
    Ok(())
}

/// What `kubectl apply -k` would create, per overlay, and what the
/// agents and discovery may read from the API (nothing is applied: no API
/// server runs here).
fn kubernetes(bin: &Path) -> Result<()> {
    for overlay in ["embedded", "etcd"] {
        let dir = util::repo_root()
            .join("deploy/kubernetes/overlays")
            .join(overlay);
        let text = output(Command::new("kubectl").arg("kustomize").arg(&dir))?;
        let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
        for line in text.lines().filter_map(|l| l.strip_prefix("kind: ")) {
            *kinds.entry(line.trim()).or_default() += 1;
        }
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  overlays/{overlay:<9} {}", list.join(", "));
    }
    let rbac = output(Command::new(bin).arg("rbac"))?;
    println!("  ClusterRoles (list and watch only, generated from the watchers):");
    for doc in rbac.split("\n---\n").skip(1) {
        let role: serde_yaml::Value = serde_yaml::from_str(doc)
            .context("meshgate rbac printed something that is not YAML")?;
        let Some(name) = role["metadata"]["name"].as_str() else {
            continue;
        };
        let resources: Vec<&str> = role["rules"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|r| r["resources"].as_sequence().into_iter().flatten())
            .filter_map(serde_yaml::Value::as_str)
            .collect();
        println!("    {name:<20} {}", resources.join(" "));
    }
    let crds = output(Command::new(bin).arg("crds"))?;
    let names: Vec<&str> = crds
        .lines()
        .filter_map(|l| l.strip_prefix("    kind: "))
        .collect();
    println!(
        "  CRDs from the Rust types (meshgate crds): {}",
        names.join(", ")
    );
    Ok(())
}

const FQDN_WORLD: &str = "fqdn";
const FQDN_SCENARIO: &str = "scenarios/fqdn.yaml";

/// `dig +short NAME` and `dig NAME`'s status in a pod.
fn dig(world: &World, pod: &str, name: &str) -> Result<(String, String)> {
    let run = |args: &[&str]| {
        output(
            world
                .cmd()
                .args([
                    "lab",
                    "exec",
                    &world.target(pod),
                    "--",
                    "dig",
                    "+tries=1",
                    "+time=2",
                ])
                .args(args),
        )
    };
    let short = run(&["+short", name])?;
    let full = run(&[name])?;
    let status = full
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("?")
        .to_string();
    Ok((
        status,
        short.split_whitespace().last().unwrap_or("").to_string(),
    ))
}

/// Whether a TCP connection from `pod` to `addr`:8080 gets the external's answer.
fn reaches(world: &World, pod: &str, addr: &str) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/8080 && head -n1 <&3");
    util::succeeds(
        world
            .cmd()
            .args(["lab", "exec", &world.target(pod), "--"])
            .args(["timeout", "2", "bash", "-c", &script]),
    )
}

fn fqdn_calls(world: &World) -> Result<()> {
    println!("\n--- c1/other1 may look up api.example.com only (CiliumNetworkPolicy rules.dns), and reach nothing by name;");
    println!("    c1/app1 may look up any name and reach api.example.com and *.example.com on TCP 8080 (toFQDNs)");
    for (pod, name, want_status, want_reach) in [
        ("c1/app1", "api.example.com", "NOERROR", true),
        ("c1/other1", "www.example.com", "REFUSED", false),
        ("c1/other1", "api.example.com", "NOERROR", false),
    ] {
        let (status, addr) = dig(world, pod, name)?;
        let target = if addr.is_empty() {
            "203.0.113.10"
        } else {
            addr.as_str()
        };
        let reach = reaches(world, pod, target);
        println!(
            "  {pod:<10} dig {name:<16} {status:<8} {addr:<13} {target}:8080 {}",
            if reach { "reached" } else { "closed" }
        );
        if status != want_status || reach != want_reach {
            bail!(
                "{pod}: {name} gave {status} and {target} {}; expected {want_status} and {}",
                if reach { "reachable" } else { "closed" },
                if want_reach { "reachable" } else { "closed" }
            );
        }
    }
    util::run(world.cmd().args([
        "lab",
        "observe",
        FQDN_WORLD,
        "--protocol",
        "dns",
        "--last",
        "3",
    ]))
}

const EGRESS_WORLD: &str = "egress";
const EGRESS_SCENARIO: &str = "scenarios/egress.yaml";
/// The external host of the egress scenario; its TCP 8080 answers with the
/// source address it saw.
const INTERNET: &str = "203.0.113.10";

/// What the external host sees of one TCP connection from a pod.
fn seen_by_internet(world: &World, pod: &str) -> Result<String> {
    let script = format!("exec 3<>/dev/tcp/{INTERNET}/8080 && head -n1 <&3");
    let text = output(
        world
            .cmd()
            .args(["lab", "exec", &world.target(pod), "--"])
            .args(["timeout", "5", "bash", "-c", &script]),
    )
    .with_context(|| format!("{pod} could not reach {INTERNET}:8080"))?;
    Ok(text.trim().to_string())
}

fn egress_calls(world: &World) -> Result<()> {
    util::run(world.cmd().args(["lab", "status", EGRESS_WORLD]))?;
    let n1 = world.ip("c1/n1")?;
    println!("\n--- which source address {INTERNET} sees (policy egress-client: app=egress-client -> 203.0.113.0/24 via nodes egress=true, interface eg0)");
    for (pod, want) in [
        ("c1/app1", "203.0.113.50 or .51 (c1's gateways g1, g2)"),
        ("c1/app2", "203.0.113.50 or .51 (c1's gateways g1, g2)"),
        ("c2/app3", "203.0.113.60 (c2's own gateway)"),
        ("c1/other1", "its node n1's address (not selected)"),
    ] {
        let seen = seen_by_internet(world, pod)?;
        println!("  {pod:<10} seen from {seen:<15} expected: {want}");
        let ok = match pod {
            "c2/app3" => seen == "203.0.113.60",
            "c1/other1" => seen == n1,
            _ => seen == "203.0.113.50" || seen == "203.0.113.51",
        };
        if !ok {
            bail!("{pod} reached {INTERNET} from {seen}, expected {want}");
        }
    }
    Ok(())
}

/// Whether containerd and ctr run here.
fn containerd_works() -> Result<()> {
    output(Command::new("containerd").arg("--version"))?;
    output(Command::new("ctr").arg("--version"))?;
    Ok(())
}

/// The demo scenario with `runtime: containerd` on n1 and n2, in a temp file.
fn with_containerd(scenario: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let mut out = text.clone();
    for n in ["n1", "n2"] {
        let at = format!("      - name: {n}\n");
        if !out.contains(&at) {
            bail!(
                "{} no longer has node {n} as the demo expects",
                scenario.display()
            );
        }
        out = out.replacen(&at, &format!("{at}        runtime: containerd\n"), 1);
    }
    let path = std::env::temp_dir().join(format!("meshgate-demo-{}.yaml", std::process::id()));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Two containers through `ctr run --cni` on n1 and n2: the client pings
/// the web container and a namespace pod, then both are removed.
fn containers(world: &World) -> Result<()> {
    let run = |node: &str, name: &str, label: &str| -> Result<String> {
        let said = output(world.cmd().args([
            "lab",
            "run",
            &format!("c1/{node}"),
            "--name",
            name,
            "--label",
            label,
            "--world",
            WORLD,
        ]))?;
        println!("{}", said.trim());
        said.trim()
            .rsplit(' ')
            .next()
            .map(str::to_string)
            .context("lab run printed no address")
    };
    let web = run("n1", "web-c", "app=web")?;
    run("n2", "cli-c", "app=client")?;
    let pod = world.ip("c1/n1-a")?;
    for (what, ip) in [
        ("container web-c on n1", web.as_str()),
        ("pod n1-a", pod.as_str()),
    ] {
        println!("\n--- container cli-c on n2 -> {what} ({ip})");
        util::run(
            world
                .cmd()
                .args([
                    "lab",
                    "exec",
                    &world.target("c1/n2"),
                    "--container",
                    "cli-c",
                    "--",
                ])
                .args(["ping", "-c", "3", "-i", "0.2", "-W", "1", ip]),
        )
        .with_context(|| format!("container cli-c cannot ping {what} at {ip}"))?;
    }
    for (node, name) in [("n1", "web-c"), ("n2", "cli-c")] {
        util::run(world.cmd().args([
            "lab",
            "rm",
            &format!("c1/{node}"),
            "--name",
            name,
            "--world",
            WORLD,
        ]))?;
    }
    Ok(())
}

fn ping_pairs(world: &World) -> Result<()> {
    for (from, to) in PAIRS {
        let ip = world.ip(&format!("c1/{to}"))?;
        println!("\n--- c1/{from} -> c1/{to} ({ip})");
        util::run(
            world
                .cmd()
                .args(["lab", "exec", &world.target(&format!("c1/{from}")), "--"])
                .args(["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip]),
        )
        .with_context(|| format!("c1/{from} cannot ping c1/{to} at {ip}"))?;
    }
    Ok(())
}

/// Restarts n2's agent while n1-a pings n2-a every 10 ms: the old agent
/// forwards until the new one holds its sessions (issue 14), so nothing
/// is lost.
fn restart_under_ping(world: &World) -> Result<()> {
    let ip = world.ip("c1/n2-a")?;
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod_ns("n1-a"),
            "ping",
            "-n",
            "-q",
            "-c",
            "200",
        ])
        .args(["-i", "0.01", "-W", "1", &ip])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting ping")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    util::run(world.cmd().args(["lab", "restart", &world.target("c1/n2")]))?;
    let out = ping.wait_with_output().context("waiting for ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no ping summary");
    println!("\nc1/n1-a -> c1/n2-a every 10 ms across n2's agent restart: {summary}");
    Ok(())
}

/// The namespace of a node or pod of cluster c1 (docs/contracts.md, "Lab addressing").
fn node_ns(node: &str) -> String {
    format!("mg-{WORLD}-c1-n-{node}")
}

fn pod_ns(pod: &str) -> String {
    format!("mg-{WORLD}-c1-p-{pod}")
}

/// Removes the capture folder when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn capture(world: &World) -> Result<()> {
    let dir = TempDir(std::env::temp_dir().join(format!("meshgate-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let file = dir.0.join("n1-eth0.pcap");
    let file_arg = file.to_string_lossy().into_owned();

    // Listen on node n1's underlay.
    let capture_ns = node_ns("n1");
    let mut tcpdump = ChildGuard::spawn(
        in_netns(&capture_ns, "tcpdump")
            .args(["-ni", "eth0", "-U", "-Z", "root", "-w", &file_arg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        "tcpdump on n1's eth0",
    )?;
    wait_listening(&mut tcpdump)?;

    let n2a = world.ip("c1/n2-a")?;
    let n2b = world.ip("c1/n2-b")?;
    // iperf3 server on n2-b for one test, client on n1-b: a little TCP at 10 Mbit/s.
    let mut server = ChildGuard::spawn(
        in_netns(&pod_ns("n2-b"), "iperf3")
            .args(["-s", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        "iperf3 server in c1/n2-b",
    )?;
    util::wait_tcp_listen(&pod_ns("n2-b"), 5201, &mut server)?;
    println!("\n--- traffic while capturing: ping c1/n1-a -> c1/n2-a, iperf3 c1/n1-b -> c1/n2-b (2 s, 10 Mbit/s)");
    let mut iperf = ChildGuard::spawn(
        world
            .cmd()
            .args(["lab", "exec", &world.target("c1/n1-b"), "--"])
            .args(["iperf3", "-c", &n2b, "-t", "2", "-b", "10M"])
            .stdout(Stdio::null()),
        "iperf3 client in c1/n1-b",
    )?;
    util::run(
        world
            .cmd()
            .args(["lab", "exec", &world.target("c1/n1-a"), "--"])
            .args(["ping", "-c", "10", "-i", "0.2", "-W", "1", &n2a]),
    )?;
    let status = iperf.wait(Duration::from_secs(10))?;
    if !status.success() {
        bail!("the iperf3 client in c1/n1-b failed ({status})");
    }
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    let status = tcpdump.stop(libc::SIGINT, Duration::from_secs(5))?;
    if !status.success() {
        bail!("tcpdump in {capture_ns} ended with {status}");
    }

    report(&file)
}

/// Waits for tcpdump's "listening on eth0" line, so no packet is missed.
fn wait_listening(tcpdump: &mut ChildGuard) -> Result<()> {
    let stderr = tcpdump
        .child_mut()
        .and_then(|c| c.stderr.take())
        .context("tcpdump's stderr is not ours to read")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("tcpdump did not start listening on n1's eth0 within 10 s")
}

/// Packet lines `tcpdump -nr FILE FILTER` prints.
fn read(file: &Path, filter: &str) -> Result<Vec<String>> {
    let mut cmd = Command::new("tcpdump");
    cmd.arg("-nr").arg(file);
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let text = output(&mut cmd)?;
    Ok(text.lines().map(str::to_string).collect())
}

fn report(file: &Path) -> Result<()> {
    let all = read(file, "")?;
    let wireguard = read(file, "udp port 51820")?;
    let discovery = read(file, "tcp port 7100")?;
    let arp = read(file, "arp")?;
    let other = read(file, "not (udp port 51820 or tcp port 7100 or arp)")?;
    let clear = read(file, &format!("net {POD_NET}"))?;

    println!("\n--- what crossed n1's underlay (eth0) during the capture");
    let rows = [
        ("total packets".to_string(), all.len()),
        ("WireGuard (UDP 51820)".to_string(), wireguard.len()),
        (
            "discovery control plane (TCP 7100)".to_string(),
            discovery.len(),
        ),
        ("ARP".to_string(), arp.len()),
        ("anything else (must be 0)".to_string(), other.len()),
        (
            format!("pod addresses ({POD_NET}) in clear (must be 0)"),
            clear.len(),
        ),
    ];
    for (what, count) in rows {
        println!("  {what:<50}{count:>7}");
    }
    println!("\nsample WireGuard packets:");
    for line in wireguard.iter().take(5) {
        println!("  {line}");
    }
    if wireguard.is_empty() {
        bail!("no WireGuard packet crossed n1's underlay while pods on n1 talked to pods on n2");
    }
    if !clear.is_empty() {
        println!("\npod packets in clear:");
        for line in clear.iter().take(20) {
            println!("  {line}");
        }
        bail!(
            "{} packets with pod addresses crossed n1's underlay in clear",
            clear.len()
        );
    }
    if !other.is_empty() {
        println!("\nother packets:");
        for line in other.iter().take(20) {
            println!("  {line}");
        }
        bail!(
            "{} packets that are neither WireGuard, discovery nor ARP crossed n1's underlay",
            other.len()
        );
    }
    Ok(())
}
