//! `meshgate agent`: the node agent. It owns the node key, starts the
//! WireGuard backend, keeps the peers in step with discovery and writes its
//! status for `meshgate status` and the lab.
//!
//! Signals: SIGTERM/SIGINT leave the mesh (deregister, remove the interface);
//! SIGUSR2 exits for a restart (interface, routes and registration stay;
//! the userspace backend forwards on until the next agent took over, see
//! `handoff`);
//! SIGUSR1 rotates the key now; SIGHUP re-reads the `--policy` files.

mod addresses;
mod cni_conf;
pub mod config;
pub mod datapath;
pub mod dns_steering;
mod endpoints;
pub mod flow;
mod handoff;
pub mod ipcache;
mod kube_source;
mod liveness;
mod mesh;
mod mesh_core;
pub mod metrics;
mod namespaces;
pub mod observe;
mod paths;
mod persist;
mod pods;
mod services;
mod session;
mod sync;
mod unreachable;

/// The agent's `status.json` types (their own crate, `gateway/agent/status`,
/// so that readers such as the lab need not build the agent).
pub use meshgate_agent_status as status;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meshgate_model::pb;
use meshgate_tunnel::{backend, NodeKey};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

pub use config::AgentArgs;
use config::AgentConfig;
use ipcache::IpCache;
use mesh::Mesh;

/// Everything the agent's tasks share.
pub struct Agent {
    pub cfg: AgentConfig,
    pub backend: Arc<dyn meshgate_tunnel::Backend>,
    pub key: Mutex<NodeKey>,
    pub mesh: Mutex<Mesh>,
    /// Woken when the mesh core's timeout changed ([`mesh::run`]).
    pub mesh_wake: tokio::sync::Notify,
    /// Woken when the node must register again (its key changed).
    pub reregister: tokio::sync::Notify,
    /// This node's endpoints (from `--endpoints` and the CNI, with their
    /// namespaces' labels), reported after registering and on each change
    /// ([`recompute_endpoints`]).
    pub endpoints: Mutex<Vec<pb::Endpoint>>,
    /// The endpoints as `--endpoints` lists them (re-read every second and
    /// on SIGHUP: [`endpoints::watch`]).
    pub file_endpoints: Mutex<endpoints::FileEndpoints>,
    /// The pods `meshgate-cni` added ([`pods`]).
    pub pods: Mutex<pods::Pods>,
    /// The namespaces' labels last accepted (from the `--namespaces` file
    /// or the Kubernetes API); `None`: no namespace labels.
    pub namespaces: Mutex<Option<namespaces::Namespaces>>,
    /// With `--inventory kubernetes`: the pods on this node as the API
    /// lists them (labels, service account by `namespace/name`), which the
    /// pods `meshgate-cni` adds take; `None` otherwise.
    pub kube_pods: Mutex<Option<BTreeMap<String, pods::LabelEntry>>>,
    /// This node's labels, published in its node record (`--node-label`,
    /// or the Node's labels from the API).
    pub node_labels: Mutex<BTreeMap<String, String>>,
    /// Woken when the endpoints must be reported again.
    pub report: tokio::sync::Notify,
    /// Held while [`recompute_endpoints`] runs.
    pub recomputing: Mutex<()>,
    /// The mesh-wide ipcache as last seen on the watch stream.
    pub ipcache: Mutex<IpCache>,
    /// This cluster's services with merged backends, from the watch stream.
    pub services: Mutex<services::Services>,
    /// Every node record (`cluster/node`) of the last watch state; `None`
    /// until the first snapshot.
    pub nodes: Mutex<Option<Arc<BTreeMap<String, pb::Node>>>>,
    /// The eBPF datapath, with `--datapath ebpf`.
    /// Set once loaded, after the tunnel is back (the pinned datapath
    /// forwards meanwhile).
    pub datapath: std::sync::OnceLock<datapath::Ebpf>,
    /// The pods' host-side interfaces (their addresses are not the node's).
    pub pod_interfaces: Mutex<std::collections::BTreeSet<String>>,
    /// This node's interface addresses as last published.
    pub addresses: Mutex<Vec<meshgate_model::model::NodeAddress>>,
    /// Every address of this node but loopback's (the `host` entity).
    pub host_addresses: Mutex<std::collections::BTreeSet<std::net::Ipv4Addr>>,
    /// This node is a candidate gateway of some egress gateway policy: it
    /// sends keepalives to every peer, so they judge its health.
    pub egress_gateway: std::sync::atomic::AtomicBool,
    /// Set while this (old) agent hands over to the next: its datapath
    /// worker writes no maps any more.
    pub handing_off: std::sync::atomic::AtomicBool,
}

impl Agent {
    pub fn key(&self) -> NodeKey {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn mesh(&self) -> std::sync::MutexGuard<'_, Mesh> {
        self.mesh.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ipcache(&self) -> std::sync::MutexGuard<'_, IpCache> {
        self.ipcache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn nodes(&self) -> std::sync::MutexGuard<'_, Option<Arc<BTreeMap<String, pb::Node>>>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn addresses(&self) -> std::sync::MutexGuard<'_, Vec<meshgate_model::model::NodeAddress>> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn host_addresses(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<std::net::Ipv4Addr>> {
        self.host_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn pods(&self) -> std::sync::MutexGuard<'_, pods::Pods> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn services(&self) -> std::sync::MutexGuard<'_, services::Services> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a new key, saves it, switches the tunnel to it and publishes it.
    pub fn rotate_key(&self) -> anyhow::Result<()> {
        let new = NodeKey::generate();
        new.save(&self.cfg.key_path())
            .context("saving the rotated key")?;
        self.backend
            .rotate_key(&new)
            .context("switching the tunnel to the rotated key")?;
        info!(public_key = %new.public().short(), "key rotated; publishing it");
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = new;
        self.mesh().key_rotations += 1;
        self.reregister.notify_one();
        Ok(())
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut cfg = args.resolve()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // With --inventory kubernetes, the API's first lists stand where the
    // files are read: nothing is set up before them. The state dir holds
    // the saved inventory then; otherwise it is made only once the policy
    // files are accepted.
    if cfg.inventory.is_kubernetes() {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    }
    let kube = match &cfg.inventory {
        config::Inventory::Kubernetes { kubeconfig } => {
            Some(runtime.block_on(kube_source::first_sync(
                &cfg.node,
                kubeconfig.as_deref(),
                &cfg.policy_options,
                &cfg.state_dir,
                kube_source::SAVED_AFTER,
            ))?)
        }
        config::Inventory::Files => None,
    };
    if let Some(k) = &kube {
        if k.from_saved {
            info!("inventory: the last run's, until the Kubernetes API answers");
        }
        if cfg.pod_cidr_from_node {
            cfg.pod_cidr = k.node.pod_cidr.with_context(|| {
                format!(
                    "Node {} has no IPv4 pod CIDR in spec.podCIDRs: give --pod-cidr, or let the \
                     cluster allocate node CIDRs (kube-controller-manager --allocate-node-cidrs)",
                    cfg.node
                )
            })?;
        }
        cfg.labels = k.node.labels.clone();
    }
    // Policy files first: one that does not parse stops the agent here.
    let (policy, egress_policies) = if let Some(k) = &kube {
        let parsed = &k.policies;
        for e in &parsed.errors {
            warn!(error = %e, "a policy object from the Kubernetes API is refused; skipped, the others apply");
        }
        datapath::policy::log_warnings(&parsed.warnings);
        let mut rt = datapath::policy::PolicyRuntime::new(
            cfg.cluster_id,
            Vec::new(),
            parsed.file.identity.clone(),
        )
        .context("the policies from the Kubernetes API")?
        .with_options(cfg.policy_options, parsed.warnings.clone())
        .with_kube_apiservers(cfg.kube_apiservers.iter().copied());
        rt.set_refused(&parsed.errors);
        (Some(rt), parsed.file.egress.clone())
    } else if cfg.policy_files.is_empty() {
        (None, Vec::new())
    } else {
        let loaded = datapath::policy::load_files(&cfg.policy_files, &cfg.policy_options)?;
        datapath::policy::log_warnings(&loaded.warnings);
        let rt = datapath::policy::PolicyRuntime::new(
            cfg.cluster_id,
            cfg.policy_files.clone(),
            loaded.file.identity,
        )?
        .with_options(cfg.policy_options, loaded.warnings)
        .with_kube_apiservers(cfg.kube_apiservers.iter().copied());
        (Some(rt), loaded.file.egress)
    };
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    let key = NodeKey::load_or_generate(&cfg.key_path()).context("loading the node key")?;
    let saved = persist::load(&cfg.state_dir).context("loading the agent's saved state")?;
    let (endpoints, endpoints_text) = match &cfg.endpoints {
        Some(path) => endpoints::load(path, cfg.pod_cidr)?,
        None => (Vec::new(), String::new()),
    };
    let pods = pods::still_there(pods::load(&cfg.state_dir)?);
    let file = endpoints::FileEndpoints::of(&endpoints, endpoints_text);
    let (namespaces_seen, namespaces_text, what) = match (&cfg.namespaces, &kube) {
        (Some(path), _) => {
            let text = namespaces::read(path)?;
            let ns = namespaces::parse(&text)
                .with_context(|| format!("namespaces file {}", path.display()))?;
            (
                Some(ns),
                Some(text),
                format!("namespaces file {}", path.display()),
            )
        }
        (None, Some(k)) => (
            Some(k.namespaces.clone()),
            None,
            "the namespaces' labels from the Kubernetes API".to_string(),
        ),
        (None, None) => (None, None, String::new()),
    };
    // What the endpoints report, namespace labels included: checked
    // before anything is set up.
    let endpoints::Local {
        reported,
        interfaces,
    } = endpoints::decide(&file, &pods, namespaces_seen.as_ref()).context(what)?;
    // The last ipcache seen, until discovery sends a fresh snapshot.
    let cache = ipcache::load(&cfg.state_dir).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "ignoring the saved ipcache; discovery will resend it");
        None
    });
    let pod_interfaces: std::collections::BTreeSet<String> = interfaces.values().cloned().collect();
    let read_addresses = addresses::read(&pod_interfaces);
    let lock = handoff::lock_node(&cfg.state_dir, &cfg.interface, handoff::LOCK_WAIT)?;
    // A restart's handover: an old agent still forwarding (see handoff.rs).
    let mut standby = handoff::incoming(&cfg.state_dir);
    let (backend, fallback) = match (&cfg.encryption, &cfg.ipsec_secret) {
        (meshgate_model::model::Encryption::Ipsec, Some(secret)) => {
            let ipsec = meshgate_tunnel::ipsec::IpsecConfig {
                me: cfg.mesh_name(),
                underlay_ip: cfg.underlay_ip,
                secret_file: secret.clone(),
            };
            let dev = meshgate_tunnel::ipsec::IpsecDevice::start(&cfg.interface, ipsec)
                .context("starting the IPsec backend")?;
            (Box::new(dev) as Box<dyn meshgate_tunnel::Backend>, None)
        }
        _ => start_wireguard(&cfg, &key, &mut standby)?,
    };
    if let Some(reason) = &fallback {
        info!(reason = %reason, "kernel WireGuard unavailable; using the userspace backend");
    }
    info!(
        node = %cfg.node, cluster = %cfg.cluster, backend = %backend.kind(),
        interface = %cfg.interface, public_key = %key.public().short(),
        endpoints = endpoints.len(), "agent starting"
    );
    let agent = Arc::new(Agent {
        backend: Arc::from(backend),
        key: Mutex::new(key),
        mesh: Mutex::new(Mesh::new(
            mesh_core::Facts {
                name: cfg.mesh_name(),
                cluster: cfg.cluster.clone(),
                gateway: cfg.is_cluster_gateway(),
                encryption: cfg.encryption,
            },
            std::time::Instant::now(),
        )),
        mesh_wake: tokio::sync::Notify::new(),
        reregister: tokio::sync::Notify::new(),
        endpoints: Mutex::new(reported),
        file_endpoints: Mutex::new(file),
        pods: Mutex::new(pods),
        namespaces: Mutex::new(namespaces_seen),
        kube_pods: Mutex::new(kube.as_ref().map(|k| k.pods.clone())),
        node_labels: Mutex::new(cfg.labels.clone()),
        report: tokio::sync::Notify::new(),
        recomputing: Mutex::new(()),
        ipcache: Mutex::new(cache.unwrap_or_default()),
        services: Mutex::new(services::Services::default()),
        nodes: Mutex::new(None),
        datapath: std::sync::OnceLock::new(),
        addresses: Mutex::new(read_addresses.published),
        host_addresses: Mutex::new(read_addresses.host),
        pod_interfaces: Mutex::new(pod_interfaces),
        egress_gateway: std::sync::atomic::AtomicBool::new(false),
        handing_off: std::sync::atomic::AtomicBool::new(false),
        cfg,
    });
    // Resume from what we last knew, before discovery answers: after a
    // restart this puts every peer back and starts handshakes at once.
    if let Some(saved) = saved {
        mesh::resume(&agent, saved).context("restoring the last known peers")?;
    }
    if let Some(old) = standby {
        info!(
            old_pid = old,
            "standing by beside the old agent until every peer has a session"
        );
        handoff::take_over(agent.clone());
    }
    // Plain datapath: the saved mesh CIDRs' unreachable routes, before
    // discovery answers.
    unreachable::sync(&agent);
    if agent.cfg.datapath == datapath::Mode::Ebpf {
        let dp = datapath::Ebpf::start(
            &agent.cfg.bpf_pin_dir,
            interfaces,
            agent.backend.interface(),
            agent.cfg.pod_cidr,
            mesh::TUNNEL_MTU,
            agent.cfg.strict,
            datapath::Policies {
                identity: policy,
                egress: egress_policies,
                dns_proxy: agent.cfg.dns_proxy,
            },
        )?;
        let _ = agent.datapath.set(dp);
        // Local pods from the saved ipcache, this process's programs swapped
        // in, before discovery answers.
        datapath::sync(&agent);
    }
    match runtime.block_on(main_loop(agent.clone(), namespaces_text, kube))? {
        Exit::Done => {
            drop(lock);
            Ok(())
        }
        Exit::Handoff => {
            // Every task stops (servers, discovery session, state files);
            // the WireGuard threads forward on until the new agent is up.
            agent
                .handing_off
                .store(true, std::sync::atomic::Ordering::Relaxed);
            runtime.shutdown_timeout(Duration::from_secs(1));
            drop(lock);
            handoff::serve_out(&agent)
        }
    }
}

/// How the main loop ended.
enum Exit {
    Done,
    /// SIGUSR2 with a userspace backend: hand over to the next agent.
    Handoff,
}

/// Starts the WireGuard backend; beside an old agent (`standby`) when
/// one is handing over. If the old one cannot share the device (an older
/// agent, a single-queue device), it is told to go and the start waits for
/// it; `standby` is then cleared.
fn start_wireguard(
    cfg: &AgentConfig,
    key: &NodeKey,
    standby: &mut Option<u32>,
) -> anyhow::Result<(Box<dyn meshgate_tunnel::Backend>, Option<String>)> {
    let generation = handoff::next_generation(&cfg.state_dir);
    let opts = |standby: bool| meshgate_tunnel::userspace::UserspaceOptions {
        generation,
        standby,
    };
    let start = |standby: bool| {
        backend::start_with(
            cfg.backend,
            &cfg.interface,
            key,
            cfg.listen_port,
            opts(standby),
        )
    };
    if let Some(old) = *standby {
        match start(true) {
            Ok(b) => return Ok(b),
            Err(e) => {
                warn!(error = %e, old_pid = old, "cannot start beside the old agent: waiting for it to exit");
                handoff::let_go(&cfg.state_dir, old);
                *standby = None;
            }
        }
    }
    start(false).context("starting the WireGuard backend")
}

/// Recomputes the endpoints from the endpoints file, the CNI's pods and
/// the namespaces file's labels; the pods' interfaces follow, for the
/// datapath and the address watcher. Whether the endpoints changed (then
/// they must be reported). A namespace label set on a pod is refused.
pub fn recompute_endpoints(agent: &Agent) -> anyhow::Result<bool> {
    // One at a time: two callers that read the inputs in one order and
    // wrote the results in the other would leave the older set in place.
    let _one = agent.recomputing.lock().unwrap_or_else(|p| p.into_inner());
    let pods = agent.pods().clone();
    let file = agent
        .file_endpoints
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ns = agent
        .namespaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let local = endpoints::decide(&file, &pods, ns.as_ref())?;
    *agent
        .pod_interfaces
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = local.interfaces.values().cloned().collect();
    if let Some(dp) = agent.datapath.get() {
        dp.set_interfaces(local.interfaces);
    }
    let now = local.reported;
    let mut reported = agent.endpoints.lock().unwrap_or_else(|p| p.into_inner());
    let changed = *reported != now;
    *reported = now;
    Ok(changed)
}

async fn main_loop(
    agent: Arc<Agent>,
    namespaces_text: Option<String>,
    kube: Option<kube_source::KubeStart>,
) -> anyhow::Result<Exit> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let session = tokio::spawn(sync::run(agent.clone()));
    if agent.datapath.get().is_some() {
        datapath::spawn_worker(agent.clone())?;
    }
    tokio::spawn(persist::status_loop(agent.clone()));
    tokio::spawn(addresses::watch(agent.clone()));
    tokio::spawn(endpoints::watch(agent.clone()));
    if let Some(text) = namespaces_text {
        tokio::spawn(namespaces::watch(agent.clone(), text));
    }
    if let Some(k) = kube {
        // The pods' labels as the API lists them now (a pod relabelled
        // while the agent was down), then every change.
        if let Some(labels) = agent
            .kube_pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            if let Err(e) = pods::relabel(&agent, &labels) {
                warn!(error = %format!("{e:#}"), "the pods' labels from the API could not be saved");
            }
        }
        kube_source::follow(agent.clone(), k.inventory, k.node, k.saved);
    }
    pods::serve(agent.clone()).await?;
    if let Some(dir) = &agent.cfg.cni_conf_dir {
        let conf = cni_conf::conflist(
            agent.cfg.pod_cidr,
            cni_conf::pod_mtu(agent.cfg.datapath == datapath::Mode::Ebpf),
            &pods::socket_path(&agent.cfg.state_dir),
        );
        let path = cni_conf::write(dir, &conf)?;
        info!(file = %path.display(), "CNI config written: pods start through meshgate-cni");
    }
    tokio::spawn(pods::watch_labels(agent.clone()));
    tokio::spawn(mesh::run(agent.clone()));
    let observer = observe::start(&agent)?;
    metrics::start(agent.clone(), observer).await?;
    let rotate_every = agent.cfg.rotate_interval;
    let mut rotation = tokio::time::interval(rotate_every.unwrap_or(Duration::from_secs(86_400)));
    rotation.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => return leave(&agent, session).await.map(|()| Exit::Done),
            _ = int.recv() => return leave(&agent, session).await.map(|()| Exit::Done),
            _ = usr2.recv() => {
                persist::write_status(&agent);
                if agent.backend.begin_handoff() && handoff::announce(&agent.cfg.state_dir) {
                    info!("restart: handing over to the next agent; interface, routes and registration stay");
                    return Ok(Exit::Handoff);
                }
                info!("exiting for a restart: interface, routes and registration stay");
                // Exit at once: the TUN device is persistent, so dropping
                // nothing more keeps the interface and its routes in place.
                std::process::exit(0);
            }
            _ = hup.recv() => {
                endpoints::reread(&agent);
                let a = agent.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    datapath::reload_policy(&a);
                    persist::write_status(&a);
                })
                .await;
            }
            _ = usr1.recv() => {
                if let Err(e) = agent.rotate_key() {
                    warn!(error = %format!("{e:#}"), "key rotation failed");
                }
            }
            _ = rotation.tick(), if rotate_every.is_some() => {
                if let Err(e) = agent.rotate_key() {
                    warn!(error = %format!("{e:#}"), "scheduled key rotation failed");
                }
            }
        }
    }
}

/// Leaves the mesh: ends the discovery session, deregisters, removes the
/// interface and its routes.
///
/// The session ends first and for good: while it ran, a lease renewal due
/// during the leave got "not found" for the node just deregistered and
/// registered it again, with its endpoints, so discovery listed it (and its
/// pods as service backends) for a whole lease after it was gone.
async fn leave(agent: &Agent, session: tokio::task::JoinHandle<()>) -> anyhow::Result<()> {
    info!("leaving the mesh");
    session.abort();
    // Returns once the task is dropped: no renewal or registration of it
    // can start after this point.
    let _ = session.await;
    if let Err(e) = tokio::time::timeout(Duration::from_secs(2), sync::deregister(agent)).await {
        warn!(error = %e, "deregistration timed out; discovery will expire the lease");
    }
    agent
        .backend
        .shutdown(true)
        .context("removing the tunnel interface")?;
    if let Some(dp) = agent.datapath.get() {
        dp.remove().context("removing the eBPF datapath")?;
    }
    unreachable::remove_all(agent);
    persist::forget(&agent.cfg.state_dir);
    let _ = std::fs::remove_file(observe::socket_path(&agent.cfg.state_dir));
    info!("left the mesh");
    Ok(())
}

/// `meshgate status`: prints the agent's last status.
pub fn print_status(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let path = state_dir.join("status.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is the agent running with --state-dir {}?)",
            path.display(),
            state_dir.display()
        )
    })?;
    let status: crate::status::AgentStatus =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut out = format!(
        "node {}/{}  backend {}  tunnel {}  key {}  discovery {}  ipcache {} entries\n",
        status.cluster,
        status.node,
        status.backend,
        status.tunnel_ip,
        status.public_key.chars().take(8).collect::<String>(),
        if status.discovery_connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        status.ipcache_entries
    );
    for p in &status.peers {
        let hs = p
            .last_handshake_age_ms
            .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "  peer {:<20} {:<22} handshake {:<10} tx {} rx {}\n",
            p.node, p.endpoint, hs, p.tx_bytes, p.rx_bytes
        ));
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
