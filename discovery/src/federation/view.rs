//! What a remote discovery told us, as it told it: its last snapshot with
//! every later event applied. Nothing here is trusted; [`super::check`]
//! decides what of it may be imported.

use std::collections::BTreeMap;

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
    /// By `cluster/name`.
    pub nodes: BTreeMap<String, pb::Node>,
    /// By IP as sent.
    pub endpoints: BTreeMap<String, pb::Endpoint>,
    pub identities: BTreeMap<u32, pb::Identity>,
    /// Service definitions of the remote's cluster (fixed for a connection:
    /// a discovery loads its services at start).
    pub services: Vec<pb::Service>,
}

fn node_key(cluster: &str, name: &str) -> String {
    format!("{cluster}/{name}")
}

impl RemoteView {
    pub fn from_snapshot(s: pb::Snapshot) -> RemoteView {
        RemoteView {
            cluster: s.cluster,
            cluster_id: s.cluster_id,
            revision: s.revision,
            nodes: s
                .nodes
                .into_iter()
                .map(|n| (node_key(&n.cluster, &n.name), n))
                .collect(),
            endpoints: s.endpoints.into_iter().map(|e| (e.ip.clone(), e)).collect(),
            identities: s.identities.into_iter().map(|i| (i.id, i)).collect(),
            services: s.services,
        }
    }

    /// Applies one event after the snapshot (a snapshot replaces the view).
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Snapshot(s) => *self = RemoteView::from_snapshot(s),
            Event::Upserted(u) => {
                self.revision = u.revision;
                if let Some(n) = u.node {
                    self.nodes.insert(node_key(&n.cluster, &n.name), n);
                }
            }
            Event::Removed(r) => {
                self.revision = r.revision;
                self.nodes.remove(&node_key(&r.cluster, &r.name));
            }
            Event::EndpointUpserted(u) => {
                self.revision = u.revision;
                if let Some(e) = u.endpoint {
                    self.endpoints.insert(e.ip.clone(), e);
                }
            }
            Event::EndpointRemoved(r) => {
                self.revision = r.revision;
                let held = self
                    .endpoints
                    .get(&r.ip)
                    .is_some_and(|e| e.node == r.node && e.cluster == r.cluster);
                if held {
                    self.endpoints.remove(&r.ip);
                }
            }
            Event::IdentityAdded(a) => {
                self.revision = a.revision;
                if let Some(i) = a.identity {
                    self.identities.insert(i.id, i);
                }
            }
            // Merged views are not sent on local-only watches; nothing to mirror.
            Event::ServiceUpdated(u) => self.revision = u.revision,
        }
    }
}
