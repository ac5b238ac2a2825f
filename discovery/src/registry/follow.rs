//! Another replica's change (shared store), applied record by record: the
//! records that change wrote, not the whole state rebuilt. Nodes and
//! endpoints cost what the change touched; the tunnel-IP and identity
//! allocators are rebuilt from their maps when the change touched them
//! (O(nodes), O(identities)), never from the endpoints.
//!
//! Every check [`Registry::from_state`] makes of a record is made of the
//! records applied. What a patch cannot judge on its own (an identity
//! deleted, a node gone whose endpoints stay) is refused, and the caller
//! falls back to the whole state.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{Entry, Registry, RegistryError};
use crate::alloc::Allocator;
use crate::endpoint::{Endpoint, Identity};
use crate::identity::IdentityAllocator;
use crate::model::Node;

/// The records one change wrote, each as stored after it (`None`: deleted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordChanges {
    /// The registry revision the change stored.
    pub revision: u64,
    pub nodes: BTreeMap<String, Option<Node>>,
    pub allocations: BTreeMap<String, Option<Ipv4Addr>>,
    pub identities: BTreeMap<u32, Option<Identity>>,
    /// A node's endpoints, whole (one record a node).
    pub endpoints: BTreeMap<String, Option<Vec<Endpoint>>>,
}

impl Registry {
    /// Applies another replica's change. Nodes new here get a lease from
    /// `now`; the others keep theirs. On an error the registry is as it
    /// was (take the whole state instead).
    pub fn apply_records(&mut self, c: &RecordChanges, now: u64) -> Result<(), RegistryError> {
        let backup = self.clone();
        let outcome = self.apply(c, now);
        if outcome.is_err() {
            *self = backup;
        }
        outcome
    }

    fn apply(&mut self, c: &RecordChanges, now: u64) -> Result<(), RegistryError> {
        let bad = |node: &str, reason: String| RegistryError::StateInconsistent {
            node: node.to_string(),
            reason,
        };
        let cluster_id = self.cfg.cluster_id;
        if !c.allocations.is_empty() {
            let mut a = self.alloc.allocations().clone();
            for (name, ip) in &c.allocations {
                match ip {
                    Some(ip) => a.insert(name.clone(), *ip),
                    None => a.remove(name),
                };
            }
            self.alloc = Allocator::from_allocations(cluster_id, &a)?;
        }
        if !c.identities.is_empty() {
            let mut ids = self.identities.allocations().clone();
            for (id, identity) in &c.identities {
                let Some(identity) = identity else {
                    return Err(bad("", format!("identity {id} deleted")));
                };
                ids.insert(*id, identity.labels.clone());
            }
            self.identities = IdentityAllocator::from_allocations(cluster_id, &ids)?;
        }
        // The pod CIDRs each touched node had, to find its endpoints.
        let before: BTreeMap<&String, Vec<IpNet>> = c
            .nodes
            .keys()
            .chain(c.endpoints.keys())
            .filter_map(|n| Some((n, self.nodes.get(n)?.node.pod_cidrs.clone())))
            .collect();
        for name in c.endpoints.keys() {
            let old: Vec<IpAddr> = match before.get(name) {
                Some(cidrs) => self.endpoints_in(name, cidrs).map(|e| e.ip).collect(),
                None => Vec::new(),
            };
            for ip in old {
                self.endpoints.remove(&ip);
            }
        }
        for (name, node) in &c.nodes {
            let Some(node) = node else {
                self.nodes.remove(name);
                continue;
            };
            let expires_at_ms = self.nodes.get(name).map_or_else(
                || now.saturating_add(self.cfg.lease_ttl_ms),
                |e| e.expires_at_ms,
            );
            let entry = Entry {
                node: node.clone(),
                expires_at_ms,
            };
            self.nodes.insert(name.clone(), entry);
        }
        // Every node the change touched (its record or its allocation).
        for name in c.nodes.keys().chain(c.allocations.keys()) {
            if let Some(e) = self.nodes.get(name) {
                super::check_stored_node(&self.cfg, &self.alloc, name, &e.node)?;
            }
        }
        // A node whose record changed and whose endpoints did not: they
        // must still be its own and inside its CIDRs.
        for name in c.nodes.keys().filter(|n| !c.endpoints.contains_key(*n)) {
            let Some(cidrs) = before.get(name) else {
                continue;
            };
            let now_cidrs = self.nodes.get(name).map(|e| e.node.pod_cidrs.clone());
            let stale = self.endpoints_in(name, cidrs).any(|e| match &now_cidrs {
                Some(cidrs) => !cidrs.iter().any(|c| c.contains(&e.ip)),
                None => true,
            });
            if stale {
                return Err(bad(name, "its stored endpoints are not its own now".into()));
            }
        }
        for list in c.endpoints.values().flatten() {
            for e in list {
                self.restore_endpoint(e)?;
            }
        }
        self.revision = self.revision.max(c.revision);
        Ok(())
    }

    /// Puts a stored endpoint back, with [`Registry::from_state`]'s checks.
    fn restore_endpoint(&mut self, e: &Endpoint) -> Result<(), RegistryError> {
        super::endpoints::check_stored(&self.nodes, &self.identities, &self.endpoints, e)?;
        self.endpoints.insert(e.ip, e.clone());
        Ok(())
    }
}
