//! What the other remotes already hold, as the checks ask for it: which
//! remote has a cluster ID, and whose pod CIDR a node's overlaps.
//!
//! [`CidrIndex`] answers the overlap question without scanning every node:
//! two CIDRs overlap only when one contains the other, so the CIDRs that
//! overlap `x` are those inside it (a range of network addresses) and those
//! containing it (one exact look-up per shorter prefix length).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::check::OtherRemote;
use crate::model::{first_overlap, Node};

/// A pod CIDR `mine` of the node being checked overlaps `its` of node
/// `cluster/node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub mine: IpNet,
    pub its: IpNet,
    pub cluster: String,
    pub node: String,
}

/// The other remotes (never the one being checked).
pub trait Claims {
    /// The remote that holds cluster ID `cid`, if one does.
    fn cluster_id_holder(&self, cid: u8) -> Option<&str>;
    /// The first node (by remote name, then node name) whose pod CIDRs
    /// overlap `node`'s.
    fn overlap(&self, node: &Node) -> Option<Overlap>;
    /// The first remote (by name) whose accepted cluster pod CIDRs overlap
    /// `cidr`, with its CIDR that does.
    fn cidr_holder(&self, cidr: &IpNet) -> Option<(&str, IpNet)>;
}

/// The plain form: every other remote's nodes, scanned.
impl Claims for [OtherRemote<'_>] {
    fn cluster_id_holder(&self, cid: u8) -> Option<&str> {
        self.iter()
            .find(|o| o.cluster_id == Some(cid))
            .map(|o| o.name)
    }

    fn overlap(&self, node: &Node) -> Option<Overlap> {
        self.iter().find_map(|o| {
            o.nodes.iter().find_map(|other| {
                first_overlap(&node.pod_cidrs, &other.pod_cidrs).map(|(mine, its)| Overlap {
                    mine,
                    its,
                    cluster: o.name.to_string(),
                    node: other.name.clone(),
                })
            })
        })
    }

    fn cidr_holder(&self, cidr: &IpNet) -> Option<(&str, IpNet)> {
        self.iter()
            .find_map(|o| first_overlap(&[*cidr], &o.cidrs).map(|(_, its)| (o.name, its)))
    }
}

/// Who holds a CIDR: (remote, node).
pub type Owner = (String, String);

/// Pod CIDRs by network (address, prefix length), with their holders
/// (sorted; almost always one, and a `BTreeSet` of one costs a 0.5 KB leaf).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrIndex {
    nets: BTreeMap<(IpAddr, u8), Vec<Owner>>,
}

fn key(net: &IpNet) -> (IpAddr, u8) {
    let t = net.trunc();
    (t.network(), t.prefix_len())
}

impl CidrIndex {
    pub fn insert(&mut self, net: &IpNet, owner: &Owner) {
        let owners = self.nets.entry(key(net)).or_default();
        if let Err(at) = owners.binary_search(owner) {
            owners.insert(at, owner.clone());
        }
    }

    pub fn remove(&mut self, net: &IpNet, owner: &Owner) {
        let k = key(net);
        if let Some(set) = self.nets.get_mut(&k) {
            set.retain(|o| o != owner);
            if set.is_empty() {
                self.nets.remove(&k);
            }
        }
    }

    /// Every holder of a CIDR overlapping `net`.
    pub fn overlapping(&self, net: &IpNet) -> BTreeSet<&Owner> {
        let t = net.trunc();
        let mut out = BTreeSet::new();
        // Inside `net`, or `net` itself.
        for (_, owners) in self.nets.range((t.network(), 0)..=(t.broadcast(), u8::MAX)) {
            out.extend(owners);
        }
        // Containing `net` (shorter prefixes).
        for len in 0..t.prefix_len() {
            let Ok(wider) = IpNet::new(t.network(), len) else {
                continue;
            };
            if let Some(owners) = self.nets.get(&key(&wider)) {
                out.extend(owners);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.nets.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_net(rng: &mut Rng) -> IpNet {
        if rng.below(5) == 0 {
            let len = 100 + rng.below(29) as u8;
            let addr: IpAddr = format!("fd00::{:x}:0", rng.below(4)).parse().unwrap();
            return IpNet::new(addr, len).unwrap();
        }
        let addr: IpAddr = format!("10.{}.{}.{}", rng.below(3), rng.below(4), rng.below(256))
            .parse()
            .unwrap();
        // Some not truncated (a host address with a prefix), as a user may write.
        IpNet::new(addr, 8 + rng.below(25) as u8).unwrap()
    }

    #[test]
    fn overlapping_equals_a_scan_of_every_cidr() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut index = CidrIndex::default();
        let mut held: Vec<(IpNet, Owner)> = Vec::new();
        for step in 0..3000 {
            if rng.below(3) == 0 && !held.is_empty() {
                let (net, owner) = held.remove(rng.below(held.len() as u64) as usize);
                index.remove(&net, &owner);
            } else {
                let net = random_net(&mut rng);
                let owner = (format!("c{}", rng.below(4)), format!("n{}", rng.below(50)));
                let dup = held
                    .iter()
                    .any(|(n, o)| n.trunc() == net.trunc() && *o == owner);
                if !dup {
                    index.insert(&net, &owner);
                    held.push((net, owner));
                }
            }
            let probe = random_net(&mut rng);
            let want: BTreeSet<&Owner> = held
                .iter()
                .filter(|(n, _)| n.contains(&probe.trunc()) || probe.contains(&n.trunc()))
                .map(|(_, o)| o)
                .collect();
            assert_eq!(
                index.overlapping(&probe),
                want,
                "step {step}, probe {probe}"
            );
        }
        let distinct: BTreeSet<(IpAddr, u8, &Owner)> = held
            .iter()
            .map(|(n, o)| (n.trunc().network(), n.prefix_len(), o))
            .collect();
        assert_eq!(index.len(), distinct.len());
    }
}
