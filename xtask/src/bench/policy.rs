//! `cargo xtask bench policy`: TCP request/response rate between two pods of
//! one node with 10 and with 10,000 policy entries in the eBPF datapath's
//! `mg_policy`, with 10,000 CIDR prefixes (10,000 world entries in the
//! ipcache's LPM trie and their policy entries), and with entity entries
//! beside 10,000 identity entries, beside the same with 10 and 10,000
//! iptables rules in the node's FORWARD chain (plain datapath), measured in
//! the same run.
//!
//! The pods are on one node so that the figure is the datapath's and not the
//! userspace WireGuard's. The policy entries are all for the server's
//! identity (one allowed port per entry from the client's identity, the
//! measured port among them); the iptables rules match TCP ports of a source
//! that is not the client, so every packet walks all of them before the
//! final accept. The CIDR configuration gives the server's ingress 10,000
//! `fromCIDR` /32 prefixes (each a CIDR identity, an ipcache world entry and
//! a policy entry) beside the client's port, so every packet's ipcache
//! lookups go through the larger trie; the entity configuration adds
//! `fromEntities` (world, host, remote-node, kube-apiserver) to the 10,000
//! identity entries. Configurations are interleaved over several rounds and
//! the median taken, to spread the noise of a shared machine over them all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::release_bin;
use super::report::{self, Machine};
use crate::lab::World;
use crate::util::{self, in_netns, Steps};

const WORLD_EBPF: &str = "polbe";
const WORLD_PLAIN: &str = "polbp";
const PORT: u16 = 5001;
/// What the eBPF datapath's policy holds in a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    /// `n` entries for the server's identity from the client's, one TCP port each.
    Entries(usize),
    /// The client's port plus `n` `fromCIDR` /32 prefixes on another port.
    Cidrs(usize),
    /// `n` identity entries plus `fromEntities` on another port.
    Entities(usize),
}

/// The eBPF configurations; the first is the baseline of the ratios.
const CONFIGS: [Config; 4] = [
    Config::Entries(10),
    Config::Entries(10_000),
    Config::Cidrs(10_000),
    Config::Entities(10_000),
];
/// The iptables anchor's rule counts.
const SIZES: [usize; 2] = [10, 10_000];
/// The entities of [`Config::Entities`], each one entry.
const ENTITIES: [&str; 4] = ["world", "host", "remote-node", "kube-apiserver"];
/// The port the CIDR and entity rules allow (not measured).
const OTHER_PORT: u16 = 5002;

impl Config {
    /// The entries the agent reports for it.
    fn entries(self) -> usize {
        match self {
            Config::Entries(n) => n,
            Config::Cidrs(n) => 1 + n,
            Config::Entities(n) => n + ENTITIES.len(),
        }
    }

    fn name(self) -> String {
        match self {
            Config::Entries(n) => format!("policy entries {}", thousands(n)),
            Config::Cidrs(n) => format!("CIDR prefixes {} (+1 entry)", thousands(n)),
            Config::Entities(n) => format!(
                "policy entries {} + {} entity entries",
                thousands(n),
                ENTITIES.len()
            ),
        }
    }

    fn file_name(self) -> String {
        format!("{self:?}")
            .to_ascii_lowercase()
            .replace(['(', ')'], "-")
    }
}

fn thousands(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}
const ROUNDS: usize = 8;
const SECONDS: u64 = 2;
/// Pause after a configuration change before measuring.
const SETTLE: Duration = Duration::from_secs(1);

struct Opts {
    rounds: usize,
    seconds: u64,
}

fn parse(args: &[&str]) -> Result<Opts> {
    let mut o = Opts {
        rounds: ROUNDS,
        seconds: SECONDS,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(|v| v.parse::<u64>());
        match (*a, v) {
            ("--rounds", Some(Ok(n))) if (1..=20).contains(&n) => o.rounds = n as usize,
            ("--seconds", Some(Ok(n))) if (1..=60).contains(&n) => o.seconds = n,
            _ => bail!(
                "usage: cargo xtask bench policy [--rounds 1..=20] [--seconds 1..=60] \
                 (defaults {ROUNDS} rounds of {SECONDS} s per configuration)"
            ),
        }
    }
    Ok(o)
}

pub fn run(args: &[&str]) -> Result<()> {
    let opts = parse(args)?;
    if !util::succeeds(Command::new("iptables-restore").arg("--version")) {
        bail!("iptables-restore is missing (the anchor): run `cargo xtask deps` (Debian package iptables)");
    }
    let mut steps = Steps::new(4);
    steps.step(
        "build meshgate and mg-probe (release)",
        super::build_release,
    )?;
    let dir = tempfile_dir()?;
    let load = report::load_average();
    let ours = steps.step(
        "eBPF datapath: 10 and 10,000 entries, 10,000 CIDR prefixes, entities",
        || ours(&dir, &opts),
    )?;
    let ipt = steps.step("plain datapath, 10 and 10,000 iptables rules", || {
        iptables(&dir, &opts)
    })?;
    let machine = Machine::detect();
    let load_after = report::load_average();
    let table = table(&ours, &ipt);
    println!("\npolicy, on {machine}, load average {load} before, {load_after} after\n\n{table}");
    let _ = std::fs::remove_dir_all(&dir);
    steps.step("docs/benchmarks.md", || {
        report::write_section(
            "policy",
            &section(&machine, &load, &load_after, &opts, &table),
        )
    })
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meshgate-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// One node, a client pod and a server pod.
fn scenario(world: &str, ebpf: bool, policy: Option<&str>) -> String {
    let mut y = format!(
        "name: {world}\n{}clusters:\n  - name: c1\n    id: 1\n    podCIDR: 10.1.0.0/16\n    \
         nodes:\n      - name: n1\n        pods:\n          - {{name: c, labels: {{app: rrc}}}}\n          \
         - {{name: s, labels: {{app: rrs}}}}\n",
        if ebpf { "datapath: ebpf\n" } else { "" }
    );
    if let Some(p) = policy {
        y.push_str("policies:\n");
        for line in p.lines() {
            y.push_str("  ");
            y.push_str(line);
            y.push('\n');
        }
    }
    y
}

/// A CiliumNetworkPolicy for the server's identity as `c` says: TCP from
/// the client on the measured port (and `n - 1` others for
/// [`Config::Entries`] and [`Config::Entities`]); `fromCIDR` /32 prefixes
/// (100.64.0.0/10, not pod addresses) or `fromEntities` on [`OTHER_PORT`].
fn policy(c: Config) -> String {
    let client_ports = match c {
        Config::Entries(n) | Config::Entities(n) => n,
        Config::Cidrs(_) => 1,
    };
    let mut y = String::from(
        "- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: rr, namespace: default}\n  \
         spec:\n    endpointSelector: {matchLabels: {app: rrs}}\n    ingress:\n      \
         - fromEndpoints: [{matchLabels: {app: rrc}}]\n        toPorts:\n          - ports:\n",
    );
    for port in std::iter::once(PORT).chain((0..client_ports - 1).map(|i| 20_001 + i as u16)) {
        y.push_str(&format!(
            "              - {{port: \"{port}\", protocol: TCP}}\n"
        ));
    }
    let other = format!(
        "        toPorts:\n          - ports:\n              - {{port: \"{OTHER_PORT}\", protocol: TCP}}\n"
    );
    match c {
        Config::Entries(_) => {}
        Config::Cidrs(n) => {
            y.push_str("      - fromCIDR:\n");
            for i in 0..n as u32 {
                let a = std::net::Ipv4Addr::from(0x6440_0000 + i);
                y.push_str(&format!("          - {a}/32\n"));
            }
            y.push_str(&other);
        }
        Config::Entities(_) => {
            y.push_str(&format!(
                "      - fromEntities: [{}]\n",
                ENTITIES.join(", ")
            ));
            y.push_str(&other);
        }
    }
    y
}

/// The policy as a file for `meshgate lab policy` (a top-level document).
fn policy_file(dir: &Path, c: Config) -> Result<PathBuf> {
    let text: String = policy(c)
        .lines()
        .map(|l| {
            format!(
                "{}\n",
                l.strip_prefix("- ")
                    .or_else(|| l.strip_prefix("  "))
                    .unwrap_or(l)
            )
        })
        .collect();
    let path = dir.join(format!("policy-{}.yaml", c.file_name()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn pod_ns(world: &str, pod: &str) -> String {
    format!("mg-{world}-c1-p-{pod}")
}

/// Starts the echo server in pod `s`; killed on drop.
struct Server(std::process::Child);

impl Server {
    fn start(world: &str) -> Result<Server> {
        let probe = release_bin("mg-probe");
        let child = in_netns(&pod_ns(world, "s"), probe.to_str().context("probe path")?)
            .args(["serve", &PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mg-probe serve")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Transactions per second of one `mg-probe rr` run from `c` to `s_ip`.
fn rr(world: &str, s_ip: &str, port: u16, secs: u64) -> Result<f64> {
    let probe = release_bin("mg-probe");
    let out = util::output(
        in_netns(&pod_ns(world, "c"), probe.to_str().context("probe path")?).args([
            "rr",
            s_ip,
            &port.to_string(),
            &secs.to_string(),
        ]),
    )?;
    out.split_whitespace()
        .skip_while(|w| *w != "rate")
        .nth(1)
        .and_then(|r| r.trim_end_matches("/s").parse().ok())
        .with_context(|| format!("mg-probe rr printed no rate: {out:?}"))
}

fn connects(world: &str, s_ip: &str, port: u16) -> bool {
    let probe = release_bin("mg-probe");
    util::succeeds(
        in_netns(&pod_ns(world, "c"), &probe.display().to_string()).args([
            "connect",
            s_ip,
            &port.to_string(),
            "500",
        ]),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Rates (configuration name, median over rounds, all rounds), one per
/// configuration.
type Rates = Vec<(String, f64, Vec<f64>)>;

fn ours(dir: &Path, opts: &Opts) -> Result<Rates> {
    let bin = release_bin("meshgate");
    let file = dir.join("ebpf.yaml");
    std::fs::write(&file, scenario(WORLD_EBPF, true, Some(&policy(CONFIGS[0]))))?;
    let files: Vec<PathBuf> = CONFIGS
        .iter()
        .map(|c| policy_file(dir, *c))
        .collect::<Result<_>>()?;
    let world = World::up(&bin, WORLD_EBPF, &file, &[])?;
    let s_ip = world.ip("c1/s")?;
    let _server = Server::start(WORLD_EBPF)?;
    let load = |i: usize| {
        util::output(world.cmd().args([
            "lab",
            "policy",
            "--world",
            WORLD_EBPF,
            files[i].to_str().context("path")?,
        ]))
        .with_context(|| format!("loading {}", CONFIGS[i].name()))
    };
    let check = |i: usize| {
        let n = CONFIGS[i].entries();
        let entries = policy_entries()?;
        if entries != n {
            bail!(
                "the agent reports {entries} policy entries, not {n} ({})",
                CONFIGS[i].name()
            );
        }
        // The entries are consulted: a port not among them is dropped.
        if connects(WORLD_EBPF, &s_ip, 20_000) {
            bail!("a port outside the policy got through: the policy is not enforced");
        }
        Ok(())
    };
    let names: Vec<String> = CONFIGS.iter().map(|c| c.name()).collect();
    measure(WORLD_EBPF, &s_ip, opts, &names, load, check)
}

/// `opts.rounds` rounds over the configurations `names`: `load(i)` puts
/// the `i`th in place (its time is reported), `check(i)` checks it is in
/// force, then the rate is measured.
fn measure<L, C>(
    world: &str,
    s_ip: &str,
    opts: &Opts,
    names: &[String],
    load: impl Fn(usize) -> Result<L>,
    check: impl Fn(usize) -> Result<C>,
) -> Result<Rates> {
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..opts.rounds {
        for (i, name) in names.iter().enumerate() {
            let t = Instant::now();
            load(i)?;
            let loaded = t.elapsed();
            check(i)?;
            std::thread::sleep(SETTLE);
            let rate = rr(world, s_ip, PORT, opts.seconds)?;
            eprintln!(
                "round {}: {name} (loaded in {:?}): {rate:.0} transactions/s",
                round + 1,
                loaded
            );
            runs[i].push(rate);
        }
    }
    Ok(names
        .iter()
        .zip(runs)
        .map(|(n, r)| (n.clone(), median(r.clone()), r))
        .collect())
}

fn policy_entries() -> Result<usize> {
    let path = PathBuf::from(crate::lab::LAB_STATE)
        .join(WORLD_EBPF)
        .join("c1/nodes/n1/status.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["datapath"]["policy"]["entries"]
        .as_u64()
        .map(|n| n as usize)
        .with_context(|| format!("{} has no datapath.policy.entries", path.display()))
}

/// `iptables-restore` input: `n` FORWARD rules that do not match the flow
/// (a source that is not the client), then an accept.
fn iptables_rules(n: usize) -> String {
    let mut r =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..n {
        r.push_str(&format!(
            "-A FORWARD -s 192.0.2.1/32 -p tcp -m tcp --dport {} -j DROP\n",
            20_001 + i
        ));
    }
    r.push_str("-A FORWARD -j ACCEPT\nCOMMIT\n");
    r
}

fn iptables(dir: &Path, opts: &Opts) -> Result<Rates> {
    let bin = release_bin("meshgate");
    let file = dir.join("plain.yaml");
    std::fs::write(&file, scenario(WORLD_PLAIN, false, None))?;
    let world = World::up(&bin, WORLD_PLAIN, &file, &[])?;
    let s_ip = world.ip("c1/s")?;
    let node = format!("mg-{WORLD_PLAIN}-c1-n-n1");
    let _server = Server::start(WORLD_PLAIN)?;
    let files: Vec<PathBuf> = SIZES
        .iter()
        .map(|n| {
            let rules = dir.join(format!("iptables-{n}"));
            std::fs::write(&rules, iptables_rules(*n))?;
            Ok(rules)
        })
        .collect::<Result<_>>()?;
    let load = |i: usize| {
        util::run(in_netns(&node, "iptables-restore").arg(&files[i]))
            .with_context(|| format!("loading {} iptables rules in {node}", SIZES[i]))
    };
    let check = |i: usize| {
        let n = SIZES[i];
        let listed = util::output(in_netns(&node, "iptables").args(["-S", "FORWARD"]))?;
        let count = listed
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .count();
        if count != n + 1 {
            bail!("{node}'s FORWARD chain holds {count} rules, not {}", n + 1);
        }
        Ok(())
    };
    let names: Vec<String> = SIZES
        .iter()
        .map(|n| format!("iptables FORWARD rules {}", thousands(*n)))
        .collect();
    measure(WORLD_PLAIN, &s_ip, opts, &names, load, check)
}

fn best(all: &[f64]) -> f64 {
    all.iter().copied().fold(0.0, f64::max)
}

fn table(ours: &Rates, ipt: &Rates) -> String {
    let mut t = String::from(
        "| configuration | transactions/s, median | best round | rounds |\n|---|---:|---:|---|\n",
    );
    let row = |prefix: &str, (name, med, all): &(String, f64, Vec<f64>)| {
        let rounds: Vec<String> = all.iter().map(|r| format!("{r:.0}")).collect();
        format!(
            "| {prefix}{name} | {med:.0} | {:.0} | {} |\n",
            best(all),
            rounds.join(", ")
        )
    };
    for r in ours {
        t.push_str(&row("eBPF datapath, ", r));
    }
    for r in ipt {
        t.push_str(&row("plain datapath, ", r));
    }
    // Each larger configuration against the first (10 entries / 10 rules).
    let median_ratio = |r: &Rates, i: usize| r[i].1 / r[0].1;
    let best_ratio = |r: &Rates, i: usize| best(&r[i].2) / best(&r[0].2);
    let verdict = |x: f64| if x >= 0.95 { "met" } else { "**not met**" };
    t.push_str("\n| ratio | of medians | of best rounds |\n|---|---:|---:|\n");
    for i in 1..ours.len() {
        t.push_str(&format!(
            "| ours, {} / ours, {} (target ≥ 0.95) | **{:.3}** ({}) | **{:.3}** ({}) |\n",
            ours[i].0,
            ours[0].0,
            median_ratio(ours, i),
            verdict(median_ratio(ours, i)),
            best_ratio(ours, i),
            verdict(best_ratio(ours, i)),
        ));
    }
    t.push_str(&format!(
        "| iptables@10,000 / iptables@10 | {:.3} | {:.3} |\n",
        median_ratio(ipt, 1),
        best_ratio(ipt, 1),
    ));
    t
}

fn section(machine: &Machine, load: &str, load_after: &str, opts: &Opts, table: &str) -> String {
    format!(
        "Measured {date} on {machine} with `cargo xtask bench policy`\n\
         (1-minute load average {load} before the run, {load_after} after; the\n\
         machine is shared, so other work shows in the figures).\n\n\
         TCP request/response: `mg-probe rr` (tests/src/bin/mg-probe.rs, release build)\n\
         sends 1 byte and waits for the echo, over one connection, between two pods\n\
         of one node (lab worlds `{WORLD_EBPF}` and `{WORLD_PLAIN}`: pod veth, node\n\
         routing, pod veth; no tunnel). Ours: the eBPF datapath with a\n\
         CiliumNetworkPolicy giving the server's identity 10 or 10,000 entries (one\n\
         allowed TCP port each from the client's identity, the measured port among\n\
         them; the agent's status confirms the count, and a port outside them is\n\
         checked to be dropped); the client's port plus 10,000 `fromCIDR` /32\n\
         prefixes (10,000 CIDR identities: world entries in the ipcache's LPM trie,\n\
         which every packet's lookups walk, and their entries); 10,000 entries plus\n\
         `fromEntities` (world, host, remote-node, kube-apiserver); switched with\n\
         `meshgate lab policy`. Anchor: the\n\
         plain datapath with 10 or 10,000 rules in the node's iptables FORWARD chain\n\
         (iptables-nft; rules matching another source, so each packet walks them all)\n\
         ahead of an accept. {rounds} rounds of {secs} s per configuration,\n\
         interleaved; the table gives the median, the best round and every round.\n\
         Other work on the machine only ever lowers a round's rate, so where rounds\n\
         scatter the best round is the less disturbed estimate; both ratios are given.\n\n{table}",
        date = report::today(),
        rounds = opts.rounds,
        secs = opts.seconds,
    )
}
