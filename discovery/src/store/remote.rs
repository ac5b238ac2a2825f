//! Turning a change made by another discovery replica (a newer state read
//! from the shared store) into the events this replica pushes to its own
//! watchers. Pure: no I/O, tested without etcd.
//!
//! Every stored state carries the events of the change that wrote it. A
//! replica that held the version just before uses those events as they are
//! (exact, with the removal reason); one that missed versions (its etcd
//! watch broke, or it caught up after a conflicting write) computes the
//! difference between the state it holds and the new one instead.
//! Revisions are left as stored; the server stamps them from its own
//! sequence so that each replica's stream stays in order.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Event, RemoveReason};
use crate::registry::{RecordChanges, RegistryState};

/// A state as stored in the shared store, with the store's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteState {
    pub state: RegistryState,
    /// The events of the change that wrote this state.
    pub events: Vec<Event>,
    /// How many times the state was written (etcd's key version).
    pub version: i64,
    /// etcd's revision of that write.
    pub mod_revision: i64,
}

/// Where a state stands in the shared store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMark {
    /// How many times the state was written (etcd's key version).
    pub version: i64,
    /// etcd's revision of the last write.
    pub mod_revision: i64,
}

impl RemoteState {
    pub fn mark(&self) -> StoreMark {
        StoreMark {
            version: self.version,
            mod_revision: self.mod_revision,
        }
    }
}

/// Another replica's change as the records it wrote, with `meta`'s
/// bookkeeping: what a replica that follows the store's watch applies.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotePatch {
    pub changes: RecordChanges,
    /// The events of the change.
    pub events: Vec<Event>,
    /// The store's version and revision of the change (its `meta`).
    pub version: i64,
    pub mod_revision: i64,
}

impl RemotePatch {
    pub fn mark(&self) -> StoreMark {
        StoreMark {
            version: self.version,
            mod_revision: self.mod_revision,
        }
    }
}

/// What changed in the shared store that this replica did not write.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteChange {
    /// Everything stored (after a resync).
    State(RemoteState),
    /// One change, record by record (while the watch follows).
    Patch(RemotePatch),
    /// A node's lease was renewed (at any replica).
    Renewed { node: String },
}

/// The events that turn `held` (at store version `held_version`) into
/// `remote.state`.
pub fn events_for(held: &RegistryState, held_version: i64, remote: &RemoteState) -> Vec<Event> {
    if remote.version == held_version + 1 {
        remote.events.clone()
    } else {
        diff(held, &remote.state)
    }
}

/// The events that turn `old` into `new`: new identities, then new or
/// changed nodes and endpoints, then removed endpoints, then removed nodes.
/// A diff cannot tell why a node went; it is reported as deregistered.
pub fn diff(old: &RegistryState, new: &RegistryState) -> Vec<Event> {
    let mut events = Vec::new();
    let old_ids: std::collections::BTreeSet<u32> = old.identities.iter().map(|i| i.id).collect();
    for identity in new.identities.iter().filter(|i| !old_ids.contains(&i.id)) {
        events.push(Event::IdentityAdded {
            revision: 0,
            identity: identity.clone(),
        });
    }
    for (name, node) in &new.nodes {
        if old.nodes.get(name) != Some(node) {
            events.push(Event::Upserted {
                revision: 0,
                node: node.clone(),
            });
        }
    }
    let old_eps: BTreeMap<IpAddr, _> = old.endpoints.iter().map(|e| (e.ip, e)).collect();
    let new_eps: BTreeMap<IpAddr, _> = new.endpoints.iter().map(|e| (e.ip, e)).collect();
    for (ip, ep) in &new_eps {
        if old_eps.get(ip) != Some(ep) {
            events.push(Event::EndpointUpserted {
                revision: 0,
                endpoint: (*ep).clone(),
            });
        }
    }
    for (ip, ep) in &old_eps {
        if !new_eps.contains_key(ip) {
            events.push(Event::EndpointRemoved {
                revision: 0,
                ip: *ip,
                node: ep.node.clone(),
                cluster: ep.cluster.clone(),
            });
        }
    }
    for (name, node) in &old.nodes {
        if !new.nodes.contains_key(name) {
            events.push(Event::Removed {
                revision: 0,
                name: name.clone(),
                cluster: node.cluster.clone(),
                reason: RemoveReason::Deregistered,
            });
        }
    }
    events
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
