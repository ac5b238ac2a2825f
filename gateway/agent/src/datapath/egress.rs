//! Egress gateways in the eBPF datapath (CiliumEgressGatewayPolicy from
//! the `--policy` files). Where the rest lives: the policy types, the
//! parser and the pure gateway planner are in `meshgate-egress`
//! (`egress/`); the steering is in the tc programs (`ebpf/bpf/egress.h`,
//! maps `mg_egress` and `mg_egress_ct`). This module is the shell between
//! them:
//!
//! - every sync (and every [`TICK`] while policies are loaded) it plans
//!   the routes from the ipcache, the node records and the gateways'
//!   health (judged from the tunnel: silent for [`EGRESS_DEAD_AFTER`] =
//!   down), and writes what changed into `mg_egress`;
//! - on a gateway it keeps the host side: one SNAT index per egress IP,
//!   an nftables rule `meta mark MARK_SNAT|index snat to IP` and a routing
//!   rule sending those packets out of the egress interface;
//! - on every node a routing rule sends packets the programs mark
//!   [`meshgate_ebpf::MARK_EGRESS`] into `mg-vx0`, where `to_mesh` gives
//!   them their gateway's tunnel IP.
//!
//! ```text
//! pod -> [from_pod: selected? gateway by flow hash, kept per flow in mg_egress_ct]
//!     -> mark 0x6c.. -> table 28009 -> mg-vx0 [to_mesh: remote = gateway]
//!     => WireGuard => gateway mg-vx0 [from_mesh: mark 0x6b..|index]
//!     -> table 28100+index -> egress interface, nft snat to the egress IP
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::status::EgressStatus;
use anyhow::Context;
use ipnet::Ipv4Net;
use meshgate_ebpf::{EgressRoute, MARK_EGRESS, MARK_SNAT};
use meshgate_egress::{EgressPlan, EgressPolicy, EndpointView, NodeView};
use meshgate_model::model::NodeAddress;
use meshgate_tunnel::netlink::{Netlink, Route, Rule, MAIN_TABLE};
use tracing::{info, warn};

pub use super::super::liveness::EGRESS_DEAD_AFTER;

/// How often the gateways' health is judged while egress policies are loaded.
pub const TICK: Duration = Duration::from_millis(50);
/// nftables table (ip family) of the gateways' SNAT rules.
pub const NFT_TABLE: &str = "meshgate_egress";
/// Rule priority and table of egress traffic towards its gateway (into `mg-vx0`).
pub const STEER_PRIORITY: u32 = 28_006;
pub const STEER_TABLE: u32 = 28_009;
/// Rule priority and table of SNAT index `i`: `base + i`.
pub const SNAT_PRIORITY_BASE: u32 = 27_700;
pub const SNAT_TABLE_BASE: u32 = 28_100;
/// A flow not seen for this long no longer counts in status.
const FLOW_FRESH: Duration = Duration::from_secs(60);
/// How often the host side is looked at again when nothing changed.
const HOST_RECHECK: Duration = Duration::from_secs(1);
/// How often status counts the flows per gateway (a walk of `mg_egress_ct`).
const FLOW_RECOUNT: Duration = Duration::from_secs(5);

/// SNAT indices (1..=255) of the egress IPs wanted: an IP keeps its index
/// while wanted; new ones get the lowest free, in address order.
pub fn assign_indices(
    prev: &BTreeMap<Ipv4Addr, u8>,
    want: &BTreeSet<Ipv4Addr>,
) -> (BTreeMap<Ipv4Addr, u8>, Vec<Ipv4Addr>) {
    let mut out: BTreeMap<Ipv4Addr, u8> = prev
        .iter()
        .filter(|(ip, _)| want.contains(ip))
        .map(|(ip, i)| (*ip, *i))
        .collect();
    let mut used: BTreeSet<u8> = out.values().copied().collect();
    let mut refused = Vec::new();
    for ip in want {
        if out.contains_key(ip) {
            continue;
        }
        match (1..=u8::MAX).find(|i| !used.contains(i)) {
            Some(i) => {
                used.insert(i);
                out.insert(*ip, i);
            }
            None => refused.push(*ip),
        }
    }
    (out, refused)
}

/// One egress IP this node SNATs to, as the host is set up for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    pub index: u8,
    pub ip: Ipv4Addr,
    pub interface: String,
    /// The next hop of the node's default route, when it leaves through
    /// this interface.
    pub via: Option<Ipv4Addr>,
}

/// The nftables table of the gateway's SNAT rules, replaced whole in one
/// transaction (empty when this node SNATs nothing).
pub fn nft_ruleset(snat: &[Snat]) -> String {
    let mut s = format!("table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n");
    if snat.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "table ip {NFT_TABLE} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
    ));
    for n in snat {
        s.push_str(&format!(
            "\t\tmeta mark {:#010x} counter snat ip to {}\n",
            MARK_SNAT | u32::from(n.index),
            n.ip
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

/// The routes of SNAT index `n`'s table: out of its interface, through the
/// default route's next hop when that leaves by the same interface.
pub fn snat_route(n: &Snat) -> Route {
    Route::via_dev(Ipv4Net::default(), &n.interface)
        .in_table(SNAT_TABLE_BASE + u32::from(n.index))
        .with_gateway(n.via)
}

/// The rule sending SNAT index `i`'s packets to its table.
pub fn snat_rule(index: u8) -> Rule {
    Rule {
        fwmark: Some((MARK_SNAT | u32::from(index), u32::MAX)),
        ..Rule::lookup(
            SNAT_PRIORITY_BASE + u32::from(index),
            SNAT_TABLE_BASE + u32::from(index),
        )
    }
}

/// The rule sending egress traffic into the mesh device.
pub fn steer_rule() -> Rule {
    Rule {
        fwmark: Some((MARK_EGRESS, 0xff00_0000)),
        ..Rule::lookup(STEER_PRIORITY, STEER_TABLE)
    }
}

/// What the agent keeps of egress between syncs.
pub struct EgressRuntime {
    policies: Vec<EgressPolicy>,
    /// What `mg_egress` holds (read at load, then kept).
    applied: BTreeMap<(Ipv4Addr, Ipv4Net), EgressRoute>,
    /// Egress IP → SNAT index.
    indices: BTreeMap<Ipv4Addr, u8>,
    /// The SNAT set-up the host has now; `None` before the first sync.
    host: Option<Vec<Snat>>,
    /// The steering rule and table are in place.
    steering: bool,
    /// The tunnel IP written into `mg_config`.
    tunnel_ip: Option<Ipv4Addr>,
    last: EgressPlan,
    /// Problems of the host side (nft, rules), for status.
    host_problems: Vec<String>,
    /// When the host side was last looked at, and what was wrong with it.
    host_checked: Option<std::time::Instant>,
    host_side: Vec<String>,
    /// Flows per gateway tunnel IP, and when they were counted.
    flows: Option<(std::time::Instant, BTreeMap<Ipv4Addr, u64>)>,
    /// When the DNS proxy's FQDN routes were last brought in step.
    fqdn_swept: Option<std::time::Instant>,
}

impl EgressRuntime {
    pub fn new(policies: Vec<EgressPolicy>) -> EgressRuntime {
        EgressRuntime {
            policies,
            applied: BTreeMap::new(),
            indices: BTreeMap::new(),
            host: None,
            steering: false,
            tunnel_ip: None,
            last: EgressPlan::default(),
            host_problems: Vec::new(),
            host_checked: None,
            host_side: Vec::new(),
            flows: None,
            fqdn_swept: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Replaces the policies (SIGHUP); the next sync applies the change.
    pub fn set_policies(&mut self, policies: Vec<EgressPolicy>) {
        self.policies = policies;
    }

    /// `mg_egress` holds no route.
    pub fn applied_is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    pub fn policies(&self) -> &[EgressPolicy] {
        &self.policies
    }

    /// What the pinned map holds, read once after load.
    pub fn adopt_pinned(&mut self, routes: Vec<(Ipv4Addr, Ipv4Net, EgressRoute)>) {
        // Routes the DNS proxy wrote (destinationFQDNs, `fqdn_tag != 0`) are
        // its own: not adopted, so never removed as stale here.
        self.applied = routes
            .into_iter()
            .filter(|(_, _, r)| r.fqdn_tag == 0)
            .map(|(s, d, r)| ((s, d), r))
            .collect();
        // The indices the pinned routes use for this node's egress IPs
        // cannot be read back from the map; keep the order they had by
        // assigning in address order again (as at the first start).
    }
}

/// One node record as the planner reads it.
pub struct NodeInput {
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub addresses: Vec<NodeAddress>,
}

/// One endpoint as the planner reads it.
pub struct EndpointInput {
    pub ip: Ipv4Addr,
    pub cluster: String,
    /// `cluster/node`
    pub node: String,
    pub namespace: String,
    pub labels: meshgate_model::identity::Labels,
}

/// The inputs of a plan, owned, from the agent's ipcache and node records.
pub struct Inputs {
    pub nodes: BTreeMap<String, NodeInput>,
    pub endpoints: Vec<EndpointInput>,
    pub problems: Vec<String>,
}

impl Inputs {
    pub fn gather(
        cache: &crate::ipcache::IpCache,
        nodes: &BTreeMap<String, meshgate_model::pb::Node>,
    ) -> Inputs {
        let mut problems = Vec::new();
        let nodes = nodes
            .iter()
            .map(|(name, n)| {
                let addrs = n
                    .addresses
                    .iter()
                    .filter_map(|a| {
                        Some(NodeAddress {
                            interface: a.interface.clone(),
                            ip: a.ip.parse().ok()?,
                            default_route: a.default_route,
                        })
                    })
                    .collect();
                (
                    name.clone(),
                    NodeInput {
                        cluster: n.cluster.clone(),
                        labels: n.labels.clone(),
                        tunnel_ip: n.tunnel_ip.parse().ok(),
                        addresses: addrs,
                    },
                )
            })
            .collect();
        let mut endpoints = Vec::new();
        for (ip, e) in &cache.entries {
            let std::net::IpAddr::V4(ip) = *ip else {
                continue;
            };
            let Some(labels) = cache.identities.get(&e.identity) else {
                problems.push(format!(
                    "endpoint {ip}: the labels of identity {} are not known yet",
                    e.identity
                ));
                continue;
            };
            endpoints.push(EndpointInput {
                ip,
                cluster: e.cluster.clone(),
                node: format!("{}/{}", e.cluster, e.node),
                namespace: e.namespace.clone(),
                labels: labels.clone(),
            });
        }
        Inputs {
            nodes,
            endpoints,
            problems,
        }
    }

    pub fn plan(
        &self,
        me: &str,
        policies: &[EgressPolicy],
        healthy: impl Fn(&str) -> bool,
    ) -> EgressPlan {
        let nodes: BTreeMap<String, NodeView<'_>> = self
            .nodes
            .iter()
            .map(|(name, n)| {
                (
                    name.clone(),
                    NodeView {
                        name,
                        cluster: &n.cluster,
                        labels: &n.labels,
                        tunnel_ip: n.tunnel_ip,
                        addresses: &n.addresses,
                    },
                )
            })
            .collect();
        let endpoints: Vec<EndpointView<'_>> = self
            .endpoints
            .iter()
            .map(|e| EndpointView {
                ip: e.ip,
                cluster: &e.cluster,
                node: &e.node,
                namespace: &e.namespace,
                labels: &e.labels,
            })
            .collect();
        let mut plan = meshgate_egress::plan(me, policies, &endpoints, &nodes, healthy);
        plan.problems.extend(self.problems.iter().cloned());
        plan
    }
}

/// The route `mg_egress` should hold for a planned one.
fn map_route(r: &meshgate_egress::Route, indices: &BTreeMap<Ipv4Addr, u8>) -> EgressRoute {
    EgressRoute {
        excluded: r.excluded,
        snat_index: r.snat.and_then(|ip| indices.get(&ip).copied()).unwrap_or(0),
        gateways: r.gateways.clone(),
        fqdn_tag: 0,
        gateway_only: r.gateway_only,
    }
}

/// Brings the maps and the host in step with a new plan.
impl EgressRuntime {
    /// The FQDN egress routes of the last plan (for the DNS proxy's file).
    pub fn fqdn_routes(&self) -> Vec<meshgate_egress::dnsproxy::state::FqdnEgress> {
        self.last
            .fqdn
            .iter()
            .map(|f| f.to_proxy(&self.indices))
            .collect()
    }
}

pub fn apply(
    rt: &mut EgressRuntime,
    maps: &mut meshgate_ebpf::Maps,
    plan: EgressPlan,
    tunnel_ip: Option<Ipv4Addr>,
) {
    if rt.tunnel_ip != tunnel_ip {
        match maps.config.set_tunnel_ip(tunnel_ip) {
            Ok(()) => rt.tunnel_ip = tunnel_ip,
            Err(e) => warn!(error = %e, "setting this node's tunnel IP in mg_config failed"),
        }
    }
    let want: BTreeSet<Ipv4Addr> = plan.snat.keys().copied().collect();
    let (indices, refused) = assign_indices(&rt.indices, &want);
    rt.indices = indices;
    let mut host_problems: Vec<String> = refused
        .iter()
        .map(|ip| format!("egress IP {ip}: no SNAT index left (at most 255 per node)"))
        .collect();
    let snat: Vec<Snat> = rt
        .indices
        .iter()
        .filter_map(|(ip, index)| {
            Some(Snat {
                index: *index,
                ip: *ip,
                interface: plan.snat.get(ip)?.clone(),
                via: None,
            })
        })
        .collect();
    apply_host(rt, &snat, &mut host_problems);
    rt.host_problems = host_problems;
    // Map entries: upserts (new gateway lists are one write per route),
    // then removals.
    let desired: BTreeMap<(Ipv4Addr, Ipv4Net), EgressRoute> = plan
        .routes
        .iter()
        .map(|(k, r)| (*k, map_route(r, &rt.indices)))
        .collect();
    for (key, route) in &desired {
        if rt.applied.get(key) == Some(route) {
            continue;
        }
        match maps.egress.set(key.0, key.1, route) {
            Ok(()) => {
                info!(source = %key.0, destination = %key.1, gateways = route.gateways.len(),
                      excluded = route.excluded, snat_index = route.snat_index, "egress route set");
                rt.applied.insert(*key, route.clone());
            }
            Err(e) => {
                warn!(source = %key.0, destination = %key.1, error = %e, "setting an egress route failed; retried at the next tick")
            }
        }
    }
    let gone: Vec<(Ipv4Addr, Ipv4Net)> = rt
        .applied
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    for key in gone {
        match maps.egress.remove(key.0, key.1) {
            Ok(_) => {
                info!(source = %key.0, destination = %key.1, "egress route removed");
                rt.applied.remove(&key);
            }
            Err(e) => {
                warn!(source = %key.0, destination = %key.1, error = %e, "removing an egress route failed")
            }
        }
    }
    if plan.problems != rt.last.problems {
        for p in &plan.problems {
            warn!(problem = %p, "egress");
        }
    }
    let fqdn_changed = plan.fqdn != rt.last.fqdn;
    rt.last = plan;
    if fqdn_changed || rt.fqdn_swept.is_none_or(|t| t.elapsed() >= FQDN_SWEEP) {
        sweep_fqdn_routes(maps, &rt.fqdn_routes());
        rt.fqdn_swept = Some(std::time::Instant::now());
    }
}

/// How often the DNS proxy's routes are checked without a plan change
/// (the proxy may have written a route from a policy file older than the
/// last failover).
pub const FQDN_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Brings the routes the DNS proxy wrote (`fqdn_tag != 0`) in step with
/// the plan: gateways and SNAT index refreshed (failover), routes of a
/// policy that is gone or of a pod it no longer selects removed.
fn sweep_fqdn_routes(
    maps: &mut meshgate_ebpf::Maps,
    fqdn: &[meshgate_egress::dnsproxy::state::FqdnEgress],
) {
    let routes = match maps.egress.routes() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "reading the DNS proxy's egress routes failed");
            return;
        }
    };
    for (src, dst, route) in routes.into_iter().filter(|(_, _, r)| r.fqdn_tag != 0) {
        let want = fqdn
            .iter()
            .find(|f| f.tag == route.fqdn_tag && f.sources.contains(&src));
        let result = match want {
            None => maps.egress.remove(src, dst).map(|_| "removed"),
            Some(f) if f.gateways != route.gateways || f.snat_index != route.snat_index => {
                let next = EgressRoute {
                    gateways: f.gateways.clone(),
                    snat_index: f.snat_index,
                    ..route.clone()
                };
                maps.egress.set(src, dst, &next).map(|_| "refreshed")
            }
            Some(_) => continue,
        };
        match result {
            Ok(what) => {
                info!(source = %src, destination = %dst, tag = route.fqdn_tag, "FQDN egress route {what}")
            }
            Err(e) => {
                warn!(source = %src, destination = %dst, error = %e, "updating an FQDN egress route failed")
            }
        }
    }
}

/// The steering rule (once) and the SNAT rules, tables and nftables rules
/// (when they change).
fn apply_host(rt: &mut EgressRuntime, snat: &[Snat], problems: &mut Vec<String>) {
    // Every tick calls this: with nothing new to set up, the host (the
    // default route's next hop) is looked at again only every HOST_RECHECK.
    let key: Vec<(u8, Ipv4Addr, String)> = snat
        .iter()
        .map(|n| (n.index, n.ip, n.interface.clone()))
        .collect();
    let unchanged = rt.steering
        && rt.host.as_ref().is_some_and(|h| {
            h.iter()
                .map(|n| (n.index, n.ip, n.interface.clone()))
                .eq(key.iter().cloned())
        });
    if unchanged && rt.host_checked.is_some_and(|t| t.elapsed() < HOST_RECHECK) {
        problems.extend(rt.host_side.iter().cloned());
        return;
    }
    rt.host_checked = Some(std::time::Instant::now());
    let first = problems.len();
    apply_host_now(rt, snat, problems);
    rt.host_side = problems[first..].to_vec();
}

fn apply_host_now(rt: &mut EgressRuntime, snat: &[Snat], problems: &mut Vec<String>) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            problems.push(format!("netlink: {e}"));
            return;
        }
    };
    if !rt.steering {
        let r = (|| -> anyhow::Result<()> {
            nl.replace_route(
                &Route::via_dev(Ipv4Net::default(), super::plan::VXLAN_DEV).in_table(STEER_TABLE),
            )
            .context("routing egress traffic into the mesh device")?;
            if !nl.rules()?.iter().any(|r| r.priority == STEER_PRIORITY) {
                nl.add_rule(&steer_rule())
                    .context("adding the rule for egress traffic")?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                rt.steering = true;
                info!(rule = %steer_rule(), "egress traffic steered into the mesh");
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    // The default route's next hop, for egress interfaces that hold it.
    let default = nl
        .routes(MAIN_TABLE)
        .ok()
        .and_then(|rs| rs.into_iter().find(|r| r.dst == Ipv4Net::default()));
    let snat: Vec<Snat> = snat
        .iter()
        .map(|n| Snat {
            via: default
                .as_ref()
                .filter(|d| d.dev.as_deref() == Some(n.interface.as_str()))
                .and_then(|d| d.gateway),
            ..n.clone()
        })
        .collect();
    if rt.host.as_deref() == Some(snat.as_slice()) {
        return;
    }
    let before = rt.host.clone().unwrap_or_default();
    let mut ok = true;
    for n in &snat {
        if let Err(e) = nl.replace_route(&snat_route(n)) {
            problems.push(format!(
                "egress IP {}: routing out of {}: {e}",
                n.ip, n.interface
            ));
            ok = false;
            continue;
        }
        let rule = snat_rule(n.index);
        let has = nl.rules().map(|rs| rs.contains(&rule)).unwrap_or(false);
        if !has {
            let _ = nl.delete_rule(rule.priority);
            if let Err(e) = nl.add_rule(&rule) {
                problems.push(format!("egress IP {}: {e}", n.ip));
                ok = false;
            }
        }
    }
    if let Err(e) = super::nft(&nft_ruleset(&snat)) {
        problems.push(format!("egress SNAT rules: {e:#}"));
        ok = false;
    }
    for old in before
        .iter()
        .filter(|o| !snat.iter().any(|n| n.index == o.index))
    {
        let _ = nl.delete_rule(SNAT_PRIORITY_BASE + u32::from(old.index));
        let _ = nl.flush_table(SNAT_TABLE_BASE + u32::from(old.index));
    }
    if ok {
        for n in &snat {
            info!(egress_ip = %n.ip, interface = %n.interface, index = n.index, "SNAT to egress IP set up");
        }
        rt.host = Some(snat);
    }
}

/// Removes the host side (leaving the mesh).
pub fn remove_host(nl: &mut Netlink) {
    let _ = nl.delete_rule(STEER_PRIORITY);
    let _ = nl.flush_table(STEER_TABLE);
    for i in 1..=u8::MAX {
        let prio = SNAT_PRIORITY_BASE + u32::from(i);
        if nl.delete_rule(prio).is_ok() {
            let _ = nl.flush_table(SNAT_TABLE_BASE + u32::from(i));
        }
    }
    if let Err(e) = super::nft(&format!(
        "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n"
    )) {
        warn!(error = %format!("{e:#}"), "removing the egress SNAT rules failed");
    }
}

/// `status.json`'s egress section: the last plan, with the flows per
/// gateway from `mg_egress_ct`.
pub fn status(
    rt: &mut EgressRuntime,
    maps: &meshgate_ebpf::Maps,
    tunnel_of: &BTreeMap<String, Ipv4Addr>,
) -> EgressStatus {
    let stale = rt
        .flows
        .as_ref()
        .is_none_or(|(at, _)| at.elapsed() >= FLOW_RECOUNT);
    if stale {
        let now = crate::observe::clock_ns(libc::CLOCK_MONOTONIC);
        let mut per_gateway: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
        if let Ok(flows) = maps.egress.flows() {
            for f in flows {
                if now.saturating_sub(f.last_seen_ns) <= FLOW_FRESH.as_nanos() as u64 {
                    *per_gateway.entry(f.gateway).or_default() += 1;
                }
            }
        }
        rt.flows = Some((std::time::Instant::now(), per_gateway));
    }
    let per_gateway = rt
        .flows
        .as_ref()
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    let mut policies = rt.last.status.clone();
    for p in &mut policies {
        for g in &mut p.gateways {
            g.flows = tunnel_of
                .get(&g.node)
                .and_then(|t| per_gateway.get(t))
                .copied()
                .unwrap_or(0);
        }
    }
    let mut problems = rt.last.problems.clone();
    problems.extend(rt.host_problems.iter().cloned());
    EgressStatus {
        policies,
        serving: rt
            .last
            .snat
            .iter()
            .map(|(ip, dev)| (ip.to_string(), dev.clone()))
            .collect(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn indices_stay_with_their_ip_and_new_ones_take_the_lowest_free() {
        let want = BTreeSet::from([ip("203.0.113.51"), ip("203.0.113.50")]);
        let (a, refused) = assign_indices(&BTreeMap::new(), &want);
        assert!(refused.is_empty());
        assert_eq!(a[&ip("203.0.113.50")], 1);
        assert_eq!(a[&ip("203.0.113.51")], 2);
        // .50 goes, .49 comes: .51 keeps 2, .49 takes the freed 1.
        let want = BTreeSet::from([ip("203.0.113.51"), ip("203.0.113.49")]);
        let (b, _) = assign_indices(&a, &want);
        assert_eq!(b[&ip("203.0.113.51")], 2);
        assert_eq!(b[&ip("203.0.113.49")], 1);
        assert_eq!(b.len(), 2);
        let many: BTreeSet<Ipv4Addr> = (0..300u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        let (c, refused) = assign_indices(&BTreeMap::new(), &many);
        assert_eq!(c.len(), 255);
        assert_eq!(refused.len(), 45);
    }

    #[test]
    fn snat_rules_match_the_mark_the_programs_set() {
        let n = Snat {
            index: 3,
            ip: ip("203.0.113.50"),
            interface: "eg0".into(),
            via: None,
        };
        let r = nft_ruleset(std::slice::from_ref(&n));
        assert!(r.starts_with("table ip meshgate_egress {}\ndelete table ip meshgate_egress\n"));
        assert!(
            r.contains("type nat hook postrouting priority srcnat"),
            "{r}"
        );
        assert!(
            r.contains("meta mark 0x6b000003 counter snat ip to 203.0.113.50"),
            "{r}"
        );
        assert_eq!(
            nft_ruleset(&[]),
            "table ip meshgate_egress {}\ndelete table ip meshgate_egress\n"
        );
        assert_eq!(
            snat_rule(3).to_string(),
            "pref 27703 fwmark 0x6b000003/0xffffffff lookup 28103"
        );
        assert_eq!(snat_route(&n).to_string(), "0.0.0.0/0 dev eg0 table 28103");
        let via = Snat {
            via: Some(ip("203.0.113.1")),
            ..n
        };
        assert_eq!(
            snat_route(&via).to_string(),
            "0.0.0.0/0 via 203.0.113.1 dev eg0 table 28103"
        );
        assert_eq!(
            steer_rule().to_string(),
            "pref 28006 fwmark 0x6c000000/0xff000000 lookup 28009"
        );
    }
}
