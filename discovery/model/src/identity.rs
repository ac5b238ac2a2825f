//! Security identity allocation (pure).
//!
//! A security identity is a number for a label set, 24 bits wide:
//! `cluster_id << 16 | local_id`. Each cluster's discovery hands out the
//! `local_id`s of its own cluster from [`LOCAL_MIN`]`..=`[`LOCAL_MAX`];
//! local IDs below 256 are reserved.
//!
//! Reserved identities are cluster-independent (cluster_id 0) and use
//! Cilium's numbers, so policies written for Cilium read the same here:
//! [`UNKNOWN`] = 0, [`HOST`] = 1, [`WORLD`] = 2, [`UNMANAGED`] = 3,
//! [`HEALTH`] = 4, [`INIT`] = 5, [`REMOTE_NODE`] = 6, [`KUBE_APISERVER`] = 7.
//! Cluster 0's local IDs from [`LOCAL_MIN`] are the node-local CIDR
//! identities of policy prefixes (`policy::cidr`).
//!
//! The label set of an endpoint is its pod labels plus
//! [`NAMESPACE_LABEL`] (its namespace) and [`CLUSTER_LABEL`] (added by
//! discovery). Its canonical key is the sorted list of `k=v` pairs
//! ([`canonical_key`]); a `BTreeMap<String, String>` is exactly that list, so
//! allocations are indexed by the map itself.
//!
//! Choices:
//! - The same label set always gets the same identity, and allocations are
//!   persisted with the registry state, so identities survive discovery
//!   restarts.
//! - **Allocations are never freed**, even when no endpoint uses them any
//!   more: an identity never changes meaning under traffic (a policy map or a
//!   packet in flight naming it stays right). 65,280 label sets per cluster
//!   is far more than one cluster has distinct label sets; when they run
//!   out, [`IdentityError::Exhausted`] says so.
//! - A new label set gets the lowest free local ID (deterministic).

use std::collections::BTreeMap;

/// The label map of an endpoint or identity.
pub type Labels = BTreeMap<String, String>;

/// Identity of an address whose identity is not known.
pub const UNKNOWN: u32 = 0;
/// The local host.
pub const HOST: u32 = 1;
/// Anything outside the mesh.
pub const WORLD: u32 = 2;
/// A workload not managed by meshgate.
pub const UNMANAGED: u32 = 3;
/// Cilium's health-check endpoints.
pub const HEALTH: u32 = 4;
/// An endpoint whose identity is not resolved yet.
pub const INIT: u32 = 5;
/// Another node of the mesh.
pub const REMOTE_NODE: u32 = 6;
/// The Kubernetes API server (its addresses are given to the agent).
pub const KUBE_APISERVER: u32 = 7;

/// Lowest and highest local ID handed out; below 256 is reserved.
pub const LOCAL_MIN: u32 = 256;
pub const LOCAL_MAX: u32 = 65_535;
/// Bits of local ID in an identity.
pub const CLUSTER_SHIFT: u32 = 16;

/// Label holding the endpoint's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label holding the endpoint's cluster name (set by discovery).
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";

/// The name of a reserved identity, if `id` is one.
pub fn reserved_name(id: u32) -> Option<&'static str> {
    match id {
        UNKNOWN => Some("reserved:unknown"),
        HOST => Some("reserved:host"),
        WORLD => Some("reserved:world"),
        UNMANAGED => Some("reserved:unmanaged"),
        HEALTH => Some("reserved:health"),
        INIT => Some("reserved:init"),
        REMOTE_NODE => Some("reserved:remote-node"),
        KUBE_APISERVER => Some("reserved:kube-apiserver"),
        _ => None,
    }
}

/// `cluster_id << 16 | local_id`.
pub fn identity(cluster_id: u8, local_id: u16) -> u32 {
    u32::from(cluster_id) << CLUSTER_SHIFT | u32::from(local_id)
}

/// The cluster ID part of an identity.
pub fn cluster_of(id: u32) -> u32 {
    id >> CLUSTER_SHIFT
}

/// The local ID part of an identity.
pub fn local_of(id: u32) -> u32 {
    id & 0xffff
}

/// Sorted `k=v` pairs joined with `,`: the canonical text of a label set.
pub fn canonical_key(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The identity label set of an endpoint: its labels plus namespace and cluster.
pub fn endpoint_labels(labels: &Labels, namespace: &str, cluster: &str) -> Labels {
    let mut all = labels.clone();
    all.insert(NAMESPACE_LABEL.to_string(), namespace.to_string());
    all.insert(CLUSTER_LABEL.to_string(), cluster.to_string());
    all
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "security identities of cluster id {cluster_id} are exhausted: all {capacity} local IDs \
         ({LOCAL_MIN}..={LOCAL_MAX}) are allocated, so label set {{{labels}}} gets none; \
         allocations are never freed, so reduce the number of distinct label sets"
    )]
    Exhausted {
        cluster_id: u8,
        capacity: u32,
        labels: String,
    },
    #[error("cluster id 0 is not valid; cluster IDs are 1..=255")]
    ClusterIdZero,
    #[error(
        "stored identity {id} is not in cluster id {cluster_id}'s range \
         ({cluster_id} << 16 | {LOCAL_MIN}..={LOCAL_MAX}); the state belongs to another cluster"
    )]
    OutOfRange { id: u32, cluster_id: u8 },
    #[error("stored identities {a} and {b} have the same label set {{{labels}}}")]
    Duplicate { a: u32, b: u32, labels: String },
}

/// Label set → identity allocations of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityAllocator {
    cluster_id: u8,
    by_id: BTreeMap<u32, Labels>,
    by_labels: BTreeMap<Labels, u32>,
}

/// Serialized form: identity → labels.
pub type IdentityAllocations = BTreeMap<u32, Labels>;

impl IdentityAllocator {
    pub fn new(cluster_id: u8) -> Result<Self, IdentityError> {
        if cluster_id == 0 {
            return Err(IdentityError::ClusterIdZero);
        }
        Ok(IdentityAllocator {
            cluster_id,
            by_id: BTreeMap::new(),
            by_labels: BTreeMap::new(),
        })
    }

    /// Restores stored allocations, checking they belong to this cluster.
    pub fn from_allocations(
        cluster_id: u8,
        stored: &IdentityAllocations,
    ) -> Result<Self, IdentityError> {
        let mut a = IdentityAllocator::new(cluster_id)?;
        for (id, labels) in stored {
            let in_range = cluster_of(*id) == u32::from(cluster_id)
                && (LOCAL_MIN..=LOCAL_MAX).contains(&local_of(*id));
            if !in_range {
                return Err(IdentityError::OutOfRange {
                    id: *id,
                    cluster_id,
                });
            }
            if let Some(other) = a.by_labels.insert(labels.clone(), *id) {
                return Err(IdentityError::Duplicate {
                    a: other,
                    b: *id,
                    labels: canonical_key(labels),
                });
            }
            a.by_id.insert(*id, labels.clone());
        }
        Ok(a)
    }

    pub fn allocations(&self) -> &IdentityAllocations {
        &self.by_id
    }

    pub fn get(&self, labels: &Labels) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }

    pub fn labels(&self, id: u32) -> Option<&Labels> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The identity of `labels`, allocating the lowest free one if the set is
    /// new. Returns `(id, true)` when it was allocated now.
    pub fn allocate(&mut self, labels: &Labels) -> Result<(u32, bool), IdentityError> {
        if let Some(id) = self.get(labels) {
            return Ok((id, false));
        }
        let first = identity(self.cluster_id, 0) + LOCAL_MIN;
        let last = identity(self.cluster_id, 0) + LOCAL_MAX;
        let mut candidate = first;
        for used in self.by_id.range(first..=last).map(|(id, _)| *id) {
            if used != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate > last {
            return Err(IdentityError::Exhausted {
                cluster_id: self.cluster_id,
                capacity: LOCAL_MAX - LOCAL_MIN + 1,
                labels: canonical_key(labels),
            });
        }
        self.by_id.insert(candidate, labels.clone());
        self.by_labels.insert(labels.clone(), candidate);
        Ok((candidate, true))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reserved_numbers_are_ciliums() {
        assert_eq!(
            (
                UNKNOWN,
                HOST,
                WORLD,
                UNMANAGED,
                HEALTH,
                INIT,
                REMOTE_NODE,
                KUBE_APISERVER
            ),
            (0, 1, 2, 3, 4, 5, 6, 7)
        );
        assert_eq!(reserved_name(HEALTH), Some("reserved:health"));
        assert_eq!(reserved_name(INIT), Some("reserved:init"));
        assert_eq!(
            reserved_name(KUBE_APISERVER),
            Some("reserved:kube-apiserver")
        );
        assert_eq!(reserved_name(8), None);
        assert_eq!(reserved_name(6), Some("reserved:remote-node"));
        assert_eq!(reserved_name(256), None);
        assert!(cluster_of(REMOTE_NODE) == 0 && local_of(REMOTE_NODE) < LOCAL_MIN);
    }

    #[test]
    fn layout_is_cluster_shifted_by_16() {
        assert_eq!(identity(1, 256), 65_792);
        assert_eq!(identity(255, 65_535), 0xff_ffff);
        assert_eq!(cluster_of(65_792), 1);
        assert_eq!(local_of(65_792), 256);
    }

    #[test]
    fn canonical_key_is_sorted_pairs_and_endpoint_labels_add_ns_and_cluster() {
        let l = labels(&[("b", "2"), ("a", "1")]);
        assert_eq!(canonical_key(&l), "a=1,b=2");
        let e = endpoint_labels(&l, "default", "c1");
        assert_eq!(
            canonical_key(&e),
            "a=1,b=2,io.cilium.k8s.policy.cluster=c1,io.kubernetes.pod.namespace=default"
        );
    }

    #[test]
    fn same_labels_same_identity_different_labels_differ() {
        let mut a = IdentityAllocator::new(1).unwrap();
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        assert_eq!(a.allocate(&web).unwrap(), (identity(1, 256), true));
        assert_eq!(a.allocate(&db).unwrap(), (identity(1, 257), true));
        assert_eq!(a.allocate(&web).unwrap(), (identity(1, 256), false));
        assert_eq!(a.labels(identity(1, 257)), Some(&db));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn restored_allocations_are_stable_and_fill_the_lowest_gap() {
        let mut stored = IdentityAllocations::new();
        stored.insert(identity(2, 257), labels(&[("app", "db")]));
        let mut a = IdentityAllocator::from_allocations(2, &stored).unwrap();
        assert_eq!(
            a.allocate(&labels(&[("app", "db")])).unwrap(),
            (identity(2, 257), false)
        );
        assert_eq!(
            a.allocate(&labels(&[("app", "web")])).unwrap(),
            (identity(2, 256), true)
        );
        assert_eq!(
            a.allocate(&labels(&[("app", "x")])).unwrap(),
            (identity(2, 258), true)
        );
    }

    #[test]
    fn stored_state_of_other_cluster_or_duplicates_rejected() {
        let mut stored = IdentityAllocations::new();
        stored.insert(identity(2, 300), labels(&[("app", "web")]));
        let e = IdentityAllocator::from_allocations(1, &stored).unwrap_err();
        assert_eq!(
            e,
            IdentityError::OutOfRange {
                id: identity(2, 300),
                cluster_id: 1
            }
        );
        let mut stored = IdentityAllocations::new();
        stored.insert(identity(1, 5), labels(&[]));
        assert!(IdentityAllocator::from_allocations(1, &stored).is_err());
        let mut stored = IdentityAllocations::new();
        stored.insert(identity(1, 300), labels(&[("app", "web")]));
        stored.insert(identity(1, 301), labels(&[("app", "web")]));
        let e = IdentityAllocator::from_allocations(1, &stored).unwrap_err();
        assert!(e.to_string().contains("app=web"), "{e}");
        assert_eq!(
            IdentityAllocator::new(0).unwrap_err(),
            IdentityError::ClusterIdZero
        );
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_label_set() {
        let mut stored = IdentityAllocations::new();
        for local in LOCAL_MIN..=LOCAL_MAX {
            stored.insert(identity(1, 0) + local, labels(&[("n", &local.to_string())]));
        }
        let mut a = IdentityAllocator::from_allocations(1, &stored).unwrap();
        let e = a.allocate(&labels(&[("app", "new")])).unwrap_err();
        assert!(
            matches!(
                e,
                IdentityError::Exhausted {
                    capacity: 65_280,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("app=new"), "{e}");
        // known sets still resolve
        assert_eq!(
            a.allocate(&labels(&[("n", "256")])).unwrap(),
            (identity(1, 256), false)
        );
        assert_eq!(a.len(), 65_280);
    }
}
