//! Policies + identities → map entries and selections, from scratch.
//!
//! [`for_each_entry`] is the one place that says which entries a policy
//! gives; [`compile`] and [`super::PolicyState`] both use it.

use std::collections::{BTreeMap, BTreeSet};

use super::peers::selects_non_endpoints;
use super::selector::Op;
use super::{Peers, Policy, PolicyEntry, Scope, Selection, Selector, Verdict, CLUSTER_LABEL};
use crate::identity::{cluster_of, Labels};

/// The full content of the policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// `mg_policy`: deny wins where rules give the same key both verdicts.
    pub entries: BTreeMap<PolicyEntry, Verdict>,
    /// `mg_policy_sel`: only identities selected in some direction.
    pub selected: BTreeMap<u32, Selection>,
}

/// Compiles `policies` for the local identities among `identities`.
pub fn compile<'a>(
    scope: &Scope,
    policies: impl IntoIterator<Item = &'a Policy>,
    identities: &BTreeMap<u32, Labels>,
) -> Compiled {
    let mut out = Compiled::default();
    for p in policies {
        for_each_entry(scope, p, identities, None, &mut |e, v| {
            let slot = out.entries.entry(e).or_insert(v);
            if v == Verdict::Deny {
                *slot = Verdict::Deny;
            }
        });
        for (&id, labels) in identities {
            let s = selection(scope, p, id, labels);
            if !s.is_none() {
                let slot = out.selected.entry(id).or_default();
                slot.ingress |= s.ingress;
                slot.egress |= s.egress;
            }
        }
    }
    out
}

/// Whether `id` is a subject of `subject` (local, and matching): the rule
/// every consumer of the policies (these maps, the DNS proxy's view) uses.
pub fn is_subject(scope: &Scope, subject: &Selector, id: u32, labels: &Labels) -> bool {
    cluster_of(id) == u32::from(scope.cluster_id) && subject.matches(labels)
}

/// Whether `id` is a peer matched by `sel`: a selector that does not name a
/// cluster reaches local identities only, unless the scope says otherwise;
/// the identities of cluster 0 (reserved and CIDR identities, node-local)
/// only by a selector naming their `reserved:` / `cidr:` labels (an endpoint
/// selector never matches them); a requirement on
/// [`super::CLUSTER_ENTITY_KEY`] holds for the local cluster's identities.
pub(crate) fn is_peer(scope: &Scope, sel: &Selector, id: u32, labels: &Labels) -> bool {
    let cluster = cluster_of(id);
    let local = cluster == u32::from(scope.cluster_id);
    let reach = if cluster == 0 {
        selects_non_endpoints(sel)
    } else {
        scope.peers_any_cluster || sel.mentions(CLUSTER_LABEL) || local
    };
    reach
        && sel.requirements.iter().all(|r| {
            if r.key == super::CLUSTER_ENTITY_KEY {
                match r.op {
                    Op::Exists | Op::In => local,
                    Op::DoesNotExist | Op::NotIn => !local,
                }
            } else {
                r.matches(labels)
            }
        })
}

/// The directions `policy` selects identity `id` in.
pub(crate) fn selection(scope: &Scope, policy: &Policy, id: u32, labels: &Labels) -> Selection {
    let mut s = Selection::default();
    for spec in &policy.specs {
        if is_subject(scope, &spec.subject, id, labels) {
            s.ingress |= spec.selects.ingress;
            s.egress |= spec.selects.egress;
        }
    }
    s
}

/// Calls `f` for every entry `policy` gives over `identities` (once per
/// rule, subject, peer and port, so the same key may come several times).
/// With `only = Some(id)`, just the entries whose local or remote identity is
/// `id`: exactly what adding `id` to the identities adds.
pub(crate) fn for_each_entry(
    scope: &Scope,
    policy: &Policy,
    identities: &BTreeMap<u32, Labels>,
    only: Option<u32>,
    f: &mut dyn FnMut(PolicyEntry, Verdict),
) {
    // With `only`, the identity's own matches are checked first, so that a
    // policy that does not name it costs no walk over the identities.
    let only = match only {
        None => None,
        Some(id) => match identities.get(&id) {
            Some(labels) => Some((id, labels)),
            None => return,
        },
    };
    for spec in &policy.specs {
        let id_is_subject = only.is_some_and(|(id, l)| is_subject(scope, &spec.subject, id, l));
        let mut subjects: Option<Vec<u32>> = None;
        for rule in &spec.rules {
            let id_is_peer = match (&rule.peers, only) {
                (Peers::Selected(sels), Some((id, l))) => {
                    id != 0 && sels.iter().any(|s| is_peer(scope, s, id, l))
                }
                _ => false,
            };
            if only.is_some() && !id_is_subject && !id_is_peer {
                continue;
            }
            let subjects = subjects.get_or_insert_with(|| {
                identities
                    .iter()
                    .filter(|(id, l)| is_subject(scope, &spec.subject, **id, l))
                    .map(|(id, _)| *id)
                    .collect()
            });
            if subjects.is_empty() {
                break;
            }
            let peers = |rule: &super::Rule| -> BTreeSet<u32> {
                match &rule.peers {
                    Peers::Any => BTreeSet::from([0]),
                    // World addresses, allowed by the DNS proxy's map.
                    Peers::Fqdns(_) => BTreeSet::new(),
                    Peers::Selected(sels) => identities
                        .iter()
                        // 0 is the wildcard in entries, never a peer.
                        .filter(|(id, l)| {
                            **id != 0 && sels.iter().any(|s| is_peer(scope, s, **id, l))
                        })
                        .map(|(id, _)| *id)
                        .collect(),
                }
            };
            let mut emit = |local: u32, remote: u32| {
                for pp in &rule.ports {
                    f(
                        PolicyEntry {
                            local_identity: local,
                            remote_identity: remote,
                            dport: pp.port,
                            proto: pp.proto,
                            direction: rule.direction,
                        },
                        rule.verdict,
                    );
                }
            };
            match only {
                None => {
                    let peers = peers(rule);
                    for &s in subjects.iter() {
                        for &p in &peers {
                            emit(s, p);
                        }
                    }
                }
                Some((id, _)) => {
                    if id_is_subject {
                        for p in peers(rule) {
                            emit(id, p);
                        }
                    }
                    if id_is_peer {
                        for &s in subjects.iter().filter(|s| **s != id) {
                            emit(s, id);
                        }
                    }
                }
            }
        }
    }
}
