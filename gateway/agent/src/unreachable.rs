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
use meshgate_tunnel::netlink::{Netlink, NetlinkError, Route, RouteType, MAIN_TABLE};
use tracing::{info, warn};

use super::Agent;

/// The unreachable routes of the main table now.
fn present(nl: &mut Netlink) -> BTreeSet<Ipv4Net> {
    match nl.routes(MAIN_TABLE) {
        Ok(routes) => routes
            .into_iter()
            .filter(|r| r.kind == RouteType::Unreachable)
            .map(|r| r.dst)
            .collect(),
        Err(e) => {
            warn!(error = %e, "listing unreachable routes failed");
            BTreeSet::new()
        }
    }
}

/// Deletes the unreachable route to `net`; one already gone is fine.
fn delete(nl: &mut Netlink, net: Ipv4Net) -> Result<(), NetlinkError> {
    match nl.delete_route(&Route::unreachable(net)) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
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
    if mesh.unreachable.as_ref() == Some(&want) {
        return;
    }
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            warn!(error = %e, "syncing the unreachable routes failed");
            return;
        }
    };
    // At the first sync, `want` is the listing saved in ipcache.json: the
    // routes of it found in the kernel are ours (left by the last agent);
    // any other unreachable route is someone else's and never touched.
    let have = mesh
        .unreachable
        .get_or_insert_with(|| present(&mut nl).intersection(&want).copied().collect());
    let stale: Vec<Ipv4Net> = have.difference(&want).copied().collect();
    for net in stale {
        match delete(&mut nl, net) {
            Ok(()) => {
                info!(route = %net, "mesh CIDR no longer listed; unreachable route removed");
                have.remove(&net);
            }
            Err(e) => {
                warn!(route = %net, error = %e, "removing an unreachable route failed")
            }
        }
    }
    for net in want.difference(&have.clone()) {
        match nl.replace_route(&Route::unreachable(*net)) {
            Ok(()) => {
                info!(route = %net, "mesh CIDR unreachable unless a node holds it");
                have.insert(*net);
            }
            Err(e) => {
                warn!(route = %net, error = %e, "adding an unreachable route failed")
            }
        }
    }
}

/// When the node leaves: removes the routes it made.
pub fn remove_all(agent: &Agent) {
    let made = agent.mesh().unreachable.take().unwrap_or_default();
    if made.is_empty() {
        return;
    }
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            warn!(error = %e, "removing the unreachable routes failed");
            return;
        }
    };
    for net in made {
        if let Err(e) = delete(&mut nl, net) {
            warn!(route = %net, error = %e, "removing an unreachable route failed");
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
