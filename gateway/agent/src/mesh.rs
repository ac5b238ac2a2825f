//! The shell of the mesh core ([`super::mesh_core`]): it feeds the core
//! the node records, the tunnel's receive ages and the tunnel address,
//! and performs what the core asks for: one peer change at a time (so one
//! bad record never disturbs the rest), the routes, the interface address
//! and `peers.json`. Also [`peer_of`], a node record's peer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ipnet::Ipv4Net;
use meshgate_model::pb;
use meshgate_tunnel::peers::PeerConfig;
use meshgate_tunnel::routes;
use tracing::{info, warn};

use super::mesh_core::{Effect, Facts, Input, MeshCore};
use super::persist;
use super::Agent;

/// What the agent has applied: the core's state, and what the other
/// tasks keep beside it.
#[derive(Debug)]
pub struct Mesh {
    pub core: MeshCore,
    pub discovery_connected: bool,
    pub key_rotations: u64,
    /// Plain datapath: the unreachable routes of the mesh CIDRs this agent
    /// keeps in the main table; `None` until first synced ([`super::unreachable`]).
    pub unreachable: Option<std::collections::BTreeSet<Ipv4Net>>,
}

impl Mesh {
    pub fn new(me: Facts, now: Instant) -> Mesh {
        Mesh {
            core: MeshCore::new(me, now),
            discovery_connected: false,
            key_rotations: 0,
            unreachable: None,
        }
    }
}

/// The WireGuard device's MTU (the eBPF datapath's VXLAN device is sized to
/// fit inside it).
pub const TUNNEL_MTU: u16 = 1420;

/// The peer a node record asks for, or why the record is unusable.
pub fn peer_of(node: &pb::Node) -> Result<PeerConfig, String> {
    let name = format!("{}/{}", node.cluster, node.name);
    let ip: Ipv4Addr = node.underlay_ip.parse().map_err(|_| {
        format!(
            "node {name}: underlay ip {:?} is not IPv4",
            node.underlay_ip
        )
    })?;
    let port = u16::try_from(node.listen_port).map_err(|_| {
        format!(
            "node {name}: listen port {} is out of range",
            node.listen_port
        )
    })?;
    let mut allowed = Vec::new();
    let mut tunnel_ip = None;
    for cidr in &node.pod_cidrs {
        let net: Ipv4Net = cidr
            .parse()
            .map_err(|_| format!("node {name}: pod CIDR {cidr:?} is not an IPv4 CIDR"))?;
        allowed.push(net.trunc());
    }
    if !node.tunnel_ip.is_empty() {
        let tip: Ipv4Addr = node
            .tunnel_ip
            .parse()
            .map_err(|_| format!("node {name}: tunnel ip {:?} is not IPv4", node.tunnel_ip))?;
        allowed.push(Ipv4Net::from(tip));
        tunnel_ip = Some(tip);
    }
    let peer = PeerConfig {
        name,
        public_key: node.wg_public_key.clone(),
        endpoint: SocketAddr::from((ip, port)),
        allowed_ips: allowed,
        keepalive_ms: None,
        tunnel_ip,
    };
    peer.key().map_err(|e| e.to_string())?;
    Ok(peer)
}

/// Reads the tunnel's receive ages and lets the core re-plan with them
/// (and with `nodes`, the watch state's node records, when they changed):
/// cluster-gateway choices follow liveness, failed changes are retried.
/// Called on every node change and whenever the core's timeout is due
/// ([`run`]).
pub fn refresh(agent: &Agent, nodes: Option<Arc<BTreeMap<String, pb::Node>>>) {
    let ages = rx_ages(agent);
    let egress_gateway = agent
        .egress_gateway
        .load(std::sync::atomic::Ordering::Relaxed);
    let now = Instant::now();
    let mut mesh = agent.mesh();
    let before = mesh.core.poll_timeout();
    mesh.core.handle(Input::EgressGateway(egress_gateway), now);
    if let Some(nodes) = nodes {
        mesh.core.handle(Input::Nodes(nodes), now);
    }
    mesh.core.handle(Input::TunnelRx(ages), now);
    if let Err(e) = drive(agent, &mut mesh) {
        warn!(error = %format!("{e:#}"), "applying the mesh's changes");
    }
    if mesh.core.poll_timeout() != before {
        agent.mesh_wake.notify_one();
    }
}

/// How long ago the tunnel last received from each peer (ms; `None`:
/// never), by peer name.
pub fn rx_ages(agent: &Agent) -> BTreeMap<String, Option<u64>> {
    agent
        .backend
        .stats()
        .into_iter()
        .map(|s| (s.name, s.last_rx_age_ms))
        .collect()
}

/// Wakes the core when it asks to be ([`MeshCore::poll_timeout`]): the
/// liveness tick while cluster gateways are in the mesh, a retry falling
/// due. Forever.
pub async fn run(agent: Arc<Agent>) {
    loop {
        let wake = agent.mesh().core.poll_timeout();
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = due => {}
            // Its timeout changed: read it again.
            _ = agent.mesh_wake.notified() => continue,
        }
        let a = agent.clone();
        // Applying peers takes locks and netlink calls: off the runtime.
        let _ = tokio::task::spawn_blocking(move || refresh(&a, None)).await;
    }
}

/// Gives the interface its tunnel address (again, if it changed).
pub fn set_tunnel_ip(agent: &Agent, ip: Ipv4Addr) -> anyhow::Result<()> {
    let mut mesh = agent.mesh();
    mesh.core.handle(Input::TunnelIp(ip), Instant::now());
    drive_setting(agent, &mut mesh, Some(ip))
}

/// Puts back what the agent knew before it restarted.
pub fn resume(agent: &Agent, saved: persist::Saved) -> anyhow::Result<()> {
    info!(
        peers = saved.peers.len(),
        "resuming with the last known peers"
    );
    let ip = saved.tunnel_ip;
    let mut mesh = agent.mesh();
    mesh.core.handle(Input::Resume(saved), Instant::now());
    drive_setting(agent, &mut mesh, ip)
}

/// [`drive`] after the core was given tunnel address `ip`: if giving it to
/// the interface failed, the core goes back to the one before.
fn drive_setting(agent: &Agent, mesh: &mut Mesh, ip: Option<Ipv4Addr>) -> anyhow::Result<()> {
    let done = drive(agent, mesh);
    if let (Err(_), Some(ip)) = (&done, ip) {
        mesh.core.handle(Input::TunnelIpFailed(ip), Instant::now());
    }
    done
}

/// Performs the core's effects, in order, answering each peer change.
/// Only the interface address failing is an error (registration needs
/// it); the rest is logged and retried by the core.
fn drive(agent: &Agent, mesh: &mut Mesh) -> anyhow::Result<()> {
    let iface = agent.backend.interface().to_string();
    let mut failed = None;
    while let Some(effect) = mesh.core.poll_effect() {
        match effect {
            Effect::SetAddress(ip) => {
                match routes::configure_interface(&iface, ip, TUNNEL_MTU)
                    .with_context(|| format!("giving {iface} its tunnel address {ip}"))
                {
                    Ok(()) => info!(tunnel_ip = %ip, interface = %iface, "tunnel address set"),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            Effect::ApplyPeer(change) => {
                let answer = match agent.backend.apply(&change) {
                    Ok(()) => Input::PeerApplied(change),
                    Err(e) => {
                        warn!(change = ?change, error = %e, "peer change failed; retried shortly");
                        Input::PeerFailed(change)
                    }
                };
                mesh.core.handle(answer, Instant::now());
            }
            Effect::AddRoute { net, src } => {
                if let Err(e) = routes::add_route(&iface, &net, src) {
                    warn!(route = %net, error = %e, "adding route failed");
                }
            }
            Effect::RemoveRoute(net) => {
                if let Err(e) = routes::remove_route(&iface, &net) {
                    warn!(route = %net, error = %e, "removing route failed");
                }
            }
            Effect::Save(saved) => {
                if let Err(e) = persist::save(&agent.cfg.state_dir, &saved) {
                    warn!(error = %format!("{e:#}"), "saving the last known peers failed");
                }
            }
            Effect::Problems(problems) => {
                for p in &problems {
                    warn!(problem = %p, "ignoring an unusable node record");
                }
            }
            Effect::GatewayChosen { cluster, from, to } => {
                info!(cluster = %cluster, from = from.as_deref().unwrap_or("-"), to = %to, "cluster gateway chosen");
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::paths::{plan, Me};

    fn node(name: &str, key: &str, ip: &str) -> pb::Node {
        pb::Node {
            name: name.into(),
            cluster: "c1".into(),
            cluster_id: 1,
            underlay_ip: ip.into(),
            listen_port: 51820,
            wg_public_key: key.into(),
            pod_cidrs: vec!["10.1.1.0/24".into()],
            tunnel_ip: "100.64.64.2".into(),
            roles: vec![],
            encryption: Default::default(),
            labels: Default::default(),
            addresses: Default::default(),
        }
    }

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    #[test]
    fn self_is_not_a_peer_and_bad_records_are_reported() {
        let mut nodes = BTreeMap::new();
        nodes.insert("c1/n1".to_string(), node("n1", KEY, "198.18.1.10"));
        nodes.insert("c1/n2".to_string(), node("n2", KEY, "198.18.1.11"));
        nodes.insert("c1/n3".to_string(), node("n3", "short", "198.18.1.12"));
        let me = Me {
            name: "c1/n1",
            cluster: "c1",
            gateway: false,
            encryption: Default::default(),

            egress_gateway: false,
        };
        let paths = plan(&me, &nodes, |_| super::super::liveness::Health::Down);
        let (peers, problems) = (paths.peers, paths.problems);
        assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["c1/n2"]);
        let p = &peers["c1/n2"];
        assert_eq!(p.endpoint.to_string(), "198.18.1.11:51820");
        assert_eq!(
            p.allowed_ips
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            vec!["10.1.1.0/24", "100.64.64.2/32"]
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("c1/n3"), "{problems:?}");
    }
}
