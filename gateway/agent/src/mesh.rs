//! Keeping the tunnel's peers and routes in step with the nodes discovery
//! reports. Deciding is pure ([`desired_peers`], `meshgate_tunnel::peers::diff`);
//! applying goes one peer at a time, so one bad record never disturbs the rest.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use std::time::Instant;

use crate::status::GatewayStatus;
use anyhow::Context;
use ipnet::Ipv4Net;
use meshgate_model::pb;
use meshgate_tunnel::peers::{diff, route_diff, PeerConfig};
use meshgate_tunnel::routes;
use tracing::{info, warn};

use super::paths::{plan, Me};
use super::persist::{self, Saved};
use super::Agent;

/// What the agent has applied.
#[derive(Debug, Default)]
pub struct Mesh {
    pub peers: BTreeMap<String, PeerConfig>,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub discovery_connected: bool,
    pub key_rotations: u64,
    /// The cluster-gateway choices of the last refresh.
    pub gateways: Vec<GatewayStatus>,
    /// Unusable node records seen by the last refresh (logged once).
    pub problems: Vec<String>,
    /// The peers last asked for and when, to pace retries of failed changes.
    pub last_attempt: Option<(BTreeMap<String, PeerConfig>, Instant)>,
    /// Plain datapath: the unreachable routes of the mesh CIDRs this agent
    /// keeps in the main table; `None` until first synced ([`super::unreachable`]).
    pub unreachable: Option<std::collections::BTreeSet<Ipv4Net>>,
}

/// The WireGuard device's MTU (the eBPF datapath's VXLAN device is sized to
/// fit inside it).
pub const TUNNEL_MTU: u16 = 1420;

/// How soon a peer change that failed is tried again by [`refresh`].
const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Recomputes the peers from the last node records and the peers'
/// liveness, and applies what changed. Called on every watch event and by
/// the gateway loop; the node records' lock is held throughout so two
/// callers never apply out of order.
pub fn refresh(agent: &Agent) {
    let nodes = agent.nodes();
    let Some(nodes) = nodes.as_ref() else {
        return; // no snapshot yet: keep what we have
    };
    let now = Instant::now();
    let ages: BTreeMap<String, Option<u64>> = agent
        .backend
        .stats()
        .into_iter()
        .map(|s| (s.name, s.last_rx_age_ms))
        .collect();
    let paths = {
        let mut live = agent.liveness();
        live.observe(now, &ages);
        let name = agent.cfg.mesh_name();
        let me = Me {
            name: &name,
            cluster: &agent.cfg.cluster,
            gateway: agent.cfg.is_cluster_gateway(),
            encryption: agent.cfg.encryption,
            egress_gateway: agent
                .egress_gateway
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        plan(&me, nodes, |n| live.health(n, now))
    };
    {
        let mut mesh = agent.mesh();
        if paths.problems != mesh.problems {
            for p in &paths.problems {
                warn!(problem = %p, "ignoring an unusable node record");
            }
            mesh.problems = paths.problems;
        }
        for g in &paths.gateways {
            let before = mesh
                .gateways
                .iter()
                .find(|o| o.cluster == g.cluster)
                .map(|o| o.active.as_str());
            if before != Some(g.active.as_str()) {
                info!(cluster = %g.cluster, from = before.unwrap_or("-"), to = %g.active, "cluster gateway chosen");
            }
        }
        mesh.gateways = paths.gateways;
        if mesh.peers == paths.peers {
            return;
        }
        // A change that failed is retried every RETRY, not on every tick.
        if let Some((wanted, at)) = &mesh.last_attempt {
            if *wanted == paths.peers && now.duration_since(*at) < RETRY {
                return;
            }
        }
        mesh.last_attempt = Some((paths.peers.clone(), now));
    }
    reconcile(agent, paths.peers);
}

/// Gives the interface its tunnel address (again, if it changed).
pub fn set_tunnel_ip(agent: &Agent, ip: Ipv4Addr) -> anyhow::Result<()> {
    let iface = agent.backend.interface().to_string();
    let mut mesh = agent.mesh();
    if mesh.tunnel_ip == Some(ip) {
        return Ok(());
    }
    routes::configure_interface(&iface, ip, TUNNEL_MTU)
        .with_context(|| format!("giving {iface} its tunnel address {ip}"))?;
    let old = mesh.tunnel_ip.replace(ip);
    if old.is_some() {
        // The source address of our routes changed with it.
        for net in mesh.peers.values().flat_map(|p| p.allowed_ips.iter()) {
            routes::add_route(&iface, net, Some(ip))?;
        }
    }
    info!(tunnel_ip = %ip, interface = %iface, "tunnel address set");
    Ok(())
}

/// Turns the applied peers into `desired`, one change at a time, then
/// saves them as the last known peers.
pub fn reconcile(agent: &Agent, desired: BTreeMap<String, PeerConfig>) {
    let iface = agent.backend.interface().to_string();
    let mut mesh = agent.mesh();
    let src = mesh.tunnel_ip;
    let (add_routes, remove_routes) = route_diff(&mesh.peers, &desired);
    for change in diff(&mesh.peers, &desired) {
        if let Err(e) = agent.backend.apply(&change) {
            warn!(change = ?change, error = %e, "peer change failed; will retry on the next update");
            continue;
        }
        match change {
            meshgate_tunnel::PeerChange::Remove(old) => {
                mesh.peers.remove(&old.name);
            }
            meshgate_tunnel::PeerChange::Add(new)
            | meshgate_tunnel::PeerChange::Update { new, .. } => {
                mesh.peers.insert(new.name.clone(), new);
            }
        }
    }
    for net in &remove_routes {
        if let Err(e) = routes::remove_route(&iface, net) {
            warn!(route = %net, error = %e, "removing route failed");
        }
    }
    for net in &add_routes {
        if let Err(e) = routes::add_route(&iface, net, src) {
            warn!(route = %net, error = %e, "adding route failed");
        }
    }
    let saved = Saved {
        tunnel_ip: mesh.tunnel_ip,
        peers: mesh.peers.clone(),
    };
    drop(mesh);
    if let Err(e) = persist::save(&agent.cfg.state_dir, &saved) {
        warn!(error = %format!("{e:#}"), "saving the last known peers failed");
    }
}

/// Puts back what the agent knew before it restarted.
pub fn resume(agent: &Agent, saved: Saved) -> anyhow::Result<()> {
    if let Some(ip) = saved.tunnel_ip {
        set_tunnel_ip(agent, ip)?;
    }
    info!(
        peers = saved.peers.len(),
        "resuming with the last known peers"
    );
    // The routes are still in the kernel (the interface persisted); the
    // route diff from nothing re-asserts them, which is idempotent.
    reconcile(agent, saved.peers);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
