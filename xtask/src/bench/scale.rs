//! `cargo xtask bench scale`: one cluster's discovery at Kubernetes scale
//! (`discovery/examples/scale_bench.rs`), on the embedded store and on
//! etcd in the same run, against the targets (p99 change to every
//! watcher under 1 s; one change's store write under 1 ms on the embedded
//! store), with the whole-state `state.json` save of the store before as
//! the anchor; then, for the watch fan-out, the embedded store again with
//! snapshots taken whole (the anchor for a watcher's memory) and with
//! 5,000 watchers (`--fanout`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::example;
use super::report::{self, Machine};
use crate::util::Steps;

const ETCD: &str = "/usr/bin/etcd";
const P99_TARGET_S: f64 = 1.0;
const SAVE_TARGET_MS: f64 = 1.0;

struct Opts {
    /// Passed to scale_bench as they are.
    forwarded: Vec<String>,
    /// Watchers of the fan-out run (0: none).
    fanout: u64,
    command: String,
}

fn parse(args: &[&str]) -> Result<Opts> {
    let usage = "usage: cargo xtask bench scale [--nodes N (5000)] [--endpoints E (30)] \
        [--identities I (1000)] [--services S (500)] [--watchers W (200)] [--rate R (100)] \
        [--seconds T (60)] [--register-timeout S (600)] [--fanout W (5000 watchers on the \
        embedded store; 0: not run)]";
    let known = [
        "--nodes",
        "--endpoints",
        "--identities",
        "--services",
        "--watchers",
        "--rate",
        "--seconds",
        "--register-timeout",
    ];
    let mut forwarded = Vec::new();
    let mut fanout = 5000;
    let mut command = String::from("cargo xtask bench scale");
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if !known.contains(flag) && *flag != "--fanout" {
            bail!("unknown flag {flag}\n{usage}");
        }
        let Some(v) = it.next() else {
            bail!("{flag} needs a value\n{usage}");
        };
        let Ok(n) = v.parse::<u64>() else {
            bail!("{flag} {v:?}: not a number\n{usage}");
        };
        command.push_str(&format!(" {flag} {v}"));
        if *flag == "--fanout" {
            fanout = n;
        } else {
            forwarded.extend([(*flag).to_string(), (*v).to_string()]);
        }
    }
    Ok(Opts {
        forwarded,
        fanout,
        command,
    })
}

/// A real etcd for the run, its data in a temp dir; killed on drop.
struct Etcd {
    child: Child,
    client: String,
    dir: std::path::PathBuf,
}

impl Etcd {
    fn start() -> Result<Etcd> {
        if !Path::new(ETCD).exists() {
            bail!("{ETCD} is missing: install it with `cargo xtask deps` (apt-get install etcd-server)");
        }
        let dir = crate::util::target_dir().join(format!("scale-etcd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = |l: std::net::TcpListener| l.local_addr().map(|a| a.port());
        let cport = port(std::net::TcpListener::bind("127.0.0.1:0")?)?;
        let pport = port(std::net::TcpListener::bind("127.0.0.1:0")?)?;
        let client = format!("127.0.0.1:{cport}");
        let peer = format!("http://127.0.0.1:{pport}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(ETCD)
            .args(["--name", "scale"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("scale={peer}")])
            // The default 2 GiB backend quota is enough for 150,000 endpoints.
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        let etcd = Etcd { child, client, dir };
        let t = Instant::now();
        while std::net::TcpStream::connect(&etcd.client).is_err() {
            if t.elapsed() > Duration::from_secs(15) {
                bail!("etcd did not listen on {} within 15 s", etcd.client);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    let opts = parse(args)?;
    let mut steps = Steps::new(if opts.fanout > 0 { 6 } else { 5 });
    steps.step("build scale_bench (release)", || {
        example::build("scale_bench")
    })?;
    let load = report::load_average();
    let run_on = |store: &str, extra: &[String]| -> Result<Value> {
        let mut a = vec!["--store".to_string(), store.to_string()];
        a.extend(opts.forwarded.iter().cloned());
        // later flags win: the run's own after the forwarded ones
        a.extend(extra.iter().cloned());
        let (v, _) = example::run("scale_bench", &a)?;
        Ok(v)
    };
    let mut runs: Vec<(String, Value)> = Vec::new();
    let embedded = steps.step("embedded store (state.redb, on disk)", || {
        run_on("embedded", &[])
    })?;
    runs.push(("embedded (redb)".into(), embedded));
    let etcd = steps.step("etcd store", || {
        let e = Etcd::start()?;
        run_on(&format!("etcd://{}", e.client), &[])
    })?;
    runs.push(("etcd".into(), etcd));
    let whole = steps.step(
        "anchor: embedded store, snapshots whole (as agents before took them)",
        || run_on("embedded", &["--snapshots".into(), "whole".into()]),
    )?;
    runs.push(("anchor: embedded, whole snapshots".into(), whole));
    if opts.fanout > 0 {
        let w = opts.fanout.to_string();
        let fanout = steps.step(&format!("fan-out: embedded store, {w} watchers"), || {
            run_on("embedded", &["--watchers".into(), w.clone()])
        })?;
        runs.push((format!("embedded, {w} watchers"), fanout));
    }
    let machine = Machine::detect();
    let table = table(&runs);
    println!("\nscale, on {machine}, load average {load} before\n\n{table}");
    steps.step("docs/benchmarks.md", || {
        report::write_section("scale", &section(&machine, &load, &opts.command, &table))
    })?;
    for (name, r) in &runs {
        if let Some(e) = r["error"].as_str() {
            bail!("scale_bench ({name}) failed: {e}");
        }
    }
    Ok(())
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |x| format!("{x:.digits$}"))
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |k| format!("{:.0}", k / 1024.0))
}

/// How a row of the table reads one run's figures.
type Cell = Box<dyn Fn(&Value) -> String>;

fn table(runs: &[(String, Value)]) -> String {
    let mut t = String::from("|");
    for (name, _) in runs {
        t.push_str(&format!(" | {name}"));
    }
    t.push_str(" |\n|---|");
    t.push_str(&"---:|".repeat(runs.len()));
    t.push('\n');
    let rows: Vec<(&str, Cell)> = vec![
        (
            "nodes registered (asked)",
            Box::new(|r: &Value| format!("{} ({})", r["registered_nodes"], r["nodes"])),
        ),
        (
            "endpoints",
            Box::new(|r: &Value| r["endpoints"].to_string()),
        ),
        (
            "registration, s",
            Box::new(|r: &Value| num(&r["registration_s"], 1)),
        ),
        ("watchers", Box::new(|r: &Value| r["watchers"].to_string())),
        (
            "snapshots",
            Box::new(|r: &Value| r["snapshots"].as_str().unwrap_or("—").to_string()),
        ),
        (
            "every watcher has its snapshot, s",
            Box::new(|r: &Value| num(&r["watchers_ready_s"], 1)),
        ),
        (
            "changes asked / s",
            Box::new(|r: &Value| r["rate"].to_string()),
        ),
        (
            "changes achieved / s",
            Box::new(|r: &Value| num(&r["achieved_rate"], 1)),
        ),
        (
            "changes at every watcher / sent",
            Box::new(|r: &Value| format!("{} / {}", r["changes_at_every_watcher"], r["changes"])),
        ),
        (
            "change to each watcher p50, s",
            Box::new(|r: &Value| num(&r["p50_s"], 3)),
        ),
        (
            "change to each watcher p99, s",
            Box::new(|r: &Value| num(&r["p99_s"], 3)),
        ),
        (
            "snapshots sent again (lagging watchers) / streams broken",
            Box::new(|r: &Value| {
                format!("{} / {}", r["snapshots_again"], r["watch_streams_broken"])
            }),
        ),
        (
            "discovery CPU a change, ms",
            Box::new(|r: &Value| num(&r["cpu_ms_per_change"], 2)),
        ),
        (
            "discovery RSS registered, MiB",
            Box::new(|r: &Value| mib(&r["rss_registered_kib"])),
        ),
        (
            "discovery peak RSS while watchers start, MiB",
            Box::new(|r: &Value| mib(&r["peak_rss_watchers_kib"])),
        ),
        (
            "discovery live heap a watcher, KiB",
            Box::new(|r: &Value| num(&r["heap_per_watcher_kib"], 0)),
        ),
        (
            "discovery RSS a watcher (settled), KiB",
            Box::new(|r: &Value| num(&r["rss_per_watcher_kib"], 0)),
        ),
        (
            "store bytes an endpoint",
            Box::new(|r: &Value| num(&r["store_bytes_per_endpoint"], 0)),
        ),
        (
            "one change saved, ms (median)",
            Box::new(|r: &Value| num(&r["save_ms"], 2)),
        ),
        (
            "anchor: whole-state state.json save, ms",
            Box::new(|r: &Value| num(&r["anchor_save_ms"], 2)),
        ),
    ];
    for (name, f) in rows {
        t.push_str(&format!("| {name} |"));
        for (_, r) in runs {
            t.push_str(&format!(" {} |", f(r)));
        }
        t.push('\n');
    }
    let verdict = |r: &Value| -> String {
        let eps = r["endpoints"].as_f64().unwrap_or(0.0);
        match r["p99_s"].as_f64() {
            Some(p) if p < P99_TARGET_S && eps >= 150_000.0 => format!("p99 {p:.3} s: met"),
            Some(p) if p < P99_TARGET_S => {
                format!("p99 {p:.3} s: met at {eps} endpoints, **not shown** at 150,000")
            }
            Some(p) => format!("p99 {p:.3} s: **not met**"),
            None => "**not measured**".into(),
        }
    };
    let verdicts: Vec<String> = runs
        .iter()
        .map(|(name, r)| format!("{name} {}", verdict(r)))
        .collect();
    t.push_str(&format!(
        "\nTarget p99 under {P99_TARGET_S} s from a change to every watcher at 150,000 endpoints: \
         {}.\n",
        verdicts.join("; ")
    ));
    if let Some((_, embedded)) = runs.first() {
        if let (Some(s), Some(a)) = (
            embedded["save_ms"].as_f64(),
            embedded["anchor_save_ms"].as_f64(),
        ) {
            let met = if s < SAVE_TARGET_MS {
                "met"
            } else {
                "**not met**"
            };
            t.push_str(&format!(
                "One change's write on the embedded store: {s:.2} ms, 1/{:.0} of the whole-state \
                 save ({a:.2} ms); target under {SAVE_TARGET_MS} ms {met}.\n",
                a / s
            ));
        }
    }
    for (name, r) in runs {
        if let Some(e) = r["error"].as_str() {
            t.push_str(&format!("\nThe run \"{name}\" failed: {e}\n"));
        }
    }
    t
}

fn section(machine: &Machine, load: &str, command: &str, table: &str) -> String {
    format!(
        "Measured {date} on {machine} with `{command}`\n\
         (1-minute load average {load} before the run).\n\n\
         `discovery/examples/scale_bench.rs` runs one cluster's discovery in a child\n\
         process (its RSS and CPU are its own) and, through the gRPC API with 8\n\
         clients at once, registers the nodes, each with its endpoints (label sets\n\
         spread over the identities), until done or the registration timeout; the\n\
         global services are in the discovery's configuration. Then the watchers\n\
         open, each on its own connection (`Watch` with backend deltas and snapshots\n\
         in parts, as agents ask; the anchor column takes snapshots whole, as agents\n\
         did before), and one endpoint of a node\n\
         is changed at the asked rate, one change after another (a change waits for\n\
         the one before: when the discovery is slower, fewer are achieved): each\n\
         change is timed from its request to its event at every watcher. Then, on the stored state: one endpoint change saved on the store\n\
         (median of 20), and the same on the store before (`state.json`, the whole\n\
         state rewritten and fsynced), the anchor. The embedded store is on disk\n\
         (the system temp dir); etcd runs on the same machine, its data on disk.\n\
         The watchers run in the benchmark's process, on the same 2 CPUs, and decode\n\
         only what they measure (snapshot records counted, not decoded; the marked\n\
         changes). \"Live heap a watcher\" is the discovery's allocated heap\n\
         (mallinfo2) with the watchers less without, over the watchers; \"RSS a\n\
         watcher\" the same for RSS, 2 s after the snapshots (memory of a burst of\n\
         snapshots is given back after 1 s).\n\n\
         {table}",
        date = report::today(),
    )
}
