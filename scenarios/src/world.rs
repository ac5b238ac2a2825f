//! The shell around the plan: builds a world with `ip`, starts and stops its
//! processes, and tears it down.

mod certs;
pub(crate) mod dns;
pub(crate) mod ip;
pub(crate) mod ipsec;
pub(crate) mod record;
mod wait;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::plan::{
    bpf_world_dir, ns_prefix, world_dir, ClusterPlan, ExternalPlan, NodePlan, Plan, Step,
    EXTERNAL_PORT, LAB_ROOT,
};
use crate::procs;
use crate::report::Summary;
use crate::scenario::Scenario;
use record::{Component, ProcessRecord, WorldRecord};

/// How `up` runs the world's processes.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The `meshgate` binary (the CLI passes `std::env::current_exe()`).
    pub meshgate_bin: PathBuf,
    /// How long to wait for every pair of nodes to complete a handshake.
    pub timeout: Duration,
    /// `--lease-ttl` of the discoveries.
    pub lease_ttl: Duration,
}

impl UpOptions {
    pub fn new(meshgate_bin: impl Into<PathBuf>) -> UpOptions {
        UpOptions {
            meshgate_bin: meshgate_bin.into(),
            timeout: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// SIGTERM grace before SIGKILL in `down`.
const DOWN_GRACE: Duration = Duration::from_secs(3);

/// Builds the world of a scenario file, starts one discovery per cluster
/// and one agent per node, and waits until every node has a handshake with
/// every other. On failure everything made is torn down.
pub fn up(file: &Path, opts: &UpOptions) -> Result<Summary> {
    crate::host::check_host()?;
    if !opts.meshgate_bin.is_file() {
        return Err(LabError::HostMissing {
            missing: format!("meshgate binary {}", opts.meshgate_bin.display()),
            fix: "build it (cargo build -p meshgate-gateway) or pass its path".to_string(),
        });
    }
    let started = Instant::now();
    let mut rec = begin(file)?;
    if let Err(e) = crate::host::check_nft(&rec.plan) {
        return Err(tear_down_after(e, &rec.plan.world));
    }
    if rec
        .plan
        .clusters
        .iter()
        .any(|c| c.datapath == crate::scenario::Datapath::Ebpf)
    {
        crate::host::ensure_bpffs()?;
    }
    let result = build(&mut rec)
        .and_then(|()| certs::make(&rec.plan))
        .and_then(|()| ipsec::make(&rec.plan))
        .and_then(|()| start_all(&mut rec, opts))
        .and_then(|()| wait::handshakes(&rec, opts.timeout))
        .and_then(|nodes| dns::wait_answering(&rec, opts.timeout).map(|()| nodes));
    match result {
        Ok(nodes) => Ok(Summary {
            world: rec.plan.world.clone(),
            nodes,
            took: started.elapsed(),
        }),
        Err(e) => Err(tear_down_after(e, &rec.plan.world)),
    }
}

/// Builds only the namespaces, links and addresses of a world (no
/// processes); `down` removes it. On failure everything made is torn down.
pub fn build_world_only(file: &Path) -> Result<Plan> {
    crate::host::check_host()?;
    let mut rec = begin(file)?;
    if let Err(e) = crate::host::check_nft(&rec.plan) {
        return Err(tear_down_after(e, &rec.plan.world));
    }
    match build(&mut rec) {
        Ok(()) => Ok(rec.plan),
        Err(e) => Err(tear_down_after(e, &rec.plan.world)),
    }
}

fn tear_down_after(error: LabError, world: &str) -> LabError {
    tracing::warn!(world, %error, "up failed; tearing the world down");
    match down(Some(world)) {
        Ok(_) => error,
        Err(cleanup) => LabError::UpFailed {
            error: Box::new(error),
            cleanup: Box::new(cleanup),
        },
    }
}

/// Loads the scenario, checks the world is not up nor left over, and writes
/// the first record.
fn begin(file: &Path) -> Result<WorldRecord> {
    let scenario = Scenario::load(file)?;
    let plan = Plan::new(&scenario)?;
    let world = plan.world.clone();
    if world_dir(&world).join(record::RECORD_FILE).exists() {
        return Err(LabError::WorldUp { world });
    }
    let leftovers = world_namespaces(&world)?;
    if !leftovers.is_empty() {
        return Err(LabError::Leftovers {
            world,
            namespaces: leftovers,
        });
    }
    let dir = world_dir(&world);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    if !plan.policies.is_empty() {
        write_policies(&world, &plan.policies)?;
    }
    if !plan.namespaces.is_empty() {
        let path = crate::plan::namespaces_file(&world);
        let text = serde_yaml::to_string(&plan.namespaces).map_err(|e| LabError::Io {
            what: format!("writing {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        write_replacing(&path, &text)?;
    }
    let scenario_path = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let rec = WorldRecord::new(plan, &scenario_path);
    rec.save()?;
    Ok(rec)
}

/// Writes the world's policy file ([`write_replacing`]: an agent reading it
/// on SIGHUP sees the old text or the new, never half).
pub(crate) fn write_policies(world: &str, text: &str) -> Result<()> {
    write_replacing(&crate::plan::policies_file(world), text)
}

/// Writes `path` through a temp file and a rename, so a reader sees the
/// old text or the new, never half (the agents re-read these files).
pub(crate) fn write_replacing(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(|source| LabError::Io {
        what: format!("writing {}", tmp.display()),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| LabError::Io {
        what: format!("replacing {}", path.display()),
        source,
    })
}

fn build(rec: &mut WorldRecord) -> Result<()> {
    for step in rec.plan.steps() {
        if let Step::AddNamespace(ns) = &step {
            rec.namespaces.push(ns.clone());
            rec.save()?;
        }
        ip::ip(&step.ip_args())?;
    }
    dns::write_files(&rec.plan)
}

fn start_all(rec: &mut WorldRecord, opts: &UpOptions) -> Result<()> {
    let deadline = Instant::now() + opts.timeout;
    for x in rec.plan.externals.clone() {
        start_external(
            rec,
            &x,
            &opts.meshgate_bin,
            deadline.saturating_duration_since(Instant::now()),
        )?;
    }
    dns::start_server(
        rec,
        &opts.meshgate_bin,
        deadline.saturating_duration_since(Instant::now()),
    )?;
    let clusters = rec.plan.clusters.clone();
    for c in &clusters {
        start_etcd(rec, c, deadline.saturating_duration_since(Instant::now()))?;
    }
    for c in &clusters {
        start_discovery(rec, c, &opts.meshgate_bin, opts.lease_ttl)?;
    }
    for c in &clusters {
        wait_listening(rec, c, deadline.saturating_duration_since(Instant::now()))?;
    }
    for c in &clusters {
        for n in &c.nodes {
            start_agent(rec, c, n, &opts.meshgate_bin)?;
        }
    }
    for c in &clusters {
        for n in &c.nodes {
            crate::runtime::start(
                rec,
                c,
                n,
                &opts.meshgate_bin,
                crate::plan::pod_mtu(c.datapath),
            )?;
        }
    }
    // After the agents: each writes its proxy's policy file. The proxies
    // get a deadline of their own (the agents' startup is not theirs).
    dns::start_proxies(rec, &opts.meshgate_bin, opts.timeout)
}

/// Discovery replica `k` of the cluster (1 when there is no such replica).
pub(crate) fn replica_record(c: &ClusterPlan, k: u8, lease_ttl: Duration) -> ProcessRecord {
    let (k, d) = match c.discovery_replica(k) {
        Some(d) => (k, d),
        None => (1, &c.discovery),
    };
    ProcessRecord {
        component: Component::discovery(&c.name, k),
        netns: d.netns.clone(),
        args: c.replica_args(d, lease_ttl),
        log: d.state_dir.join("discovery.log"),
        pid: None,
    }
}

/// The distribution's etcd, which the lab runs for clusters with `store: etcd`.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// Starts the cluster's etcd, if it has one, and waits until it listens.
/// (Its data dir is under the lab root, so `down` finds it among the
/// world's processes like a `meshgate` one.)
fn start_etcd(rec: &mut WorldRecord, c: &ClusterPlan, timeout: Duration) -> Result<()> {
    let (Some(e), Some(args)) = (c.etcd.clone(), c.etcd_args()) else {
        return Ok(());
    };
    let bin = Path::new(ETCD_BIN);
    if !bin.exists() {
        return Err(LabError::HostMissing {
            missing: format!("{ETCD_BIN} (cluster {} has `store: etcd`)", c.name),
            fix: "install it with `cargo xtask deps` or `apt-get install etcd-server`".into(),
        });
    }
    let p = ProcessRecord {
        component: Component::Etcd {
            cluster: c.name.clone(),
        },
        netns: e.netns.clone(),
        args,
        log: world_dir(&rec.plan.world).join(&c.name).join("etcd.log"),
        pid: None,
    };
    let log = p.log.clone();
    let component = p.component.clone();
    let pid = spawn_recorded(rec, p, bin)?;
    wait_port(&component, pid, &log, e.ip, e.client_port, timeout)
}

/// The record of an external's TCP service.
pub(crate) fn external_record(world: &str, x: &ExternalPlan) -> ProcessRecord {
    ProcessRecord {
        component: Component::External {
            name: x.name.clone(),
        },
        netns: x.netns.clone(),
        args: x.server_args(),
        log: x.server_log(world),
        pid: None,
    }
}

/// Starts an external's TCP service in its namespace and waits until it
/// listens.
pub(crate) fn start_external(
    rec: &mut WorldRecord,
    x: &ExternalPlan,
    bin: &Path,
    timeout: Duration,
) -> Result<()> {
    let p = external_record(&rec.plan.world, x);
    let (component, log) = (p.component.clone(), p.log.clone());
    let pid = spawn_recorded(rec, p, bin)?;
    wait_port(&component, pid, &log, x.ip, EXTERNAL_PORT, timeout)
}

pub(crate) fn agent_record(c: &ClusterPlan, n: &NodePlan) -> ProcessRecord {
    ProcessRecord {
        component: Component::Agent {
            cluster: c.name.clone(),
            node: n.name.clone(),
        },
        netns: n.netns.clone(),
        args: c.agent_args(n),
        log: n.state_dir.join("agent.log"),
        pid: None,
    }
}

fn start_discovery(
    rec: &mut WorldRecord,
    c: &ClusterPlan,
    bin: &Path,
    ttl: Duration,
) -> Result<()> {
    write_services_file(c)?;
    for (k, _) in c.discovery_replicas() {
        spawn_recorded(rec, replica_record(c, k, ttl), bin)?;
    }
    Ok(())
}

/// Writes the cluster's services into its discovery's state dir (for
/// `--services`); nothing when it has none.
pub(crate) fn write_services_file(c: &ClusterPlan) -> Result<()> {
    if c.services.is_empty() {
        return Ok(());
    }
    let path = c.services_file();
    let io = |what: String| move |source| LabError::Io { what, source };
    std::fs::create_dir_all(&c.discovery.state_dir)
        .map_err(io(format!("creating {}", c.discovery.state_dir.display())))?;
    let text = serde_yaml::to_string(&c.services).map_err(|e| LabError::BadFile {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
}

fn start_agent(rec: &mut WorldRecord, c: &ClusterPlan, n: &NodePlan, bin: &Path) -> Result<()> {
    write_endpoints_file(n)?;
    spawn_recorded(rec, agent_record(c, n), bin).map(|_| ())
}

/// Writes the node's pods into its state dir for the agent's `--endpoints`.
pub(crate) fn write_endpoints_file(n: &NodePlan) -> Result<()> {
    let path = n.endpoints_file();
    let io = |what: String| move |source| LabError::Io { what, source };
    std::fs::create_dir_all(&n.state_dir)
        .map_err(io(format!("creating {}", n.state_dir.display())))?;
    let text = serde_yaml::to_string(&n.endpoint_specs()).map_err(|e| LabError::BadFile {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    // Replaced whole: the agent re-reads it every second.
    write_replacing(&path, &text)?;
    // Kept across agent restarts: the labels of the pods added since.
    let labels = n.pod_labels_file();
    if !labels.exists() {
        std::fs::write(&labels, "").map_err(io(format!("writing {}", labels.display())))?;
    }
    Ok(())
}

/// Spawns a recorded process and records its pid.
pub(crate) fn spawn_recorded(
    rec: &mut WorldRecord,
    mut p: ProcessRecord,
    bin: &Path,
) -> Result<u32> {
    let pid = procs::spawn(bin, &p.netns, &p.args, &p.log)?;
    tracing::info!(component = %p.component, pid, "started");
    p.pid = Some(pid);
    rec.set_process(p)?;
    Ok(pid)
}

/// Waits until every discovery replica of a cluster listens on its address.
pub(crate) fn wait_listening(rec: &WorldRecord, c: &ClusterPlan, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for (k, _) in c.discovery_replicas() {
        wait_replica_listening(
            rec,
            c,
            k,
            deadline.saturating_duration_since(Instant::now()),
        )?;
    }
    Ok(())
}

/// Waits until discovery replica `k` of a cluster listens on its address.
pub(crate) fn wait_replica_listening(
    rec: &WorldRecord,
    c: &ClusterPlan,
    k: u8,
    timeout: Duration,
) -> Result<()> {
    let component = Component::discovery(&c.name, k);
    let (Some(p), Some(d)) = (rec.process(&component), c.discovery_replica(k)) else {
        return Err(LabError::NotRunning {
            component: component.to_string(),
        });
    };
    wait_port(
        &component,
        p.pid.unwrap_or(0),
        &p.log,
        d.ip,
        d.port,
        timeout,
    )
}

/// Waits until `pid` listens on `ip:port` (TCP); fails early if it exits.
fn wait_port(
    component: &Component,
    pid: u32,
    log: &Path,
    ip: std::net::Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<()> {
    let at = Listen {
        ip,
        port,
        udp: false,
    };
    wait_listening_on(component, pid, log, at, timeout)
}

/// Where a process is waited for: TCP `ip:port`, and UDP too if `udp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listen {
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    pub udp: bool,
}

/// Waits until `pid` listens at `at`; fails early if it exits.
pub(crate) fn wait_listening_on(
    component: &Component,
    pid: u32,
    log: &Path,
    at: Listen,
    timeout: Duration,
) -> Result<()> {
    let Listen { ip, port, udp } = at;
    let deadline = Instant::now() + timeout;
    loop {
        if !procs::alive(pid) {
            return Err(LabError::ProcessDied {
                component: component.to_string(),
                pid,
                log: log.to_path_buf(),
                tail: procs::log_tail(log, 10),
            });
        }
        let tcp = procs::listening(pid, ip, port);
        if tcp && (!udp || procs::listening_udp(pid, ip, port)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = match (udp, tcp) {
                (false, _) => "TCP",
                (true, false) => "TCP and UDP",
                (true, true) => "UDP",
            };
            return Err(LabError::Timeout {
                what: format!(
                    "{component} did not listen on {ip}:{port} {what} (log {}:\n{})",
                    log.display(),
                    procs::log_tail(log, 10)
                ),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names of the worlds that are up (directories under the lab root).
pub fn worlds() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(LAB_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The world a command is about: the named one, or the only one up.
pub(crate) fn pick_world(name: Option<&str>) -> Result<String> {
    if let Some(name) = name {
        return Ok(name.to_string());
    }
    let mut up = worlds();
    match up.len() {
        0 => Err(LabError::NoWorldUp),
        1 => Ok(up.remove(0)),
        _ => Err(LabError::SeveralWorlds { worlds: up }),
    }
}

/// Existing namespaces named `mg-<world>-*` that do not belong to another
/// world whose name extends this one (`a` vs `a-b`).
fn world_namespaces(world: &str) -> Result<Vec<String>> {
    Ok(ip::netns_list()?
        .into_iter()
        .filter(|ns| in_world(world, ns))
        .collect())
}

/// Is `ns` named `mg-<world>-*` and not a namespace of another world up
/// whose name extends this one?
fn in_world(world: &str, ns: &str) -> bool {
    let prefix = ns_prefix(world);
    ns.starts_with(&prefix)
        && !worlds()
            .into_iter()
            .filter(|w| w != world)
            .map(|w| ns_prefix(&w))
            .any(|p| p.len() > prefix.len() && p.starts_with(&prefix) && ns.starts_with(&p))
}

fn check_world_name(world: &str) -> Result<()> {
    let ok = !world.is_empty()
        && world
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::WorldNotUp {
            world: world.to_string(),
            up: worlds(),
        })
    }
}

/// Tears a world down: stops its processes (agents, then discoveries),
/// deletes its namespaces and its state directory. Idempotent.
pub fn down(name: Option<&str>) -> Result<String> {
    let world = match pick_world(name) {
        Ok(w) => w,
        Err(LabError::NoWorldUp) => return Ok("no lab world is up; nothing to do".to_string()),
        Err(e) => return Err(e),
    };
    check_world_name(&world)?;
    let dir = world_dir(&world);
    let rec = match WorldRecord::load(&world) {
        Ok(rec) => rec,
        Err(e) => {
            tracing::warn!(world, error = %e, "unreadable world record; cleaning up by name");
            None
        }
    };

    let mut namespaces: Vec<String> = Vec::new();
    if let Some(rec) = &rec {
        namespaces.extend(rec.namespaces.iter().rev().cloned());
    }
    let existing: BTreeSet<String> = ip::netns_list()?.into_iter().collect();
    for ns in world_namespaces(&world)? {
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    namespaces.retain(|ns| existing.contains(ns));

    // Containers first: their processes are in namespaces of their own.
    if let Some(rec) = &rec {
        crate::runtime::stop_all(rec);
    }
    // Recorded processes, then any meshgate process found in the namespaces
    // (externals' services go with the agents).
    let mut proxies: Vec<u32> = Vec::new();
    let mut agents: Vec<u32> = Vec::new();
    let mut discoveries: Vec<u32> = Vec::new();
    let mut stores: Vec<u32> = Vec::new();
    if let Some(rec) = &rec {
        for p in &rec.processes {
            match (&p.component, p.pid) {
                (Component::DnsProxy { .. }, Some(pid)) => proxies.push(pid),
                (
                    Component::Agent { .. } | Component::External { .. } | Component::DnsServer,
                    Some(pid),
                ) => agents.push(pid),
                (Component::Discovery { .. } | Component::DiscoveryReplica { .. }, Some(pid)) => {
                    discoveries.push(pid)
                }
                (Component::Etcd { .. } | Component::Containerd { .. }, Some(pid)) => {
                    stores.push(pid)
                }
                _ => {}
            }
        }
    }
    for ns in &namespaces {
        for pid in ip::netns_pids(ns).unwrap_or_default() {
            if ![&proxies, &agents, &discoveries, &stores]
                .iter()
                .any(|l| l.contains(&pid))
            {
                agents.push(pid);
            }
        }
    }
    // DNS proxies before their agents; etcd last: discoveries leave their
    // last change in it.
    let stopped = procs::terminate(&proxies, DOWN_GRACE)
        + procs::terminate(&agents, DOWN_GRACE)
        + procs::terminate(&discoveries, DOWN_GRACE)
        + procs::terminate(&stores, DOWN_GRACE);

    let mut failures = Vec::new();
    let mut deleted = 0;
    for ns in &namespaces {
        match ip::netns_delete(ns) {
            Ok(()) => deleted += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    // The pods' resolv.conf (worlds with `dns:`), found by name so that a
    // world that crashed before its record was complete loses them too.
    for ns in dns::netns_etc_names() {
        if in_world(&world, &ns) {
            if let Err(e) = dns::remove_resolv_conf(&ns) {
                failures.push(e.to_string());
            }
        }
    }
    // Pins of the world's eBPF datapaths (agents that left removed their
    // own; a killed or restarted one leaves them).
    let pins = bpf_world_dir(&world);
    let had_pins = pins.exists();
    if had_pins {
        if let Err(source) = std::fs::remove_dir_all(&pins) {
            failures.push(
                LabError::Io {
                    what: format!("removing the eBPF pins {}", pins.display()),
                    source,
                }
                .to_string(),
            );
        }
    }
    let had_dir = dir.exists();
    if had_dir {
        if let Err(source) = std::fs::remove_dir_all(&dir) {
            failures.push(
                LabError::Io {
                    what: format!("removing {}", dir.display()),
                    source,
                }
                .to_string(),
            );
        }
    }
    if !failures.is_empty() {
        return Err(LabError::Command {
            cmd: format!("lab down {world}"),
            status: format!("{} failures", failures.len()),
            stderr: failures.join("\n"),
        });
    }
    if !had_dir && !had_pins && deleted == 0 && stopped == 0 {
        return Ok(format!("world {world} is not up; nothing to do"));
    }
    Ok(format!(
        "world {world} is down: stopped {stopped} processes, deleted {deleted} namespaces"
    ))
}
