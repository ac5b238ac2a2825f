//! `cargo xtask bench cni`: pods coming and going through the real
//! runtime (containerd on three nodes, `ctr run --cni`, so `meshgate-cni`)
//! at a steady rate (`--rate`, 100 a minute), `--pods` of them (100), ten
//! live at a time, in a world with the eBPF datapath. For each pod:
//!
//! - the ADD: from the start of `ctr run --cni` to its return (the runtime,
//!   IPAM, the veth, the agent's answer once identity and datapath are in
//!   place); the anchor: the same `ctr run` on the same node with host
//!   networking (no CNI at all), measured in the same run;
//! - the time until every other node's ipcache holds the pod, from the
//!   start of `ctr run` (an upper bound for "from ADD returning": the
//!   others often hold it before the ADD returns, and then it is the ADD's
//!   own time);
//! - after a delete (`lab rm`: task, container, CNI DEL), the time until
//!   every other node's ipcache dropped it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::report::{self, Machine};
use crate::lab::{World, LAB_STATE};
use crate::util::{self, Steps};

const WORLD: &str = "cnibench";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const LIVE: usize = 10;
/// Longest wait for an ipcache to follow.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);

const SCENARIO: &str = "name: cnibench\ndatapath: ebpf\nclusters:\n  - name: c1\n    id: 1\n    \
    podCIDR: 10.1.0.0/16\n    nodes:\n      - {name: n1, runtime: containerd}\n      - {name: n2, \
    runtime: containerd}\n      - {name: n3, runtime: containerd}\n";

struct Opts {
    pods: usize,
    rate: usize,
}

fn parse(args: &[&str]) -> Result<Opts> {
    let mut o = Opts {
        pods: 100,
        rate: 100,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(|v| v.parse::<usize>());
        match (*a, v) {
            ("--pods", Some(Ok(n))) if (LIVE + 1..=2000).contains(&n) => o.pods = n,
            ("--rate", Some(Ok(n))) if (1..=600).contains(&n) => o.rate = n,
            _ => bail!(
                "usage: cargo xtask bench cni [--pods 11..=2000] [--rate 1..=600 per minute] \
                 (defaults 100 pods at 100 a minute)"
            ),
        }
    }
    Ok(o)
}

fn node_dir(node: &str) -> PathBuf {
    PathBuf::from(LAB_STATE)
        .join(WORLD)
        .join("c1/nodes")
        .join(node)
}

/// Whether `node`'s ipcache.json holds `ip`.
fn holds(node: &str, ip: &str) -> bool {
    std::fs::read_to_string(node_dir(node).join("ipcache.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["entries"].get(ip).is_some())
}

/// Polls until `done` or the timeout; the time it took.
fn follow(since: Instant, done: impl Fn() -> bool) -> Result<Duration> {
    while !done() {
        if since.elapsed() > FOLLOW_TIMEOUT {
            bail!("an ipcache did not follow within {FOLLOW_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(since.elapsed())
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    report::percentile(&s, q)
}

/// `ctr run` on `node`'s containerd with host networking (the anchor).
fn ctr_host_net(node: &str, name: &str) -> Result<f64> {
    let sock = node_dir(node).join("containerd/containerd.sock");
    let sock = sock.display().to_string();
    let runc_root = node_dir(node).join("containerd/runc").display().to_string();
    let t = Instant::now();
    util::output(std::process::Command::new("ctr").args([
        "-a",
        &sock,
        "run",
        "-d",
        "--net-host",
        "--runc-root",
        &runc_root,
        "meshgate.local/busybox:1",
        name,
        "sleep",
        "100000",
    ]))?;
    let took = t.elapsed().as_secs_f64();
    let _ = util::output(
        std::process::Command::new("ctr")
            .args(["-a", &sock, "task", "kill", "-s", "SIGKILL", name]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while util::output(
        std::process::Command::new("ctr").args(["-a", &sock, "task", "rm", "-f", name]),
    )
    .is_err()
    {
        if Instant::now() > deadline {
            bail!("ctr task rm {name} kept failing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    util::output(std::process::Command::new("ctr").args(["-a", &sock, "container", "rm", name]))?;
    Ok(took)
}

struct Figures {
    add: Vec<f64>,
    anchor: Vec<f64>,
    propagate: Vec<f64>,
    removed: Vec<f64>,
    wall: f64,
}

pub fn run(args: &[&str]) -> Result<()> {
    let opts = parse(args)?;
    let mut steps = Steps::new(5);
    steps.step(
        "build meshgate and meshgate-cni (release)",
        super::build_release,
    )?;
    let dir = std::env::temp_dir().join(format!("meshgate-bench-cni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("cnibench.yaml");
    std::fs::write(&file, SCENARIO)?;
    let load = report::load_average();
    let bin = super::release_bin("meshgate");
    let world = steps.step("lab up (3 nodes with containerd, eBPF datapath)", || {
        World::up(&bin, WORLD, &file, &[])
    })?;
    let figures = steps.step(
        &format!("{} pods at {} a minute, {LIVE} live", opts.pods, opts.rate),
        || churn(&world, &opts),
    )?;
    drop(world);
    let _ = std::fs::remove_dir_all(&dir);
    let body = section(
        &Machine::detect(),
        &load,
        &report::load_average(),
        &opts,
        &figures,
    );
    println!("\n{body}");
    steps.step("docs/benchmarks.md", || report::write_section("cni", &body))?;
    let p99 = quantile(&figures.propagate, 0.99);
    steps.step(
        "target: p99 from ADD to every other node's ipcache under 1 s",
        || {
            if p99 < 1.0 {
                Ok(())
            } else {
                bail!("p99 {p99:.3} s is over 1 s")
            }
        },
    )
}

fn churn(world: &World, opts: &Opts) -> Result<Figures> {
    let every = Duration::from_secs_f64(60.0 / opts.rate as f64);
    let start = Instant::now();
    let mut f = Figures {
        add: Vec::new(),
        anchor: Vec::new(),
        propagate: Vec::new(),
        removed: Vec::new(),
        wall: 0.0,
    };
    let mut live: std::collections::VecDeque<(String, String, String)> = Default::default();
    for i in 0..opts.pods {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let node = NODES[i % NODES.len()];
        let name = format!("b{i}");
        let target = format!("c1/{node}");
        let t = Instant::now();
        let said = util::output(world.cmd().args([
            "lab",
            "run",
            &target,
            "--name",
            &name,
            "--world",
            WORLD,
            "--label",
            "app=bench",
        ]))?;
        f.add.push(t.elapsed().as_secs_f64());
        let ip = said
            .trim()
            .rsplit(' ')
            .next()
            .context("lab run printed no address")?
            .to_string();
        let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != node).collect();
        f.propagate
            .push(follow(t, || others.iter().all(|n| holds(n, &ip)))?.as_secs_f64());
        live.push_back((node.to_string(), name, ip));
        if live.len() > LIVE {
            let (node, name, ip) = live.pop_front().context("no live pod")?;
            let t = Instant::now();
            util::output(world.cmd().args([
                "lab",
                "rm",
                &format!("c1/{node}"),
                "--name",
                &name,
                "--world",
                WORLD,
            ]))?;
            let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != node).collect();
            f.removed
                .push(follow(t, || others.iter().all(|n| !holds(n, &ip)))?.as_secs_f64());
        }
        if i % 10 == 0 {
            // The anchor, interleaved: the runtime alone, no CNI.
            f.anchor.push(ctr_host_net(node, &format!("anchor{i}"))?);
        }
    }
    f.wall = start.elapsed().as_secs_f64();
    Ok(f)
}

fn section(m: &Machine, load: &str, load_after: &str, o: &Opts, f: &Figures) -> String {
    let ms = |v: &[f64], q: f64| format!("{:.0}", quantile(v, q) * 1000.0);
    format!(
        "Measured {} on {m} with `cargo xtask bench cni --pods {} --rate {}`; load average {load} \
         before, {load_after} after.\n\
         Three nodes with containerd (Debian's 1.6, runc), the eBPF datapath; {} pods made with \
         `ctr run --cni` (meshgate-cni, host-local IPAM) round-robin over the nodes at {} a \
         minute ({:.0} s in all), {LIVE} live at a time (each new one past ten deletes the \
         oldest: `lab rm`, CNI DEL included). Times in ms.\n\n\
         | | p50 | p99 | max |\n|---|---:|---:|---:|\n\
         | ADD: `ctr run --cni` start to return | {} | {} | {} |\n\
         | anchor: `ctr run --net-host` (no CNI), same nodes, same run ({} runs) | {} | {} | {} |\n\
         | every other node's ipcache holds the pod, from the start of `ctr run` | {} | {} | {} |\n\
         | every other node's ipcache dropped it, from the start of `lab rm` | {} | {} | {} |\n\n\
         Target: p99 from ADD to every other node's ipcache under 1 s ({}).\n",
        report::today(),
        o.pods,
        o.rate,
        o.pods,
        o.rate,
        f.wall,
        ms(&f.add, 0.5),
        ms(&f.add, 0.99),
        ms(&f.add, 1.0),
        f.anchor.len(),
        ms(&f.anchor, 0.5),
        ms(&f.anchor, 0.99),
        ms(&f.anchor, 1.0),
        ms(&f.propagate, 0.5),
        ms(&f.propagate, 0.99),
        ms(&f.propagate, 1.0),
        ms(&f.removed, 0.5),
        ms(&f.removed, 0.99),
        ms(&f.removed, 1.0),
        if quantile(&f.propagate, 0.99) < 1.0 {
            "met"
        } else {
            "NOT met"
        },
    )
}
