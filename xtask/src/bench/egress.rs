//! `cargo xtask bench egress`: egress gateways (scenarios/egress.yaml,
//! userspace WireGuard) beside the same pods' path without the gateway
//! policy (an unselected pod, masqueraded by its node), measured in the
//! same run:
//!
//! - connection rate (connect, read the answer, close; 8 threads) and one
//!   TCP stream's throughput (iperf3) from a pod to the external host;
//! - the failover time over `--failovers` gateway deaths (`lab fail`):
//!   from the kill to the start of the last connection that still failed,
//!   under a connection every 10 ms;
//! - the concurrent-connection ceiling: `--conns` connections from pods to
//!   one external IP and port held open at once through one gateway (the
//!   policy narrowed to c1/g1), and through one node's masquerade.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::iperf;
use super::report::{self, Machine};
use crate::lab::World;
use crate::util::{self, in_netns, ChildGuard, Steps};

const WORLD: &str = "egbench";
const INTERNET: &str = "203.0.113.10";
const HOLD_PORT: &str = "8081";
/// Server processes sharing the hold port.
const SERVERS: usize = 5;

struct Opts {
    failovers: usize,
    conns: usize,
}

fn parse(args: &[&str]) -> Result<Opts> {
    let mut o = Opts {
        failovers: 20,
        conns: 60_000,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(|v| v.parse::<usize>());
        match (*a, v) {
            ("--failovers", Some(Ok(n))) if (1..=100).contains(&n) => o.failovers = n,
            ("--conns", Some(Ok(n))) if (1_000..=120_000).contains(&n) => o.conns = n,
            _ => bail!(
                "usage: cargo xtask bench egress [--failovers 1..=100] [--conns 1000..=120000] \
                 (defaults 20 failovers, 60000 connections)"
            ),
        }
    }
    Ok(o)
}

fn probe() -> String {
    super::release_bin("mg-probe").display().to_string()
}

fn pod_ns(cluster: &str, pod: &str) -> String {
    format!("mg-{WORLD}-{cluster}-p-{pod}")
}

fn internet_ns() -> String {
    format!("mg-{WORLD}-x-internet")
}

pub fn run(args: &[&str]) -> Result<()> {
    let opts = parse(args)?;
    let mut steps = Steps::new(7);
    steps.step(
        "build meshgate and mg-probe (release)",
        super::build_release,
    )?;
    let dir = std::env::temp_dir().join(format!("meshgate-bench-egress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = std::fs::read_to_string(util::repo_root().join("scenarios/egress.yaml"))
        .context("reading scenarios/egress.yaml")?;
    let file = dir.join("egbench.yaml");
    std::fs::write(
        &file,
        text.replace("\nname: egress\n", &format!("\nname: {WORLD}\n")),
    )?;
    let load = report::load_average();
    let bin = super::release_bin("meshgate");
    let world = steps.step("lab up (egress gateways)", || {
        World::up(&bin, WORLD, &file, &[])
    })?;
    let rates = steps.step("connection rate, gateway vs node masquerade", || {
        rates(&world)
    })?;
    let tput = steps.step("TCP throughput, gateway vs node masquerade", || {
        let app = iperf::tcp_stream(&internet_ns(), &pod_ns("c1", "app1"), INTERNET)?;
        let other = iperf::tcp_stream(&internet_ns(), &pod_ns("c1", "other1"), INTERNET)?;
        Ok((app, other))
    })?;
    let fails = steps.step("failover times", || failovers(&world, opts.failovers))?;
    let held = steps.step("concurrent connections through one gateway", || {
        ceiling(&world, &dir, opts.conns)
    })?;
    drop(world);
    let _ = std::fs::remove_dir_all(&dir);
    let machine = Machine::detect();
    let load_after = report::load_average();
    let body = section(
        &machine,
        &load,
        &load_after,
        &opts,
        rates,
        tput,
        &fails,
        held,
    );
    println!("\n{body}");
    steps.step("docs/benchmarks.md", || {
        report::write_section("egress", &body)
    })
}

/// Connections per second from `pod` to the external host's TCP 8080.
fn rate(cluster: &str, pod: &str) -> Result<f64> {
    let out = util::output(
        in_netns(&pod_ns(cluster, pod), &probe()).args(["rate", INTERNET, "8080", "4", "8"]),
    )?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let failed: u64 = words
        .iter()
        .skip_while(|w| **w != "failed")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(u64::MAX);
    if failed > 0 {
        bail!("{cluster}/{pod}: {failed} connections failed: {out}");
    }
    words
        .iter()
        .skip_while(|w| **w != "rate")
        .nth(1)
        .and_then(|r| r.trim_end_matches("/s").parse().ok())
        .with_context(|| format!("mg-probe rate printed no rate: {out:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (through the gateway, through the node) connections/s, medians of 3
/// interleaved rounds.
fn rates(_world: &World) -> Result<(f64, f64)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        let g = rate("c1", "app1")?;
        let n = rate("c1", "other1")?;
        eprintln!("round {round}: gateway {g:.0}/s, node masquerade {n:.0}/s");
        a.push(g);
        b.push(n);
    }
    Ok((median(a), median(b)))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whether every gateway of `egress-client` is usable as c1/n1 sees it.
fn all_usable() -> bool {
    let path = PathBuf::from(crate::lab::LAB_STATE)
        .join(WORLD)
        .join("c1/nodes/n1/status.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v.pointer("/egress/policies/0/gateways")
        .and_then(|g| g.as_array())
        .is_some_and(|gs| gs.len() == 2 && gs.iter().all(|g| g["usable"].as_bool() == Some(true)))
}

fn wait_usable(timeout: Duration) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if all_usable() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the gateways were not both usable again within {timeout:?}")
}

/// Seconds from each kill to the start of the last connection that failed.
fn failovers(world: &World, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..n {
        wait_usable(Duration::from_secs(20))?;
        let gw = if i % 2 == 0 { "c1/g1" } else { "c1/g2" };
        let mut stream = ChildGuard::spawn(
            in_netns(&pod_ns("c1", "app1"), &probe())
                .args(["conns", INTERNET, "8080", "300", "10", "300"])
                .stdout(Stdio::piped()),
            "mg-probe conns",
        )?;
        // Read the stream's output on the side: waiting drops the child.
        let mut stdout = stream
            .child_mut()
            .and_then(|c| c.stdout.take())
            .context("mg-probe conns' stdout")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            text
        });
        std::thread::sleep(Duration::from_millis(800));
        let killed = now();
        util::run(world.cmd().args(["lab", "fail", &world.target(gw)]))?;
        let status = stream.wait(Duration::from_secs(15))?;
        if !status.success() {
            bail!("mg-probe conns failed ({status})");
        }
        let text = reader.join().unwrap_or_default();
        if text.lines().count() < 300 {
            bail!(
                "mg-probe conns reported {} of 300 connections",
                text.lines().count()
            );
        }
        let last_failed = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, what)| !what.starts_with("ok:"))
            .filter_map(|(t, _)| t.parse::<f64>().ok())
            .filter(|t| *t >= killed - 0.05)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let took = last_failed.map_or(0.0, |t| (t - killed).max(0.0));
        eprintln!(
            "failover {}: {gw} killed, last failed connection began {took:.3} s later",
            i + 1
        );
        out.push(took);
        util::run(world.cmd().args(["lab", "recover", &world.target(gw)]))?;
    }
    wait_usable(Duration::from_secs(20))?;
    Ok(out)
}

/// Established connections to the hold port on the external host, by source IP.
fn held_by_source() -> Result<BTreeMap<String, usize>> {
    let text = util::output(in_netns(&internet_ns(), "ss").args([
        "-Htn",
        "state",
        "established",
        "sport",
        "=",
        &format!(":{HOLD_PORT}"),
    ]))?;
    let mut by = BTreeMap::new();
    for l in text.lines() {
        if let Some((ip, _)) = l.split_whitespace().last().and_then(|p| p.rsplit_once(':')) {
            *by.entry(ip.to_string()).or_default() += 1;
        }
    }
    Ok(by)
}

/// Holds `total` connections from two selected pods through c1/g1 only,
/// then the same from the unselected pod through its node; what the
/// external host saw established each time.
fn ceiling(world: &World, dir: &std::path::Path, total: usize) -> Result<(usize, usize)> {
    let only_g1 = std::fs::read_to_string(util::repo_root().join("scenarios/egress.yaml"))?;
    let scenario: serde_yaml::Value = serde_yaml::from_str(&only_g1)?;
    let mut policies = String::new();
    for p in scenario["policies"]
        .as_sequence()
        .context("egress.yaml has no policies")?
    {
        policies.push_str("---\n");
        policies.push_str(&serde_yaml::to_string(p)?);
    }
    let narrowed = policies.replace("egress: \"true\"", "kubernetes.io/hostname: g1");
    let narrowed = narrowed.replace("egress: 'true'", "kubernetes.io/hostname: g1");
    if narrowed == policies {
        bail!("could not narrow the egress policy to c1/g1 (its nodeSelector changed shape)");
    }
    let f = dir.join("only-g1.yaml");
    std::fs::write(&f, narrowed)?;
    util::run(world.cmd().args([
        "lab",
        "policy",
        "--world",
        WORLD,
        f.to_str().context("path")?,
    ]))?;
    std::thread::sleep(Duration::from_secs(2));
    let hold = |pods: &[&str], each: usize| -> Result<usize> {
        // Processes here may hold 20,000 descriptors each (the hard
        // limit): the server is several processes sharing the port
        // (SO_REUSEPORT), started afresh for each run, and each pod's
        // connections come from two client processes.
        let _servers: Vec<ChildGuard> = (0..SERVERS)
            .map(|_| {
                ChildGuard::spawn(
                    in_netns(&internet_ns(), &probe())
                        .args(["hold-serve", HOLD_PORT])
                        .stdout(Stdio::null()),
                    "mg-probe hold-serve",
                )
            })
            .collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_millis(300));
        let mut clients = Vec::new();
        for pod in pods {
            let ns = pod_ns("c1", pod);
            util::run(
                in_netns(&ns, "sysctl").args(["-qw", "net.ipv4.ip_local_port_range=1024 65535"]),
            )?;
            // At most 15,000 connections per client process.
            let parts = each.div_ceil(15_000).max(1);
            for k in 0..parts {
                let share = each / parts + usize::from(k < each % parts);
                clients.push(ChildGuard::spawn(
                    in_netns(&ns, &probe())
                        .args(["hold", INTERNET, HOLD_PORT, &share.to_string(), "40"])
                        .stdout(Stdio::null()),
                    "mg-probe hold",
                )?);
            }
        }
        // Wait until the count stops growing, then read it.
        let mut last = 0;
        let mut stable = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(38) && stable < 3 {
            std::thread::sleep(Duration::from_secs(1));
            let n: usize = held_by_source()?.values().sum();
            if n == last && n > 0 {
                stable += 1;
            } else {
                stable = 0;
            }
            last = n;
        }
        let by = held_by_source()?;
        eprintln!("held at once, by source address: {by:?}");
        drop(clients);
        std::thread::sleep(Duration::from_secs(3));
        Ok(by.values().sum())
    };
    let through_gateway = hold(&["app1", "app2"], total / 2)?;
    let through_node = hold(&["other1"], total)?;
    Ok((through_gateway, through_node))
}

#[allow(clippy::too_many_arguments)]
fn section(
    machine: &Machine,
    load: &str,
    load_after: &str,
    opts: &Opts,
    rates: (f64, f64),
    tput: (f64, f64),
    fails: &[f64],
    held: (usize, usize),
) -> String {
    let mut sorted = fails.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or(0.0)
    };
    let max = sorted.last().copied().unwrap_or(0.0);
    format!(
        "Measured {date} on {machine} with `cargo xtask bench egress` (1-minute\n\
         load average {load} before, {load_after} after). World: scenarios/egress.yaml\n\
         (userspace WireGuard, eBPF datapath), pods of c1 to the external host\n\
         203.0.113.10. Ours: pod `app1` (selected by `egress-client`: tunnelled to\n\
         a c1 gateway, SNAT to its egress IP). Anchor: pod `other1` on the same node,\n\
         unselected, leaving through its node's masquerade.\n\n\
         | figure | through the gateway | without the policy (node) | ratio |\n|---|---:|---:|---:|\n\
         | connections/s (connect, read, close; 8 threads; median of 3) | {r1:.0} | {r2:.0} | {rr:.2} |\n\
         | TCP throughput, one iperf3 stream, Mbit/s | {t1:.0} | {t2:.0} | {tr:.2} |\n\
         | connections held open at once to one IP:port (of {conns} tried) | {h1} | {h2} | {hr:.2} |\n\n\
         Failover over {n} gateway deaths (`lab fail`: link cut + SIGKILL, g1 and g2\n\
         in turn), as the time from the kill to the start of the last connection that\n\
         still failed (a connection begun every 10 ms, 300 ms timeout): p50 {p50:.3} s,\n\
         p99 {p99:.3} s, max {max:.3} s (target: under 1 s). Every run: {all}.\n\n\
         The gateway path crosses one userspace WireGuard hop (boringtun, with\n\
         VXLAN inside) from the pod's node to the gateway; the anchor crosses none\n\
         (the node's own interface), so the rate and throughput ratios are mostly\n\
         the userspace tunnel's cost (`cargo xtask bench tunnel`; issue 14 is its\n\
         speed-up). The held connections went through c1/g1 alone (the policy\n\
         narrowed to it with `lab policy`) from two pods with the full local port\n\
         range, SNATed to its one egress IP over the whole port range (Cilium's\n\
         limit is 32,768 per egress IP and remote endpoint); the anchor is the one\n\
         unselected pod, one source address behind its node's masquerade.\n",
        date = report::today(),
        r1 = rates.0,
        r2 = rates.1,
        rr = rates.0 / rates.1,
        t1 = tput.0 / 1e6,
        t2 = tput.1 / 1e6,
        tr = tput.0 / tput.1,
        conns = opts.conns,
        h1 = held.0,
        h2 = held.1,
        hr = held.0 as f64 / held.1.max(1) as f64,
        n = fails.len(),
        p50 = pct(0.5),
        p99 = pct(0.99),
        all = fails
            .iter()
            .map(|f| format!("{f:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}
