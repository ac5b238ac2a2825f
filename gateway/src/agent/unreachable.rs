//! The plain datapath's guard for the mesh's address space: an
//! `unreachable` route in the main table for every cluster pod CIDR
//! discovery lists (this node's own excepted when it is one). Nodes' CIDRs
//! (through the tunnel) and local pods (/32 on their veth) are more
//! specific, so they win; an address of a node that left falls on the
//! unreachable route instead of the default route, so it never leaves in
//! clear. The eBPF datapath keeps the same guard in its own table
//! ([`super::datapath::mesh_cidrs`]).

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::datapath::ip;
use super::Agent;

/// The unreachable routes of the main table now.
fn present() -> BTreeSet<Ipv4Net> {
    match ip(&["route", "show", "type", "unreachable"]) {
        Ok(out) => out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect(),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "listing unreachable routes failed");
            BTreeSet::new()
        }
    }
}

/// What the main table should hold: the cluster CIDRs but this node's own.
pub fn wanted(clusters: impl IntoIterator<Item = Ipv4Net>, own: Ipv4Net) -> BTreeSet<Ipv4Net> {
    let own = own.trunc();
    clusters.into_iter().filter(|n| *n != own).collect()
}

/// Brings the main table's unreachable routes in step with the cluster CIDRs
/// discovery lists. Nothing with the eBPF datapath.
pub fn sync(agent: &Agent) {
    if agent.cfg.datapath == super::datapath::Mode::Ebpf {
        return;
    }
    let want = wanted(
        agent.ipcache().mesh_cidrs.keys().copied(),
        agent.cfg.pod_cidr,
    );
    let mut mesh = agent.mesh();
    // At the first sync, `want` is the listing saved in ipcache.json: the
    // routes of it found in the kernel are ours (left by the last agent);
    // any other unreachable route is someone else's and never touched.
    let have = mesh
        .unreachable
        .get_or_insert_with(|| present().intersection(&want).copied().collect());
    let stale: Vec<Ipv4Net> = have.difference(&want).copied().collect();
    for net in stale {
        match ip(&["route", "del", "unreachable", &net.to_string()]) {
            Ok(_) => {
                info!(route = %net, "mesh CIDR no longer listed; unreachable route removed");
                have.remove(&net);
            }
            Err(e) => {
                warn!(route = %net, error = %format!("{e:#}"), "removing an unreachable route failed")
            }
        }
    }
    for net in want.difference(&have.clone()) {
        match ip(&["route", "replace", "unreachable", &net.to_string()]) {
            Ok(_) => {
                info!(route = %net, "mesh CIDR unreachable unless a node holds it");
                have.insert(*net);
            }
            Err(e) => {
                warn!(route = %net, error = %format!("{e:#}"), "adding an unreachable route failed")
            }
        }
    }
}

/// When the node leaves: removes the routes it made.
pub fn remove_all(agent: &Agent) {
    let made = agent.mesh().unreachable.take().unwrap_or_default();
    for net in made {
        if let Err(e) = ip(&["route", "del", "unreachable", &net.to_string()]) {
            warn!(route = %net, error = %format!("{e:#}"), "removing an unreachable route failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_cluster_cidr_but_the_nodes_own() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(
            wanted([n("10.1.0.0/16"), n("10.2.0.0/16")], n("10.1.0.7/24")),
            [n("10.1.0.0/16"), n("10.2.0.0/16")].into()
        );
        assert_eq!(
            wanted([n("10.1.0.0/24")], n("10.1.0.0/24")),
            BTreeSet::new(),
            "a one-node cluster's CIDR is the node's own"
        );
    }
}
