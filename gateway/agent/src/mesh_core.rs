//! The agent's core for the mesh: which WireGuard peers, routes, tunnel
//! address and cluster gateways this node has. Sans-IO: node records,
//! tunnel receive ages and the results of what it asked for go in, with
//! `now`; effects come out ([`MeshCore::poll_effect`]) and the wake-up it
//! needs ([`MeshCore::poll_timeout`]). It reads no clock, socket or
//! netlink, so failover, retries and resumes are tested on a virtual
//! clock (`mesh_core_tests.rs`).
//!
//! The shell is `mesh.rs`: it performs each effect (the backend's peer
//! change, a route, the interface address, `peers.json`), answers the
//! ones the core waits for ([`Effect::ApplyPeer`]) and wakes it when due.
//! The session with discovery is the other core (`session.rs`); the
//! datapath's maps are planned by pure diffs (`datapath/plan.rs`).
//!
//! Rules kept here:
//! - Peers are planned from every node record and the peers' liveness
//!   ([`crate::paths::plan`]); no snapshot yet means keep what is applied.
//! - A change that failed is retried every [`RETRY`], not on every input.
//! - With cluster gateways in the mesh, the tunnel is read again every
//!   [`LIVENESS_TICK`], so traffic moves off a silent gateway within
//!   [`crate::liveness::DEAD_AFTER`] plus a tick.
//! - The applied peers are saved once every change asked for has
//!   answered, so `peers.json` holds what the tunnel has.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use meshgate_model::model::Encryption;
use meshgate_model::pb;
use meshgate_tunnel::peers::{diff, route_diff};
use meshgate_tunnel::{PeerChange, PeerConfig};

use crate::liveness::Liveness;
use crate::paths::{plan, Me, CLUSTER_GATEWAY};
use crate::persist::Saved;
use crate::status::GatewayStatus;

/// How soon a peer change that failed is tried again.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often the tunnel's receive ages are read while cluster gateways
/// are in the mesh.
pub const LIVENESS_TICK: Duration = Duration::from_millis(100);

/// This node, as the core needs it.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `cluster/node`
    pub name: String,
    pub cluster: String,
    /// This node is a cluster gateway.
    pub gateway: bool,
    pub encryption: Encryption,
}

/// What happened, for the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// Every node record of the watch state (keyed `cluster/node`), after
    /// a snapshot and on each change.
    Nodes(Arc<BTreeMap<String, pb::Node>>),
    /// What the tunnel last received from each peer (milliseconds ago;
    /// `None`: never), read at `now`.
    TunnelRx(BTreeMap<String, Option<u64>>),
    /// Whether this node is a candidate egress gateway (it then sends every
    /// peer a keepalive, so they see its death quickly).
    EgressGateway(bool),
    /// Discovery gave this node its tunnel address.
    TunnelIp(Ipv4Addr),
    /// Giving the interface that address failed: the core goes back to the
    /// one before, so the next [`Input::TunnelIp`] asks again.
    TunnelIpFailed(Ipv4Addr),
    /// What the last agent applied, read back at start.
    Resume(Saved),
    /// An [`Effect::ApplyPeer`] was done.
    PeerApplied(PeerChange),
    /// An [`Effect::ApplyPeer`] failed; it is retried after [`RETRY`].
    PeerFailed(PeerChange),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Give the interface its tunnel address.
    SetAddress(Ipv4Addr),
    /// Change one peer; answer [`Input::PeerApplied`] or [`Input::PeerFailed`].
    ApplyPeer(PeerChange),
    /// Route `net` into the tunnel, from `src` (the tunnel address) when known.
    AddRoute {
        net: Ipv4Net,
        src: Option<Ipv4Addr>,
    },
    RemoveRoute(Ipv4Net),
    /// Save the applied peers (`peers.json`).
    Save(Saved),
    /// The unusable node records changed (each to be logged once).
    Problems(Vec<String>),
    /// A cluster's active gateway changed.
    GatewayChosen {
        cluster: String,
        from: Option<String>,
        to: String,
    },
}

/// The mesh state machine.
#[derive(Debug)]
pub struct MeshCore {
    me: Facts,
    egress_gateway: bool,
    nodes: Option<Arc<BTreeMap<String, pb::Node>>>,
    liveness: Liveness,
    applied: BTreeMap<String, PeerConfig>,
    tunnel_ip: Option<Ipv4Addr>,
    /// The address before the one being set (back to it if setting fails).
    tunnel_ip_before: Option<Ipv4Addr>,
    gateways: Vec<GatewayStatus>,
    problems: Vec<String>,
    /// The peers last asked for and when, to pace retries.
    last_attempt: Option<(BTreeMap<String, PeerConfig>, Instant)>,
    /// When the tunnel was last read; `None`: never.
    last_observed: Option<Instant>,
    /// The node records name a cluster gateway (or this node is one): the
    /// choice follows liveness, so the tunnel is read every tick.
    gateways_in_mesh: bool,
    /// An input changed what the plan would say, at this time: the plan is
    /// made once, when the effects are next polled, however many inputs
    /// came before.
    replan_at: Option<Instant>,
    started: Instant,
    effects: VecDeque<Effect>,
    /// [`Effect::ApplyPeer`]s not answered yet.
    awaiting: usize,
    save_pending: bool,
}

impl MeshCore {
    pub fn new(me: Facts, now: Instant) -> MeshCore {
        let gateways_in_mesh = me.gateway;
        MeshCore {
            me,
            egress_gateway: false,
            nodes: None,
            liveness: Liveness::default(),
            applied: BTreeMap::new(),
            tunnel_ip: None,
            tunnel_ip_before: None,
            gateways: Vec::new(),
            problems: Vec::new(),
            last_attempt: None,
            last_observed: None,
            gateways_in_mesh,
            replan_at: None,
            started: now,
            effects: VecDeque::new(),
            awaiting: 0,
            save_pending: false,
        }
    }

    /// The peers the tunnel has (as far as the shell answered).
    pub fn peers(&self) -> &BTreeMap<String, PeerConfig> {
        &self.applied
    }

    pub fn tunnel_ip(&self) -> Option<Ipv4Addr> {
        self.tunnel_ip
    }

    /// The cluster-gateway choices of the last plan.
    pub fn gateways(&self) -> &[GatewayStatus] {
        &self.gateways
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Nodes(nodes) => {
                self.gateways_in_mesh = self.me.gateway
                    || nodes
                        .values()
                        .any(|n| n.roles.iter().any(|r| r == CLUSTER_GATEWAY));
                self.nodes = Some(nodes);
                self.replan_at = Some(now);
            }
            Input::TunnelRx(ages) => {
                self.liveness.observe(now, &ages);
                self.last_observed = Some(now);
                self.replan_at = Some(now);
            }
            Input::EgressGateway(on) => {
                if on != self.egress_gateway {
                    self.egress_gateway = on;
                    self.replan_at = Some(now);
                }
            }
            Input::TunnelIp(ip) => self.set_tunnel_ip(ip),
            Input::TunnelIpFailed(ip) => {
                if self.tunnel_ip == Some(ip) {
                    self.tunnel_ip = self.tunnel_ip_before;
                }
            }
            Input::Resume(saved) => {
                if let Some(ip) = saved.tunnel_ip {
                    self.set_tunnel_ip(ip);
                }
                // The routes are still in the kernel (the interface
                // persisted); the route diff from nothing re-asserts them,
                // which is idempotent.
                self.reconcile(saved.peers);
            }
            Input::PeerApplied(change) => {
                match change {
                    PeerChange::Remove(old) => {
                        self.applied.remove(&old.name);
                    }
                    PeerChange::Add(new) | PeerChange::Update { new, .. } => {
                        self.applied.insert(new.name.clone(), new);
                    }
                }
                self.answered();
            }
            Input::PeerFailed(_) => self.answered(),
        }
    }

    /// The next thing to do, in order. The plan the inputs since the last
    /// poll call for is made here, once (and only when every change asked
    /// for has answered).
    pub fn poll_effect(&mut self) -> Option<Effect> {
        if self.awaiting == 0 {
            if let Some(now) = self.replan_at.take() {
                self.replan(now);
            }
        }
        self.effects.pop_front()
    }

    /// When the core wants [`Input::TunnelRx`] (read at that time) again:
    /// a retry falling due, or the next liveness tick while cluster
    /// gateways are in the mesh. `None`: only new inputs matter.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = match &self.last_attempt {
            Some((wanted, at)) if *wanted != self.applied => Some(*at + RETRY),
            _ => None,
        };
        let tick = self.gateways_in_mesh.then(|| {
            self.last_observed
                .map_or(self.started, |t| t + LIVENESS_TICK)
        });
        match (retry, tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn set_tunnel_ip(&mut self, ip: Ipv4Addr) {
        if self.tunnel_ip == Some(ip) {
            return;
        }
        let old = self.tunnel_ip.replace(ip);
        self.tunnel_ip_before = old;
        self.effects.push_back(Effect::SetAddress(ip));
        if old.is_some() {
            // The source address of the routes changed with it.
            for net in self.applied.values().flat_map(|p| p.allowed_ips.iter()) {
                self.effects.push_back(Effect::AddRoute {
                    net: *net,
                    src: Some(ip),
                });
            }
        }
    }

    fn replan(&mut self, now: Instant) {
        let Some(nodes) = &self.nodes else {
            return; // no snapshot yet: keep what is applied
        };
        let me = Me {
            name: &self.me.name,
            cluster: &self.me.cluster,
            gateway: self.me.gateway,
            encryption: self.me.encryption,
            egress_gateway: self.egress_gateway,
        };
        let live = &self.liveness;
        let paths = plan(&me, nodes, |n| live.health(n, now));
        if paths.problems != self.problems {
            self.problems.clone_from(&paths.problems);
            self.effects
                .push_back(Effect::Problems(paths.problems.clone()));
        }
        for g in &paths.gateways {
            let before = self
                .gateways
                .iter()
                .find(|o| o.cluster == g.cluster)
                .map(|o| o.active.clone());
            if before.as_deref() != Some(g.active.as_str()) {
                self.effects.push_back(Effect::GatewayChosen {
                    cluster: g.cluster.clone(),
                    from: before,
                    to: g.active.clone(),
                });
            }
        }
        self.gateways = paths.gateways;
        if self.applied == paths.peers {
            self.last_attempt = None;
            return;
        }
        if let Some((wanted, at)) = &self.last_attempt {
            if *wanted == paths.peers && now.duration_since(*at) < RETRY {
                return;
            }
        }
        self.last_attempt = Some((paths.peers.clone(), now));
        self.reconcile(paths.peers);
    }

    /// Asks for the changes from the applied peers to `desired`, one peer
    /// at a time, then the routes, then a save.
    fn reconcile(&mut self, desired: BTreeMap<String, PeerConfig>) {
        let (add_routes, remove_routes) = route_diff(&self.applied, &desired);
        for change in diff(&self.applied, &desired) {
            self.awaiting += 1;
            self.effects.push_back(Effect::ApplyPeer(change));
        }
        for net in remove_routes {
            self.effects.push_back(Effect::RemoveRoute(net));
        }
        for net in add_routes {
            self.effects.push_back(Effect::AddRoute {
                net,
                src: self.tunnel_ip,
            });
        }
        self.save_pending = true;
        if self.awaiting == 0 {
            self.save();
        }
    }

    fn answered(&mut self) {
        self.awaiting = self.awaiting.saturating_sub(1);
        if self.awaiting == 0 && self.save_pending {
            self.save();
        }
    }

    fn save(&mut self) {
        self.save_pending = false;
        self.effects.push_back(Effect::Save(Saved {
            tunnel_ip: self.tunnel_ip,
            peers: self.applied.clone(),
        }));
    }
}

#[cfg(test)]
#[path = "mesh_core_tests.rs"]
mod tests;
