//! What was imported from each remote (pure state machine, time passed in).
//!
//! [`Imports::update`] checks a remote's whole view again and diffs what may
//! be imported against what is: only differences become events, so a
//! reconnect whose snapshot holds nothing new changes nothing. Events carry
//! revision 0; the server stamps them from the registry's sequence.
//! Event order: new identities, removed endpoints, new or changed nodes, new
//! or changed endpoints, removed nodes.
//!
//! A broken connection ([`Imports::disconnected`]) keeps the remote's state;
//! [`Imports::expire`] removes it `timeout` after the break. Identities are
//! never removed (as in one cluster): an identity never changes meaning.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::check::{check, Local, OtherRemote, RejectReason, Rejection};
use super::{RemoteConfig, RemoteView};
use crate::endpoint::{Endpoint, Identity};
use crate::identity::Labels;
use crate::model::{Event, Node, RemoveReason};
use crate::service::Service;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Remote {
    url: String,
    /// The remote's cluster ID while its state is imported.
    cluster_id: Option<u8>,
    connected: bool,
    /// When the connection broke (ms), while state is kept for the timeout.
    broken_at: Option<u64>,
    nodes: BTreeMap<String, Node>,
    endpoints: BTreeMap<IpAddr, Endpoint>,
    identities: BTreeMap<u32, Labels>,
    services: BTreeMap<String, Service>,
    rejected: BTreeMap<RejectReason, u64>,
    /// Records rejected by the last check, so a record is counted (and
    /// logged) once when it becomes rejected, not on every event.
    rejected_keys: BTreeSet<String>,
    last_error: String,
}

/// The result of [`Imports::update`]: the changes (revision 0) and the
/// rejections that are new since the previous check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub events: Vec<Event>,
    pub new_rejections: Vec<Rejection>,
}

/// One remote, for `FederationStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    pub name: String,
    pub url: String,
    pub cluster_id: Option<u8>,
    pub connected: bool,
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub rejected: BTreeMap<RejectReason, u64>,
    pub last_error: String,
    /// ms since the connection broke, while its state is kept.
    pub disconnected_ms: Option<u64>,
}

/// Everything imported, per remote (by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imports {
    remotes: BTreeMap<String, Remote>,
}

impl Imports {
    pub fn new(remotes: &[RemoteConfig]) -> Imports {
        Imports {
            remotes: remotes
                .iter()
                .map(|r| {
                    let remote = Remote {
                        url: r.url.clone(),
                        ..Remote::default()
                    };
                    (r.name.clone(), remote)
                })
                .collect(),
        }
    }

    /// Every imported node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.remotes.values().flat_map(|r| r.nodes.values())
    }

    /// Every imported endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.remotes.values().flat_map(|r| r.endpoints.values())
    }

    /// Every imported service definition.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.remotes.values().flat_map(|r| r.services.values())
    }

    /// Every imported identity.
    pub fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.remotes.values().flat_map(|r| {
            r.identities.iter().map(|(id, labels)| Identity {
                id: *id,
                labels: labels.clone(),
            })
        })
    }

    /// Checks `view` (the remote's whole state as received) and imports what
    /// may be imported. A remote rejected as a whole keeps its earlier
    /// state, as if its connection had broken.
    pub fn update(&mut self, name: &str, view: &RemoteView, local: &Local, now: u64) -> Update {
        let others: Vec<OtherRemote> = self
            .remotes
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(n, r)| OtherRemote {
                name: n,
                cluster_id: r.cluster_id,
                nodes: r.nodes.values().collect(),
            })
            .collect();
        let checked = check(name, view, local, &others);
        let Some(remote) = self.remotes.get_mut(name) else {
            return Update::default();
        };
        let keys: BTreeSet<String> = checked.rejections.iter().map(|r| r.key.clone()).collect();
        let new_rejections: Vec<Rejection> = checked
            .rejections
            .into_iter()
            .filter(|r| !remote.rejected_keys.contains(&r.key))
            .collect();
        for r in &new_rejections {
            *remote.rejected.entry(r.reason).or_default() += 1;
        }
        remote.rejected_keys = keys;
        let Some(acc) = checked.accepted else {
            if remote.connected {
                remote.connected = false;
                remote.broken_at = Some(now);
            }
            if let Some(r) = new_rejections.first() {
                remote.last_error = r.detail.clone();
            }
            return Update {
                events: Vec::new(),
                new_rejections,
            };
        };
        remote.connected = true;
        remote.broken_at = None;
        remote.last_error.clear();
        remote.cluster_id = Some(acc.cluster_id);
        let mut events = Vec::new();
        for (id, labels) in &acc.identities {
            if remote.identities.get(id) != Some(labels) {
                events.push(Event::IdentityAdded {
                    revision: 0,
                    identity: Identity {
                        id: *id,
                        labels: labels.clone(),
                    },
                });
            }
        }
        remote.identities.extend(acc.identities);
        events.extend(
            remote
                .endpoints
                .values()
                .filter(|e| !acc.endpoints.contains_key(&e.ip))
                .map(endpoint_removed),
        );
        for (n, node) in &acc.nodes {
            if remote.nodes.get(n) != Some(node) {
                events.push(Event::Upserted {
                    revision: 0,
                    node: node.clone(),
                });
            }
        }
        for (ip, e) in &acc.endpoints {
            if remote.endpoints.get(ip) != Some(e) {
                events.push(Event::EndpointUpserted {
                    revision: 0,
                    endpoint: e.clone(),
                });
            }
        }
        events.extend(
            remote
                .nodes
                .values()
                .filter(|n| !acc.nodes.contains_key(&n.name))
                .map(|n| node_removed(n, RemoveReason::Deregistered)),
        );
        remote.nodes = acc.nodes;
        remote.endpoints = acc.endpoints;
        remote.services = acc.services;
        Update {
            events,
            new_rejections,
        }
    }

    /// The connection to `name` broke (or could not be made): its state is
    /// kept until [`Imports::expire`] runs out its timeout.
    pub fn disconnected(&mut self, name: &str, error: String, now: u64) {
        if let Some(r) = self.remotes.get_mut(name) {
            if r.connected {
                r.connected = false;
                r.broken_at = Some(now);
            }
            r.last_error = error;
        }
    }

    /// Removes the state of every remote whose connection broke at least
    /// `timeout_ms` ago: its endpoints, then its nodes.
    pub fn expire(&mut self, now: u64, timeout_ms: u64) -> Vec<(String, Vec<Event>)> {
        let mut out = Vec::new();
        for (name, r) in &mut self.remotes {
            let Some(at) = r.broken_at else { continue };
            if r.connected || now.saturating_sub(at) < timeout_ms {
                continue;
            }
            let mut events: Vec<Event> = r.endpoints.values().map(endpoint_removed).collect();
            events.extend(
                r.nodes
                    .values()
                    .map(|n| node_removed(n, RemoveReason::LeaseExpired)),
            );
            r.endpoints.clear();
            r.nodes.clear();
            r.services.clear();
            r.cluster_id = None;
            r.broken_at = None;
            out.push((name.clone(), events));
        }
        out
    }

    pub fn status(&self, now: u64) -> Vec<RemoteStatus> {
        self.remotes
            .iter()
            .map(|(name, r)| RemoteStatus {
                name: name.clone(),
                url: r.url.clone(),
                cluster_id: r.cluster_id,
                connected: r.connected,
                nodes: r.nodes.len(),
                endpoints: r.endpoints.len(),
                identities: r.identities.len(),
                rejected: r.rejected.clone(),
                last_error: r.last_error.clone(),
                disconnected_ms: r.broken_at.map(|at| now.saturating_sub(at)),
            })
            .collect()
    }
}

fn endpoint_removed(e: &Endpoint) -> Event {
    Event::EndpointRemoved {
        revision: 0,
        ip: e.ip,
        node: e.node.clone(),
        cluster: e.cluster.clone(),
    }
}

fn node_removed(n: &Node, reason: RemoveReason) -> Event {
    Event::Removed {
        revision: 0,
        name: n.name.clone(),
        cluster: n.cluster.clone(),
        reason,
    }
}
