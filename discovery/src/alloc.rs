//! Tunnel IP allocation (pure).
//!
//! Tunnel IPs live in 100.64.0.0/10. Cluster `C` owns the block
//! `100.64.0.0 + (C << 14)` of 2^14 addresses; a node gets
//! `100.64.0.0 + (C << 14) + k` with `k` in `1..=16382` (`k = 0` and
//! `k = 16383`, the first and last address of the block, are never handed out).
//!
//! Choices:
//! - An allocation is **sticky per node name**: while a node is registered
//!   its name keeps its IP across re-registrations (new key, port or underlay)
//!   and across discovery restarts (the allocations are persisted with the
//!   registry state).
//! - It is **freed only when the node is deregistered or its lease expires**.
//! - A new name gets the **lowest free `k`**. This keeps addresses small and
//!   deterministic, and a node that leaves and comes back before anyone else
//!   registers gets its old address again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// 100.64.0.0, the start of the tunnel range.
pub const TUNNEL_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Bits of host index per cluster.
pub const CLUSTER_SHIFT: u32 = 14;
/// Lowest and highest host index handed out.
pub const K_MIN: u32 = 1;
pub const K_MAX: u32 = (1 << CLUSTER_SHIFT) - 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "tunnel IPs of cluster id {cluster_id} are exhausted: all {capacity} addresses are \
         allocated; deregister unused nodes"
    )]
    Exhausted { cluster_id: u8, capacity: u32 },
    #[error("cluster id 0 is not valid; cluster IDs are 1..=255")]
    ClusterIdZero,
    #[error(
        "stored tunnel IP {ip} of node {node} is outside cluster id {cluster_id}'s block \
         {block}; the state belongs to another cluster"
    )]
    OutOfBlock {
        node: String,
        ip: Ipv4Addr,
        cluster_id: u8,
        block: String,
    },
    #[error("stored tunnel IP {ip} is allocated to both {a} and {b}")]
    Duplicate { ip: Ipv4Addr, a: String, b: String },
}

/// The tunnel IP for host index `k` of cluster `cluster_id`, if `k` is in range.
pub fn tunnel_ip(cluster_id: u8, k: u32) -> Option<Ipv4Addr> {
    if cluster_id == 0 || !(K_MIN..=K_MAX).contains(&k) {
        return None;
    }
    Some(Ipv4Addr::from(
        u32::from(TUNNEL_BASE) + (u32::from(cluster_id) << CLUSTER_SHIFT) + k,
    ))
}

/// The host index of `ip` in cluster `cluster_id`'s block, if it is a valid one.
pub fn index_of(cluster_id: u8, ip: Ipv4Addr) -> Option<u32> {
    let base = u32::from(TUNNEL_BASE) + (u32::from(cluster_id) << CLUSTER_SHIFT);
    let k = u32::from(ip).checked_sub(base)?;
    tunnel_ip(cluster_id, k).map(|_| k)
}

/// The block of a cluster as CIDR text, e.g. `100.64.64.0/18` for id 1.
pub fn cluster_block(cluster_id: u8) -> String {
    let base = u32::from(TUNNEL_BASE) + (u32::from(cluster_id) << CLUSTER_SHIFT);
    format!("{}/{}", Ipv4Addr::from(base), 32 - CLUSTER_SHIFT)
}

/// Sticky name → tunnel IP allocations of one cluster.
#[derive(Debug, Clone)]
pub struct Allocator {
    cluster_id: u8,
    by_name: BTreeMap<String, Ipv4Addr>,
    by_k: BTreeMap<u32, String>,
    /// Every index below this one is in use (a search hint, not state).
    low: u32,
}

impl PartialEq for Allocator {
    fn eq(&self, other: &Self) -> bool {
        self.cluster_id == other.cluster_id && self.by_name == other.by_name
    }
}

impl Eq for Allocator {}

/// Serialized form: name → IP.
pub type Allocations = BTreeMap<String, Ipv4Addr>;

impl Allocator {
    pub fn new(cluster_id: u8) -> Result<Self, AllocError> {
        if cluster_id == 0 {
            return Err(AllocError::ClusterIdZero);
        }
        Ok(Allocator {
            cluster_id,
            by_name: BTreeMap::new(),
            by_k: BTreeMap::new(),
            low: K_MIN,
        })
    }

    /// Rebuilds from stored allocations, checking range and uniqueness.
    pub fn from_allocations(cluster_id: u8, stored: &Allocations) -> Result<Self, AllocError> {
        let mut a = Allocator::new(cluster_id)?;
        for (name, ip) in stored {
            let k = index_of(cluster_id, *ip).ok_or_else(|| AllocError::OutOfBlock {
                node: name.clone(),
                ip: *ip,
                cluster_id,
                block: cluster_block(cluster_id),
            })?;
            if let Some(other) = a.by_k.insert(k, name.clone()) {
                return Err(AllocError::Duplicate {
                    ip: *ip,
                    a: other,
                    b: name.clone(),
                });
            }
            a.by_name.insert(name.clone(), *ip);
        }
        Ok(a)
    }

    pub fn cluster_id(&self) -> u8 {
        self.cluster_id
    }

    /// The IP of `name`, allocating the lowest free one if it has none yet.
    pub fn allocate(&mut self, name: &str) -> Result<Ipv4Addr, AllocError> {
        if let Some(ip) = self.by_name.get(name) {
            return Ok(*ip);
        }
        // by_k is ordered: the first gap at or above `low` is the lowest free index.
        let mut k = self.low;
        for used in self.by_k.range(self.low..).map(|(k, _)| *k) {
            if used != k {
                break;
            }
            k += 1;
        }
        self.low = k;
        let ip = tunnel_ip(self.cluster_id, k).ok_or(AllocError::Exhausted {
            cluster_id: self.cluster_id,
            capacity: K_MAX - K_MIN + 1,
        })?;
        self.by_k.insert(k, name.to_string());
        self.by_name.insert(name.to_string(), ip);
        Ok(ip)
    }

    /// Frees the IP of `name`; returns it if there was one.
    pub fn release(&mut self, name: &str) -> Option<Ipv4Addr> {
        let ip = self.by_name.remove(name)?;
        if let Some(k) = index_of(self.cluster_id, ip) {
            self.by_k.remove(&k);
            self.low = self.low.min(k);
        }
        Some(ip)
    }

    pub fn get(&self, name: &str) -> Option<Ipv4Addr> {
        self.by_name.get(name).copied()
    }

    pub fn allocations(&self) -> &Allocations {
        &self.by_name
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formula_matches_contract() {
        // cluster 1: 1 << 14 = 16384 = 0.0.64.0
        assert_eq!(tunnel_ip(1, 1), Some(Ipv4Addr::new(100, 64, 64, 1)));
        assert_eq!(
            tunnel_ip(255, K_MAX),
            Some(Ipv4Addr::new(100, 127, 255, 254))
        );
        assert_eq!(tunnel_ip(1, 0), None);
        assert_eq!(tunnel_ip(1, K_MAX + 1), None);
        assert_eq!(tunnel_ip(0, 1), None);
        assert_eq!(index_of(1, Ipv4Addr::new(100, 64, 64, 1)), Some(1));
        assert_eq!(index_of(2, Ipv4Addr::new(100, 64, 64, 1)), None);
        assert_eq!(cluster_block(1), "100.64.64.0/18");
    }

    #[test]
    fn sticky_lowest_free_and_release() {
        let mut a = Allocator::new(1).unwrap();
        let ip1 = a.allocate("n1").unwrap();
        let ip2 = a.allocate("n2").unwrap();
        assert_eq!(a.allocate("n1").unwrap(), ip1, "sticky");
        assert_eq!(ip2, tunnel_ip(1, 2).unwrap());
        assert_eq!(a.release("n1"), Some(ip1));
        assert_eq!(a.release("n1"), None);
        // lowest free index is reused
        assert_eq!(a.allocate("n3").unwrap(), ip1);
        assert_eq!(a.allocate("n4").unwrap(), tunnel_ip(1, 3).unwrap());
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = Allocator::new(3).unwrap();
        for i in K_MIN..=K_MAX {
            a.allocate(&format!("n{i}")).unwrap();
        }
        let e = a.allocate("one-too-many").unwrap_err();
        assert!(matches!(e, AllocError::Exhausted { cluster_id: 3, .. }));
        assert!(e.to_string().contains("16382"), "{e}");
        a.release("n100");
        assert_eq!(a.allocate("late").unwrap(), tunnel_ip(3, 100).unwrap());
    }

    #[test]
    fn from_allocations_checks() {
        let mut a = Allocator::new(1).unwrap();
        a.allocate("n1").unwrap();
        a.allocate("n2").unwrap();
        let b = Allocator::from_allocations(1, a.allocations()).unwrap();
        assert_eq!(a, b);
        let e = Allocator::from_allocations(2, a.allocations()).unwrap_err();
        assert!(matches!(e, AllocError::OutOfBlock { .. }), "{e}");
        let mut dup = Allocations::new();
        dup.insert("a".into(), tunnel_ip(1, 5).unwrap());
        dup.insert("b".into(), tunnel_ip(1, 5).unwrap());
        let e = Allocator::from_allocations(1, &dup).unwrap_err();
        assert!(matches!(e, AllocError::Duplicate { .. }), "{e}");
    }
}
