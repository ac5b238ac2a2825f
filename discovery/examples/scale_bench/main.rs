//! `scale_bench`: one cluster's discovery at scale (`cargo xtask bench
//! scale` runs it on both stores).
//!
//! The discovery runs in a child process of this binary (`--serve`), so
//! its RSS and CPU are its own. This process registers `--nodes` nodes
//! with `--endpoints` endpoints each (`--identities` label sets), with 8
//! clients at once, until done or `--register-timeout`; opens `--watchers`
//! watch streams (standing in for agents); then changes one endpoint of a
//! node `--rate` times a second for `--seconds`, and measures each change
//! from its request to its event at every watcher. Then, in this process
//! and on a copy of the stored state: the time one endpoint change takes
//! to save, on the store used and on the whole-state `state.json` save of
//! the store before (the anchor). Prints one JSON line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::registry::{Registry, RegistryConfig, RegistryState};
use meshgate_discovery::server::{serve_on, ServerConfig};
use meshgate_discovery::service::{Protocol, Service, ServicePort};
use meshgate_discovery::store::db::DbStore;
use meshgate_discovery::store::{EmbeddedStore, Store, StoreChoice};
use serde_json::{json, Value};
use tonic::transport::Channel;

mod watchers;

const USAGE: &str = "scale_bench --store embedded|etcd://HOST:PORT [--state-dir DIR] \
[--nodes N (5000)] [--endpoints E (30)] [--identities I (1000)] [--services S (500)] \
[--watchers W (200)] [--rate R (100)] [--seconds T (60)] [--register-timeout S (600)] \
[--snapshots parts|whole (parts)]";

struct Args {
    store: String,
    state_dir: PathBuf,
    nodes: u32,
    endpoints: u32,
    identities: u32,
    services: u32,
    watchers: u32,
    rate: u32,
    seconds: u64,
    register_timeout: Duration,
    /// `parts` (as agents ask) or `whole` (as older agents did).
    snapshots: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        store: String::new(),
        state_dir: std::env::temp_dir(),
        nodes: 5000,
        endpoints: 30,
        identities: 1000,
        services: 500,
        watchers: 200,
        rate: 100,
        seconds: 60,
        register_timeout: Duration::from_secs(600),
        snapshots: "parts".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} {value:?}: not a number\n{USAGE}"))
        };
        match flag.as_str() {
            "--store" => a.store = value.clone(),
            "--state-dir" => a.state_dir = value.into(),
            "--nodes" => a.nodes = num()? as u32,
            "--endpoints" => a.endpoints = num()?.min(250) as u32,
            "--identities" => a.identities = num()?.max(1) as u32,
            "--services" => a.services = num()? as u32,
            "--watchers" => a.watchers = num()? as u32,
            "--rate" => a.rate = num()?.max(1) as u32,
            "--seconds" => a.seconds = num()?,
            "--register-timeout" => a.register_timeout = Duration::from_secs(num()?),
            "--snapshots" if value == "parts" || value == "whole" => a.snapshots = value.clone(),
            "--snapshots" => return Err(format!("--snapshots {value:?}: parts or whole\n{USAGE}")),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if a.store.is_empty() {
        return Err(format!("--store is needed\n{USAGE}"));
    }
    if a.nodes == 0 || a.nodes > 65_000 {
        return Err("--nodes: 1..=65000 (each gets a /24 of 10.0.0.0/8)".into());
    }
    Ok(a)
}

fn services(count: u32) -> Vec<Service> {
    (0..count)
        .map(|j| Service {
            vip: None,
            name: format!("s{j}"),
            namespace: "default".into(),
            cluster: String::new(),
            ports: vec![ServicePort {
                name: String::new(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
            selector: BTreeMap::from([("app".to_string(), format!("a{j}"))]),
            annotations: BTreeMap::new(),
            exported: false,
        })
        .collect()
}

/// `--serve STORE DIR SERVICES`: the discovery, until stdin closes.
async fn serve(argv: &[String]) -> Result<(), String> {
    let [store, dir, count] = argv else {
        return Err("--serve STORE DIR SERVICES".into());
    };
    let store: StoreChoice = store.parse().map_err(|e| format!("{e}"))?;
    let count: u32 = count.parse().map_err(|e| format!("{count:?}: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cfg = ServerConfig {
        listen: addr,
        cluster: "c1".into(),
        cluster_id: 1,
        state_dir: dir.into(),
        lease_ttl: Duration::from_secs(24 * 3600),
        services: services(count),
        federation: Default::default(),
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    // Stdin: a line asks for the live heap (what the allocator has handed
    // out and not got back; RSS also counts what it keeps), written to
    // `heap` in the state dir with the line's number; its end stops the
    // discovery. On demand only: mallinfo2 walks the allocator's free lists
    // under its lock, which a loaded discovery would feel.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let heap_file = Path::new(dir).join("heap");
    std::thread::spawn(move || {
        for (n, _) in std::io::stdin().lines().map_while(Result::ok).enumerate() {
            // SAFETY: mallinfo2 only reads the allocator's counters.
            let m = unsafe { libc::mallinfo2() };
            let _ = std::fs::write(&heap_file, format!("{n} {}", m.uordblks + m.hblkhd));
        }
        let _ = stop_tx.send(());
    });
    #[allow(clippy::print_stdout)]
    {
        println!("ready {addr}");
    }
    serve_on(cfg, None, store, listener, async {
        let _ = stop_rx.await;
    })
    .await
    .map_err(|e| e.to_string())
}

fn spawn_server(args: &Args, dir: &Path) -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("--serve")
        .arg(&args.store)
        .arg(dir)
        .arg(args.services.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the discovery: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("ready ")
        .ok_or(format!("the discovery did not start: {line:?}"))?
        .parse()
        .map_err(|e| format!("{line:?}: {e}"))?;
    Ok((child, addr))
}

/// The discovery's live heap, KiB: asked on its stdin (the `n`th
/// question, from 0), read from the `heap` file its answer goes to.
async fn heap_kib(server: &mut Child, dir: &Path, n: &mut u64) -> u64 {
    use std::io::Write as _;
    let asked = *n;
    *n += 1;
    if let Some(stdin) = server.stdin.as_mut() {
        let _ = writeln!(stdin, "heap");
    }
    for _ in 0..100 {
        let answer = std::fs::read_to_string(dir.join("heap")).unwrap_or_default();
        if let Some((seq, bytes)) = answer.trim().split_once(' ') {
            if seq.parse() == Ok(asked) {
                return bytes.parse::<u64>().map_or(0, |b| b / 1024);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    0
}

/// The peak RSS of `pid` so far, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (RSS KiB, CPU seconds) of `pid`.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line.
    let after = stat.rsplit_once(')').map_or("", |(_, s)| s);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (rss, (ticks(11) + ticks(12)) / hz)
}

async fn client(addr: SocketAddr) -> Result<DiscoveryClient<Channel>, String> {
    connect(&format!("http://{addr}"))
        .await
        .map_err(|e| format!("connecting to the discovery: {e}"))
}

fn node(n: u32) -> pb::Node {
    pb::Node {
        name: format!("n{n}"),
        cluster: "c1".into(),
        cluster_id: 1,
        underlay_ip: format!("198.18.{}.{}", 1 + n / 250, 1 + n % 250),
        listen_port: 51820,
        wg_public_key: {
            use base64::Engine as _;
            let mut key = [7u8; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            base64::engine::general_purpose::STANDARD.encode(key)
        },
        pod_cidrs: vec![format!("10.{}.{}.0/24", n / 256, n % 256)],
        ..Default::default()
    }
}

/// Node `n`'s endpoints; endpoint `marked` (if any) carries `mark` in its
/// name, so that a watcher can tell the change apart.
fn endpoints(a: &Args, n: u32, marked: Option<(u32, u64)>) -> pb::ReportEndpointsRequest {
    pb::ReportEndpointsRequest {
        node: format!("n{n}"),
        cluster: "c1".into(),
        endpoints: (0..a.endpoints)
            .map(|i| {
                let app = (n * a.endpoints + i) % a.identities;
                let name = match marked {
                    Some((m, mark)) if m == i => format!("c{mark}"),
                    _ => format!("p{i}"),
                };
                pb::Endpoint {
                    ip: format!("10.{}.{}.{}", n / 256, n % 256, 2 + i),
                    name,
                    labels: [("app".to_string(), format!("a{app}"))].into(),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

/// Times one endpoint change saved on `store` as the server saves it
/// (`save_change`, from the change's events), over `state`, `rounds` times
/// (median, ms). The store is first given the whole state.
fn save_ms(store: &mut dyn Store, state: &RegistryState, rounds: usize) -> Result<f64, String> {
    let cfg = RegistryConfig {
        cluster: state.cluster.clone(),
        cluster_id: state.cluster_id,
        lease_ttl_ms: u64::MAX / 4,
        pod_cidrs: Vec::new(),
    };
    let mut r = Registry::from_state(cfg, state.clone(), 0).map_err(|e| e.to_string())?;
    store.save(state, &[]).map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let Some(changed) = state
            .endpoints
            .get(round * 7919 % state.endpoints.len().max(1))
        else {
            break;
        };
        let report: Vec<pb::Endpoint> = r
            .endpoints_of(&changed.node)
            .into_iter()
            .map(|e| pb::Endpoint {
                ip: e.ip.to_string(),
                name: if e.ip == changed.ip {
                    format!("save{round}")
                } else {
                    e.name
                },
                namespace: e.namespace,
                labels: e.labels.into_iter().collect(),
                ..Default::default()
            })
            .collect();
        let events = r
            .report_endpoints(&changed.node, "", report)
            .map_err(|e| e.to_string())?
            .events;
        let t = Instant::now();
        store.save_change(&r, &events).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5).ok_or("no rounds".into())
}

async fn run(a: Args, report: &mut BTreeMap<&'static str, Value>) -> Result<(), String> {
    let dir = tempfile::tempdir_in(&a.state_dir).map_err(|e| e.to_string())?;
    let (child, addr) = spawn_server(&a, dir.path())?;
    let pid = child.id();
    let mut server = KillOnDrop(child);
    let mut asked = 0;
    let (rss0, _) = usage(pid);
    report.insert("rss_start_kib", json!(rss0));

    // Registration, 8 clients at once, until done or the timeout.
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let deadline = t + a.register_timeout;
    let a = Arc::new(a);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (a, next) = (a.clone(), next.clone());
        let mut c = client(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut done = 0u32;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= u64::from(a.nodes) {
                    break;
                }
                let n = n as u32;
                c.register(pb::RegisterRequest {
                    node: Some(node(n)),
                })
                .await
                .map_err(|e| format!("register n{n}: {e}"))?;
                c.report_endpoints(endpoints(&a, n, None))
                    .await
                    .map_err(|e| format!("endpoints of n{n}: {e}"))?;
                done += 1;
            }
            Ok::<u32, String>(done)
        }));
    }
    let mut registered = 0;
    for task in tasks {
        registered += task.await.map_err(|e| e.to_string())??;
    }
    let reg_s = t.elapsed().as_secs_f64();
    let eps = u64::from(registered) * u64::from(a.endpoints);
    report.insert("registered_nodes", json!(registered));
    report.insert("endpoints", json!(eps));
    report.insert("registration_s", json!(reg_s));
    let (rss_reg, _) = usage(pid);
    report.insert("rss_registered_kib", json!(rss_reg));
    report.insert("peak_rss_registered_kib", json!(peak_rss_kib(pid)));
    let heap_reg = heap_kib(&mut server.0, dir.path(), &mut asked).await;
    report.insert("heap_registered_kib", json!(heap_reg));
    eprintln!("scale_bench: {registered} nodes, {eps} endpoints registered in {reg_s:.1} s");
    if registered == 0 {
        return Err("no node registered".into());
    }

    // Watchers: each takes its snapshot, then notes when each change arrives.
    let t = Instant::now();
    let parts = a.snapshots == "parts";
    let watchers = watchers::open(addr, a.watchers, parts, eps).await?;
    report.insert("watchers_ready_s", json!(t.elapsed().as_secs_f64()));
    report.insert("peak_rss_watchers_kib", json!(peak_rss_kib(pid)));
    // Settled: the discovery gives back a burst's memory a second after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_w, _) = usage(pid);
    report.insert("rss_watchers_kib", json!(rss_w));
    let heap_w = heap_kib(&mut server.0, dir.path(), &mut asked).await;
    report.insert("heap_watchers_kib", json!(heap_w));
    report.insert(
        "heap_per_watcher_kib",
        json!(heap_w.saturating_sub(heap_reg) as f64 / f64::from(a.watchers.max(1))),
    );
    let (_, cpu0) = usage(pid);
    eprintln!(
        "scale_bench: {} watchers have their snapshots after {:.1} s",
        a.watchers,
        t.elapsed().as_secs_f64()
    );

    // The changes, paced at --rate.
    let mut c = client(addr).await?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(a.rate));
    let total = u64::from(a.rate) * a.seconds;
    let mut sent: Vec<Instant> = Vec::with_capacity(total as usize);
    let start = Instant::now();
    for mark in 0..total {
        let due = start + interval * mark as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let n = (mark % u64::from(registered)) as u32;
        let i = (mark / u64::from(registered)) as u32 % a.endpoints;
        sent.push(Instant::now());
        c.report_endpoints(endpoints(&a, n, Some((i, mark))))
            .await
            .map_err(|e| format!("change {mark}: {e}"))?;
    }
    let churn_s = start.elapsed().as_secs_f64();
    // Late events: wait until every watcher has every change, or 30 s.
    let want = a.watchers as usize;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30)
        && watchers.marks_seen.load(Ordering::Relaxed) < total * want as u64
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss_end, cpu1) = usage(pid);
    report.insert(
        "heap_end_kib",
        json!(heap_kib(&mut server.0, dir.path(), &mut asked).await),
    );
    let seen = watchers.stop().await;
    let mut at_watchers = vec![0usize; sent.len()];
    let mut lat: Vec<f64> = Vec::new();
    for w in &seen {
        for (mark, when) in &w.marks {
            if let Some(at) = sent.get(*mark as usize) {
                at_watchers[*mark as usize] += 1;
                lat.push(when.duration_since(*at).as_secs_f64());
            }
        }
    }
    let complete = at_watchers.iter().filter(|n| **n >= want).count();
    report.insert(
        "snapshots_again",
        json!(seen.iter().map(|w| w.snapshots_again).sum::<u64>()),
    );
    let broken: Vec<&String> = seen.iter().filter_map(|w| w.broken.as_ref()).collect();
    report.insert("watch_streams_broken", json!(broken.len()));
    if let Some(first) = broken.first() {
        report.insert("first_broken", json!(first));
    }
    lat.sort_by(f64::total_cmp);
    report.insert("changes", json!(total));
    report.insert("changes_s", json!(churn_s));
    report.insert("achieved_rate", json!(total as f64 / churn_s));
    report.insert("changes_at_every_watcher", json!(complete));
    report.insert("p50_s", json!(percentile(&lat, 0.5)));
    report.insert("p99_s", json!(percentile(&lat, 0.99)));
    report.insert(
        "cpu_ms_per_change",
        json!((cpu1 - cpu0) * 1000.0 / total as f64),
    );
    report.insert("rss_end_kib", json!(rss_end));
    report.insert(
        "rss_per_watcher_kib",
        json!((rss_w.saturating_sub(rss_reg)) as f64 / want.max(1) as f64),
    );
    drop(c);
    drop(server);

    // The store's bytes, and one change's save on it and on the anchor.
    if a.store == "embedded" {
        let db = dir.path().join("state.redb");
        let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        report.insert(
            "store_bytes_per_endpoint",
            json!(bytes as f64 / eps.max(1) as f64),
        );
        let mut store = DbStore::open(dir.path()).map_err(|e| e.to_string())?;
        let state = store
            .load()
            .map_err(|e| e.to_string())?
            .ok_or("no state stored")?;
        report.insert("save_ms", json!(save_ms(&mut store, &state, 20)?));
        let anchor_dir = tempfile::tempdir_in(&a.state_dir).map_err(|e| e.to_string())?;
        let mut anchor = EmbeddedStore::open(anchor_dir.path()).map_err(|e| e.to_string())?;
        report.insert("anchor_save_ms", json!(save_ms(&mut anchor, &state, 5)?));
        let json_bytes = std::fs::metadata(anchor.path())
            .map(|m| m.len())
            .unwrap_or(0);
        report.insert(
            "anchor_bytes_per_endpoint",
            json!(json_bytes as f64 / eps.max(1) as f64),
        );
    }
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve") {
        if let Err(e) = serve(&argv[2..]).await {
            eprintln!("scale_bench --serve: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scale_bench: {e}");
            std::process::exit(2);
        }
    };
    let mut report = BTreeMap::new();
    report.insert("store", json!(a.store));
    report.insert("nodes", json!(a.nodes));
    report.insert("endpoints_per_node", json!(a.endpoints));
    report.insert("identities", json!(a.identities));
    report.insert("services", json!(a.services));
    report.insert("watchers", json!(a.watchers));
    report.insert("rate", json!(a.rate));
    report.insert("snapshots", json!(a.snapshots));
    let outcome = run(a, &mut report).await;
    report.insert(
        "error",
        outcome.as_ref().err().map_or(Value::Null, |e| json!(e)),
    );
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    }
    if let Err(e) = outcome {
        eprintln!("scale_bench: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}
