//! Which peer carries which prefixes: node to node where underlays are
//! routable, through cluster gateways where they are not. Pure: node
//! records and liveness in, WireGuard peers out.
//!
//! A cluster that has `cluster-gateway` nodes talks to other clusters only
//! through them: its ordinary nodes send everything for other clusters to
//! the cluster's active gateway, and other clusters reach its ordinary
//! nodes through that gateway too. Gateways talk to each other (and to
//! nodes of clusters without gateways) directly. Every hop is its own
//! WireGuard session, so traffic is encrypted on every underlay it
//! crosses.
//!
//! WireGuard accepts a source address from exactly one peer, so everyone
//! must agree on each cluster's active gateway: it is the first gateway by
//! name that is up ([`liveness::choose`]), judged from keepalives that the
//! gateways exchange with all their peers.

use std::collections::BTreeMap;

use crate::status::GatewayStatus;
use meshgate_model::pb;
use meshgate_tunnel::PeerConfig;

use super::liveness::{self, Health, KEEPALIVE_MS};
use super::mesh::peer_of;

/// The role that makes a node a cluster gateway.
pub const CLUSTER_GATEWAY: &str = "cluster-gateway";

/// This node, as the path rules need it.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    /// `cluster/node`
    pub name: &'a str,
    pub cluster: &'a str,
    pub gateway: bool,
    /// How this node encrypts: nodes that encrypt otherwise are not peered.
    pub encryption: meshgate_model::model::Encryption,
    /// A candidate gateway of some egress gateway policy: it sends every
    /// peer a keepalive each [`liveness::EGRESS_KEEPALIVE_MS`], so that
    /// they see within half a second when it dies.
    pub egress_gateway: bool,
}

/// The peers to configure, what was wrong with the records, and the
/// gateway choices made.
#[derive(Debug, Default)]
pub struct Paths {
    pub peers: BTreeMap<String, PeerConfig>,
    pub problems: Vec<String>,
    pub gateways: Vec<GatewayStatus>,
}

fn is_gateway(node: &pb::Node) -> bool {
    node.roles.iter().any(|r| r == CLUSTER_GATEWAY)
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Fresh => "fresh",
        Health::Down => "down",
    }
}

/// Computes the peers of `me` from every node record (keyed `cluster/node`)
/// and the health of its peers.
pub fn plan(
    me: &Me<'_>,
    nodes: &BTreeMap<String, pb::Node>,
    health: impl Fn(&str) -> Health,
) -> Paths {
    let mut out = Paths::default();
    // Cluster → its gateways, in name order (the map is ordered).
    let mut gateways: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut usable: BTreeMap<&String, (PeerConfig, bool)> = BTreeMap::new();
    for (name, node) in nodes {
        if name == me.name {
            continue;
        }
        let theirs: meshgate_model::model::Encryption = node.encryption.parse().unwrap_or_default();
        if theirs != me.encryption {
            out.problems.push(format!(
                "node {name} encrypts with {theirs} but this node with {}: a mesh mixes no \
                 encryption, so it is not peered (start every agent with the same --encryption)",
                me.encryption
            ));
            continue;
        }
        match peer_of(node) {
            Ok(p) => {
                let gw = is_gateway(node);
                if gw {
                    gateways
                        .entry(node.cluster.as_str())
                        .or_default()
                        .push(name.clone());
                }
                usable.insert(name, (p, gw));
            }
            Err(e) => out.problems.push(e),
        }
    }
    // Roles count even on records that are otherwise unusable: a cluster
    // with gateways is never reached around them.
    let with_gateways: std::collections::BTreeSet<&str> = nodes
        .values()
        .filter(|n| is_gateway(n))
        .map(|n| n.cluster.as_str())
        .chain(me.gateway.then_some(me.cluster))
        .collect();
    let behind_gateways = |cluster: &str| with_gateways.contains(cluster);
    let mut active: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut active_of = |cluster: &str, out: &mut Paths| -> Option<String> {
        if let Some(a) = active.get(cluster) {
            return a.clone();
        }
        let candidates = gateways.get(cluster).cloned().unwrap_or_default();
        let chosen = liveness::choose(&candidates, &health).cloned();
        if let Some(c) = &chosen {
            out.gateways.push(GatewayStatus {
                cluster: cluster.to_string(),
                active: c.clone(),
                health: candidates
                    .iter()
                    .map(|g| (g.clone(), health_word(health(g)).to_string()))
                    .collect(),
            });
        }
        active.insert(cluster.to_string(), chosen.clone());
        chosen
    };
    let can_leave = !behind_gateways(me.cluster) || me.gateway;
    let mut via: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for (name, (peer, gw)) in &usable {
        let cluster = nodes[*name].cluster.as_str();
        let direct = cluster == me.cluster || (can_leave && (*gw || !behind_gateways(cluster)));
        if direct {
            let mut p = peer.clone();
            if me.gateway || *gw {
                p.keepalive_ms = Some(KEEPALIVE_MS);
            }
            if me.egress_gateway {
                p.keepalive_ms = Some(liveness::EGRESS_KEEPALIVE_MS);
            }
            out.peers.insert(p.name.clone(), p);
            continue;
        }
        let hop_cluster = if can_leave { cluster } else { me.cluster };
        match active_of(hop_cluster, &mut out) {
            Some(hop) => via.entry(hop).or_default().push(name),
            None => out.problems.push(format!(
                "node {name}: no usable cluster-gateway in cluster {hop_cluster} to reach it through"
            )),
        }
    }
    for (hop, behind) in via {
        let Some(peer) = out.peers.get_mut(&hop) else {
            out.problems.push(format!(
                "gateway {hop} is not a usable peer; {} node(s) behind it are unreachable",
                behind.len()
            ));
            continue;
        };
        for name in behind {
            peer.allowed_ips
                .extend(usable[name].0.allowed_ips.iter().copied());
        }
    }
    out.gateways.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    out
}

#[cfg(test)]
mod tests;
