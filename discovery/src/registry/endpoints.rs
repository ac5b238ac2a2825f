//! Endpoint reports and the ipcache part of the registry (still pure).
//!
//! A report replaces the full set of one node's endpoints. It is checked as a
//! whole before anything changes: every IP must lie in the node's pod CIDRs
//! and belong to no other endpoint; every label set gets its identity. Then
//! only what changed becomes events: new identities first, then removed
//! endpoints, then new or changed ones — one event (and revision) each.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Registry, RegistryError};
use crate::endpoint::{endpoint_from_report, Endpoint, Identity};
use crate::identity::{endpoint_labels, IdentityAllocator};
use crate::model::Event;
use crate::pb;

/// The result of a report: the node's endpoints as stored (identities filled
/// in) and the events (empty when nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub endpoints: Vec<Endpoint>,
    pub events: Vec<Event>,
}

impl Registry {
    /// Replaces the endpoints of `node` with `reported` (idempotent). An
    /// empty `cluster` means this cluster. On error nothing changes.
    pub fn report_endpoints(
        &mut self,
        node: &str,
        cluster: &str,
        reported: Vec<pb::Endpoint>,
    ) -> Result<Reported, RegistryError> {
        self.check_cluster_name(node, cluster)?;
        let cidrs = match self.nodes.get(node) {
            Some(entry) => entry.node.pod_cidrs.clone(),
            None => {
                return Err(RegistryError::NotRegistered {
                    name: node.to_string(),
                    cluster: self.cfg.cluster.clone(),
                })
            }
        };
        let mut identities = self.identities.clone();
        let mut new_identities = Vec::new();
        let mut wanted: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
        for p in reported {
            let mut e = endpoint_from_report(p, node, &self.cfg.cluster)?;
            if !cidrs.iter().any(|c| c.contains(&e.ip)) {
                return Err(RegistryError::EndpointOutsidePodCidr {
                    node: node.to_string(),
                    endpoint: e.full_name(),
                    ip: e.ip,
                    cidrs: cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let holder = wanted
                .get(&e.ip)
                .or_else(|| self.endpoints.get(&e.ip).filter(|o| o.node != node));
            if let Some(other) = holder {
                return Err(RegistryError::EndpointIpTaken {
                    node: node.to_string(),
                    endpoint: e.full_name(),
                    ip: e.ip,
                    other_node: other.node.clone(),
                    other_endpoint: other.full_name(),
                });
            }
            let labels = endpoint_labels(&e.labels, &e.namespace, &self.cfg.cluster);
            let (id, fresh) = identities.allocate(&labels)?;
            if fresh {
                new_identities.push(Identity { id, labels });
            }
            e.identity = id;
            wanted.insert(e.ip, e);
        }
        // Checked; now apply.
        self.identities = identities;
        let mut events = Vec::new();
        for identity in new_identities {
            self.revision += 1;
            events.push(Event::IdentityAdded {
                revision: self.revision,
                identity,
            });
        }
        events.extend(self.remove_endpoints(node, &cidrs, |e| !wanted.contains_key(&e.ip)));
        for (ip, e) in wanted {
            if self.endpoints.get(&ip) == Some(&e) {
                continue;
            }
            self.revision += 1;
            self.endpoints.insert(ip, e.clone());
            events.push(Event::EndpointUpserted {
                revision: self.revision,
                endpoint: e,
            });
        }
        Ok(Reported {
            endpoints: self.endpoints_of(node),
            events,
        })
    }

    /// Removes the endpoints of `node` (within `cidrs`, its pod CIDRs) for
    /// which `pred` holds; one event each.
    pub(super) fn remove_endpoints(
        &mut self,
        node: &str,
        cidrs: &[ipnet::IpNet],
        pred: impl Fn(&Endpoint) -> bool,
    ) -> Vec<Event> {
        let mut gone: Vec<IpAddr> = self
            .endpoints_in(node, cidrs)
            .filter(|e| pred(e))
            .map(|e| e.ip)
            .collect();
        // In IP order (overlapping CIDRs would list one twice).
        gone.sort();
        gone.dedup();
        let mut events = Vec::with_capacity(gone.len());
        for ip in gone {
            if let Some(e) = self.endpoints.remove(&ip) {
                self.revision += 1;
                events.push(Event::EndpointRemoved {
                    revision: self.revision,
                    ip,
                    node: e.node,
                    cluster: e.cluster,
                });
            }
        }
        events
    }
}

/// Rebuilds the endpoint table from stored state, checking that every
/// endpoint's node is stored, its IP is in that node's pod CIDRs, and its
/// identity is allocated to its label set.
pub(super) fn restore(
    nodes: &super::Nodes,
    identities: &IdentityAllocator,
    stored: Vec<Endpoint>,
) -> Result<super::Endpoints, RegistryError> {
    let mut out = super::Endpoints::new();
    for e in stored {
        check_stored(nodes, identities, &out, &e)?;
        out.insert(e.ip, e);
    }
    Ok(out)
}

/// Whether a stored endpoint may go into `taken` beside `nodes` and
/// `identities`: its node is there, its IP inside the node's pod CIDRs and
/// not taken, its identity the one of its labels.
pub(super) fn check_stored(
    nodes: &super::Nodes,
    identities: &IdentityAllocator,
    taken: &super::Endpoints,
    e: &Endpoint,
) -> Result<(), RegistryError> {
    let bad = |reason: String| RegistryError::StateInconsistent {
        node: e.node.clone(),
        reason: format!("endpoint {} ({}): {reason}", e.full_name(), e.ip),
    };
    let Some(entry) = nodes.get(&e.node) else {
        return Err(bad("its node is not stored".into()));
    };
    if !entry.node.pod_cidrs.iter().any(|c| c.contains(&e.ip)) {
        return Err(bad("IP outside the node's pod CIDRs".into()));
    }
    let labels = endpoint_labels(&e.labels, &e.namespace, &e.cluster);
    if identities.get(&labels) != Some(e.identity) {
        return Err(bad(format!(
            "identity {} is not the one allocated to its labels ({:?})",
            e.identity,
            identities.get(&labels)
        )));
    }
    if taken.contains_key(&e.ip) {
        return Err(bad("IP stored twice".into()));
    }
    Ok(())
}
