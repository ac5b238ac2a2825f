//! CIDR rules and entities as identities (pure): which prefixes the policies
//! name, the node-local identity of each, and the label sets of those and of
//! the reserved identities, which [`super::PolicyState`] matches selectors
//! against like any endpoint identity.
//!
//! - A CIDR rule's peer is the selector `cidr:<net>` Exists (each `except`
//!   adds `cidr:<e>` DoesNotExist); an entity is `reserved:<name>` Exists.
//!   [`cidr_prefixes`] collects every prefix such a key names.
//! - Every named prefix except `0.0.0.0/0` gets a CIDR identity in cluster 0
//!   at local IDs [`CIDR_ID_MIN`]`..=`[`CIDR_ID_MAX`] ([`CidrIdentities`]).
//!   Its labels ([`cidr_labels`]) are `reserved:world` and `cidr:<Q>` for
//!   every named prefix `Q` that contains it (itself included), so the
//!   datapath's longest-prefix match on the ipcache finds the one identity
//!   that every rule naming a containing prefix selects, and an `except`
//!   prefix is a longer entry whose identity carries the excluded label.
//! - `0.0.0.0/0` is the world identity itself: [`reserved_identities`] gives
//!   world the label `cidr:0.0.0.0/0` when a policy names it.
//! - Numbers are kept while a prefix stays named, so the policy maps never
//!   see a prefix change identity under traffic; a freed number is reused
//!   (lowest free first) only after the agent removed its entries.
//!
//! The agent (`gateway/agent/src/datapath/policy.rs`) writes each prefix
//! into the ipcache with its identity; the datapath treats those entries as
//! world addresses and never lets them apply inside a mesh pod CIDR.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use super::{Peers, Policy};
use crate::identity::{self, Labels};

/// Label key prefix of a CIDR label: `cidr:10.0.0.0/8`.
pub const CIDR_LABEL_PREFIX: &str = "cidr:";
/// Label key prefix of a reserved identity's label: `reserved:world`.
pub const RESERVED_LABEL_PREFIX: &str = "reserved:";
/// Lowest and highest CIDR identity (cluster 0, local IDs 256..=65535).
pub const CIDR_ID_MIN: u32 = 0x0100;
pub const CIDR_ID_MAX: u32 = 0xffff;

/// The reserved identities policy can name, with their labels.
pub const RESERVED: [u32; 7] = [
    identity::HOST,
    identity::WORLD,
    identity::UNMANAGED,
    identity::HEALTH,
    identity::INIT,
    identity::REMOTE_NODE,
    identity::KUBE_APISERVER,
];

/// Why CIDR identities cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "no CIDR identity is left for {prefix}: the policies name {wanted} prefixes and a node \
         has {max} CIDR identities ({min:#x}..={top:#x}); name fewer prefixes (merge neighbours \
         into a shorter prefix)",
        max = CIDR_ID_MAX - CIDR_ID_MIN + 1, min = CIDR_ID_MIN, top = CIDR_ID_MAX
    )]
    Exhausted { prefix: Ipv4Net, wanted: usize },
    #[error(
        "identity {id:#x} of {prefix} is not a CIDR identity ({min:#x}..={top:#x}); the pinned \
         ipcache holds an entry this agent did not write: remove it or the pins",
        min = CIDR_ID_MIN, top = CIDR_ID_MAX
    )]
    OutOfRange { prefix: Ipv4Net, id: u32 },
    #[error("{prefix} is given identity {id:#x}, which {other} has too")]
    Duplicate {
        prefix: Ipv4Net,
        other: Ipv4Net,
        id: u32,
    },
}

/// The label key of `net`, in canonical (truncated) form.
pub fn cidr_label(net: Ipv4Net) -> String {
    format!("{CIDR_LABEL_PREFIX}{}", net.trunc())
}

/// The prefix a `cidr:` label key names (canonicalised); `None` for other keys.
pub fn parse_cidr_label(key: &str) -> Option<Ipv4Net> {
    key.strip_prefix(CIDR_LABEL_PREFIX)?
        .parse::<Ipv4Net>()
        .ok()
        .map(|n| n.trunc())
}

/// Every IPv4 prefix named by a `cidr:` requirement key in the subject or
/// peer selectors of `policies` (`0.0.0.0/0` included when named).
pub fn cidr_prefixes(policies: &[Policy]) -> BTreeSet<Ipv4Net> {
    let mut out = BTreeSet::new();
    for spec in policies.iter().flat_map(|p| &p.specs) {
        let peers = spec.rules.iter().flat_map(|r| match &r.peers {
            Peers::Selected(sels) => sels.as_slice(),
            Peers::Any | Peers::Fqdns(_) => &[],
        });
        for sel in std::iter::once(&spec.subject).chain(peers) {
            out.extend(
                sel.requirements
                    .iter()
                    .filter_map(|r| parse_cidr_label(&r.key)),
            );
        }
    }
    out
}

/// The labels of a reserved identity: `{"reserved:<name>": ""}`.
pub fn reserved_labels(id: u32) -> Option<Labels> {
    let name = identity::reserved_name(id)?;
    (id != identity::UNKNOWN).then(|| Labels::from([(name.to_string(), String::new())]))
}

/// The reserved identities with their labels; world also carries
/// `cidr:0.0.0.0/0` when `named` (the policies' prefixes) holds it.
pub fn reserved_identities(named: &BTreeSet<Ipv4Net>) -> BTreeMap<u32, Labels> {
    let mut out: BTreeMap<u32, Labels> = RESERVED
        .iter()
        .filter_map(|id| Some((*id, reserved_labels(*id)?)))
        .collect();
    if named.contains(&Ipv4Net::default()) {
        if let Some(world) = out.get_mut(&identity::WORLD) {
            world.insert(cidr_label(Ipv4Net::default()), String::new());
        }
    }
    out
}

/// The labels of the CIDR identity of `prefix`: `reserved:world`, and
/// `cidr:<Q>` for `prefix` itself and every prefix of `named` containing it.
pub fn cidr_labels(prefix: Ipv4Net, named: &BTreeSet<Ipv4Net>) -> Labels {
    let prefix = prefix.trunc();
    let mut l = Labels::new();
    l.insert(format!("{RESERVED_LABEL_PREFIX}world"), String::new());
    l.insert(cidr_label(prefix), String::new());
    // The containing prefixes are `prefix` cut to each shorter length: 33
    // lookups, whatever the size of `named` (a walk of `named` per prefix
    // made 10,000 prefixes cost 10^8 checks at every datapath sync).
    for len in 0..=prefix.prefix_len() {
        if let Ok(q) = Ipv4Net::new(prefix.addr(), len) {
            let q = q.trunc();
            if named.contains(&q) {
                l.insert(cidr_label(q), String::new());
            }
        }
    }
    l
}

/// The node's CIDR identities: prefix ↔ identity, stable while a prefix is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrIdentities {
    by_prefix: BTreeMap<Ipv4Net, u32>,
    by_id: BTreeMap<u32, Ipv4Net>,
}

impl CidrIdentities {
    /// Restores the numbers an earlier run gave (read back from the pinned
    /// ipcache), so the maps stay as they are.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (Ipv4Net, u32)>,
    ) -> Result<Self, CidrError> {
        let mut out = CidrIdentities::default();
        for (prefix, id) in entries {
            let prefix = prefix.trunc();
            if !(CIDR_ID_MIN..=CIDR_ID_MAX).contains(&id) {
                return Err(CidrError::OutOfRange { prefix, id });
            }
            if let Some(other) = out.by_id.get(&id) {
                if *other != prefix {
                    return Err(CidrError::Duplicate {
                        prefix,
                        other: *other,
                        id,
                    });
                }
            }
            if let Some(old) = out.by_prefix.insert(prefix, id) {
                out.by_id.remove(&old);
            }
            out.by_id.insert(id, prefix);
        }
        Ok(out)
    }

    /// The identity of `prefix`, if it has one.
    pub fn get(&self, prefix: Ipv4Net) -> Option<u32> {
        self.by_prefix.get(&prefix.trunc()).copied()
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// Prefix → identity, every one.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, u32)> + '_ {
        self.by_prefix.iter().map(|(p, id)| (*p, *id))
    }

    /// Gives every prefix of `prefixes` (but `0.0.0.0/0`, which is world)
    /// an identity, keeping the ones already given; returns the new ones.
    /// When the range cannot hold them all nothing changes.
    pub fn allocate(
        &mut self,
        prefixes: &BTreeSet<Ipv4Net>,
    ) -> Result<Vec<(Ipv4Net, u32)>, CidrError> {
        let new: Vec<Ipv4Net> = prefixes
            .iter()
            .map(|p| p.trunc())
            .filter(|p| p.prefix_len() > 0 && !self.by_prefix.contains_key(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let free = (CIDR_ID_MAX - CIDR_ID_MIN + 1) as usize - self.by_id.len();
        if new.len() > free {
            return Err(CidrError::Exhausted {
                prefix: new[free],
                wanted: self.by_prefix.len() + new.len(),
            });
        }
        let mut out = Vec::with_capacity(new.len());
        let mut candidate = CIDR_ID_MIN;
        for p in new {
            while self.by_id.contains_key(&candidate) {
                candidate += 1;
            }
            self.by_id.insert(candidate, p);
            self.by_prefix.insert(p, candidate);
            out.push((p, candidate));
        }
        Ok(out)
    }

    /// Frees the identities of prefixes not in `keep`; returns them.
    pub fn release(&mut self, keep: &BTreeSet<Ipv4Net>) -> Vec<(Ipv4Net, u32)> {
        let gone: Vec<(Ipv4Net, u32)> = self
            .by_prefix
            .iter()
            .filter(|(p, _)| !keep.contains(p))
            .map(|(p, id)| (*p, *id))
            .collect();
        for (p, id) in &gone {
            self.by_prefix.remove(p);
            self.by_id.remove(id);
        }
        gone
    }

    /// Identity → labels of every CIDR identity, the containing prefixes
    /// taken from `named`.
    pub fn identities(&self, named: &BTreeSet<Ipv4Net>) -> BTreeMap<u32, Labels> {
        self.by_prefix
            .iter()
            .map(|(p, id)| (*id, cidr_labels(*p, named)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::selector::{Op, Requirement};
    use crate::policy::{
        Direction, PolicyKind, PolicyRef, PolicySpec, PortProto, Rule, Selection, Selector, Verdict,
    };

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn set(list: &[&str]) -> BTreeSet<Ipv4Net> {
        list.iter().map(|s| net(s).trunc()).collect()
    }

    fn req(key: &str, op: Op) -> Requirement {
        Requirement {
            key: key.into(),
            op,
            values: BTreeSet::new(),
        }
    }

    fn policy(subject: Selector, peers: Vec<Selector>) -> Policy {
        Policy {
            id: PolicyRef {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: "default".into(),
                name: "p".into(),
            },
            specs: vec![PolicySpec {
                subject,
                selects: Selection {
                    ingress: false,
                    egress: true,
                },
                rules: vec![Rule {
                    direction: Direction::Egress,
                    verdict: Verdict::Allow,
                    peers: Peers::Selected(peers),
                    ports: vec![PortProto::ANY],
                    dns: vec![],
                }],
            }],
        }
    }

    #[test]
    fn prefixes_are_every_cidr_key_of_subjects_and_peers_canonical() {
        let peer = Selector::all()
            .with(req("cidr:10.1.2.3/8", Op::Exists))
            .with(req("cidr:10.1.0.0/16", Op::DoesNotExist))
            .with(req("app", Op::Exists));
        let other = Selector::all().with(req("cidr:0.0.0.0/0", Op::Exists));
        let subject = Selector::all().with(req("cidr:192.168.0.0/24", Op::DoesNotExist));
        let p = policy(subject, vec![peer, other]);
        assert_eq!(
            cidr_prefixes(&[p]),
            set(&["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24"])
        );
        let none = policy(
            Selector::all(),
            vec![Selector::all().with(req("cidr:x", Op::Exists))],
        );
        assert!(
            cidr_prefixes(&[none]).is_empty(),
            "a key that is no prefix names none"
        );
    }

    #[test]
    fn labels_name_exactly_the_containing_prefixes() {
        let named = set(&[
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "10.2.0.0/16",
            "192.168.0.0/16",
        ]);
        for p in &named {
            let want: BTreeSet<String> = named
                .iter()
                .filter(|q| q.contains(p))
                .map(|q| format!("cidr:{q}"))
                .chain(["reserved:world".to_string()])
                .collect();
            let got: BTreeSet<String> = cidr_labels(*p, &named).into_keys().collect();
            assert_eq!(got, want, "{p}");
        }
        let got = cidr_labels(net("10.1.2.128/25"), &named);
        assert!(got.contains_key("cidr:10.1.2.0/24") && got.contains_key("cidr:10.1.2.128/25"));
        assert!(!got.contains_key("cidr:10.1.2.3/32"));
    }

    #[test]
    fn labels_carry_every_containing_prefix_so_longest_match_keeps_the_rules() {
        let named = set(&["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "11.0.0.0/8"]);
        let l = cidr_labels(net("10.1.0.0/16"), &named);
        let keys: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["cidr:10.0.0.0/8", "cidr:10.1.0.0/16", "reserved:world"]
        );
        assert!(l.values().all(String::is_empty));
        // The except idiom: allow 10/8 except 10.1/16.
        let allow = Selector::all()
            .with(req("cidr:10.0.0.0/8", Op::Exists))
            .with(req("cidr:10.1.0.0/16", Op::DoesNotExist));
        assert!(allow.matches(&cidr_labels(net("10.0.0.0/8"), &named)));
        assert!(!allow.matches(&cidr_labels(net("10.1.0.0/16"), &named)));
        assert!(!allow.matches(&cidr_labels(net("10.1.2.0/24"), &named)));
        assert!(!allow.matches(&cidr_labels(net("11.0.0.0/8"), &named)));
        // With 0.0.0.0/0 named, every CIDR identity and world carry it.
        let mut with_all = named.clone();
        with_all.insert(Ipv4Net::default());
        assert!(cidr_labels(net("11.0.0.0/8"), &with_all).contains_key("cidr:0.0.0.0/0"));
        let r = reserved_identities(&with_all);
        assert!(r[&identity::WORLD].contains_key("cidr:0.0.0.0/0"));
        assert!(!reserved_identities(&named)[&identity::WORLD].contains_key("cidr:0.0.0.0/0"));
    }

    #[test]
    fn reserved_identities_have_ciliums_labels() {
        let r = reserved_identities(&BTreeSet::new());
        let names: Vec<(u32, &str)> = r
            .iter()
            .map(|(id, l)| (*id, l.keys().next().unwrap().as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (1, "reserved:host"),
                (2, "reserved:world"),
                (3, "reserved:unmanaged"),
                (4, "reserved:health"),
                (5, "reserved:init"),
                (6, "reserved:remote-node"),
                (7, "reserved:kube-apiserver"),
            ]
        );
        assert!(r.values().all(|l| l.len() == 1));
        assert_eq!(reserved_labels(identity::UNKNOWN), None);
    }

    #[test]
    fn numbers_are_kept_when_the_set_changes_and_freed_ones_reused() {
        let mut a = CidrIdentities::default();
        let first = a
            .allocate(&set(&["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16"]))
            .unwrap();
        assert_eq!(
            first,
            [(net("10.0.0.0/8"), 0x100), (net("10.1.0.0/16"), 0x101)]
        );
        assert_eq!(
            a.get(Ipv4Net::default()),
            None,
            "0.0.0.0/0 is world, not a CIDR identity"
        );
        // A prefix added before the others keeps their numbers.
        let added = a.allocate(&set(&["9.0.0.0/8", "10.0.0.0/8"])).unwrap();
        assert_eq!(added, [(net("9.0.0.0/8"), 0x102)]);
        assert_eq!(a.get(net("10.1.0.0/16")), Some(0x101));
        let gone = a.release(&set(&["9.0.0.0/8", "10.1.0.0/16"]));
        assert_eq!(gone, [(net("10.0.0.0/8"), 0x100)]);
        assert_eq!(a.get(net("9.0.0.0/8")), Some(0x102));
        let reused = a.allocate(&set(&["12.0.0.0/8"])).unwrap();
        assert_eq!(reused, [(net("12.0.0.0/8"), 0x100)]);
        let ids = a.identities(&set(&["9.0.0.0/8"]));
        assert_eq!(
            ids.keys().copied().collect::<Vec<_>>(),
            [0x100, 0x101, 0x102]
        );
        assert!(ids[&0x101].contains_key("cidr:10.1.0.0/16"));
        // Restored from what an earlier run wrote: the same numbers.
        let back = CidrIdentities::from_entries(a.iter()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn a_full_range_is_an_error_that_changes_nothing() {
        let mut a = CidrIdentities::default();
        let all: BTreeSet<Ipv4Net> = (0..65_280u32)
            .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap())
            .collect();
        assert_eq!(a.allocate(&all).unwrap().len(), 65_280);
        let before = a.clone();
        let err = a.allocate(&set(&["11.0.0.0/8", "12.0.0.0/8"])).unwrap_err();
        assert_eq!(
            err,
            CidrError::Exhausted {
                prefix: net("11.0.0.0/8"),
                wanted: 65_282
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("11.0.0.0/8") && msg.contains("65280"), "{msg}");
        assert!(msg.contains("name fewer prefixes"), "{msg}");
        assert_eq!(a, before);
    }

    #[test]
    fn restoring_refuses_numbers_outside_the_range_or_twice() {
        let e = CidrIdentities::from_entries([(net("10.0.0.0/8"), 7)]).unwrap_err();
        assert!(e.to_string().contains("not a CIDR identity"), "{e}");
        let e =
            CidrIdentities::from_entries([(net("10.0.0.0/8"), 0x100), (net("11.0.0.0/8"), 0x100)])
                .unwrap_err();
        assert!(matches!(e, CidrError::Duplicate { id: 0x100, .. }), "{e}");
    }
}
