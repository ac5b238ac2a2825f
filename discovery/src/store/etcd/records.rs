//! The etcd store's records: how a [`RegistryState`] is laid out in keys,
//! what a change writes, and how a replica rebuilds the state from the
//! keys it reads or watches. Pure: no etcd here, unit-tested without it.
//!
//! Keys, under `/meshgate/<cluster>/`:
//! - `meta`: the format, cluster, cluster ID and registry revision, with
//!   the events of the change that wrote it last. Every change rewrites it
//!   and compares its `mod_revision` first, so changes through different
//!   replicas are serialised and one that missed another's fails instead
//!   of overwriting it. Its etcd version counts the changes.
//! - `nodes/<name>`, `allocations/<name>` (the node's tunnel IP) and
//!   `identities/<id>`: one key each.
//! - `endpoints/<node>`: that node's endpoints, in IP order. One key per
//!   node rather than per endpoint: a change is one node and its pods, and
//!   stays a few operations in one transaction (etcd refuses transactions
//!   of more than 128 operations by default, `--max-txn-ops`); a pod's
//!   change rewrites its node's list (about 200 bytes an endpoint).
//! - `lease/<node>`: lease renewals, see the store.
//! - `state`: the whole state in one key, as discoveries before this
//!   layout wrote it; migrated on first start and kept as `state.migrated`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::endpoint::{Endpoint, Identity};
use crate::model::{Event, Node};
use crate::registry::{RecordChanges, RegistryState};
use crate::store::remote::{RemotePatch, RemoteState};
use crate::store::STATE_FORMAT;

pub const META: &str = "meta";
pub const LEASES: &str = "lease/";
pub const OLD_STATE: &str = "state";
pub const MIGRATED: &str = "state.migrated";
const NODES: &str = "nodes/";
const ALLOCATIONS: &str = "allocations/";
const IDENTITIES: &str = "identities/";
const ENDPOINTS: &str = "endpoints/";

/// The `meta` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub cluster: String,
    pub cluster_id: u8,
    pub revision: u64,
    /// The events of the change that wrote this.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Which replica wrote it (an ID each store picks at start): a
    /// replica's watch passes over its own changes.
    #[serde(default)]
    pub writer: String,
}

/// The single-key state of discoveries before this layout.
#[derive(Serialize, Deserialize)]
pub struct OldStateDoc {
    pub format: u32,
    pub state: RegistryState,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// Every record but `meta`, by key (relative to the cluster prefix),
/// encoded.
pub type Records = BTreeMap<String, Vec<u8>>;

pub fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}

pub fn allocation_key(name: &str) -> String {
    format!("{ALLOCATIONS}{name}")
}

pub fn identity_key(id: u32) -> String {
    format!("{IDENTITIES}{id}")
}

pub fn endpoints_key(node: &str) -> String {
    format!("{ENDPOINTS}{node}")
}

/// Whether `key` is an allocation's or an identity's: created only where
/// nobody created it meanwhile.
pub fn is_guarded(key: &str) -> bool {
    key.starts_with(ALLOCATIONS) || key.starts_with(IDENTITIES)
}

/// Whether `key` is one of the records [`records`] makes.
pub fn is_record(key: &str) -> bool {
    [NODES, ALLOCATIONS, IDENTITIES, ENDPOINTS]
        .iter()
        .any(|p| key.starts_with(p))
}

/// The records of `state`.
pub fn records(state: &RegistryState) -> Result<Records, serde_json::Error> {
    let mut r = Records::new();
    for (name, node) in &state.nodes {
        r.insert(node_key(name), serde_json::to_vec(node)?);
    }
    for (name, ip) in &state.allocations {
        r.insert(allocation_key(name), serde_json::to_vec(ip)?);
    }
    for identity in &state.identities {
        r.insert(identity_key(identity.id), serde_json::to_vec(identity)?);
    }
    let mut by_node: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for e in &state.endpoints {
        by_node.entry(e.node.as_str()).or_default().push(e);
    }
    for (node, eps) in by_node {
        r.insert(endpoints_key(node), serde_json::to_vec(&eps)?);
    }
    Ok(r)
}

/// The writes of a change from its events alone: the records they touch,
/// read from `registry` (which holds the state after the change). A node's
/// endpoint list is rewritten when any of its endpoints changed. `exists`
/// says whether an allocation or identity key is stored already.
pub fn change_ops(
    registry: &crate::registry::Registry,
    events: &[Event],
    exists: impl Fn(&str) -> bool,
) -> Result<Vec<Op>, serde_json::Error> {
    let mut ops = Vec::new();
    let mut touched: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let put = |key: String, value: Vec<u8>, guarded: bool| Op::Put {
        created: guarded && !exists(&key),
        key,
        value,
    };
    for event in events {
        match event {
            Event::Upserted { node, .. } => {
                ops.push(put(node_key(&node.name), serde_json::to_vec(node)?, false));
                if let Some(ip) = node.tunnel_ip {
                    ops.push(put(
                        allocation_key(&node.name),
                        serde_json::to_vec(&ip)?,
                        true,
                    ));
                }
            }
            Event::Removed { name, .. } => {
                ops.push(Op::Delete(node_key(name)));
                ops.push(Op::Delete(allocation_key(name)));
                touched.insert(name);
            }
            Event::EndpointUpserted { endpoint, .. } => {
                touched.insert(&endpoint.node);
            }
            Event::EndpointRemoved { node, .. } => {
                touched.insert(node);
            }
            Event::IdentityAdded { identity, .. } => {
                ops.push(put(
                    identity_key(identity.id),
                    serde_json::to_vec(identity)?,
                    true,
                ));
            }
            _ => {}
        }
    }
    for node in touched {
        let eps = registry.endpoints_of(node);
        ops.push(if eps.is_empty() {
            Op::Delete(endpoints_key(node))
        } else {
            put(endpoints_key(node), serde_json::to_vec(&eps)?, false)
        });
    }
    Ok(ops)
}

/// One write of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put; `created` when the key is new (allocations and identities are
    /// then written only if nobody created the key meanwhile).
    Put {
        key: String,
        value: Vec<u8>,
        created: bool,
    },
    Delete(String),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete(key) => key,
        }
    }

    /// Bytes it adds to a request (key and value).
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete(key) => key.len(),
        }
    }

    /// Whether its key must not exist before it (a new allocation or
    /// identity: the per-key compare-and-swap).
    pub fn must_be_new(&self) -> bool {
        matches!(self, Op::Put { key, created: true, .. } if is_guarded(key))
    }
}

/// The writes that turn `old` into `new`: puts of what is new or changed,
/// then deletes of what went.
pub fn diff(old: &Records, new: &Records) -> Vec<Op> {
    let mut ops: Vec<Op> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| Op::Put {
            key: k.clone(),
            value: v.clone(),
            created: !old.contains_key(k),
        })
        .collect();
    ops.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| Op::Delete(k.clone())),
    );
    ops
}

/// Splits `ops` into transactions of at most `max_ops` operations and
/// `max_bytes` bytes each (one op over `max_bytes` goes alone), leaving
/// `reserve_ops` free in the last one (for `meta` and what goes with it).
pub fn chunks(ops: Vec<Op>, max_ops: usize, max_bytes: usize, reserve_ops: usize) -> Vec<Vec<Op>> {
    let mut out: Vec<Vec<Op>> = vec![Vec::new()];
    let mut bytes = 0;
    for op in ops {
        let cur = out.last().map_or(0, Vec::len);
        if cur > 0 && (cur + 1 > max_ops || bytes + op.size() > max_bytes) {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += op.size();
        if let Some(last) = out.last_mut() {
            last.push(op);
        }
    }
    if out.last().is_some_and(|c| c.len() + reserve_ops > max_ops) {
        out.push(Vec::new());
    }
    out
}

/// A record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {key}: {reason}")]
pub struct RecordError {
    pub key: String,
    pub reason: String,
}

/// Where `meta` stands: its record, etcd version and revision.
#[derive(Debug, Clone, PartialEq)]
struct MetaAt {
    meta: Meta,
    version: i64,
    mod_revision: i64,
}

/// The stored state as a replica last read or watched it, decoded.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    meta: Option<MetaAt>,
    nodes: BTreeMap<String, Node>,
    allocations: BTreeMap<String, Ipv4Addr>,
    identities: BTreeMap<u32, Identity>,
    endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// The record keys put or deleted since the last patch was taken.
    touched: BTreeSet<String>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(value).map_err(|e| RecordError {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl Mirror {
    /// Takes a put of `key` (relative) at etcd `version`/`mod_revision`.
    /// Keys it does not know (leases, the old state) are left alone; a
    /// record it cannot read is an error and changes nothing.
    pub fn put(
        &mut self,
        key: &str,
        value: &[u8],
        version: i64,
        mod_revision: i64,
    ) -> Result<(), RecordError> {
        if key == META {
            let meta: Meta = decode(key, value)?;
            if meta.format != STATE_FORMAT {
                return Err(RecordError {
                    key: key.to_string(),
                    reason: format!(
                        "format {} (this discovery reads format {STATE_FORMAT}; use a matching \
                         meshgate version)",
                        meta.format
                    ),
                });
            }
            self.meta = Some(MetaAt {
                meta,
                version,
                mod_revision,
            });
            return Ok(());
        } else if let Some(name) = key.strip_prefix(NODES) {
            self.nodes.insert(name.to_string(), decode(key, value)?);
        } else if let Some(name) = key.strip_prefix(ALLOCATIONS) {
            self.allocations
                .insert(name.to_string(), decode(key, value)?);
        } else if let Some(id) = key.strip_prefix(IDENTITIES) {
            let id: u32 = id.parse().map_err(|_| RecordError {
                key: key.to_string(),
                reason: "not an identity number".into(),
            })?;
            self.identities.insert(id, decode(key, value)?);
        } else if let Some(node) = key.strip_prefix(ENDPOINTS) {
            self.endpoints.insert(node.to_string(), decode(key, value)?);
        } else {
            return Ok(());
        }
        self.touched.insert(key.to_string());
        Ok(())
    }

    /// Takes a delete of `key` (relative).
    pub fn delete(&mut self, key: &str) {
        if is_record(key) {
            self.touched.insert(key.to_string());
        }
        if key == META {
            self.meta = None;
        } else if let Some(name) = key.strip_prefix(NODES) {
            self.nodes.remove(name);
        } else if let Some(name) = key.strip_prefix(ALLOCATIONS) {
            self.allocations.remove(name);
        } else if let Some(id) = key.strip_prefix(IDENTITIES).and_then(|i| i.parse().ok()) {
            self.identities.remove(&id);
        } else if let Some(node) = key.strip_prefix(ENDPOINTS) {
            self.endpoints.remove(node);
        }
    }

    /// The replica that wrote `meta` last.
    pub fn written_by(&self) -> Option<&str> {
        self.meta.as_ref().map(|m| m.meta.writer.as_str())
    }

    /// Whether a `meta` was read: a state is stored.
    pub fn has_state(&self) -> bool {
        self.meta.is_some()
    }

    /// The records put or deleted since the patch taken before, as they
    /// stand now, with `meta`'s bookkeeping; `None` when nothing is
    /// stored. The next patch starts from here.
    pub fn take_patch(&mut self) -> Option<RemotePatch> {
        let touched = std::mem::take(&mut self.touched);
        let at = self.meta.as_ref()?;
        let mut changes = RecordChanges {
            revision: at.meta.revision,
            ..Default::default()
        };
        for key in &touched {
            if let Some(name) = key.strip_prefix(NODES) {
                let node = self.nodes.get(name).cloned();
                changes.nodes.insert(name.to_string(), node);
            } else if let Some(name) = key.strip_prefix(ALLOCATIONS) {
                let ip = self.allocations.get(name).copied();
                changes.allocations.insert(name.to_string(), ip);
            } else if let Some(id) = key.strip_prefix(IDENTITIES).and_then(|i| i.parse().ok()) {
                let identity = self.identities.get(&id).cloned();
                changes.identities.insert(id, identity);
            } else if let Some(node) = key.strip_prefix(ENDPOINTS) {
                let list = self.endpoints.get(node).cloned();
                changes.endpoints.insert(node.to_string(), list);
            }
        }
        Some(RemotePatch {
            changes,
            events: at.meta.events.clone(),
            version: at.version,
            mod_revision: at.mod_revision,
        })
    }

    /// Forgets the records touched so far (they were this replica's own
    /// change, or went out whole).
    pub fn untouch(&mut self) {
        self.touched.clear();
    }

    /// The state the records make, with `meta`'s bookkeeping; `None` when
    /// nothing is stored.
    pub fn remote(&self) -> Option<RemoteState> {
        let at = self.meta.as_ref()?;
        let mut endpoints: Vec<Endpoint> = self.endpoints.values().flatten().cloned().collect();
        endpoints.sort_by_key(|e| e.ip);
        Some(RemoteState {
            state: RegistryState {
                cluster: at.meta.cluster.clone(),
                cluster_id: at.meta.cluster_id,
                revision: at.meta.revision,
                nodes: self.nodes.clone(),
                allocations: self.allocations.clone(),
                identities: self.identities.values().cloned().collect(),
                endpoints,
            },
            events: at.meta.events.clone(),
            version: at.version,
            mod_revision: at.mod_revision,
        })
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
