//! Longest-prefix match over IPv4 prefixes: the cryptokey routing table.
//!
//! One hash map per prefix length, searched from the longest length present,
//! so a lookup costs one probe per distinct length (usually two or three),
//! whatever the number of prefixes.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A longest-prefix-match table from IPv4 prefixes to values.
#[derive(Debug, Clone)]
pub struct Lpm<T> {
    by_len: BTreeMap<u8, HashMap<u32, T>>,
}

impl<T> Default for Lpm<T> {
    fn default() -> Self {
        Lpm {
            by_len: BTreeMap::new(),
        }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl<T> Lpm<T> {
    pub fn insert(&mut self, net: Ipv4Net, value: T) -> Option<T> {
        let len = net.prefix_len();
        let key = u32::from(net.network()) & mask(len);
        self.by_len.entry(len).or_default().insert(key, value)
    }

    pub fn remove(&mut self, net: &Ipv4Net) -> Option<T> {
        let len = net.prefix_len();
        let key = u32::from(net.network()) & mask(len);
        let table = self.by_len.get_mut(&len)?;
        let old = table.remove(&key);
        if table.is_empty() {
            self.by_len.remove(&len);
        }
        old
    }

    /// The value stored for exactly this prefix.
    pub fn get(&self, net: &Ipv4Net) -> Option<&T> {
        let len = net.prefix_len();
        let key = u32::from(net.network()) & mask(len);
        self.by_len.get(&len)?.get(&key)
    }

    /// The value of the longest prefix that contains `addr`.
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<&T> {
        let addr = u32::from(addr);
        self.by_len
            .iter()
            .rev()
            .find_map(|(len, table)| table.get(&(addr & mask(*len))))
    }

    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = Lpm::default();
        t.insert(net("10.1.0.0/16"), "wide");
        t.insert(net("10.1.2.0/24"), "narrow");
        t.insert(net("100.64.4.2/32"), "host");
        assert_eq!(t.lookup("10.1.2.7".parse().unwrap()), Some(&"narrow"));
        assert_eq!(t.lookup("10.1.3.7".parse().unwrap()), Some(&"wide"));
        assert_eq!(t.lookup("100.64.4.2".parse().unwrap()), Some(&"host"));
        assert_eq!(t.lookup("100.64.4.3".parse().unwrap()), None);
    }

    #[test]
    fn remove_forgets_only_that_prefix() {
        let mut t = Lpm::default();
        t.insert(net("10.1.0.0/16"), 1);
        t.insert(net("10.1.2.0/24"), 2);
        assert_eq!(t.remove(&net("10.1.2.0/24")), Some(2));
        assert_eq!(t.lookup("10.1.2.7".parse().unwrap()), Some(&1));
        assert_eq!(t.remove(&net("10.1.0.0/16")), Some(1));
        assert!(t.is_empty());
    }

    #[test]
    fn default_route_matches_everything() {
        let mut t = Lpm::default();
        t.insert(net("0.0.0.0/0"), 0);
        assert_eq!(t.lookup("203.0.113.9".parse().unwrap()), Some(&0));
    }
}
