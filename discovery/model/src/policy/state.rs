//! [`PolicyState`]: policies + identities, changed one operation at a time,
//! each returning the [`PolicyDiff`] to apply to the maps (no reload).
//!
//! It counts, per map key, how many (policy, rule, subject, peer, port)
//! contributions allow and deny it, and per identity how many policies select
//! it in each direction. An operation changes the counts of the contributions
//! it adds or takes away (a policy's, or those naming one identity) and
//! reports the keys whose effective value changed. Invariant: the counts are
//! always those of [`super::compile`] over the current policies and
//! identities.

use std::collections::BTreeMap;

use super::compile::{for_each_entry, selection, Compiled};
use super::{Policy, PolicyEntry, PolicyRef, Scope, Selection, Verdict};
use crate::identity::Labels;

/// What to change in the maps. Apply in this order so that no flow that is
/// allowed both before and after is dropped in between: `set` (new and
/// changed entries), then `select`, then `remove`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    /// Entries to insert or overwrite.
    pub set: BTreeMap<PolicyEntry, Verdict>,
    /// New selection of identities whose selection changed
    /// ([`Selection::is_none`] = remove it from `mg_policy_sel`).
    pub select: BTreeMap<u32, Selection>,
    /// Entries to delete.
    pub remove: Vec<PolicyEntry>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.select.is_empty() && self.remove.is_empty()
    }

    /// The diff that turns maps holding `current` into `wanted`: what an
    /// agent restarted over pinned maps applies (after reading them back)
    /// instead of emptying them, so established flows are not cut.
    pub fn between(current: &Compiled, wanted: &Compiled) -> PolicyDiff {
        let mut d = PolicyDiff::default();
        for (k, v) in &wanted.entries {
            if current.entries.get(k) != Some(v) {
                d.set.insert(*k, *v);
            }
        }
        d.remove = current
            .entries
            .keys()
            .filter(|k| !wanted.entries.contains_key(k))
            .copied()
            .collect();
        for (id, s) in &wanted.selected {
            if current.selected.get(id) != Some(s) {
                d.select.insert(*id, *s);
            }
        }
        for id in current.selected.keys() {
            if !wanted.selected.contains_key(id) {
                d.select.insert(*id, Selection::default());
            }
        }
        d
    }

    /// Applies the diff to an in-memory copy of the maps (the model of what
    /// the agent does to the real ones).
    pub fn apply_to(&self, maps: &mut Compiled) {
        for (k, v) in &self.set {
            maps.entries.insert(*k, *v);
        }
        for (id, s) in &self.select {
            if s.is_none() {
                maps.selected.remove(id);
            } else {
                maps.selected.insert(*id, *s);
            }
        }
        for k in &self.remove {
            maps.entries.remove(k);
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    allow: u32,
    deny: u32,
}

impl Count {
    fn verdict(&self) -> Option<Verdict> {
        if self.deny > 0 {
            Some(Verdict::Deny)
        } else if self.allow > 0 {
            Some(Verdict::Allow)
        } else {
            None
        }
    }
}

/// Policies and identities, with the map content they give.
#[derive(Clone, Debug)]
pub struct PolicyState {
    scope: Scope,
    identities: BTreeMap<u32, Labels>,
    policies: BTreeMap<PolicyRef, Policy>,
    counts: BTreeMap<PolicyEntry, Count>,
    /// Identity → number of policies selecting it at (ingress, egress).
    selecting: BTreeMap<u32, (u32, u32)>,
}

/// Collects the before-values of what an operation touches.
#[derive(Default)]
struct Touched {
    entries: BTreeMap<PolicyEntry, Option<Verdict>>,
    selections: BTreeMap<u32, Selection>,
}

impl PolicyState {
    pub fn new(scope: Scope) -> Self {
        PolicyState {
            scope,
            identities: BTreeMap::new(),
            policies: BTreeMap::new(),
            counts: BTreeMap::new(),
            selecting: BTreeMap::new(),
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn identities(&self) -> &BTreeMap<u32, Labels> {
        &self.identities
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// The full map content now (what [`super::compile`] gives).
    pub fn maps(&self) -> Compiled {
        Compiled {
            entries: self
                .counts
                .iter()
                .filter_map(|(k, c)| c.verdict().map(|v| (*k, v)))
                .collect(),
            selected: self
                .selecting
                .iter()
                .map(|(id, c)| (*id, sel_of(*c)))
                .filter(|(_, s)| !s.is_none())
                .collect(),
        }
    }

    /// Adds an identity (local or imported). Known with the same labels: no
    /// change; with other labels: replaced. Identity 0 (unknown) is the
    /// wildcard of the map and is never added.
    pub fn add_identity(&mut self, id: u32, labels: Labels) -> PolicyDiff {
        if id == 0 || self.identities.get(&id) == Some(&labels) {
            return PolicyDiff::default();
        }
        let mut t = Touched::default();
        if self.identities.contains_key(&id) {
            self.take_identity(id, &mut t);
        }
        self.identities.insert(id, labels);
        self.identity_contributions(id, 1, &mut t);
        self.finish(t)
    }

    /// Removes an identity (an imported cluster went away).
    pub fn remove_identity(&mut self, id: u32) -> PolicyDiff {
        let mut t = Touched::default();
        if self.identities.contains_key(&id) {
            self.take_identity(id, &mut t);
        }
        self.finish(t)
    }

    /// Adds a policy, or replaces the one with the same kind/namespace/name.
    pub fn upsert_policy(&mut self, policy: Policy) -> PolicyDiff {
        let mut t = Touched::default();
        self.upsert_into(policy, &mut t);
        self.finish(t)
    }

    /// Removes a policy; an empty diff if it was not there.
    pub fn remove_policy(&mut self, id: &PolicyRef) -> PolicyDiff {
        let mut t = Touched::default();
        self.remove_into(id, &mut t);
        self.finish(t)
    }

    /// Makes `policies` the whole policy set (as after re-reading the policy
    /// files): policies not in it are removed, the others added or replaced.
    /// One net diff: an entry that goes and comes back in the same sync is
    /// not touched in the maps. Refuses a set naming one policy twice, and
    /// then changes nothing.
    pub fn sync_policies(
        &mut self,
        policies: Vec<Policy>,
    ) -> Result<PolicyDiff, super::PolicyError> {
        let mut wanted: BTreeMap<PolicyRef, Policy> = BTreeMap::new();
        for p in policies {
            let id = p.id.clone();
            if wanted.insert(id.clone(), p).is_some() {
                return Err(super::PolicyError::Invalid {
                    source_name: "policy set".into(),
                    policy: id.to_string(),
                    field: "metadata.name".into(),
                    message: "is given twice; keep one (the second would replace the first)".into(),
                });
            }
        }
        let mut t = Touched::default();
        let gone: Vec<PolicyRef> = self
            .policies
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .cloned()
            .collect();
        for id in &gone {
            self.remove_into(id, &mut t);
        }
        for p in wanted.into_values() {
            self.upsert_into(p, &mut t);
        }
        Ok(self.finish(t))
    }

    fn upsert_into(&mut self, policy: Policy, t: &mut Touched) {
        if self.policies.get(&policy.id) == Some(&policy) {
            return;
        }
        if let Some(old) = self.policies.remove(&policy.id) {
            self.policy_contributions(&old, -1, t);
        }
        self.policy_contributions(&policy, 1, t);
        self.policies.insert(policy.id.clone(), policy);
    }

    fn remove_into(&mut self, id: &PolicyRef, t: &mut Touched) {
        if let Some(old) = self.policies.remove(id) {
            self.policy_contributions(&old, -1, t);
        }
    }

    fn take_identity(&mut self, id: u32, t: &mut Touched) {
        self.identity_contributions(id, -1, t);
        self.identities.remove(&id);
    }

    /// Adds (`sign` 1) or takes away (-1) every contribution naming `id`;
    /// `id` is in `self.identities` with its labels.
    fn identity_contributions(&mut self, id: u32, sign: i32, t: &mut Touched) {
        let Some(labels) = self.identities.get(&id) else {
            return;
        };
        let mut entries = Vec::new();
        let mut sel = (0, 0);
        for p in self.policies.values() {
            for_each_entry(&self.scope, p, &self.identities, Some(id), &mut |e, v| {
                entries.push((e, v))
            });
            let s = selection(&self.scope, p, id, labels);
            sel.0 += u32::from(s.ingress);
            sel.1 += u32::from(s.egress);
        }
        self.count_entries(entries, sign, t);
        self.count_selection(id, sel, sign, t);
    }

    fn policy_contributions(&mut self, p: &Policy, sign: i32, t: &mut Touched) {
        let mut entries = Vec::new();
        for_each_entry(&self.scope, p, &self.identities, None, &mut |e, v| {
            entries.push((e, v))
        });
        self.count_entries(entries, sign, t);
        let sels: Vec<(u32, Selection)> = self
            .identities
            .iter()
            .map(|(id, l)| (*id, selection(&self.scope, p, *id, l)))
            .filter(|(_, s)| !s.is_none())
            .collect();
        for (id, s) in sels {
            self.count_selection(id, (u32::from(s.ingress), u32::from(s.egress)), sign, t);
        }
    }

    fn count_entries(&mut self, entries: Vec<(PolicyEntry, Verdict)>, sign: i32, t: &mut Touched) {
        for (e, v) in entries {
            let c = self.counts.entry(e).or_default();
            t.entries.entry(e).or_insert_with(|| c.verdict());
            let n = match v {
                Verdict::Allow => &mut c.allow,
                Verdict::Deny => &mut c.deny,
            };
            *n = n.saturating_add_signed(sign);
            if c.allow == 0 && c.deny == 0 {
                self.counts.remove(&e);
            }
        }
    }

    fn count_selection(&mut self, id: u32, (i, e): (u32, u32), sign: i32, t: &mut Touched) {
        if i == 0 && e == 0 {
            return;
        }
        let c = self.selecting.entry(id).or_default();
        t.selections.entry(id).or_insert_with(|| sel_of(*c));
        if sign > 0 {
            c.0 += i;
            c.1 += e;
        } else {
            c.0 = c.0.saturating_sub(i);
            c.1 = c.1.saturating_sub(e);
        }
        if *c == (0, 0) {
            self.selecting.remove(&id);
        }
    }

    fn finish(&self, t: Touched) -> PolicyDiff {
        let mut d = PolicyDiff::default();
        for (k, before) in t.entries {
            let now = self.counts.get(&k).and_then(|c| c.verdict());
            match (before, now) {
                (b, Some(v)) if b != Some(v) => {
                    d.set.insert(k, v);
                }
                (Some(_), None) => d.remove.push(k),
                _ => {}
            }
        }
        for (id, before) in t.selections {
            let now = sel_of(self.selecting.get(&id).copied().unwrap_or_default());
            if now != before {
                d.select.insert(id, now);
            }
        }
        d
    }
}

fn sel_of((i, e): (u32, u32)) -> Selection {
    Selection {
        ingress: i > 0,
        egress: e > 0,
    }
}
