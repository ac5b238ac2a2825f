//! `mesh_bench`: N federated discovery servers in one process on 127.0.0.1,
//! each importing from all the others, with synthetic nodes, endpoints and
//! global services per cluster registered through the real gRPC API.
//!
//! It measures the time until every cluster's agent-facing `Watch` view has
//! everything (convergence), then makes K single changes (one endpoint of one
//! node, in a random cluster, replaced by a new IP) and measures for each the
//! time until every cluster's watcher has the new endpoint and the merged
//! service backend for it; plus the process RSS (`VmRSS`) at each phase.
//!
//! Run by `cargo xtask bench mesh`; by hand:
//! `cargo run --release -p meshgate-discovery --example mesh_bench -- --clusters 8`.
//! Progress goes to stderr; the result is one JSON line on stdout, written
//! also when the run fails or hits `--timeout` (then the exit code is 1).
#![allow(clippy::print_stdout)] // a benchmark driver: stdout is its output

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::federation::{FederationConfig, RemoteConfig};
use meshgate_discovery::server::{serve_with_listener, ServerConfig};
use meshgate_discovery::service::{Protocol, Service, ServicePort};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Channel;

#[path = "mesh_bench/procs.rs"]
mod procs;

const USAGE: &str = "usage: mesh_bench [--clusters N (1..=255, default 8)] [--nodes N (default 20)] \
[--services N (default 50)] [--endpoints N per node (default 3)] [--changes K (default 20)] \
[--timeout SECONDS (default 300)] [--processes K (servers in K child processes; default 1)] \
[--max-rss-mib M (stop when all processes together exceed it; default 0 = no limit)] [--state-dir DIR (where the servers' state dirs go; default the \
system temp dir)]";
/// How long one change may take to reach every cluster before it counts as lost.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server keeps a remote's state after its link broke. Longer
/// than the default 60 s: at N >= 128 on 2 CPUs a starved link may stay
/// down for a minute while everything registers at once, and expiring then
/// re-importing its remote's whole state feeds the starvation (seen at
/// N = 128). A real mesh registers gradually; the default stays.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(600);
/// Attempts per registration call; an agent retries too.
const ATTEMPTS: usize = 10;

/// Calls that failed and were retried (a broken connection, mostly).
static RETRIES: AtomicUsize = AtomicUsize::new(0);
/// Watch streams that broke and were opened again.
static WATCH_BREAKS: AtomicUsize = AtomicUsize::new(0);
/// Nodes registered with their endpoints reported.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);
/// `--state-dir`: where the servers' state dirs are made.
static STATE_PARENT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

#[derive(Debug, Clone, Copy)]
struct Args {
    clusters: usize,
    nodes: usize,
    services: usize,
    endpoints: usize,
    changes: usize,
    timeout: Duration,
    processes: usize,
    max_rss_mib: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        clusters: 8,
        nodes: 20,
        services: 50,
        endpoints: 3,
        changes: 20,
        timeout: Duration::from_secs(300),
        processes: 1,
        max_rss_mib: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        if flag == "--state-dir" {
            let _ = STATE_PARENT.set(value.into());
            continue;
        }
        let n: usize = value
            .parse()
            .map_err(|_| format!("{flag} {value:?} is not a number\n{USAGE}"))?;
        match flag.as_str() {
            "--clusters" => a.clusters = n,
            "--nodes" => a.nodes = n,
            "--services" => a.services = n,
            "--endpoints" => a.endpoints = n,
            "--changes" => a.changes = n,
            "--timeout" => a.timeout = Duration::from_secs(n as u64),
            "--processes" => a.processes = n,
            "--max-rss-mib" => a.max_rss_mib = n,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    let ok = (1..=255).contains(&a.clusters)
        && a.nodes >= 1
        && a.services >= 1
        && a.endpoints >= 1
        && !a.timeout.is_zero()
        && (1..=a.clusters).contains(&a.processes);
    if !ok {
        return Err(format!(
            "out of range: clusters 1..=255, nodes >= 1, services >= 1, endpoints >= 1, \
             timeout > 0, processes 1..=clusters\n{USAGE}"
        ));
    }
    let layout = Layout::new(&a).map_err(|e| format!("{e}\n{USAGE}"))?;
    let _ = LAYOUT.set(layout);
    Ok(a)
}

/// What the run found so far; printed as JSON however it ends.
type Report = Arc<Mutex<BTreeMap<&'static str, Value>>>;

fn put(report: &Report, key: &'static str, value: Value) {
    report
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, value);
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--serve") {
        if let Err(e) = procs::serve(&argv[2..]).await {
            eprintln!("mesh_bench --serve: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mesh_bench: {e}");
            std::process::exit(2);
        }
    };
    let report: Report = Arc::default();
    put(&report, "clusters", json!(args.clusters));
    put(&report, "nodes", json!(args.nodes));
    put(&report, "services", json!(args.services));
    put(&report, "endpoints_per_node", json!(args.endpoints));
    put(&report, "changes", json!(args.changes));
    let outcome = tokio::select! {
        r = tokio::time::timeout(args.timeout, run(args, report.clone())) => r,
        e = rss_guard(args.max_rss_mib) => Ok(Err(e)),
    };
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!(
            "global timeout of {} s reached; the figures above are what was measured until then \
             (raise --timeout, or lower --clusters)",
            args.timeout.as_secs()
        )),
    };
    put(
        &report,
        "error",
        error.clone().map_or(Value::Null, Value::from),
    );
    put(&report, "retries", json!(RETRIES.load(Ordering::Relaxed)));
    put(
        &report,
        "watch_breaks",
        json!(WATCH_BREAKS.load(Ordering::Relaxed)),
    );
    put(
        &report,
        "registered_nodes",
        json!(REGISTERED.load(Ordering::Relaxed)),
    );
    let text = {
        let r = report.lock().unwrap_or_else(PoisonError::into_inner);
        serde_json::to_string(&*r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    };
    println!("{text}");
    if let Some(e) = error {
        eprintln!("mesh_bench: {e}");
        std::process::exit(1);
    }
    // Servers and links are still running: leave without waiting for them.
    std::process::exit(0);
}

async fn run(args: Args, report: Report) -> Result<(), String> {
    let n = args.clusters;
    put(&report, "processes", json!(args.processes));
    // Both ends of a server's links are in its process (the other end of
    // each in another one, when the servers are spread).
    let per_process = n.div_ceil(args.processes);
    check_fd_limit(2 * per_process * (n - 1) + 8 * n + 256, n)?;
    let dir = match STATE_PARENT.get() {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("creating a temp dir: {e}"))?;
    let rss_start = rss_kib()?;
    put(&report, "rss_start_kib", json!(rss_start));

    // Servers, each federated with all the others.
    let started = Instant::now();
    let mut addrs = Vec::with_capacity(n);
    let mut listeners = Vec::with_capacity(n);
    if args.processes > 1 {
        addrs = procs::free_addrs(n).await?;
        procs::spawn(args.processes, &addrs, args.services, dir.path())?;
    } else {
        for _ in 0..n {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
            addrs.push(l.local_addr().map_err(|e| e.to_string())?);
            listeners.push(l);
        }
    }
    let services = services(args.services);
    for (c, listener) in listeners.into_iter().enumerate() {
        start_server(dir.path(), c, listener, &addrs, services.clone());
    }
    let mut clients = Vec::with_capacity(n);
    for addr in &addrs {
        clients.push(connect_retry(*addr).await?);
    }
    wait_links(&clients, n).await?;
    let links_up = started.elapsed();
    let rss_links = rss_kib()?;
    put(&report, "links_up_s", json!(links_up.as_secs_f64()));
    put(&report, "rss_links_kib", json!(rss_links));
    eprintln!(
        "mesh_bench: {n} servers, {} links up in {:.2} s; RSS {} MiB",
        n * (n - 1),
        links_up.as_secs_f64(),
        rss_links / 1024
    );

    // One agent-facing watcher per cluster.
    let expected = Expected {
        nodes: n * args.nodes,
        endpoints: n * args.nodes * args.endpoints,
        services: args.services,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (c, client) in clients.iter().enumerate() {
        tokio::spawn(watcher(c, client.clone(), expected, tx.clone()));
    }
    drop(tx);

    // Nodes and endpoints, all clusters at once.
    let registering = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        tasks.spawn(async move {
            for i in 0..args.nodes {
                register(&mut client, c, i).await?;
                let ips: Vec<String> = (0..args.endpoints).map(|j| ip(c, i, 1 + j)).collect();
                report_endpoints(&mut client, c, i, &ips, args).await?;
                REGISTERED.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("registering task failed: {e}"))??;
    }
    let registered = registering.elapsed();
    put(&report, "register_s", json!(registered.as_secs_f64()));
    eprintln!(
        "mesh_bench: {} nodes and {} endpoints registered in {:.2} s; waiting for every view",
        expected.nodes,
        expected.endpoints,
        registered.as_secs_f64()
    );
    let mut converged = HashSet::new();
    let mut last_note = Instant::now();
    while converged.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Seen::Converged(c))) => {
                converged.insert(c);
            }
            Ok(Some(Seen::Change { .. })) => {}
            Ok(None) => return Err("every watcher ended before converging".into()),
            Err(_) => {}
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            eprintln!(
                "mesh_bench: {}/{n} views converged after {:.1} s",
                converged.len(),
                registering.elapsed().as_secs_f64()
            );
            put(&report, "converged_views", json!(converged.len()));
        }
    }
    let converge = registering.elapsed();
    let rss_converged = rss_kib()?;
    put(&report, "converged_views", json!(n));
    put(&report, "converge_s", json!(converge.as_secs_f64()));
    put(&report, "rss_converged_kib", json!(rss_converged));
    eprintln!(
        "mesh_bench: every view converged {:.2} s after registering began; RSS {} MiB",
        converge.as_secs_f64(),
        rss_converged / 1024
    );

    // Single changes, one at a time.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut latencies = Vec::with_capacity(args.changes);
    let mut lost = 0usize;
    for k in 0..args.changes {
        let c = rng.below(n);
        let i = rng.below(args.nodes);
        let new_ip = change_ip(c, i, k);
        let mut ips: Vec<String> = (0..args.endpoints).map(|j| ip(c, i, 1 + j)).collect();
        ips[0].clone_from(&new_ip);
        let mut client = clients[c].clone();
        let t0 = Instant::now();
        report_endpoints(&mut client, c, i, &ips, args).await?;
        let mut seen = HashSet::new();
        let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
        let mut latest = t0;
        while seen.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Seen::Change { cluster, ip, at })) if ip == new_ip => {
                    if seen.insert(cluster) {
                        latest = latest.max(at);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("every watcher ended during the changes".into()),
                Err(_) => break,
            }
        }
        if seen.len() < n {
            lost += 1;
            eprintln!(
                "mesh_bench: change {k} ({new_ip}) reached only {}/{n} views in {} s",
                seen.len(),
                CHANGE_TIMEOUT.as_secs()
            );
        } else {
            latencies.push(latest.duration_since(t0).as_secs_f64());
        }
        put(&report, "latencies_s", json!(latencies));
        put(&report, "lost_changes", json!(lost));
    }
    let rss_end = rss_kib()?;
    put(&report, "rss_end_kib", json!(rss_end));
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    if !sorted.is_empty() {
        put(&report, "p50_s", json!(percentile(&sorted, 0.50)));
        put(&report, "p99_s", json!(percentile(&sorted, 0.99)));
        put(&report, "max_s", json!(sorted[sorted.len() - 1]));
    }
    drop(dir);
    if lost > 0 {
        return Err(format!(
            "{lost} of {} changes did not reach every cluster within {} s",
            args.changes,
            CHANGE_TIMEOUT.as_secs()
        ));
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A small fixed-seed generator: the same run picks the same clusters.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn cluster_name(c: usize) -> String {
    format!("c{}", c + 1)
}

/// Cluster ids are 1..=255; cluster `c` (0-based) has id `c + 1`.
fn cluster_id(c: usize) -> u8 {
    u8::try_from(c + 1).unwrap_or(u8::MAX)
}

/// How the run's addresses are laid out in 10.0.0.0/8: each node has a
/// block of `node_block` addresses (its pod CIDR), room for its endpoints
/// (offsets 1..=E) and the changes (after them); each cluster a block of
/// `cluster_block`, both powers of two so the CIDRs never overlap.
#[derive(Debug, Clone, Copy)]
struct Layout {
    node_block: u32,
    cluster_block: u32,
    endpoints: u32,
    nodes: u32,
}

static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();

impl Layout {
    fn new(a: &Args) -> Result<Layout, String> {
        let node_block = (a.endpoints + a.changes + 2).next_power_of_two();
        let cluster_block = (a.nodes * node_block).next_power_of_two();
        if a.clusters * cluster_block > 1 << 24 {
            return Err(format!(
                "{} clusters x {} nodes x {node_block} addresses a node (endpoints + changes + 2,                  to a power of two) do not fit in 10.0.0.0/8; ask for fewer",
                a.clusters, a.nodes
            ));
        }
        if a.clusters * a.nodes >= 1 << 17 {
            return Err("clusters x nodes must stay under 131,072 (underlay 198.18.0.0/15)".into());
        }
        Ok(Layout {
            node_block: node_block as u32,
            cluster_block: cluster_block as u32,
            endpoints: a.endpoints as u32,
            nodes: a.nodes as u32,
        })
    }

    fn get() -> Layout {
        *LAYOUT.get().expect("the layout is set before the run")
    }

    /// The first address of node `i` of cluster `c`.
    fn node_base(self, c: usize, i: usize) -> u32 {
        (10 << 24) + c as u32 * self.cluster_block + i as u32 * self.node_block
    }

    /// Node `i` of cluster `c`'s underlay address, in 198.18.0.0/15.
    fn underlay(self, c: usize, i: usize) -> String {
        let n = c as u32 * self.nodes + i as u32 + 1;
        std::net::Ipv4Addr::from((198 << 24) + (18 << 16) + n).to_string()
    }

    fn pod_cidr(self, c: usize, i: usize) -> String {
        let prefix = 32 - self.node_block.trailing_zeros();
        format!(
            "{}/{prefix}",
            std::net::Ipv4Addr::from(self.node_base(c, i))
        )
    }
}

/// Endpoint `host` (1..) of node `i` of cluster `c`, inside its pod CIDR.
fn ip(c: usize, i: usize, host: usize) -> String {
    std::net::Ipv4Addr::from(Layout::get().node_base(c, i) + host as u32).to_string()
}

/// The address change `k` gives an endpoint of node `i` of cluster `c`.
fn change_ip(c: usize, i: usize, k: usize) -> String {
    ip(c, i, Layout::get().endpoints as usize + 1 + k)
}

/// Global, shared services `s0..`, each selecting `app=sJ` in `default`.
fn services(count: usize) -> Vec<Service> {
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
            selector: BTreeMap::from([("app".to_string(), format!("s{j}"))]),
            annotations: BTreeMap::from([(
                "service.cilium.io/global".to_string(),
                "true".to_string(),
            )]),
            exported: false,
        })
        .collect()
}

fn start_server(
    dir: &Path,
    c: usize,
    listener: TcpListener,
    addrs: &[SocketAddr],
    services: Vec<Service>,
) {
    let remotes = addrs
        .iter()
        .enumerate()
        .filter(|(r, _)| *r != c)
        .map(|(r, a)| RemoteConfig::new(cluster_name(r), format!("http://{a}")))
        .collect();
    let cfg = ServerConfig {
        listen: addrs[c],
        cluster: cluster_name(c),
        cluster_id: cluster_id(c),
        state_dir: dir.join(cluster_name(c)),
        // Long enough that the run never renews.
        lease_ttl: Duration::from_secs(3600),
        services,
        federation: FederationConfig {
            remotes,
            remote_timeout: REMOTE_TIMEOUT,
        },
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    tokio::spawn(async move {
        if let Err(e) = serve_with_listener(cfg, listener, std::future::pending()).await {
            eprintln!("mesh_bench: discovery {} failed: {e}", cluster_name(c));
        }
    });
}

async fn connect_retry(addr: SocketAddr) -> Result<DiscoveryClient<Channel>, String> {
    let url = format!("http://{addr}");
    let mut last = String::new();
    for _ in 0..50 {
        match connect(&url).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("connecting to {url}: {last}"))
}

/// Waits until every discovery reports every remote connected.
async fn wait_links(clients: &[DiscoveryClient<Channel>], n: usize) -> Result<(), String> {
    let mut pending: Vec<usize> = (0..n).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &c in &pending {
            let status = clients[c]
                .clone()
                .federation_status(pb::FederationStatusRequest {})
                .await
                .map_err(|s| format!("federation status of {}: {}", cluster_name(c), s.message()))?
                .into_inner();
            if status.remotes.iter().filter(|r| r.connected).count() < n - 1 {
                still.push(c);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Runs `call` until it succeeds, at most [`ATTEMPTS`] times.
async fn retry<F, Fut>(mut call: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= ATTEMPTS => return Err(format!("{e} ({attempt} attempts)")),
            Err(_) => {
                attempt += 1;
                RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn register(client: &mut DiscoveryClient<Channel>, c: usize, i: usize) -> Result<(), String> {
    retry(|| register_once(client.clone(), c, i)).await
}

async fn register_once(
    mut client: DiscoveryClient<Channel>,
    c: usize,
    i: usize,
) -> Result<(), String> {
    let mut key = [0u8; 32];
    key[0] = cluster_id(c);
    key[1..5].copy_from_slice(&(i as u32).to_be_bytes());
    key[5] = 1;
    let underlay = Layout::get().underlay(c, i);
    let node = pb::Node {
        name: format!("n{i}"),
        cluster: cluster_name(c),
        cluster_id: u32::from(cluster_id(c)),
        underlay_ip: underlay,
        listen_port: 51820,
        wg_public_key: base64::engine::general_purpose::STANDARD.encode(key),
        pod_cidrs: vec![Layout::get().pod_cidr(c, i)],
        tunnel_ip: String::new(),
        roles: vec![],
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    };
    client
        .register(pb::RegisterRequest { node: Some(node) })
        .await
        .map_err(|s| format!("register {}/n{i}: {}", cluster_name(c), s.message()))?;
    Ok(())
}

/// Reports node `i`'s endpoints; endpoint `j` is labelled `app=s<(i*E+j) % S>`.
async fn report_endpoints(
    client: &mut DiscoveryClient<Channel>,
    c: usize,
    i: usize,
    ips: &[String],
    args: Args,
) -> Result<(), String> {
    retry(|| report_once(client.clone(), c, i, ips, args)).await
}

async fn report_once(
    mut client: DiscoveryClient<Channel>,
    c: usize,
    i: usize,
    ips: &[String],
    args: Args,
) -> Result<(), String> {
    let endpoints = ips
        .iter()
        .enumerate()
        .map(|(j, ip)| pb::Endpoint {
            ip: ip.clone(),
            name: format!("pod-{i}-{j}"),
            namespace: "default".into(),
            labels: [(
                "app".to_string(),
                format!("s{}", (i * args.endpoints + j) % args.services),
            )]
            .into(),
            node: String::new(),
            cluster: String::new(),
            identity: 0,
        })
        .collect();
    client
        .report_endpoints(pb::ReportEndpointsRequest {
            node: format!("n{i}"),
            cluster: cluster_name(c),
            endpoints,
        })
        .await
        .map_err(|s| format!("report endpoints {}/n{i}: {}", cluster_name(c), s.message()))?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Expected {
    nodes: usize,
    endpoints: usize,
    services: usize,
}

enum Seen {
    /// This cluster's view first held every node, endpoint and backend.
    Converged(usize),
    /// This cluster's view holds the changed endpoint and its backend.
    Change {
        cluster: usize,
        ip: String,
        at: Instant,
    },
}

/// One cluster's agent-facing view, as an agent would keep it.
#[derive(Default)]
struct View {
    nodes: HashSet<String>,
    endpoints: HashSet<String>,
    /// Backend IPs per merged service.
    backends: HashMap<String, Vec<String>>,
    backend_count: usize,
    /// Change IPs seen as endpoint / as backend, and whether reported.
    changes: HashMap<String, (bool, bool, bool)>,
}

fn is_change_ip(ip: &str) -> bool {
    let l = Layout::get();
    ip.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| u32::from(a) % l.node_block > l.endpoints)
}

impl View {
    fn set_service(&mut self, s: pb::GlobalService) {
        let ips: Vec<String> = s.backends.into_iter().map(|b| b.ip).collect();
        for ip in ips.iter().filter(|ip| is_change_ip(ip)) {
            self.changes.entry(ip.clone()).or_default().1 = true;
        }
        self.backend_count += ips.len();
        let key = format!("{}/{}", s.namespace, s.name);
        if let Some(old) = self.backends.insert(key, ips) {
            self.backend_count -= old.len();
        }
    }

    /// A change of backends only: removed first, then added.
    fn change_backends(&mut self, c: pb::ServiceBackendsChanged) {
        let key = format!("{}/{}", c.namespace, c.name);
        let ips = self.backends.entry(key).or_default();
        for b in &c.removed {
            if let Some(i) = ips.iter().position(|ip| *ip == b.ip) {
                ips.swap_remove(i);
                self.backend_count -= 1;
            }
        }
        for b in c.added {
            if is_change_ip(&b.ip) {
                self.changes.entry(b.ip.clone()).or_default().1 = true;
            }
            if !ips.contains(&b.ip) {
                ips.push(b.ip);
                self.backend_count += 1;
            }
        }
    }

    fn add_endpoint(&mut self, ip: String) {
        if is_change_ip(&ip) {
            self.changes.entry(ip.clone()).or_default().0 = true;
        }
        self.endpoints.insert(ip);
    }

    fn apply(&mut self, event: pb::watch_event::Event) {
        use pb::watch_event::Event as E;
        match event {
            E::Snapshot(s) => {
                let changes = std::mem::take(&mut self.changes);
                *self = View {
                    changes,
                    ..View::default()
                };
                for node in s.nodes {
                    self.nodes.insert(format!("{}/{}", node.cluster, node.name));
                }
                for e in s.endpoints {
                    self.add_endpoint(e.ip);
                }
                for svc in s.global_services {
                    self.set_service(svc);
                }
            }
            E::Upserted(u) => {
                if let Some(node) = u.node {
                    self.nodes.insert(format!("{}/{}", node.cluster, node.name));
                }
            }
            E::Removed(r) => {
                self.nodes.remove(&format!("{}/{}", r.cluster, r.name));
            }
            E::EndpointUpserted(u) => {
                if let Some(e) = u.endpoint {
                    self.add_endpoint(e.ip);
                }
            }
            E::EndpointRemoved(r) => {
                self.endpoints.remove(&r.ip);
            }
            // The bench measures nodes, endpoints and services.
            E::IdentityAdded(_) | E::MeshCidrs(_) => {}
            E::ServiceUpdated(u) => {
                if let Some(s) = u.service {
                    self.set_service(s);
                }
            }
            E::ServiceBackends(c) => self.change_backends(c),
        }
    }

    fn complete(&self, want: Expected) -> bool {
        self.nodes.len() == want.nodes
            && self.endpoints.len() == want.endpoints
            && self.backends.len() == want.services
            && self.backend_count == want.endpoints
    }
}

async fn watcher(
    c: usize,
    mut client: DiscoveryClient<Channel>,
    want: Expected,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let mut view = View::default();
    let mut converged = false;
    loop {
        // An agent opens the stream again when it breaks; so does this.
        let req = pb::WatchRequest {
            local_only: false,
            backend_deltas: true,
            snapshot_parts: true,
        };
        let mut stream = match meshgate_discovery::client::watch(&mut client, req).await {
            Ok(s) => s,
            Err(_) => {
                WATCH_BREAKS.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let event = match stream.message().await {
                Ok(Some(pb::WatchEvent { event: Some(e) })) => e,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            };
            let at = Instant::now();
            view.apply(event);
            if !converged && view.complete(want) {
                converged = true;
                let _ = tx.send(Seen::Converged(c));
            }
            for (ip, (endpoint, backend, sent)) in &mut view.changes {
                if *endpoint && *backend && !*sent {
                    *sent = true;
                    let _ = tx.send(Seen::Change {
                        cluster: c,
                        ip: ip.clone(),
                        at,
                    });
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        WATCH_BREAKS.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn raise_fd_limit(needed: usize) {
    let needed = needed as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other precondition.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= needed {
        return;
    }
    let want = libc::rlimit {
        rlim_cur: needed,
        rlim_max: lim.rlim_max.max(needed),
    };
    // SAFETY: setrlimit reads the struct we pass; failure is reported by its return value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max.min(needed),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    }
}

/// With a limit: returns (an error) once all processes together hold more
/// than `max_mib`, so a run too big for the machine stops before it hurts
/// anything else on it.
async fn rss_guard(max_mib: usize) -> String {
    if max_mib == 0 {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(kib) = rss_kib() {
            if kib / 1024 > max_mib as u64 {
                return format!(
                    "stopped: the processes hold {} MiB, above --max-rss-mib {max_mib}",
                    kib / 1024
                );
            }
        }
    }
}

/// This process's RSS plus its children's (`--processes`).
fn rss_kib() -> Result<u64, String> {
    let mut total = rss_of("self")?;
    for pid in procs::pids() {
        total += rss_of(&pid.to_string())?;
    }
    Ok(total)
}

fn rss_of(pid: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Every link is a TCP connection with both ends in this process: raises
/// the open-files limit (soft, and hard when allowed, e.g. as root) to what
/// N clusters need, then checks it.
fn check_fd_limit(needed: usize, n: usize) -> Result<(), String> {
    raise_fd_limit(needed);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => Err(format!(
            "{n} clusters need about {needed} open files per process ({} links, both ends in \
             the servers' processes), but the limit is {soft}; raise it (`ulimit -n {needed}`, \
             as root with CAP_SYS_RESOURCE if above the hard limit), spread the servers over \
             more --processes, or lower --clusters",
            n * (n - 1)
        )),
        _ => Ok(()),
    }
}
