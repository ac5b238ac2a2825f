//! The backends one cluster contributes to one service, by IP: a sorted
//! `Vec`, not a `BTreeMap`. Most such sets hold one or two backends (a
//! service's endpoints spread over every cluster), and a `BTreeMap` spends a
//! whole leaf node (room for 11 entries, ~1.2 KB with `Backend`) on each:
//! per (server, remote) pair that was ~67 KB of the merged-service state in
//! the mesh benchmark.

use std::net::IpAddr;

use crate::service::Backend;

/// Below this length a set grows by one slot at a time (no spare room);
/// above, as a `Vec` does (amortized).
const TIGHT: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct BackendSet {
    /// Sorted by IP, one backend per IP.
    items: Vec<Backend>,
}

impl BackendSet {
    fn find(&self, ip: &IpAddr) -> Result<usize, usize> {
        self.items.binary_search_by(|b| b.ip.cmp(ip))
    }

    pub(super) fn get(&self, ip: &IpAddr) -> Option<&Backend> {
        self.find(ip).ok().map(|i| &self.items[i])
    }

    /// Sets the backend for `b.ip`; returns the one it replaced.
    pub(super) fn insert(&mut self, b: Backend) -> Option<Backend> {
        match self.find(&b.ip) {
            Ok(i) => Some(std::mem::replace(&mut self.items[i], b)),
            Err(i) => {
                if self.items.len() < TIGHT {
                    self.items.reserve_exact(1);
                }
                self.items.insert(i, b);
                None
            }
        }
    }

    pub(super) fn remove(&mut self, ip: &IpAddr) -> Option<Backend> {
        let i = self.find(ip).ok()?;
        let old = self.items.remove(i);
        if self.items.is_empty() {
            self.items = Vec::new();
        }
        Some(old)
    }

    /// In IP order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Backend> {
        self.items.iter()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    fn b(ip: &str, node: &str) -> Backend {
        Backend {
            cluster: "c2".into(),
            ip: ip.parse().unwrap(),
            node: node.into(),
            name: format!("pod-{ip}"),
        }
    }

    #[test]
    fn behaves_as_a_map_by_ip() {
        // The same random sequence on a BTreeMap and on the set.
        let mut map: BTreeMap<IpAddr, Backend> = BTreeMap::new();
        let mut set = BackendSet::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = format!("10.0.{}.{}", (x >> 8) % 3, x % 40);
            let node = format!("n{}", (x >> 16) % 3);
            let addr: IpAddr = ip.parse().unwrap();
            if (x >> 24).is_multiple_of(3) {
                assert_eq!(set.remove(&addr), map.remove(&addr), "step {step}");
            } else {
                let new = b(&ip, &node);
                assert_eq!(
                    set.insert(new.clone()),
                    map.insert(addr, new),
                    "step {step}"
                );
            }
            assert_eq!(set.get(&addr), map.get(&addr), "step {step}");
            assert!(
                set.values().eq(map.values()),
                "step {step}: order or content differs"
            );
        }
    }

    #[test]
    fn small_sets_have_no_spare_room() {
        let mut set = BackendSet::default();
        set.insert(b("10.0.0.2", "n1"));
        assert_eq!(set.capacity(), 1);
        set.insert(b("10.0.0.1", "n1"));
        assert_eq!(set.capacity(), 2);
        set.insert(b("10.0.0.1", "n2"));
        assert_eq!(set.capacity(), 2, "a replaced backend takes no room");
        set.remove(&"10.0.0.1".parse().unwrap());
        set.remove(&"10.0.0.2".parse().unwrap());
        assert_eq!(set.capacity(), 0, "an emptied set frees its room");
    }
}
