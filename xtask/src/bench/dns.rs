//! `cargo xtask bench dns`: the DNS proxy beside dnsmasq, both forwarding
//! to the same upstream (the lab's DNS server) on the same machine, in the
//! same run. The world is `scenarios/fqdn.yaml` with 1,000 more `toFQDNs`
//! rules on the querying pods' identity; dnsperf runs in pod c1/app1:
//!
//! - through the proxy: to 10.96.0.10:53, which the node DNATs to it;
//! - the anchor: dnsmasq in c1/n1's namespace on the node's address, port
//!   5353 (port 53 from a pod always goes to the proxy), no cache
//!   (`--cache-size=0`: the proxy does not cache either);
//!
//! each first unlimited (the highest qps either reaches), then at a fixed
//! 10,000 qps with every query's latency recorded (dnsperf -v), for
//! p50/p99/p99.9. Three rounds, the two servers interleaved in each; each
//! figure is the median of its rounds, so one stall of the shared machine
//! does not decide the ratio. The CPU time each server used per query
//! (from /proc, during the unlimited runs) is printed beside it.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::report::{self, Machine};
use crate::lab::World;
use crate::util::{self, in_netns, ChildGuard, Steps};

const WORLD: &str = "dnsbench";
const PROXY: &str = "10.96.0.10";
const DNSMASQ_PORT: &str = "5353";
const RULES: usize = 1000;
const SECONDS: &str = "10";
const FIXED_QPS: &str = "10000";
const ROUNDS: usize = 3;

fn pod_ns() -> String {
    format!("mg-{WORLD}-c1-p-app1")
}

fn node_ns() -> String {
    format!("mg-{WORLD}-c1-n-n1")
}

/// fqdn.yaml renamed, with `RULES` more matchName rules for the clients and
/// UDP 5353 (the anchor) open to them.
fn scenario() -> Result<String> {
    let text = std::fs::read_to_string(util::repo_root().join("scenarios/fqdn.yaml"))
        .context("reading scenarios/fqdn.yaml")?;
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).context("parsing fqdn.yaml")?;
    v["name"] = WORLD.into();
    let policies = v["policies"]
        .as_sequence_mut()
        .context("fqdn.yaml has no policies")?;
    let client = policies
        .iter_mut()
        .find(|p| p["metadata"]["name"] == "fqdn-client")
        .context("fqdn.yaml has no fqdn-client policy")?;
    let egress = client["spec"]["egress"]
        .as_sequence_mut()
        .context("fqdn-client has no egress rules")?;
    let names: Vec<serde_yaml::Value> = (0..RULES)
        .map(|i| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("matchName".into(), format!("r{i}.rules.example.org").into());
            serde_yaml::Value::Mapping(m)
        })
        .collect();
    let mut rule = serde_yaml::Mapping::new();
    rule.insert("toFQDNs".into(), serde_yaml::Value::Sequence(names));
    egress.push(serde_yaml::Value::Mapping(rule));
    egress.push(
        serde_yaml::from_str(&format!(
            "{{toPorts: [{{ports: [{{port: \"{DNSMASQ_PORT}\", protocol: UDP}}]}}]}}"
        ))
        .context("the anchor's rule")?,
    );
    serde_yaml::to_string(&v).context("writing the scenario")
}

/// One dnsperf run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    qps: f64,
    lost_pct: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// CPU time the server used per answered query, µs (unlimited runs).
    cpu_us: f64,
}

impl Run {
    /// Each figure the median of `runs`.
    fn median(runs: &[Run]) -> Run {
        let m = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        Run {
            qps: m(|r| r.qps),
            lost_pct: m(|r| r.lost_pct),
            p50_ms: m(|r| r.p50_ms),
            p99_ms: m(|r| r.p99_ms),
            p999_ms: m(|r| r.p999_ms),
            cpu_us: m(|r| r.cpu_us),
        }
    }
}

/// User plus system CPU time of process `pid` (all its threads), in µs.
fn cpu_time_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from the
    // state: utime and stime are the 12th and 13th of them.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command name in /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("no utime/stime in /proc/PID/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz * 1e6)
}

/// The pid of the DNS proxy in the node's namespace.
fn proxy_pid() -> Result<u32> {
    let out = util::output(std::process::Command::new("ip").args(["netns", "pids", &node_ns()]))?;
    out.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == b"dnsproxy"))
                .unwrap_or(false)
        })
        .with_context(|| format!("no meshgate dnsproxy runs in {}", node_ns()))
}

fn field(out: &str, label: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.trim_start().starts_with(label))?
        .split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_end_matches('%')
        .parse()
        .ok()
}

/// dnsperf from the pod against `server:port`, served by process `pid`;
/// `qps` None = unlimited.
fn dnsperf(queries: &str, server: &str, port: &str, pid: u32, qps: Option<&str>) -> Result<Run> {
    let mut cmd = in_netns(&pod_ns(), "dnsperf");
    cmd.args([
        "-s", server, "-p", port, "-d", queries, "-l", SECONDS, "-c", "8", "-T", "1",
    ]);
    match qps {
        Some(q) => {
            cmd.args(["-Q", q, "-v", "-q", "1000"]);
        }
        None => {
            cmd.args(["-q", "200"]);
        }
    }
    let cpu_before = cpu_time_us(pid)?;
    let out = util::output(&mut cmd)?;
    let cpu = cpu_time_us(pid)? - cpu_before;
    let qps_seen = field(&out, "Queries per second").context("dnsperf printed no qps")?;
    let completed = field(&out, "Queries completed").unwrap_or(f64::NAN);
    let lost = out
        .lines()
        .find(|l| l.trim_start().starts_with("Queries lost"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|s| s.trim_end_matches(')').trim_end_matches('%').parse().ok())
        .unwrap_or(f64::NAN);
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(Run {
        qps: qps_seen,
        lost_pct: lost,
        p50_ms: report::percentile(&lat, 0.5),
        p99_ms: report::percentile(&lat, 0.99),
        p999_ms: report::percentile(&lat, 0.999),
        cpu_us: cpu / completed,
    })
}

pub fn run(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("cargo xtask bench dns takes no arguments");
    }
    let mut steps = Steps::new(6);
    steps.step("build meshgate (release)", || {
        util::run(util::cargo().args(["build", "--release", "-p", "meshgate-gateway"]))
    })?;
    let dir = std::env::temp_dir().join(format!("meshgate-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{WORLD}.yaml"));
    std::fs::write(&file, scenario()?)?;
    let queries = dir.join("queries");
    std::fs::write(
        &queries,
        "api.example.com A\nwww.example.com A\nshort.example.com A\nx.y.example.net A\n",
    )?;
    let queries = queries.display().to_string();
    let load = report::load_average();
    let bin = super::release_bin("meshgate");
    let world = steps.step("lab up (fqdn world, 1,000 more toFQDNs rules)", || {
        World::up(&bin, WORLD, &file, &[])
    })?;
    let node_ip = world.ip("c1/n1")?;
    let upstream = "203.0.113.53";
    let mut dnsmasq = steps.step("dnsmasq (the anchor) on the node", || {
        let mut cmd = in_netns(&node_ns(), "dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--cache-size=0",
            "--bind-interfaces",
            &format!("--listen-address={node_ip}"),
            &format!("--port={DNSMASQ_PORT}"),
            &format!("--server={upstream}"),
            "--pid-file=",
            "--user=root",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let g = ChildGuard::spawn(&mut cmd, "dnsmasq")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(g)
    })?;
    let rounds = steps.step("dnsperf: 3 rounds of unlimited, then 10,000 qps", || {
        let proxy = proxy_pid()?;
        let anchor = dnsmasq.child_mut().context("dnsmasq is gone")?.id();
        // Interleaved, so drift of the machine hits both alike.
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let p_max = dnsperf(&queries, PROXY, "53", proxy, None)?;
            let d_max = dnsperf(&queries, &node_ip, DNSMASQ_PORT, anchor, None)?;
            let p_fix = dnsperf(&queries, PROXY, "53", proxy, Some(FIXED_QPS))?;
            let d_fix = dnsperf(&queries, &node_ip, DNSMASQ_PORT, anchor, Some(FIXED_QPS))?;
            println!(
                "round {}: unlimited {:.0} vs {:.0} qps ({:.2} vs {:.2} µs CPU a query); \
                 p99 at {FIXED_QPS} qps {:.3} vs {:.3} ms",
                rounds.len() + 1,
                p_max.qps,
                d_max.qps,
                p_max.cpu_us,
                d_max.cpu_us,
                p_fix.p99_ms,
                d_fix.p99_ms
            );
            rounds.push([p_max, d_max, p_fix, d_fix]);
        }
        Ok(rounds)
    })?;
    let column = |i: usize| Run::median(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>());
    let (max, fixed) = ((column(0), column(1)), (column(2), column(3)));
    let _ = dnsmasq.stop(libc::SIGTERM, Duration::from_secs(2));
    drop(world);
    let _ = std::fs::remove_dir_all(&dir);
    let machine = Machine::detect();
    let load_after = report::load_average();
    let body = section(&machine, &load, &load_after, max, fixed);
    println!("\n{body}");
    steps.step("docs/benchmarks.md", || report::write_section("dns", &body))
}

fn section(
    machine: &Machine,
    load: &str,
    load_after: &str,
    (p_max, d_max): (Run, Run),
    (p_fix, d_fix): (Run, Run),
) -> String {
    let ms = |v: f64| format!("{v:.3}");
    format!(
        "`cargo xtask bench dns` on {machine}; load average {load} before, {load_after} after.\n\
         The DNS proxy (`meshgate dnsproxy`, {RULES} extra toFQDNs rules on the querying\n\
         identity, every answer's addresses written into mg_fqdn before it is sent) beside\n\
         dnsmasq (`--cache-size=0`), both forwarding to the lab's DNS server; dnsperf\n\
         (8 clients, {SECONDS} s each) in the same pod, the same run: {ROUNDS} rounds, the\n\
         servers interleaved, each figure the median of the rounds.\n\n\
         | | proxy | dnsmasq | ratio |\n\
         |---|---:|---:|---:|\n\
         | unlimited: qps | {:.0} | {:.0} | {:.2} |\n\
         | unlimited: lost | {:.2}% | {:.2}% | |\n\
         | unlimited: CPU µs a query | {:.2} | {:.2} | {:.2} |\n\
         | {FIXED_QPS} qps: achieved | {:.0} | {:.0} | |\n\
         | {FIXED_QPS} qps: p50 ms | {} | {} | |\n\
         | {FIXED_QPS} qps: p99 ms | {} | {} | |\n\
         | {FIXED_QPS} qps: p99.9 ms | {} | {} | |\n\n\
         Added p99 at {FIXED_QPS} qps over dnsmasq: {} ms.\n",
        p_max.qps,
        d_max.qps,
        p_max.qps / d_max.qps,
        p_max.lost_pct,
        d_max.lost_pct,
        p_max.cpu_us,
        d_max.cpu_us,
        p_max.cpu_us / d_max.cpu_us,
        p_fix.qps,
        d_fix.qps,
        ms(p_fix.p50_ms),
        ms(d_fix.p50_ms),
        ms(p_fix.p99_ms),
        ms(d_fix.p99_ms),
        ms(p_fix.p999_ms),
        ms(d_fix.p999_ms),
        ms(p_fix.p99_ms - d_fix.p99_ms),
    )
}
