//! The eBPF datapath on this node (`--datapath ebpf`): loads and pins the
//! programs, makes the VXLAN device `mg-vx0`, routes other nodes' pod CIDRs
//! into it (a table of its own, consulted before the main one), attaches the
//! programs and keeps `mg_ipcache` in step with the agent's ipcache.
//!
//! ```text
//! pod --veth--> [from_pod] --table 28007--> mg-vx0 [to_mesh: VNI = identity,
//!   remote = node's tunnel IP] --main table, tunnel IP--> mg-wg0 --> underlay
//! ```
//!
//! Everything is pinned or lives in the kernel: an agent that exits for a
//! restart (SIGUSR2) or crashes leaves the datapath forwarding; the next one
//! reuses the pins, swaps its programs in atomically and reconciles. Leaving
//! the mesh removes it all. Programs attach as TCX links on Linux 6.6+ and
//! as tc clsact filters below (`status.json`'s `datapath.attach`; how each
//! is replaced in place: meshgate-ebpf's `loader.rs`).

pub mod dns;
pub mod egress;
pub mod lb;
pub mod mesh_cidrs;
pub mod plan;
pub mod policy;
mod worker;

pub use worker::{kick, spawn_worker};

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::status::DatapathStatus;
use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use meshgate_ebpf::{Attachment, Datapath, Hook, IpcacheEntry};
use meshgate_tunnel::netlink::{LinkChange, LinkKind, Netlink, Rule};
use tracing::{debug, info, warn};

use super::Agent;
use mesh_cidrs::RouteKind;
use plan::{Local, VXLAN_DEV};

/// The VXLAN UDP port. It only ever travels inside WireGuard.
pub const VXLAN_PORT: u16 = 4789;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u16 = 50;
/// Routing table (and rule priority) holding the routes into `mg-vx0`.
pub const ROUTE_TABLE: u32 = 28_007;
/// nftables table (inet family) that accepts VXLAN only from WireGuard.
pub const NFT_TABLE: &str = "meshgate_vxlan";

/// Which datapath carries pod traffic between nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Pod CIDRs routed straight into the WireGuard device.
    #[default]
    Plain,
    /// VXLAN (VNI = source identity) inside WireGuard, with the tc programs.
    Ebpf,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(Mode::Plain),
            "ebpf" => Ok(Mode::Ebpf),
            other => Err(format!(
                "--datapath {other:?} is not a datapath: use plain or ebpf"
            )),
        }
    }
}

/// The default pin directory of a node: `/sys/fs/bpf/meshgate/<cluster>-<node>`.
pub fn default_pin_dir(cluster: &str, node: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/meshgate").join(format!("{cluster}-{node}"))
}

/// The policies of the `--policy` files, parsed at start.
pub struct Policies {
    /// Identity policy, if any file was given.
    pub identity: Option<policy::PolicyRuntime>,
    /// Egress gateway policies.
    pub egress: Vec<meshgate_egress::EgressPolicy>,
    /// FQDN policy through the node's DNS proxy (`--dns-proxy`): pods' DNS
    /// is let through to it, and its policy file is written.
    pub dns_proxy: bool,
}

struct Inner {
    dp: Datapath,
    /// What `mg_ipcache` holds (read from the map at load, then kept).
    applied: BTreeMap<Ipv4Addr, IpcacheEntry>,
    /// The attachments of the last reconcile; `None` before the first.
    attached: Option<BTreeSet<Attachment>>,
    /// Routes in [`ROUTE_TABLE`] (read at start, then kept).
    routes: BTreeMap<Ipv4Net, RouteKind>,
    /// What `mg_mesh_cidrs` holds (read from the map at load, then kept).
    mesh_cidrs: BTreeMap<Ipv4Net, u8>,
    /// This node's pod CIDR.
    pod_cidr: Ipv4Net,
    /// Counts of the last successful attach reconcile: created, replaced, removed.
    last_reconcile: (usize, usize, usize),
    /// What the service load-balancing maps hold (read at load, then kept).
    lb: lb::LbState,
    /// Identity policy (`--policy`), if any file was given.
    policy: Option<policy::PolicyRuntime>,
    /// Egress gateway policies (from the same files).
    egress: egress::EgressRuntime,
    /// The DNS proxy's policy file, with `--dns-proxy`.
    dns: Option<dns::DnsFile>,
    /// Set by [`Ebpf::remove`]: no sync may put anything back afterwards.
    removed: bool,
}

/// The loaded datapath of this agent.
pub struct Ebpf {
    inner: Mutex<Inner>,
    /// Local pods: IP -> host-side interface name (the endpoints file's
    /// and the CNI's, [`Ebpf::set_interfaces`]).
    interfaces: Mutex<BTreeMap<Ipv4Addr, String>>,
    /// Wakes the sync worker ([`worker`]).
    kick: worker::Kick,
}

fn ifindex(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Creates `mg-vx0` if missing and (re)asserts its settings: collect_md
/// (`external`: the tunnel key comes from to_mesh), no ARP (to_mesh picks
/// the remote; from_mesh marks frames for this host), MTU that fits inside
/// the WireGuard MTU.
fn ensure_vxlan(nl: &mut Netlink, mtu: u16) -> anyhow::Result<()> {
    match nl.add_link(VXLAN_DEV, &LinkKind::VxlanExternal { port: VXLAN_PORT }) {
        Ok(()) => info!(
            device = VXLAN_DEV,
            port = VXLAN_PORT,
            "VXLAN device created"
        ),
        Err(e) if e.is_exists() => {}
        Err(e) => {
            return Err(e).context("creating the VXLAN device (the kernel needs CONFIG_VXLAN)")
        }
    }
    nl.set_link(
        VXLAN_DEV,
        &LinkChange {
            mtu: Some(mtu.into()),
            up: Some(true),
            arp: Some(false),
        },
    )?;
    Ok(())
}

/// `from_mesh` takes the VNI as the sender's identity, so VXLAN must come
/// out of WireGuard only. The kernel's VXLAN socket listens on every
/// address of the node, the underlay's too: this nftables table drops UDP to
/// the VXLAN port that did not arrive on `wg_iface`. And pod traffic must
/// come in through `mg-vx0` (from_mesh, with its identity): packets out of
/// WireGuard straight to this node's pods (`pod_cidr`), as a plain-datapath
/// peer or a missing route on the sender would send them, are dropped too.
/// One transaction, idempotent (the table is replaced whole).
fn nft_ruleset(wg_iface: &str, pod_cidr: Ipv4Net) -> String {
    let pods = pod_cidr.trunc();
    format!(
        "table inet {NFT_TABLE} {{}}\n\
         delete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -200; policy accept;\n\
         \t\tudp dport {VXLAN_PORT} iifname != \"{wg_iface}\" counter drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority -200; policy accept;\n\
         \t\tiifname \"{wg_iface}\" ip daddr {pods} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs an `nft -f -` script (one transaction): the agent's tables and the
/// DNS proxy's steering.
pub(crate) fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context(
            "running `nft`: the eBPF datapath needs nftables (VXLAN only from WireGuard, \
             egress SNAT, DNS steering; install nftables, e.g. apt-get install nftables)",
        )?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed: {} (the kernel needs nf_tables)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The rule that looks [`ROUTE_TABLE`] up (at its own priority), added
/// unless a rule is at that priority already.
fn ensure_rule(nl: &mut Netlink) -> anyhow::Result<()> {
    if !nl.rules()?.iter().any(|r| r.priority == ROUTE_TABLE) {
        nl.add_rule(&Rule::lookup(ROUTE_TABLE, ROUTE_TABLE))
            .context("adding the rule for the eBPF datapath's routing table")?;
    }
    Ok(())
}

/// The routes of [`ROUTE_TABLE`] that the datapath makes.
fn table_routes(nl: &mut Netlink) -> anyhow::Result<BTreeMap<Ipv4Net, RouteKind>> {
    Ok(nl
        .routes(ROUTE_TABLE)?
        .iter()
        .filter_map(RouteKind::of)
        .collect())
}

impl Ebpf {
    /// Loads (or reuses) the pinned datapath under `pin_dir` and sets up the
    /// VXLAN device and its routing table. Attaching and filling the maps
    /// happen in [`sync`].
    pub fn start(
        pin_dir: &Path,
        interfaces: BTreeMap<Ipv4Addr, String>,
        wg_iface: &str,
        pod_cidr: Ipv4Net,
        tunnel_mtu: u16,
        strict: bool,
        policies: Policies,
    ) -> anyhow::Result<Ebpf> {
        let Policies {
            identity: policy,
            egress: egress_policies,
            dns_proxy,
        } = policies;
        let started = std::time::Instant::now();
        let sys = Path::new("/sys/fs/bpf");
        if pin_dir.starts_with(sys) {
            meshgate_ebpf::bpffs::ensure_mounted(sys)
                .context("mounting the bpf filesystem for the datapath's pins")?;
        }
        let mut dp = Datapath::load(pin_dir).with_context(|| {
            format!(
                "loading the eBPF datapath with pins in {} (needs root and bpffs; attaches \
                 with TCX on Linux 6.6+, else tc clsact; MESHGATE_TC_ATTACH=auto|tcx|tc)",
                pin_dir.display()
            )
        })?;
        let applied: BTreeMap<Ipv4Addr, IpcacheEntry> = dp
            .maps
            .ipcache
            .entries()
            .context("reading the pinned ipcache")?
            .into_iter()
            // World entries are the policy's (policy.rs), not endpoints.
            .filter(|(_, len, e)| *len == 32 && !e.world)
            .map(|(ip, _, e)| (ip, e))
            .collect();
        // The filter first: the device opens the VXLAN socket.
        nft(&nft_ruleset(wg_iface, pod_cidr))
            .context("filtering VXLAN to WireGuard only and pod traffic to VXLAN only")?;
        let mut nl = Netlink::open()?;
        ensure_vxlan(&mut nl, tunnel_mtu - VXLAN_OVERHEAD)?;
        // Strict mode (or its absence) is set on every start: the pinned
        // config map keeps what the last agent set.
        let mesh_ifindex = ifindex(VXLAN_DEV);
        if strict && mesh_ifindex == 0 {
            bail!("strict mode: {VXLAN_DEV} has no interface index right after it was made");
        }
        dp.maps
            .config
            .set_strict(strict.then_some(mesh_ifindex))
            .context("setting strict mode in the pinned mg_config map")?;
        // The DNAT to the proxy is in place before the datapath lets pods'
        // DNS through without policy, and goes only after it stops: with no
        // proxy running, DNS fails at the proxy's address, never leaves.
        let was_on = dp.maps.config.dns_proxy().unwrap_or(false);
        if dns_proxy {
            crate::dns_steering::install(crate::dns_steering::LISTEN, crate::dns_steering::PORT)
                .context("steering pods' DNS to the DNS proxy (--dns-proxy)")?;
        }
        dp.maps
            .config
            .set_dns_proxy(dns_proxy)
            .context("setting DNS proxy steering in the pinned mg_config map")?;
        if was_on && !dns_proxy {
            if let Err(e) = crate::dns_steering::uninstall(crate::dns_steering::LISTEN) {
                warn!(error = %format!("{e:#}"), "removing the DNS proxy's steering");
            }
        }
        if dns_proxy {
            info!("DNS proxy: pods' DNS goes to the node's meshgate dnsproxy");
        }
        if strict {
            info!(
                mesh_device = VXLAN_DEV,
                mesh_ifindex,
                "strict mode: pod traffic to other nodes leaves only through the mesh"
            );
        }
        ensure_rule(&mut nl)?;
        let routes = table_routes(&mut nl)?;
        let pinned_cidrs: BTreeMap<Ipv4Net, u8> = dp
            .maps
            .mesh_cidrs
            .entries()
            .context("reading the pinned mesh CIDRs")?
            .into_iter()
            .filter_map(|((addr, len), id)| Some((Ipv4Net::new(addr, len).ok()?, id)))
            .collect();
        let stale = dp
            .maps
            .lb
            .gc()
            .context("removing stale service backend slots")?;
        let lb: lb::LbState = dp
            .maps
            .lb
            .services()
            .context("reading the pinned service maps")?
            .into_iter()
            .map(|(fe, s)| {
                let mut backends = s.backends;
                lb::normalize(&mut backends);
                (fe, (s.affinity, backends))
            })
            .collect();
        if stale > 0 {
            debug!(stale, "stale service backend slots removed");
        }
        let mut egress = egress::EgressRuntime::new(egress_policies);
        egress.adopt_pinned(
            dp.maps
                .egress
                .routes()
                .context("reading the pinned egress routes")?,
        );
        info!(
            attach = %dp.attach_mode(),
            lb_frontends = lb.len(),
            pin_dir = %pin_dir.display(), pinned_entries = applied.len(),
            routes = routes.len(), took_ms = started.elapsed().as_millis() as u64,
            "eBPF datapath loaded"
        );
        Ok(Ebpf {
            inner: Mutex::new(Inner {
                dp,
                applied,
                attached: None,
                routes,
                mesh_cidrs: pinned_cidrs,
                pod_cidr,
                last_reconcile: (0, 0, 0),
                lb,
                policy,
                egress,
                dns: dns_proxy.then(dns::DnsFile::default),
                removed: false,
            }),
            interfaces: Mutex::new(interfaces),
            kick: worker::Kick::default(),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local pods' host-side interfaces from now on (the next sync
    /// attaches to new ones and forgets gone ones).
    pub fn set_interfaces(&self, interfaces: BTreeMap<Ipv4Addr, String>) {
        *self.interfaces.lock().unwrap_or_else(|p| p.into_inner()) = interfaces;
    }

    /// Whether the pod at `ip` behind `iface` is in the datapath: its
    /// ipcache entry written with `identity` and that interface, and
    /// `from_pod` attached there.
    pub fn ready_for(&self, ip: Ipv4Addr, iface: &str, identity: u32) -> bool {
        let index = ifindex(iface);
        if index == 0 {
            return false;
        }
        let inner = self.inner();
        let entry = inner
            .applied
            .get(&ip)
            .is_some_and(|e| e.local && e.identity == identity && e.ifindex == index);
        let attached = inner
            .attached
            .as_ref()
            .is_some_and(|a| a.contains(&Attachment::new(iface, Hook::FromPod)));
        entry && attached
    }

    /// The datapath's figures for `status.json`.
    pub fn status(&self) -> DatapathStatus {
        let inner = self.inner();
        let drops = match inner.dp.maps.drops.all() {
            Ok(all) => all
                .into_iter()
                .map(|(r, c)| (r.to_string(), c.packets))
                .collect(),
            Err(e) => {
                debug!(error = %e, "reading drop counters failed");
                BTreeMap::new()
            }
        };
        let (created, replaced, removed) = inner.last_reconcile;
        let strict = match inner.dp.maps.config.get() {
            Ok(c) => c.flags & meshgate_ebpf::layout::CFG_F_STRICT != 0,
            Err(e) => {
                debug!(error = %e, "reading the config map failed");
                false
            }
        };
        let policy = inner.policy.as_ref().map(policy::PolicyRuntime::status);
        DatapathStatus {
            strict,
            lb_frontends: inner.lb.len(),
            policy,
            pin_dir: inner.dp.pin_dir().display().to_string(),
            attach: inner.dp.attach_mode().to_string(),
            created,
            replaced,
            removed,
            ipcache_entries: inner.applied.values().filter(|e| !e.is_node()).count(),
            node_entries: inner.applied.values().filter(|e| e.is_node()).count(),
            attachments: inner
                .attached
                .iter()
                .flatten()
                .map(|a| a.to_string())
                .collect(),
            drops,
        }
    }

    /// Removes everything: programs detached, pins, routes, rule and device.
    pub fn remove(&self) -> anyhow::Result<()> {
        let mut inner = self.inner();
        inner.removed = true;
        let mut nl = Netlink::open()?;
        match nl.delete_rule(ROUTE_TABLE) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => warn!(error = %e, "removing the datapath's rule failed"),
        }
        if let Err(e) = nl.flush_table(ROUTE_TABLE) {
            warn!(error = %e, "removing the datapath's routes failed");
        }
        match nl.delete_link(VXLAN_DEV) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = nft(&format!("delete table inet {NFT_TABLE}\n")) {
            warn!(error = %format!("{e:#}"), "removing the VXLAN filter failed");
        }
        egress::remove_host(&mut nl);
        // Unpinning the links detaches the programs (this process holds no
        // link of its own).
        meshgate_ebpf::remove_pin_dir(inner.dp.pin_dir())
            .context("removing the eBPF datapath's pins")?;
        info!("eBPF datapath removed");
        Ok(())
    }
}

fn ebpf_has_policy(ebpf: &Ebpf) -> bool {
    ebpf.inner().policy.is_some()
}

/// SIGHUP: re-reads the policy files and applies the difference (no
/// program reload). A file that fails keeps the previous policy.
pub fn reload_policy(agent: &Agent) {
    let Some(ebpf) = agent.datapath.get() else {
        return;
    };
    if agent.cfg.inventory.is_kubernetes() {
        info!("SIGHUP: the policies come from the Kubernetes API, which the agent watches");
        return;
    }
    {
        let mut guard = ebpf.inner();
        let inner = &mut *guard;
        match inner.policy.as_mut() {
            Some(p) => match p.reload(&mut inner.dp.maps) {
                Ok(egress) => {
                    info!(
                        egress_policies = egress.len(),
                        "egress gateway policies reloaded"
                    );
                    inner.egress.set_policies(egress);
                }
                Err(e) => warn!(error = %format!("{e:#}"), "policy reload failed"),
            },
            None => info!("SIGHUP: no --policy files to reload"),
        }
    }
    sync_egress(agent);
}

/// Applies the policies read from the Kubernetes API (every kind at once:
/// the identity policies' difference, and the egress gateway policies).
/// A set that is refused as a whole (more prefixes than the node has CIDR
/// identities) keeps the previous policy.
pub fn apply_api_policies(agent: &Agent, parsed: meshgate_k8s::inventory::ParsedPolicies) {
    let Some(ebpf) = agent.datapath.get() else {
        return;
    };
    for e in &parsed.errors {
        warn!(error = %e, "a policy object from the Kubernetes API is refused; skipped, the others apply");
    }
    {
        let mut guard = ebpf.inner();
        let inner = &mut *guard;
        if inner.removed {
            return;
        }
        let Some(p) = inner.policy.as_mut() else {
            return;
        };
        match p.apply_parsed(
            &mut inner.dp.maps,
            parsed.file.identity,
            parsed.warnings,
            &parsed.errors,
        ) {
            Ok(()) => {
                info!(
                    egress_policies = parsed.file.egress.len(),
                    "policies from the Kubernetes API applied"
                );
                inner.egress.set_policies(parsed.file.egress);
            }
            Err(e) => warn!(error = %format!("{e:#}"), "the Kubernetes API's policies are refused"),
        }
    }
    sync_egress(agent);
}

/// Plans the egress routes from the agent's state and the gateways'
/// health now, and applies what changed. Called after every sync and every
/// [`egress::TICK`] while egress policies are loaded.
pub fn sync_egress(agent: &Agent) {
    let Some(ebpf) = agent.datapath.get() else {
        return;
    };
    let policies = {
        let inner = ebpf.inner();
        // With no policy loaded there is nothing to plan, once the routes
        // of the last one are cleared.
        if inner.removed || (inner.egress.is_empty() && inner.egress.applied_is_empty()) {
            return;
        }
        inner.egress.policies().to_vec()
    };
    let inputs = {
        let cache = agent.ipcache();
        let nodes = agent.nodes();
        let Some(nodes) = nodes.as_ref() else {
            return; // no node records yet: keep what the pinned map holds
        };
        egress::Inputs::gather(&cache, nodes)
    };
    let ages = super::mesh::rx_ages(agent);
    let (peers, tunnel_ip) = {
        let mesh = agent.mesh();
        (mesh.core.peers().clone(), mesh.core.tunnel_ip())
    };
    let dead_ms = egress::EGRESS_DEAD_AFTER.as_millis() as u64;
    let alive = |peer: &str| {
        ages.get(peer)
            .copied()
            .flatten()
            .is_some_and(|ms| ms <= dead_ms)
    };
    let healthy = |node: &str| {
        if ages.contains_key(node) {
            return alive(node);
        }
        // Reached through a cluster gateway: as healthy as that hop.
        let Some(t) = inputs.nodes.get(node).and_then(|n| n.tunnel_ip) else {
            return false;
        };
        peers
            .values()
            .find(|p| p.allowed_ips.iter().any(|n| n.contains(&t)))
            .is_some_and(|p| alive(&p.name))
    };
    let plan = inputs.plan(&agent.cfg.mesh_name(), &policies, healthy);
    let gateway_of_any = plan.gateway_of_any;
    {
        let mut inner = ebpf.inner();
        let inner = &mut *inner;
        if inner.removed {
            return;
        }
        egress::apply(&mut inner.egress, &mut inner.dp.maps, plan, tunnel_ip);
    }
    let was = agent
        .egress_gateway
        .swap(gateway_of_any, std::sync::atomic::Ordering::Relaxed);
    if was != gateway_of_any {
        info!(
            egress_gateway = gateway_of_any,
            "keepalives to every peer {}",
            if gateway_of_any { "on" } else { "off" }
        );
        super::mesh::refresh(agent, None);
    }
}

/// Rewrites the DNS proxy's policy file if what it says changed (with
/// `--dns-proxy`). Takes the ipcache and the services, then the datapath.
/// Between full syncs (`full` false: an egress tick) only a change of the
/// FQDN egress routes (a failover) rewrites it.
pub fn sync_dns(agent: &Agent, full: bool) {
    let Some(ebpf) = agent.datapath.get() else {
        return;
    };
    if !full {
        let inner = ebpf.inner();
        match inner.dns.as_ref() {
            Some(f) if !f.egress_changed(&inner.egress.fqdn_routes()) => return,
            None => return,
            Some(_) => {}
        }
    }
    let ids = agent.ipcache().identities.clone();
    let clusterset = dns::clusterset(agent.services().services.values());
    let mut guard = ebpf.inner();
    let inner = &mut *guard;
    if inner.removed {
        return;
    }
    let Some(file) = inner.dns.as_mut() else {
        return;
    };
    let rules = inner
        .policy
        .as_ref()
        .map(|p| p.identity_dns())
        .unwrap_or_default();
    let identities = dns::identities(agent.cfg.cluster_id, &ids, rules);
    let fqdn = inner.egress.fqdn_routes();
    file.write(&agent.cfg.state_dir, identities, fqdn, clusterset);
}

/// Whether egress is active on this node (policies loaded, or routes left to clear).
pub fn egress_active(agent: &Agent) -> bool {
    agent.datapath.get().is_some_and(|d| {
        let inner = d.inner();
        !inner.egress.is_empty() || !inner.egress.applied_is_empty()
    })
}

/// `status.json`'s egress section, when egress policies are loaded. Takes
/// the node records, then the datapath: never call it holding the mesh lock
/// (`mesh::refresh` takes that while holding the node records).
pub fn egress_status(agent: &Agent) -> Option<crate::status::EgressStatus> {
    let ebpf = agent.datapath.get()?;
    let tunnel_of: BTreeMap<String, Ipv4Addr> = agent
        .nodes()
        .iter()
        .flat_map(|n| n.iter())
        .filter_map(|(name, n)| Some((name.clone(), n.tunnel_ip.parse().ok()?)))
        .collect();
    let mut guard = ebpf.inner();
    let inner = &mut *guard;
    if inner.egress.is_empty() {
        return None;
    }
    Some(egress::status(
        &mut inner.egress,
        &inner.dp.maps,
        &tunnel_of,
    ))
}

/// Brings the datapath in step with the agent's ipcache, node records and
/// pods: map entries upserted or removed one by one, routes of other nodes'
/// pod CIDRs, programs attached (on the first call after a start, the pinned
/// links get this process's programs atomically). Cheap when nothing changed.
pub fn sync(agent: &Agent) {
    let Some(ebpf) = agent.datapath.get() else {
        return;
    };
    let interfaces: BTreeMap<Ipv4Addr, (String, u32)> = ebpf
        .interfaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(ip, name)| (*ip, (name.clone(), ifindex(name))))
        .collect();
    let host = agent.host_addresses().clone();
    let me = Local {
        cluster: &agent.cfg.cluster,
        node: &agent.cfg.node,
        interfaces: &interfaces,
        host: &host,
    };
    let (desired, identities, clusters, mesh_map) = {
        let cache = agent.ipcache();
        let nodes = agent.nodes();
        let identities = ebpf_has_policy(ebpf).then(|| cache.identities.clone());
        let node_cidrs = nodes.iter().flat_map(|ns| ns.values()).flat_map(|n| {
            let id = u8::try_from(n.cluster_id).unwrap_or(0);
            n.pod_cidrs
                .iter()
                .filter_map(move |c| Some((c.parse::<Ipv4Net>().ok()?, id)))
        });
        let mesh_map = nodes
            .is_some()
            .then(|| mesh_cidrs::map_entries(&cache.mesh_cidrs, node_cidrs));
        (
            plan::desired(&me, &cache, nodes.as_deref()),
            identities,
            cache.mesh_cidrs.clone(),
            mesh_map,
        )
    };
    let lb_desired = lb::desired(&agent.cfg.cluster, &agent.services().services);
    let mut inner = ebpf.inner();
    let inner = &mut *inner;
    if inner.removed {
        return; // the node left the mesh
    }
    let prune = desired.pod_routes.is_some();
    sync_lb(inner, &lb_desired, prune);
    // Policy first: an identity new to this node (a pod whose labels
    // changed) has its entries before an ipcache entry names it, so no
    // flow that its policy allows is dropped in between. Identities are
    // never freed by discovery: the old one's entries stay meanwhile.
    // The nodes' addresses are theirs, not a CIDR rule's: the policy
    // writes no world entry for one (and takes out any it wrote before the
    // node came), so the node entries below hold those keys alone.
    let node_addrs: BTreeSet<Ipv4Addr> = desired
        .ipcache
        .iter()
        .filter(|(_, e)| e.is_node())
        .map(|(ip, _)| *ip)
        .collect();
    if let (Some(p), Some(identities)) = (inner.policy.as_mut(), identities.as_ref()) {
        let mesh: BTreeSet<Ipv4Net> = clusters.keys().copied().collect();
        p.set_node_addresses(node_addrs);
        p.sync_identities(&mut inner.dp.maps, identities, &mesh);
    }
    let changes = plan::diff(&inner.applied, &desired.ipcache, prune);
    for (ip, e) in changes.upsert {
        match inner.dp.maps.ipcache.upsert(ip, 32, e) {
            Ok(()) => {
                debug!(%ip, identity = e.identity, local = e.local, "ipcache entry set");
                inner.applied.insert(ip, e);
            }
            Err(e) => {
                warn!(%ip, error = %e, "setting an ipcache entry failed; retried on the next update")
            }
        }
    }
    for ip in changes.remove {
        // A departed node's address a CIDR rule names: the policy has just
        // written its world entry over the node's.
        if inner
            .policy
            .as_ref()
            .is_some_and(|p| p.holds_world(Ipv4Net::from(ip)))
        {
            inner.applied.remove(&ip);
            continue;
        }
        match inner.dp.maps.ipcache.remove(ip, 32) {
            Ok(_) => {
                debug!(%ip, "ipcache entry removed");
                inner.applied.remove(&ip);
            }
            Err(e) => warn!(%ip, error = %e, "removing an ipcache entry failed"),
        }
    }
    if let Some(mesh_map) = &mesh_map {
        sync_mesh_cidrs(inner, mesh_map);
    }
    if let Some(routes) = &desired.pod_routes {
        let table = mesh_cidrs::table(routes, &clusters, inner.pod_cidr);
        sync_routes(inner, &table);
    }
    if inner.attached.as_ref() != Some(&desired.attachments) {
        match inner.dp.reconcile(&desired.attachments) {
            Ok(report) => {
                info!(
                    created = report.created.len(),
                    replaced = report.replaced.len(),
                    removed = report.removed.len(),
                    failed = report.failed.len(),
                    "datapath attachments reconciled"
                );
                for (a, why) in &report.failed {
                    warn!(attachment = %a, error = %why, "attaching failed; retried on the next update");
                }
                inner.last_reconcile = (
                    report.created.len(),
                    report.replaced.len(),
                    report.removed.len(),
                );
                if report.failed.is_empty() {
                    inner.attached = Some(desired.attachments);
                }
            }
            Err(e) => warn!(error = %e, "reconciling the datapath's attachments failed"),
        }
    }
}

/// Service frontends written (changed ones only, each in one switch) and,
/// once discovery's snapshot is in (`prune`), removed.
fn sync_lb(inner: &mut Inner, desired: &lb::LbState, prune: bool) {
    let changes = lb::diff(&inner.lb, desired, prune);
    let now = std::time::Instant::now();
    for (fe, affinity, backends) in changes.set {
        match inner.dp.maps.lb.set(&fe, affinity, &backends, now) {
            Ok(()) => {
                let gone = lb::gone(inner.lb.get(&fe), &backends);
                if fe.proto == meshgate_ebpf::Proto::Udp && !gone.is_empty() {
                    match inner.dp.maps.lb.forget(&fe, &gone) {
                        Ok(n) => {
                            debug!(frontend = %fe, connections = n, "UDP flows to departed backends forgotten")
                        }
                        Err(e) => {
                            warn!(frontend = %fe, error = %e, "forgetting UDP flows to departed backends failed")
                        }
                    }
                }
                info!(frontend = %fe, ?affinity, backends = backends.len(),
                      local = backends.iter().filter(|b| b.local).count(), "service frontend set");
                inner.lb.insert(fe, (affinity, backends));
            }
            Err(e) => {
                warn!(frontend = %fe, error = %e, "setting a service frontend failed; retried at the next sync (within 1 s)")
            }
        }
    }
    // Replaced backend sets, once no program can still be reading them.
    if let Err(e) = inner.dp.maps.lb.reap(now) {
        warn!(error = %e, "deleting replaced backend slots failed; retried at the next sync");
    }
    for fe in changes.remove {
        match inner.dp.maps.lb.remove(&fe) {
            Ok(_) => {
                info!(frontend = %fe, "service frontend removed");
                inner.lb.remove(&fe);
            }
            Err(e) => warn!(frontend = %fe, error = %e, "removing a service frontend failed"),
        }
    }
}

/// `mg_mesh_cidrs` in step with the mesh's CIDRs (once the node records are known).
fn sync_mesh_cidrs(inner: &mut Inner, want: &BTreeMap<Ipv4Net, u8>) {
    let gone: Vec<Ipv4Net> = inner
        .mesh_cidrs
        .keys()
        .filter(|n| !want.contains_key(n))
        .copied()
        .collect();
    for net in gone {
        match inner
            .dp
            .maps
            .mesh_cidrs
            .remove(net.addr(), net.prefix_len())
        {
            Ok(_) => {
                info!(cidr = %net, "mesh CIDR removed");
                inner.mesh_cidrs.remove(&net);
            }
            Err(e) => {
                warn!(cidr = %net, error = %e, "removing a mesh CIDR failed; retried at the next sync")
            }
        }
    }
    for (net, id) in want {
        if inner.mesh_cidrs.get(net) == Some(id) {
            continue;
        }
        match inner
            .dp
            .maps
            .mesh_cidrs
            .set(net.addr(), net.prefix_len(), *id)
        {
            Ok(()) => {
                info!(cidr = %net, cluster_id = id, "mesh CIDR set");
                inner.mesh_cidrs.insert(*net, *id);
            }
            Err(e) => {
                warn!(cidr = %net, error = %e, "setting a mesh CIDR failed; retried at the next sync")
            }
        }
    }
}

/// The routing table in step with `want`: routes that went or changed kind
/// deleted, new ones added; a failed one is retried at the next sync.
fn sync_routes(inner: &mut Inner, want: &BTreeMap<Ipv4Net, RouteKind>) {
    let stale: Vec<(Ipv4Net, RouteKind)> = inner
        .routes
        .iter()
        .filter(|(n, k)| want.get(n) != Some(k))
        .map(|(n, k)| (*n, *k))
        .collect();
    let missing = want.iter().any(|(n, k)| inner.routes.get(n) != Some(k));
    if stale.is_empty() && !missing {
        return;
    }
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            warn!(error = %e, "syncing the datapath's routes failed; retried at the next sync");
            return;
        }
    };
    for (net, kind) in stale {
        match nl.delete_route(&kind.route(net)) {
            Ok(()) => {
                inner.routes.remove(&net);
            }
            Err(e) if e.is_not_found() => {
                inner.routes.remove(&net);
            }
            Err(e) => warn!(route = %net, error = %e, "removing a route failed"),
        }
    }
    for (net, kind) in want {
        if inner.routes.get(net) == Some(kind) {
            continue;
        }
        match nl.replace_route(&kind.route(*net)) {
            Ok(()) => {
                match kind {
                    RouteKind::Dev => {
                        info!(route = %net, device = VXLAN_DEV, "pod CIDR routed into the mesh")
                    }
                    RouteKind::Unreachable => {
                        info!(route = %net, "mesh CIDR unreachable unless a node holds it")
                    }
                    RouteKind::Throw => {
                        info!(route = %net, "own pod CIDR looked up in the main table")
                    }
                }
                inner.routes.insert(*net, *kind);
            }
            Err(e) => warn!(route = %net, error = %e, "adding a route failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_vxlan_filter_replaces_its_table_and_drops_vxlan_not_from_wireguard() {
        let r = nft_ruleset("mg-wg0", "10.1.0.7/24".parse().unwrap());
        assert!(
            r.contains("iifname \"mg-wg0\" ip daddr 10.1.0.0/24 counter drop"),
            "{r}"
        );
        assert!(r.starts_with("table inet meshgate_vxlan {}\ndelete table inet meshgate_vxlan\n"));
        assert!(
            r.contains("udp dport 4789 iifname != \"mg-wg0\" counter drop"),
            "{r}"
        );
        assert_eq!("ebpf".parse::<Mode>(), Ok(Mode::Ebpf));
        assert!("xdp".parse::<Mode>().unwrap_err().contains("plain or ebpf"));
    }
}
