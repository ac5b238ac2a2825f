//! The node registry: a pure state machine. No I/O; time comes in as `now`
//! (unix milliseconds). Every change bumps the revision by one and is
//! returned as an [`Event`] for the caller to persist and broadcast.
//!
//! It also holds each node's endpoints (the ipcache) and the cluster's
//! security identities; reporting them is in [`endpoints`].

mod endpoints;
mod follow;

pub use endpoints::Reported;
pub use follow::RecordChanges;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::alloc::{AllocError, Allocations, Allocator};
use crate::cidrs::ClusterCidrs;
use crate::endpoint::{Endpoint, EndpointError, Identity};
use crate::identity::{IdentityAllocations, IdentityAllocator, IdentityError};
use crate::model::{first_overlap, short_key, Event, ModelError, Node, RemoveReason, Snapshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub cluster: String,
    pub cluster_id: u8,
    pub lease_ttl_ms: u64,
    /// This cluster's pod CIDRs (discovery's `--pod-cidr`, checked by
    /// [`crate::cidrs::validate`]): a node may register only pod CIDRs
    /// inside them. Empty: any (and the cluster announces none).
    pub pod_cidrs: Vec<IpNet>,
}

/// What is persisted: nodes, tunnel IP allocations, endpoints, identity
/// allocations and the revision. Leases are not stored; they restart when
/// the state is loaded. `endpoints` and `identities` default to empty, so
/// state files written before they existed still load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    pub cluster: String,
    pub cluster_id: u8,
    pub revision: u64,
    pub nodes: BTreeMap<String, Node>,
    pub allocations: Allocations,
    /// Allocated identities and their label sets, in ID order; never freed
    /// (see [`crate::identity`]). A list, not a map: the store flattens this
    /// struct, and serde's flatten cannot read integer map keys.
    #[serde(default)]
    pub identities: Vec<Identity>,
    /// Every node's endpoints, in IP order.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error(
        "node {node}: pod CIDR {cidr} overlaps pod CIDR {other_cidr} of registered node {other}; \
         give each node its own range (or deregister {other})"
    )]
    PodCidrOverlap {
        node: String,
        cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    #[error(
        "node {node}: WireGuard public key {key_prefix}... is already used by registered node \
         {other}; every node needs its own key"
    )]
    DuplicateKey {
        node: String,
        key_prefix: String,
        other: String,
    },
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("node {name} of cluster {cluster} is not registered (never registered, deregistered or lease expired); register again")]
    NotRegistered { name: String, cluster: String },
    #[error("node {name} names cluster {cluster} but this discovery serves {server_cluster}")]
    WrongCluster {
        name: String,
        cluster: String,
        server_cluster: String,
    },
    #[error(
        "stored state belongs to cluster {stored} (id {stored_id}) but this discovery serves \
         {cluster} (id {cluster_id}); use another state dir or the right --cluster/--cluster-id"
    )]
    StateOfOtherCluster {
        stored: String,
        stored_id: u8,
        cluster: String,
        cluster_id: u8,
    },
    #[error("stored state is inconsistent at node {node}: {reason}")]
    StateInconsistent { node: String, reason: String },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "node {node}: endpoint {endpoint} has IP {ip}, which is outside the node's pod CIDRs \
         {cidrs}; report only this node's pods (or fix the pod's IP or the node's --pod-cidr)"
    )]
    EndpointOutsidePodCidr {
        node: String,
        endpoint: String,
        ip: IpAddr,
        cidrs: String,
    },
    #[error(
        "node {node}: endpoint {endpoint} claims IP {ip}, which endpoint {other_endpoint} of \
         node {other_node} already has; an IP belongs to one endpoint"
    )]
    EndpointIpTaken {
        node: String,
        endpoint: String,
        ip: IpAddr,
        other_node: String,
        other_endpoint: String,
    },
}

/// Whether a stored node record may be taken: stored under its name, valid,
/// of this cluster, its tunnel IP the one allocated to it.
fn check_stored_node(
    cfg: &RegistryConfig,
    alloc: &Allocator,
    name: &str,
    node: &Node,
) -> Result<(), RegistryError> {
    let bad = |reason: String| RegistryError::StateInconsistent {
        node: name.to_string(),
        reason,
    };
    if node.name != name {
        return Err(bad(format!(
            "stored under a different name {:?}",
            node.name
        )));
    }
    node.validate()?;
    node.check_cluster(&cfg.cluster, cfg.cluster_id)?;
    if node.tunnel_ip.is_none() || node.tunnel_ip != alloc.get(name) {
        return Err(bad(format!(
            "tunnel IP {:?} does not match its allocation {:?}",
            node.tunnel_ip,
            alloc.get(name)
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    node: Node,
    expires_at_ms: u64,
}

/// The result of a registration: the node as stored (with its tunnel IP)
/// and the events (empty when nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub node: Node,
    pub events: Vec<Event>,
}

/// The nodes by name. Persistent maps (`imbl`): a clone shares them, so
/// the backup taken before each change costs nothing at any size.
type Nodes = imbl::OrdMap<String, Entry>;
/// The endpoints by IP (a node's lie in its pod CIDRs: see
/// [`Registry::endpoints_in`]).
type Endpoints = imbl::OrdMap<IpAddr, Endpoint>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    cfg: RegistryConfig,
    nodes: Nodes,
    alloc: Allocator,
    revision: u64,
    endpoints: Endpoints,
    identities: IdentityAllocator,
}

impl Registry {
    pub fn new(cfg: RegistryConfig) -> Result<Self, RegistryError> {
        let alloc = Allocator::new(cfg.cluster_id)?;
        let identities = IdentityAllocator::new(cfg.cluster_id)?;
        Ok(Registry {
            cfg,
            nodes: Nodes::new(),
            alloc,
            revision: 0,
            endpoints: Endpoints::new(),
            identities,
        })
    }

    /// Restores a stored state; every node's lease restarts at `now`.
    pub fn from_state(
        cfg: RegistryConfig,
        state: RegistryState,
        now: u64,
    ) -> Result<Self, RegistryError> {
        if state.cluster != cfg.cluster || state.cluster_id != cfg.cluster_id {
            return Err(RegistryError::StateOfOtherCluster {
                stored: state.cluster,
                stored_id: state.cluster_id,
                cluster: cfg.cluster,
                cluster_id: cfg.cluster_id,
            });
        }
        let alloc = Allocator::from_allocations(cfg.cluster_id, &state.allocations)?;
        let mut nodes = Nodes::new();
        for (name, node) in state.nodes {
            check_stored_node(&cfg, &alloc, &name, &node)?;
            let expires_at_ms = now.saturating_add(cfg.lease_ttl_ms);
            nodes.insert(
                name,
                Entry {
                    node,
                    expires_at_ms,
                },
            );
        }
        let stored: IdentityAllocations = state
            .identities
            .into_iter()
            .map(|i| (i.id, i.labels))
            .collect();
        let identities = IdentityAllocator::from_allocations(cfg.cluster_id, &stored)?;
        let endpoints = endpoints::restore(&nodes, &identities, state.endpoints)?;
        Ok(Registry {
            cfg,
            nodes,
            alloc,
            revision: state.revision,
            endpoints,
            identities,
        })
    }

    pub fn state(&self) -> RegistryState {
        RegistryState {
            cluster: self.cfg.cluster.clone(),
            cluster_id: self.cfg.cluster_id,
            revision: self.revision,
            nodes: self
                .nodes
                .iter()
                .map(|(k, e)| (k.clone(), e.node.clone()))
                .collect(),
            allocations: self.alloc.allocations().clone(),
            identities: self.identity_list(),
            endpoints: self.endpoints.values().cloned().collect(),
        }
    }

    fn identity_list(&self) -> Vec<Identity> {
        self.identities_after(None).collect()
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// This cluster's state; its `clusters` lists only this cluster.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            nodes: self.nodes.values().map(|e| e.node.clone()).collect(),
            endpoints: self.endpoints.values().cloned().collect(),
            identities: self.identity_list(),
            clusters: vec![self.own_cidrs()],
        }
    }

    /// This cluster's entry in the mesh's list of pod CIDRs.
    pub fn own_cidrs(&self) -> ClusterCidrs {
        ClusterCidrs {
            cluster: self.cfg.cluster.clone(),
            cluster_id: self.cfg.cluster_id,
            pod_cidrs: self.cfg.pod_cidrs.clone(),
        }
    }

    /// The registered nodes, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|e| &e.node)
    }

    /// Takes the next revision for a change that is not the registry's own
    /// (state imported from a remote cluster), so one sequence orders all.
    pub fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// The endpoint with this IP.
    pub fn endpoint(&self, ip: &IpAddr) -> Option<&Endpoint> {
        self.endpoints.get(ip)
    }

    /// Every endpoint, in IP order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// The nodes after `after` (all of them after `None`), in name order:
    /// a snapshot goes out in parts from a copy of the registry, each part
    /// resuming after the last record of the one before.
    pub fn nodes_after<'a>(&'a self, after: Option<&'a str>) -> impl Iterator<Item = &'a Node> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.nodes
            .range::<_, str>((from, Bound::Unbounded))
            .map(|(_, e)| &e.node)
    }

    /// The endpoints after the IP `after` (all after `None`), in IP order;
    /// see [`Registry::nodes_after`].
    pub fn endpoints_after(&self, after: Option<IpAddr>) -> impl Iterator<Item = &Endpoint> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.endpoints
            .range((from, Bound::Unbounded))
            .map(|(_, e)| e)
    }

    /// The identities after the ID `after` (all after `None`), in ID
    /// order; see [`Registry::nodes_after`].
    pub fn identities_after(&self, after: Option<u32>) -> impl Iterator<Item = Identity> + '_ {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.identities
            .allocations()
            .range((from, Bound::Unbounded))
            .map(|(id, labels)| Identity {
                id: *id,
                labels: labels.clone(),
            })
    }

    /// The endpoints of a node, in IP order.
    pub fn endpoints_of(&self, node: &str) -> Vec<Endpoint> {
        let Some(entry) = self.nodes.get(node) else {
            return Vec::new();
        };
        let mut out: Vec<Endpoint> = self
            .endpoints_in(node, &entry.node.pod_cidrs)
            .cloned()
            .collect();
        out.sort_by_key(|e| e.ip);
        out
    }

    /// `name`'s pod CIDRs (none if it is not registered).
    fn pod_cidrs_of(&self, name: &str) -> Vec<IpNet> {
        self.nodes
            .get(name)
            .map(|e| e.node.pod_cidrs.clone())
            .unwrap_or_default()
    }

    /// The endpoints of `node` within `cidrs` (its pod CIDRs, where every
    /// endpoint of it lies: reports outside them are refused), found by
    /// range, without a look at other nodes' endpoints.
    fn endpoints_in<'a>(
        &'a self,
        node: &'a str,
        cidrs: &'a [IpNet],
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        cidrs
            .iter()
            .flat_map(move |c| self.endpoints.range(c.network()..=c.broadcast()))
            .map(|(_, e)| e)
            .filter(move |e| e.node == node)
    }

    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|e| &e.node)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// When `name`'s lease runs out (unix ms).
    pub fn lease_expires_at(&self, name: &str) -> Option<u64> {
        self.nodes.get(name).map(|e| e.expires_at_ms)
    }

    /// The earliest lease end, for a caller that wants to sleep until then.
    pub fn next_expiry(&self) -> Option<u64> {
        self.nodes.values().map(|e| e.expires_at_ms).min()
    }

    /// Registers or re-registers a node (idempotent). The tunnel IP is
    /// allocated here (sticky per name); an incoming `tunnel_ip` is ignored.
    /// Emits an upsert only when something changed; always restarts the lease.
    pub fn register(&mut self, mut node: Node, now: u64) -> Result<Registered, RegistryError> {
        node.validate()?;
        node.check_cluster(&self.cfg.cluster, self.cfg.cluster_id)?;
        crate::cidrs::check_node(&node, &self.cfg.cluster, &self.cfg.pod_cidrs)?;
        for (other, entry) in &self.nodes {
            if *other == node.name {
                continue;
            }
            if let Some((cidr, other_cidr)) = first_overlap(&node.pod_cidrs, &entry.node.pod_cidrs)
            {
                return Err(RegistryError::PodCidrOverlap {
                    node: node.name.clone(),
                    cidr,
                    other: other.clone(),
                    other_cidr,
                });
            }
            if entry.node.wg_public_key == node.wg_public_key {
                return Err(RegistryError::DuplicateKey {
                    node: node.name.clone(),
                    key_prefix: short_key(&node.wg_public_key).to_string(),
                    other: other.clone(),
                });
            }
        }
        node.tunnel_ip = Some(self.alloc.allocate(&node.name)?);
        let expires_at_ms = now.saturating_add(self.cfg.lease_ttl_ms);
        let old_cidrs = self.pod_cidrs_of(&node.name);
        if let Some(entry) = self.nodes.get_mut(&node.name) {
            entry.expires_at_ms = expires_at_ms;
            if entry.node == node {
                return Ok(Registered {
                    node,
                    events: Vec::new(),
                });
            }
        }
        self.revision += 1;
        self.nodes.insert(
            node.name.clone(),
            Entry {
                node: node.clone(),
                expires_at_ms,
            },
        );
        let mut events = vec![Event::Upserted {
            revision: self.revision,
            node: node.clone(),
        }];
        // A node whose pod CIDRs changed keeps only the endpoints still inside.
        events.extend(self.remove_endpoints(&node.name, &old_cidrs, |e| {
            !node.pod_cidrs.iter().any(|c| c.contains(&e.ip))
        }));
        Ok(Registered { node, events })
    }

    fn check_cluster_name(&self, name: &str, cluster: &str) -> Result<(), RegistryError> {
        if !cluster.is_empty() && cluster != self.cfg.cluster {
            return Err(RegistryError::WrongCluster {
                name: name.to_string(),
                cluster: cluster.to_string(),
                server_cluster: self.cfg.cluster.clone(),
            });
        }
        Ok(())
    }

    /// Restarts `name`'s lease. An empty `cluster` means this cluster.
    /// A node whose lease already ran out is not renewed: it must register again.
    pub fn renew(&mut self, name: &str, cluster: &str, now: u64) -> Result<(), RegistryError> {
        self.check_cluster_name(name, cluster)?;
        match self.nodes.get_mut(name) {
            Some(entry) if entry.expires_at_ms > now => {
                entry.expires_at_ms = now.saturating_add(self.cfg.lease_ttl_ms);
                Ok(())
            }
            _ => Err(RegistryError::NotRegistered {
                name: name.to_string(),
                cluster: self.cfg.cluster.clone(),
            }),
        }
    }

    /// Removes `name` and frees its tunnel IP. Idempotent: an unknown name
    /// gives no events.
    pub fn deregister(&mut self, name: &str, cluster: &str) -> Result<Vec<Event>, RegistryError> {
        self.check_cluster_name(name, cluster)?;
        Ok(self.remove(name, RemoveReason::Deregistered))
    }

    /// Removes every node whose lease ran out (`expires_at <= now`).
    pub fn expire(&mut self, now: u64) -> Vec<Event> {
        let expired: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.expires_at_ms <= now)
            .map(|(n, _)| n.clone())
            .collect();
        expired
            .iter()
            .flat_map(|n| self.remove(n, RemoveReason::LeaseExpired))
            .collect()
    }

    /// Removes a node and its endpoints: one event per endpoint, then the
    /// node's removal. Nothing if the node is unknown.
    fn remove(&mut self, name: &str, reason: RemoveReason) -> Vec<Event> {
        if !self.nodes.contains_key(name) {
            return Vec::new();
        }
        let cidrs = self.pod_cidrs_of(name);
        let mut events = self.remove_endpoints(name, &cidrs, |_| true);
        if let Some(entry) = self.nodes.remove(name) {
            self.alloc.release(name);
            self.revision += 1;
            events.push(Event::Removed {
                revision: self.revision,
                name: entry.node.name,
                cluster: entry.node.cluster,
                reason,
            });
        }
        events
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "registry/endpoint_tests.rs"]
mod endpoint_tests;
