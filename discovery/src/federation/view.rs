//! What a remote discovery told us, as it told it: its last snapshot with
//! every later event applied. Nothing here is trusted; [`super::check`]
//! decides what of it may be imported.
//!
//! A node or endpoint that was imported exactly as sent is *released*: the
//! view keeps its key (and the endpoint's node, in `by_node`) but not the
//! record, which the imports hold in their own form and give back when the
//! record must be judged again (see `imports/released.rs`). At 255 clusters
//! the wire copy beside the imported one was a fifth of a discovery's memory.

use std::collections::{BTreeMap, BTreeSet};

use crate::pb;
use crate::pb::watch_event::Event;

/// A remote's own state as received (records kept in their wire form, so a
/// bad record is judged, counted and skipped on its own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteView {
    /// The cluster the remote says it serves (from its snapshot).
    pub cluster: String,
    pub cluster_id: u32,
    pub revision: u64,
    /// By `cluster/name`; `None` once released (imported as sent).
    pub nodes: BTreeMap<String, Option<Box<pb::Node>>>,
    /// By IP as sent; `None` once released (imported as sent).
    pub endpoints: BTreeMap<String, Option<Box<pb::Endpoint>>>,
    pub identities: BTreeMap<u32, pb::Identity>,
    /// Service definitions of the remote's cluster (fixed for a connection:
    /// a discovery loads its services at start). The server drops them once
    /// they are imported (see `Imports::accepted`).
    pub services: Vec<pb::Service>,
    /// The endpoint keys by the node they name, to judge a node's
    /// endpoints again when the node changes.
    pub by_node: BTreeMap<String, BTreeSet<String>>,
    /// The remote cluster's own pod CIDRs as sent: those of the snapshot's
    /// `clusters` entry that names the remote's cluster and ID (the first
    /// such; entries of other clusters are not the remote's to announce).
    /// Fixed for a connection: a discovery's `--pod-cidr` is set at start.
    pub cidrs: Vec<String>,
}

/// What one event changed in a view, so only that is judged again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// A snapshot: everything.
    All,
    /// The node with this key (`cluster/name`).
    Node(String),
    /// The endpoint with this key (its IP as sent).
    Endpoint(String),
    Identity(u32),
    /// Nothing the imports hold.
    Nothing,
}

fn node_key(cluster: &str, name: &str) -> String {
    format!("{cluster}/{name}")
}

impl RemoteView {
    pub fn from_snapshot(s: pb::Snapshot) -> RemoteView {
        let cidrs = s
            .clusters
            .into_iter()
            .find(|c| c.cluster == s.cluster && c.cluster_id == s.cluster_id)
            .map(|c| c.pod_cidrs)
            .unwrap_or_default();
        RemoteView {
            cluster: s.cluster,
            cluster_id: s.cluster_id,
            revision: s.revision,
            nodes: s
                .nodes
                .into_iter()
                .map(|n| (node_key(&n.cluster, &n.name), Some(Box::new(n))))
                .collect(),
            endpoints: BTreeMap::new(),
            identities: s.identities.into_iter().map(|i| (i.id, i)).collect(),
            services: s.services,
            by_node: BTreeMap::new(),
            cidrs,
        }
        .with_endpoints(s.endpoints)
    }

    fn with_endpoints(mut self, endpoints: Vec<pb::Endpoint>) -> RemoteView {
        for e in endpoints {
            self.put_endpoint(e);
        }
        self
    }

    fn put_endpoint(&mut self, e: pb::Endpoint) {
        let same_node = self.by_node.get(&e.node).is_some_and(|s| s.contains(&e.ip));
        if !same_node {
            if let Some(old) = self.node_of(&e.ip).map(str::to_string) {
                self.unindex(&e.ip, &old);
            }
            self.by_node
                .entry(e.node.clone())
                .or_default()
                .insert(e.ip.clone());
        }
        self.endpoints.insert(e.ip.clone(), Some(Box::new(e)));
    }

    fn unindex(&mut self, ip: &str, node: &str) {
        if let Some(set) = self.by_node.get_mut(node) {
            set.remove(ip);
            if set.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// The node that endpoint `ip` (its key) names, held or released.
    pub fn node_of(&self, ip: &str) -> Option<&str> {
        match self.endpoints.get(ip)? {
            Some(e) => Some(&e.node),
            None => self
                .by_node
                .iter()
                .find(|(_, ips)| ips.contains(ip))
                .map(|(n, _)| n.as_str()),
        }
    }

    /// Drops endpoint `ip` (its key) from the view and its node's index.
    pub fn forget_endpoint(&mut self, ip: &str) {
        if let Some(node) = self.node_of(ip).map(str::to_string) {
            self.unindex(ip, &node);
        }
        self.endpoints.remove(ip);
    }

    /// The endpoint keys that name node `name`.
    pub fn endpoints_on(&self, name: &str) -> impl Iterator<Item = &String> {
        self.by_node.get(name).into_iter().flatten()
    }

    /// Whether every node and endpoint is held as sent (none released).
    pub fn is_whole(&self) -> bool {
        self.nodes.values().all(Option::is_some) && self.endpoints.values().all(Option::is_some)
    }

    /// Applies one event after the snapshot (a snapshot replaces the view);
    /// says what it changed.
    pub fn apply(&mut self, event: Event) -> Touched {
        match event {
            Event::Snapshot(s) => {
                *self = RemoteView::from_snapshot(s);
                Touched::All
            }
            Event::Upserted(u) => {
                self.revision = u.revision;
                let Some(n) = u.node else {
                    return Touched::Nothing;
                };
                let key = node_key(&n.cluster, &n.name);
                self.nodes.insert(key.clone(), Some(Box::new(n)));
                Touched::Node(key)
            }
            Event::Removed(r) => {
                self.revision = r.revision;
                let key = node_key(&r.cluster, &r.name);
                self.nodes.remove(&key);
                Touched::Node(key)
            }
            Event::EndpointUpserted(u) => {
                self.revision = u.revision;
                let Some(e) = u.endpoint else {
                    return Touched::Nothing;
                };
                let key = e.ip.clone();
                self.put_endpoint(e);
                Touched::Endpoint(key)
            }
            Event::EndpointRemoved(r) => {
                self.revision = r.revision;
                // A released endpoint was imported, so it is of the
                // remote's own cluster.
                let held = match self.endpoints.get(&r.ip) {
                    Some(Some(e)) => e.node == r.node && e.cluster == r.cluster,
                    Some(None) => {
                        r.cluster == self.cluster
                            && self.by_node.get(&r.node).is_some_and(|s| s.contains(&r.ip))
                    }
                    None => false,
                };
                if !held {
                    return Touched::Nothing;
                }
                self.unindex(&r.ip, &r.node);
                self.endpoints.remove(&r.ip);
                Touched::Endpoint(r.ip)
            }
            Event::IdentityAdded(a) => {
                self.revision = a.revision;
                let Some(i) = a.identity else {
                    return Touched::Nothing;
                };
                let id = i.id;
                self.identities.insert(id, i);
                Touched::Identity(id)
            }
            // Merged views are not sent on local-only watches; nothing to mirror.
            Event::ServiceUpdated(u) => {
                self.revision = u.revision;
                Touched::Nothing
            }
            Event::ServiceBackends(u) => {
                self.revision = u.revision;
                Touched::Nothing
            }
            // Not sent on local-only watches either; the remote's own CIDRs
            // come with its snapshot.
            Event::MeshCidrs(m) => {
                self.revision = m.revision;
                Touched::Nothing
            }
        }
    }
}
