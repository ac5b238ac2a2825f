//! What was imported from each remote (pure state machine, time passed in).
//!
//! [`Imports::update`] checks a remote's whole view again and diffs what may
//! be imported against what is: only differences become events, so a
//! reconnect whose snapshot holds nothing new changes nothing. Events carry
//! revision 0; the server stamps them from the registry's sequence.
//! [`Imports::apply`] does the same for one event: it judges only the record
//! the event changed (and what depends on it), with the same outcome as a
//! whole check (see `imports/incremental.rs`). The pod CIDRs of every
//! imported node are kept in a [`CidrIndex`], so an overlap check is a few
//! look-ups, not a scan of every node of every cluster.
//! Event order: new identities, removed endpoints, new or changed nodes, new
//! or changed endpoints, removed nodes.
//!
//! A broken connection ([`Imports::disconnected`]) keeps the remote's state;
//! [`Imports::expire`] removes it `timeout` after the break, except the
//! remote's accepted cluster pod CIDRs, kept (a plain list; tiny) while the
//! remote is configured. Identities are
//! never removed (as in one cluster): an identity never changes meaning.

mod incremental;
mod packed;
mod released;
mod stored;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::check::{check, Local, RejectReason, Rejection};
use super::claims::{CidrIndex, Claims, Overlap};
use super::{RemoteConfig, RemoteView};
use crate::cidrs::ClusterCidrs;
use crate::endpoint::{Endpoint, Identity};
use crate::model::{first_overlap, Event, Node, RemoveReason};
use crate::service::Service;
use packed::PackedLabels;
use stored::StoredEndpoint;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Remote {
    url: String,
    /// The remote's cluster ID while its state is imported.
    cluster_id: Option<u8>,
    connected: bool,
    /// When the connection broke (ms), while state is kept for the timeout.
    broken_at: Option<u64>,
    nodes: BTreeMap<String, Node>,
    endpoints: BTreeMap<IpAddr, StoredEndpoint>,
    /// Kept packed: a `BTreeMap` per label set costs ~0.5 KB more.
    identities: BTreeMap<u32, PackedLabels>,
    /// A digest of the accepted service definitions (the definitions go to
    /// the merged services, which keep what they need of them).
    services: Option<u64>,
    rejected: BTreeMap<RejectReason, u64>,
    /// Records rejected now, and why, so a record is counted (and logged)
    /// once when it becomes rejected, not on every event.
    rejected_keys: BTreeMap<String, RejectReason>,
    last_error: String,
    /// The last whole check accepted the remote (events may then be
    /// judged one by one).
    judged: bool,
    /// Imported nodes that a local node registered since overlaps: judged
    /// again on the remote's next event.
    pending: BTreeSet<String>,
    /// Its accepted cluster pod CIDRs as listed (none accepted: `None`).
    /// Kept while the remote is configured, through a broken link and its
    /// expiry: the range is still the remote's; a snapshot replaces them.
    cidrs: Option<ClusterCidrs>,
    /// Its link was taken away (its MeshgateRemoteCluster deleted): once
    /// its state expires it is forgotten, pod CIDRs and all.
    unlinked: bool,
}

/// The result of [`Imports::update`]: the changes (revision 0) and the
/// rejections that are new since the previous check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub events: Vec<Event>,
    pub new_rejections: Vec<Rejection>,
    /// The remote's accepted service definitions, when they changed (only
    /// a whole check changes them).
    pub services: Option<Vec<Service>>,
    /// The remote's accepted cluster pod CIDRs changed (only a whole check
    /// of a snapshot changes them): the mesh's list is to be sent again.
    pub cidrs_changed: bool,
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
    /// The pod CIDRs of every imported node, by (remote, node).
    cidrs: CidrIndex,
    /// The local nodes' pod CIDRs as last seen, to notice new claims.
    local: BTreeMap<String, Vec<IpNet>>,
}

/// The other remotes, for checks of `remote`, through the index.
struct Others<'a> {
    imports: &'a Imports,
    remote: &'a str,
}

impl Claims for Others<'_> {
    fn cluster_id_holder(&self, cid: u8) -> Option<&str> {
        self.imports
            .remotes
            .iter()
            .find(|(n, r)| n.as_str() != self.remote && r.cluster_id == Some(cid))
            .map(|(n, _)| n.as_str())
    }

    fn overlap(&self, node: &Node) -> Option<Overlap> {
        let owner = node
            .pod_cidrs
            .iter()
            .flat_map(|c| self.imports.cidrs.overlapping(c))
            .filter(|(r, _)| r != self.remote)
            .min()?;
        let other = self.imports.remotes.get(&owner.0)?.nodes.get(&owner.1)?;
        let (mine, its) = first_overlap(&node.pod_cidrs, &other.pod_cidrs)?;
        Some(Overlap {
            mine,
            its,
            cluster: owner.0.clone(),
            node: owner.1.clone(),
        })
    }

    fn cidr_holder(&self, cidr: &IpNet) -> Option<(&str, IpNet)> {
        self.imports
            .remotes
            .iter()
            .filter(|(n, _)| n.as_str() != self.remote)
            .find_map(|(n, r)| {
                let listed = r.cidrs.as_ref()?;
                first_overlap(&[*cidr], &listed.pod_cidrs).map(|(_, its)| (n.as_str(), its))
            })
    }
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
            cidrs: CidrIndex::default(),
            local: BTreeMap::new(),
        }
    }

    /// Adds `r` (a remote linked at run time); one already known keeps its
    /// state and takes the new URLs.
    pub fn add(&mut self, r: &RemoteConfig) {
        let remote = self.remotes.entry(r.name.clone()).or_default();
        remote.url.clone_from(&r.url);
        remote.unlinked = false;
    }

    /// `name` is no longer linked (its MeshgateRemoteCluster was deleted):
    /// its state is kept until it expires, as after a broken link, and then
    /// [`Imports::forget_unlinked`] drops the remote.
    pub fn unlink(&mut self, name: &str, error: String, now: u64) {
        self.disconnected(name, error, now);
        if let Some(r) = self.remotes.get_mut(name) {
            r.unlinked = true;
        }
    }

    /// Drops every unlinked remote whose state has expired (or that never
    /// connected): it leaves the status listing and the mesh's pod CIDRs.
    /// Their names.
    pub fn forget_unlinked(&mut self) -> Vec<String> {
        let gone: Vec<String> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.unlinked && !r.connected && r.broken_at.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in &gone {
            self.remotes.remove(name);
        }
        gone
    }

    /// Every remote's accepted cluster pod CIDRs, by remote name (remotes
    /// with none accepted are not listed).
    pub fn cluster_cidrs(&self) -> impl Iterator<Item = &ClusterCidrs> {
        self.remotes.values().filter_map(|r| r.cidrs.as_ref())
    }

    /// Every imported node.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.remotes.values().flat_map(|r| r.nodes.values())
    }

    /// Every imported endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.remotes
            .iter()
            .flat_map(|(name, r)| r.endpoints.iter().map(|(ip, e)| e.unpack(*ip, name)))
    }

    /// Whether `remote`'s last whole check accepted it: its events are then
    /// judged one by one, and its view's service definitions (which only a
    /// snapshot changes) are no longer needed.
    pub fn accepted(&self, remote: &str) -> bool {
        self.remotes.get(remote).is_some_and(|r| r.judged)
    }

    /// Drops from `view` (`remote`'s, after an import) what is imported and
    /// no later check needs: the service definitions (only a snapshot
    /// changes them, and it brings them again) and the identities imported
    /// as the view holds them. An identity's verdict depends only on itself
    /// and the remote's cluster ID, which only a snapshot changes; imported
    /// identities are never removed, and a whole check of a view without
    /// them gives no event for them (as with them: they are unchanged). A
    /// rejected identity stays, so a whole check judges it again. Saves the
    /// view's copy of every label set (~50 per remote in the benchmark).
    pub fn release(&self, remote: &str, view: &mut RemoteView) {
        let Some(r) = self.remotes.get(remote) else {
            return;
        };
        if !r.judged {
            return;
        }
        view.services = Vec::new();
        view.identities.retain(|id, i| {
            let imported = i.id == *id && r.identities.get(id).is_some_and(|p| p.is(&i.labels));
            !imported || r.rejected_keys.contains_key(&format!("identity {id}"))
        });
    }

    /// The endpoints imported from `remote`.
    pub fn endpoints_of<'a>(&'a self, remote: &'a str) -> impl Iterator<Item = Endpoint> + 'a {
        self.remotes
            .get(remote)
            .into_iter()
            .flat_map(move |r| r.endpoints.iter().map(move |(ip, e)| e.unpack(*ip, remote)))
    }

    /// Notes the local nodes' pod CIDRs; an imported node that a new or
    /// changed local CIDR overlaps is judged again on its remote's next
    /// event (as a whole check would).
    fn see_local(&mut self, local: &Local) {
        let same = local.nodes.len() == self.local.len()
            && local
                .nodes
                .iter()
                .all(|n| self.local.get(&n.name) == Some(&n.pod_cidrs));
        if same {
            return;
        }
        for n in local.nodes {
            if self.local.get(&n.name) == Some(&n.pod_cidrs) {
                continue;
            }
            for c in &n.pod_cidrs {
                for (remote, node) in self.cidrs.overlapping(c) {
                    if let Some(r) = self.remotes.get_mut(remote) {
                        r.pending.insert(node.clone());
                    }
                }
            }
        }
        self.local = local
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.pod_cidrs.clone()))
            .collect();
    }

    /// Replaces `remote`'s node `name` (index included).
    fn set_node(&mut self, remote: &str, name: &str, node: Option<Node>) {
        let Some(r) = self.remotes.get_mut(remote) else {
            return;
        };
        let owner = (remote.to_string(), name.to_string());
        if let Some(old) = r.nodes.remove(name) {
            for c in &old.pod_cidrs {
                self.cidrs.remove(c, &owner);
            }
        }
        if let Some(new) = node {
            for c in &new.pod_cidrs {
                self.cidrs.insert(c, &owner);
            }
            r.nodes.insert(name.to_string(), new);
        }
    }

    /// Every imported identity.
    pub fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.remotes.values().flat_map(|r| {
            r.identities.iter().map(|(id, labels)| Identity {
                id: *id,
                labels: labels.unpack(),
            })
        })
    }

    /// Checks `view` (the remote's whole state as received) and imports what
    /// may be imported. A remote rejected as a whole keeps its earlier
    /// state, as if its connection had broken. The view's released records
    /// are given back first; those imported as sent are released again.
    pub fn update(&mut self, name: &str, view: &mut RemoteView, local: &Local, now: u64) -> Update {
        self.hold_all(name, view);
        self.see_local(local);
        let others = Others {
            imports: self,
            remote: name,
        };
        let checked = check(name, view, local, &others);
        let Some(remote) = self.remotes.get_mut(name) else {
            return Update::default();
        };
        let keys: BTreeMap<String, RejectReason> = checked
            .rejections
            .iter()
            .map(|r| (r.key.clone(), r.reason))
            .collect();
        let new_rejections: Vec<Rejection> = checked
            .rejections
            .into_iter()
            .filter(|r| !remote.rejected_keys.contains_key(&r.key))
            .collect();
        for r in &new_rejections {
            *remote.rejected.entry(r.reason).or_default() += 1;
        }
        remote.rejected_keys = keys;
        let Some(acc) = checked.accepted else {
            remote.judged = false;
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
                services: None,
                cidrs_changed: false,
            };
        };
        remote.judged = true;
        remote.pending.clear();
        remote.connected = true;
        remote.broken_at = None;
        remote.last_error.clear();
        remote.cluster_id = Some(acc.cluster_id);
        let listed = (!acc.cidrs.is_empty()).then(|| ClusterCidrs {
            cluster: name.to_string(),
            cluster_id: acc.cluster_id,
            pod_cidrs: acc.cidrs.clone(),
        });
        let cidrs_changed = remote.cidrs != listed;
        remote.cidrs = listed;
        let mut events = Vec::new();
        for (id, labels) in &acc.identities {
            if !remote.identities.get(id).is_some_and(|p| p.is(labels)) {
                events.push(Event::IdentityAdded {
                    revision: 0,
                    identity: Identity {
                        id: *id,
                        labels: labels.clone(),
                    },
                });
            }
        }
        for (id, labels) in &acc.identities {
            if !remote.identities.get(id).is_some_and(|p| p.is(labels)) {
                remote.identities.insert(*id, PackedLabels::of(labels));
            }
        }
        events.extend(
            remote
                .endpoints
                .iter()
                .filter(|(ip, _)| !acc.endpoints.contains_key(ip))
                .map(|(ip, e)| stored_removed(name, *ip, e)),
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
            if !remote.endpoints.get(ip).is_some_and(|s| s.is(e)) {
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
        remote.endpoints = acc
            .endpoints
            .iter()
            .map(|(ip, e)| (*ip, StoredEndpoint::of(e)))
            .collect();
        let digest = digest(&acc.services);
        let services = (remote.services != Some(digest))
            .then(|| acc.services.into_values().collect::<Vec<Service>>());
        remote.services = Some(digest);
        let old: Vec<String> = remote.nodes.keys().cloned().collect();
        for n in old {
            self.set_node(name, &n, None);
        }
        for (n, node) in acc.nodes {
            self.set_node(name, &n, Some(node));
        }
        let nodes: Vec<String> = view.nodes.keys().cloned().collect();
        self.release_nodes(name, view, &nodes);
        let endpoints: Vec<String> = view.endpoints.keys().cloned().collect();
        self.release_endpoints(name, view, &endpoints);
        Update {
            events,
            new_rejections,
            services,
            cidrs_changed,
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
    /// `timeout_ms` ago: its endpoints, then its nodes. Its accepted
    /// cluster pod CIDRs stay listed (the range is still its).
    pub fn expire(&mut self, now: u64, timeout_ms: u64) -> Vec<(String, Vec<Event>)> {
        let mut out = Vec::new();
        for (name, r) in &mut self.remotes {
            let Some(at) = r.broken_at else { continue };
            if r.connected || now.saturating_sub(at) < timeout_ms {
                continue;
            }
            let mut events: Vec<Event> = r
                .endpoints
                .iter()
                .map(|(ip, e)| stored_removed(name, *ip, e))
                .collect();
            events.extend(
                r.nodes
                    .values()
                    .map(|n| node_removed(n, RemoveReason::LeaseExpired)),
            );
            r.endpoints.clear();
            for n in std::mem::take(&mut r.nodes).into_values() {
                let owner = (name.clone(), n.name.clone());
                for c in &n.pod_cidrs {
                    self.cidrs.remove(c, &owner);
                }
            }
            r.services = None;
            r.cluster_id = None;
            r.broken_at = None;
            r.judged = false;
            r.pending.clear();
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

fn digest(services: &BTreeMap<String, Service>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    services.hash(&mut h);
    h.finish()
}

fn endpoint_removed(e: &Endpoint) -> Event {
    Event::EndpointRemoved {
        revision: 0,
        ip: e.ip,
        node: e.node.clone(),
        cluster: e.cluster.clone(),
    }
}

fn stored_removed(cluster: &str, ip: IpAddr, e: &StoredEndpoint) -> Event {
    Event::EndpointRemoved {
        revision: 0,
        ip,
        node: e.node().to_string(),
        cluster: cluster.to_string(),
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
