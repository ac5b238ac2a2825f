//! One event at a time: [`Imports::apply`] judges only what the event
//! changed, with the outcome (events, rejections, counts) a whole check of
//! the view would give. What a whole check would judge differently without
//! the record changing is judged too:
//!
//! - the endpoints of a node whose import changed (they depend on it);
//! - nodes rejected for overlapping another cluster's pod CIDR (the other
//!   may be gone);
//! - imported nodes that a local node registered since overlaps
//!   (`pending`, noted by `see_local`).
//!
//! Every other verdict depends only on the record and the remote's cluster
//! ID, which only a snapshot changes (and a snapshot is checked whole).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{
    endpoint_removed, node_removed, Imports, Others, PackedLabels, Remote, StoredEndpoint, Update,
};
use crate::endpoint::{Endpoint, Identity};
use crate::federation::check::{self, Local, RejectReason, Rejection};
use crate::federation::view::Touched;
use crate::federation::RemoteView;
use crate::model::{Event, Node, RemoveReason};

/// Notes a record's verdict: a rejection new since the last is counted
/// and returned; one that went away is forgotten.
fn settle(remote: &mut Remote, key: String, verdict: Option<Rejection>, new: &mut Vec<Rejection>) {
    match verdict {
        Some(r) => {
            if !remote.rejected_keys.contains_key(&key) {
                *remote.rejected.entry(r.reason).or_default() += 1;
                new.push(r.clone());
            }
            remote.rejected_keys.insert(key, r.reason);
        }
        None => {
            remote.rejected_keys.remove(&key);
        }
    }
}

impl Imports {
    /// Imports what one event changed in `view` (the view after the
    /// event). A snapshot, or a remote not accepted as a whole, is checked
    /// whole ([`Imports::update`]).
    pub fn apply(
        &mut self,
        name: &str,
        view: &mut RemoteView,
        touched: &Touched,
        local: &Local,
        now: u64,
    ) -> Update {
        let cid = match self.remotes.get(name) {
            None => return Update::default(),
            Some(r) => match (r.judged, r.cluster_id) {
                (true, Some(cid)) if *touched != Touched::All => cid,
                _ => return self.update(name, view, local, now),
            },
        };
        self.see_local(local);
        let mut new = Vec::new();
        let mut nodes: BTreeSet<String> = BTreeSet::new();
        let mut endpoints: BTreeSet<String> = BTreeSet::new();
        let mut identities: Vec<Identity> = Vec::new();
        let remote = self.remotes.get_mut(name).expect("looked up above");
        remote.connected = true;
        remote.broken_at = None;
        remote.last_error.clear();
        match touched {
            Touched::Node(k) => {
                nodes.insert(k.clone());
            }
            Touched::Endpoint(k) => {
                endpoints.insert(k.clone());
            }
            Touched::Identity(id) => {
                let verdict = view
                    .identities
                    .get(id)
                    .map(|i| check::identity(name, cid, *id, i));
                let labels = match verdict {
                    Some(Ok(labels)) => Some(labels),
                    Some(Err(r)) => {
                        settle(remote, format!("identity {id}"), Some(r), &mut new);
                        None
                    }
                    None => None,
                };
                if let Some(labels) = labels {
                    settle(remote, format!("identity {id}"), None, &mut new);
                    if !remote.identities.get(id).is_some_and(|p| p.is(&labels)) {
                        remote.identities.insert(*id, PackedLabels::of(&labels));
                        identities.push(Identity { id: *id, labels });
                    }
                }
            }
            Touched::All | Touched::Nothing => {}
        }
        for (key, reason) in &remote.rejected_keys {
            if *reason == RejectReason::PodCidrOverlap {
                if let Some(k) = key.strip_prefix("node ") {
                    nodes.insert(k.to_string());
                }
            }
        }
        for n in std::mem::take(&mut remote.pending) {
            nodes.insert(format!("{name}/{n}"));
        }

        // Nodes: judged against ours and the other remotes (not changed here).
        for k in &nodes {
            self.hold_node(name, view, k);
        }
        let others = Others {
            imports: self,
            remote: name,
        };
        let judged: Vec<(String, Option<Result<Node, Rejection>>)> = nodes
            .into_iter()
            .map(|k| {
                let v = view
                    .nodes
                    .get(&k)
                    .and_then(|p| p.as_deref())
                    .map(|p| check::node(name, cid, &k, p, local, &others));
                (k, v)
            })
            .collect();
        let node_keys: Vec<String> = judged.iter().map(|(k, _)| k.clone()).collect();
        let mut node_changes: BTreeMap<String, (Option<Node>, Option<Node>)> = BTreeMap::new();
        for (k, verdict) in judged {
            let (accepted, rejected) = match verdict {
                Some(Ok(n)) => (Some(n), None),
                Some(Err(r)) => (None, Some(r)),
                None => (None, None),
            };
            let remote = self.remotes.get_mut(name).expect("looked up above");
            settle(remote, format!("node {k}"), rejected, &mut new);
            let Some(n) = k.strip_prefix(name).and_then(|k| k.strip_prefix('/')) else {
                continue; // another cluster's key: never imported
            };
            let old = remote.nodes.get(n).cloned();
            if old == accepted {
                continue;
            }
            endpoints.extend(view.endpoints_on(n).cloned());
            self.set_node(name, n, accepted.clone());
            node_changes.insert(n.to_string(), (old, accepted));
        }

        // Endpoints: against the remote's nodes as now imported.
        for k in &endpoints {
            self.hold_endpoint(name, view, k);
        }
        let remote = self.remotes.get_mut(name).expect("looked up above");
        let mut ep_changes: BTreeMap<IpAddr, (Option<Endpoint>, Option<Endpoint>)> =
            BTreeMap::new();
        for k in &endpoints {
            let verdict = view
                .endpoints
                .get(k)
                .and_then(|p| p.as_deref())
                .map(|p| check::endpoint(name, cid, k, p, &remote.nodes));
            let (accepted, rejected) = match verdict {
                Some(Ok(e)) => (Some(e), None),
                Some(Err(r)) => (None, Some(r)),
                None => (None, None),
            };
            settle(remote, format!("endpoint {k}"), rejected, &mut new);
            // Unreadable, or an IP not written as discovery writes it:
            // never imported (see `check::endpoint`).
            let Some(ip) = k.parse::<IpAddr>().ok().filter(|ip| ip.to_string() == *k) else {
                continue;
            };
            let old = remote.endpoints.get(&ip).map(|s| s.unpack(ip, name));
            if old == accepted {
                continue;
            }
            match &accepted {
                Some(e) => remote.endpoints.insert(ip, StoredEndpoint::of(e)),
                None => remote.endpoints.remove(&ip),
            };
            ep_changes.insert(ip, (old, accepted));
        }
        self.release_nodes(name, view, &node_keys);
        self.release_endpoints(name, view, &endpoints);

        // In the order of a whole check: identities, removed endpoints, new
        // or changed nodes, new or changed endpoints, removed nodes.
        let mut events: Vec<Event> = identities
            .into_iter()
            .map(|identity| Event::IdentityAdded {
                revision: 0,
                identity,
            })
            .collect();
        for (old, new) in ep_changes.values() {
            if let (Some(old), None) = (old, new) {
                events.push(endpoint_removed(old));
            }
        }
        for (_, new) in node_changes.values() {
            if let Some(node) = new {
                events.push(Event::Upserted {
                    revision: 0,
                    node: node.clone(),
                });
            }
        }
        for (_, new) in ep_changes.values() {
            if let Some(endpoint) = new {
                events.push(Event::EndpointUpserted {
                    revision: 0,
                    endpoint: endpoint.clone(),
                });
            }
        }
        for (old, new) in node_changes.values() {
            if let (Some(old), None) = (old, new) {
                events.push(node_removed(old, RemoveReason::Deregistered));
            }
        }
        Update {
            events,
            new_rejections: new,
            services: None,
            // Only a snapshot (checked whole) changes them.
            cidrs_changed: false,
        }
    }
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
