//! Peer reconciliation, pure: compare the peers we have with the peers we
//! should have and say what to change, one peer at a time, so that adding,
//! updating or removing one peer never disturbs the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;

/// What the tunnel needs to know of one peer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// Mesh-unique node name (`cluster/node`), stable across key rotations.
    pub name: String,
    /// The peer's WireGuard public key, base64.
    pub public_key: String,
    /// Underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// Prefixes routed to this peer and accepted from it.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Send a keepalive (an empty WireGuard data packet) this often, so
    /// the peer can tell within a fraction of a second that we are alive.
    /// Milliseconds; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_ms: Option<u64>,
    /// The peer's own address inside the tunnel (one of `allowed_ips`),
    /// where the kernel backend sends its sub-second heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
}

impl PeerConfig {
    pub fn key(&self) -> Result<PublicKey, crate::keys::KeyError> {
        PublicKey::parse(
            &self.public_key,
            &format!("public key of peer {}", self.name),
        )
    }
}

/// One change to apply to the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Add(PeerConfig),
    /// The peer exists; some of its fields changed.
    Update {
        old: PeerConfig,
        new: PeerConfig,
    },
    Remove(PeerConfig),
}

/// The changes that turn `current` into `desired`, in name order:
/// removals first, then updates and additions.
pub fn diff(
    current: &BTreeMap<String, PeerConfig>,
    desired: &BTreeMap<String, PeerConfig>,
) -> Vec<PeerChange> {
    let mut changes: Vec<PeerChange> = current
        .iter()
        .filter(|(name, _)| !desired.contains_key(*name))
        .map(|(_, old)| PeerChange::Remove(old.clone()))
        .collect();
    for (name, new) in desired {
        match current.get(name) {
            None => changes.push(PeerChange::Add(new.clone())),
            Some(old) if old != new => changes.push(PeerChange::Update {
                old: old.clone(),
                new: new.clone(),
            }),
            Some(_) => {}
        }
    }
    changes
}

/// The routes (prefixes) that `diff` adds and removes, for the route table.
pub fn route_diff(
    current: &BTreeMap<String, PeerConfig>,
    desired: &BTreeMap<String, PeerConfig>,
) -> (Vec<Ipv4Net>, Vec<Ipv4Net>) {
    let collect = |m: &BTreeMap<String, PeerConfig>| -> std::collections::BTreeSet<Ipv4Net> {
        m.values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect()
    };
    let (cur, want) = (collect(current), collect(desired));
    let add = want.difference(&cur).copied().collect();
    let remove = cur.difference(&want).copied().collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer(name: &str, key: &str, ip: &str, nets: &[&str]) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            public_key: key.into(),
            endpoint: format!("{ip}:51820").parse().unwrap(),
            allowed_ips: nets.iter().map(|n| n.parse().unwrap()).collect(),
            keepalive_ms: None,
            tunnel_ip: None,
        }
    }

    fn map(peers: &[PeerConfig]) -> BTreeMap<String, PeerConfig> {
        peers.iter().map(|p| (p.name.clone(), p.clone())).collect()
    }

    #[test]
    fn unchanged_peers_are_left_alone() {
        let a = peer("c1/n2", "k2", "198.18.1.11", &["10.1.1.0/24"]);
        let b = peer("c1/n3", "k3", "198.18.1.12", &["10.1.2.0/24"]);
        let cur = map(&[a.clone(), b.clone()]);
        let mut b2 = b.clone();
        b2.public_key = "k3-rotated".into();
        let c = peer("c1/n4", "k4", "198.18.1.13", &["10.1.3.0/24"]);
        let changes = diff(&cur, &map(&[a, b2.clone(), c.clone()]));
        assert_eq!(
            changes,
            vec![PeerChange::Update { old: b, new: b2 }, PeerChange::Add(c)]
        );
    }

    #[test]
    fn removal_comes_first() {
        let a = peer("c1/n2", "k2", "198.18.1.11", &["10.1.1.0/24"]);
        let b = peer("c1/n3", "k3", "198.18.1.12", &["10.1.2.0/24"]);
        let changes = diff(
            &map(std::slice::from_ref(&a)),
            &map(std::slice::from_ref(&b)),
        );
        assert_eq!(changes, vec![PeerChange::Remove(a), PeerChange::Add(b)]);
        assert!(diff(&map(&[]), &map(&[])).is_empty());
    }

    #[test]
    fn routes_follow_allowed_ips() {
        let a = peer(
            "c1/n2",
            "k2",
            "198.18.1.11",
            &["10.1.1.0/24", "100.64.4.2/32"],
        );
        let mut a2 = a.clone();
        a2.allowed_ips = vec![
            "10.1.1.0/24".parse().unwrap(),
            "10.1.9.0/24".parse().unwrap(),
        ];
        let (add, remove) = route_diff(&map(&[a]), &map(&[a2]));
        assert_eq!(add, vec!["10.1.9.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(remove, vec!["100.64.4.2/32".parse::<Ipv4Net>().unwrap()]);
    }
}
