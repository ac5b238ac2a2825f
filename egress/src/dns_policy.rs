//! The DNS proxy's view of identity policy: per local identity, which names
//! it may look up (`toPorts[].rules.dns`) and which answered addresses it
//! may reach (`toFQDNs`). Pure: parsed policies and identities in,
//! [`IdentityDns`] out; the agent writes it into the proxy's file
//! ([`crate::dnsproxy::state::ProxyPolicy::identities`]).
//!
//! The L3/L4 half of the same rules (the DNS server's port 53 entries, the
//! egress default deny a `toFQDNs` rule brings) is compiled into the policy
//! maps by `meshgate_model::policy::compile`; the rules are read there
//! too ([`Peers::Fqdns`], [`Rule::dns`](meshgate_model::policy::Rule)).
//!
//! Semantics, as Cilium: the DNS rules of every egress rule that applies to
//! an identity are one allow list (a query matching any is allowed; no DNS
//! rule at all: lookups are not restricted); each `toFQDNs` rule is one
//! [`FqdnReach`] with the rule's ports. Deny rules carry neither (the parser
//! refuses them there).

use std::collections::{BTreeMap, BTreeSet};

use meshgate_model::identity::{cluster_of, Labels};
use meshgate_model::policy::{is_subject, Direction, Peers, Policy, PortProto, Scope, Verdict};

use crate::dnsproxy::state::{FqdnReach, IdentityDns};
use crate::fqdn::NameMatch;

/// For every local identity of `identities` (this cluster's, as for the
/// policy maps' subjects), its DNS rules; an identity no DNS or FQDN rule
/// applies to gets [`IdentityDns::default`].
pub fn identity_dns(
    scope: &Scope,
    policies: &[Policy],
    identities: &BTreeMap<u32, Labels>,
) -> BTreeMap<u32, IdentityDns> {
    let mut out = BTreeMap::new();
    for (&id, labels) in identities {
        // Local: the cluster part of `is_subject`.
        if cluster_of(id) != u32::from(scope.cluster_id) {
            continue;
        }
        let mut lookups: Option<BTreeSet<NameMatch>> = None;
        let mut reach = Vec::new();
        let rules = policies
            .iter()
            .flat_map(|p| &p.specs)
            .filter(|s| is_subject(scope, &s.subject, id, labels))
            .flat_map(|s| &s.rules)
            .filter(|r| r.direction == Direction::Egress && r.verdict == Verdict::Allow);
        for r in rules {
            if !r.dns.is_empty() {
                lookups
                    .get_or_insert_with(BTreeSet::new)
                    .extend(r.dns.iter().map(NameMatch::from));
            }
            if let Peers::Fqdns(names) = &r.peers {
                reach.push(FqdnReach {
                    names: names.iter().map(NameMatch::from).collect(),
                    ports: reach_ports(&r.ports),
                });
            }
        }
        out.insert(
            id,
            IdentityDns {
                lookups: lookups.map(|l| l.into_iter().collect()),
                reach,
            },
        );
    }
    out
}

/// A rule's ports as [`FqdnReach::ports`]: any port of any protocol is the
/// empty list.
fn reach_ports(ports: &[PortProto]) -> Vec<(u8, u16)> {
    if ports.contains(&PortProto::ANY) {
        return Vec::new();
    }
    ports.iter().map(|p| (p.proto, p.port)).collect()
}
