//! The merged services of one cluster, kept up to date change by change
//! (pure; no I/O). [`super::merge`] computes the same map from scratch;
//! this keeps, per cluster and per service this cluster defines, the
//! backends that cluster contributes, so an endpoint change touches only the
//! services whose definitions select it, and only the services marked dirty
//! are put together again ([`MergedServices::flush`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Backend, GlobalService, Service};
use crate::endpoint::Endpoint;

mod backend_set;

use backend_set::BackendSet;

/// What a definition selects: the namespace and labels (kept instead of
/// the whole definition: one per service per cluster adds up).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    namespace: String,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn of(s: &Service) -> Selector {
        Selector {
            namespace: s.namespace.clone(),
            labels: s
                .selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// As [`Service::selects`].
    fn selects(&self, e: &Endpoint) -> bool {
        !self.labels.is_empty()
            && e.namespace == self.namespace
            && self.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
    }
}

/// What one cluster contributes: what its definitions of the services this
/// cluster merges select, and the backends each selects (by IP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Contribution {
    defs: BTreeMap<String, Selector>,
    backends: BTreeMap<String, BackendSet>,
}

/// One backend of a service that changed in a cluster's contribution:
/// (service key, before, after).
type Change = (String, Option<Backend>, Option<Backend>);

impl Contribution {
    /// Sets `e`'s backend in every service it contributes to.
    fn upsert(&mut self, e: &Endpoint, out: &mut Vec<Change>) {
        for (key, def) in &self.defs {
            let Some(set) = self.backends.get_mut(key) else {
                continue;
            };
            let want = def.selects(e).then(|| backend(e));
            if want.as_ref() == set.get(&e.ip) {
                continue;
            }
            let old = match &want {
                Some(b) => set.insert(b.clone()),
                None => set.remove(&e.ip),
            };
            out.push((key.clone(), old, want));
        }
    }

    fn remove(&mut self, ip: IpAddr, out: &mut Vec<Change>) {
        for (key, set) in &mut self.backends {
            if let Some(old) = set.remove(&ip) {
                out.push((key.clone(), Some(old), None));
            }
        }
    }
}

fn backend(e: &Endpoint) -> Backend {
    Backend {
        cluster: e.cluster.clone(),
        ip: e.ip,
        node: e.node.clone(),
        name: e.name.clone(),
    }
}

/// What [`MergedServices::flush`] says changed in one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceChange {
    /// The whole service as merged now (new, or its definition changed).
    Whole(GlobalService),
    /// Only backends changed: remove `removed`, add `added` (each in
    /// (cluster, IP) order). Each backend touched since the last flush is
    /// in one of them, as its last change left it, so a watcher whose copy
    /// was taken between two flushes (a snapshot) comes out right too.
    Backends {
        namespace: String,
        name: String,
        removed: Vec<Backend>,
        added: Vec<Backend>,
    },
}

impl ServiceChange {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        match self {
            ServiceChange::Whole(g) => g.key(),
            ServiceChange::Backends {
                namespace, name, ..
            } => format!("{namespace}/{name}"),
        }
    }

    /// Applies the change to a watcher's copy of the services; a change of
    /// backends of a service the copy lacks is an error.
    pub fn apply_to(&self, services: &mut BTreeMap<String, GlobalService>) -> Result<(), String> {
        match self {
            ServiceChange::Whole(g) => {
                services.insert(g.key(), g.clone());
            }
            ServiceChange::Backends { removed, added, .. } => {
                let key = self.key();
                let g = services.get_mut(&key).ok_or_else(|| {
                    format!("backends of service {key}, which was never sent whole")
                })?;
                g.change_backends(removed, added);
            }
        }
        Ok(())
    }
}

/// The merged services of the local cluster, updated incrementally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedServices {
    local: String,
    /// The local definitions, by `namespace/name`.
    defs: BTreeMap<String, Service>,
    /// Per cluster (the local one included), in name order.
    clusters: BTreeMap<String, Contribution>,
    /// The merged services, patched as backends change. A persistent map:
    /// a watcher's snapshot takes a copy in O(1) and reads it outside the
    /// lock.
    merged: imbl::OrdMap<String, GlobalService>,
    /// Services patched since the last flush, with each backend touched
    /// and whether its last change left it in.
    dirty: BTreeMap<String, BTreeMap<Backend, bool>>,
    /// Services to put together again from the contributions (a cluster's
    /// definitions changed), and compare with what they were.
    rebuild: BTreeSet<String>,
}

impl MergedServices {
    /// The local cluster's services (`defs`, their `cluster` is `local`),
    /// with its endpoints so far. Call [`Self::flush`] to compute them.
    pub fn new<'a>(
        local: &str,
        defs: &[Service],
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
    ) -> MergedServices {
        let mut m = MergedServices {
            local: local.to_string(),
            defs: defs
                .iter()
                .filter(|s| s.cluster == local)
                .map(|s| (s.key(), s.clone()))
                .collect(),
            clusters: BTreeMap::new(),
            merged: imbl::OrdMap::new(),
            dirty: BTreeMap::new(),
            rebuild: BTreeSet::new(),
        };
        m.rebuild = m.defs.keys().cloned().collect();
        let own: Vec<Service> = m.defs.values().cloned().collect();
        m.set_cluster(local, &own, endpoints);
        m
    }

    /// The merged services (those changed since the last flush included).
    pub fn services(&self) -> &imbl::OrdMap<String, GlobalService> {
        &self.merged
    }

    /// An endpoint of any cluster was added or changed.
    pub fn endpoint_upserted(&mut self, e: &Endpoint) {
        let mut changes = Vec::new();
        if let Some(c) = self.clusters.get_mut(&e.cluster) {
            c.upsert(e, &mut changes);
        }
        self.patch(changes);
    }

    /// The endpoint with `ip` of `cluster` is gone.
    pub fn endpoint_removed(&mut self, cluster: &str, ip: IpAddr) {
        let mut changes = Vec::new();
        if let Some(c) = self.clusters.get_mut(cluster) {
            c.remove(ip, &mut changes);
        }
        self.patch(changes);
    }

    /// Applies changed backends to the merged services (in backend order,
    /// which is cluster then IP). A contribution holds only services it
    /// takes part in, so every change applies.
    fn patch(&mut self, changes: Vec<Change>) {
        for (key, old, new) in changes {
            let Some(g) = self.merged.get_mut(&key) else {
                self.rebuild.insert(key);
                continue;
            };
            g.change_backends(old.as_slice(), new.as_slice());
            let touched = self.dirty.entry(key).or_default();
            if let Some(old) = old {
                touched.insert(old, false);
            }
            if let Some(new) = new {
                touched.insert(new, true);
            }
        }
    }

    /// Replaces the local cluster's definitions (`defs`) and recomputes
    /// their backends from `endpoints`: a service no longer defined is
    /// dropped from [`Self::services`] (no change is reported for it: the
    /// server resends snapshots), changed and new ones are reported at the
    /// next [`Self::flush`].
    pub fn set_local<'a>(
        &mut self,
        defs: &[Service],
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
    ) {
        let new: BTreeMap<String, Service> = defs
            .iter()
            .filter(|s| s.cluster == self.local)
            .map(|s| (s.key(), s.clone()))
            .collect();
        for gone in self.defs.keys().filter(|k| !new.contains_key(*k)) {
            self.merged.remove(gone);
            self.dirty.remove(gone);
        }
        self.rebuild.extend(new.keys().cloned());
        self.defs = new;
        let own: Vec<Service> = self.defs.values().cloned().collect();
        let local = self.local.clone();
        self.set_cluster(&local, &own, endpoints);
    }

    /// Replaces what `cluster` defines (`defs`: all of its definitions;
    /// only those that take part are kept) and recomputes its backends from
    /// `endpoints` (that cluster's; others are ignored).
    pub fn set_cluster<'a>(
        &mut self,
        cluster: &str,
        defs: &[Service],
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
    ) {
        let own = cluster == self.local;
        let taking_part: BTreeMap<String, Selector> = defs
            .iter()
            .filter(|s| s.cluster == cluster)
            .filter(|s| own || self.takes_part(s))
            .map(|s| (s.key(), Selector::of(s)))
            .collect();
        let old = self.clusters.remove(cluster).unwrap_or_default();
        if taking_part.is_empty() {
            self.rebuild.extend(old.backends.into_keys());
            self.rebuild.extend(old.defs.into_keys());
            return;
        }
        let mut c = Contribution {
            backends: taking_part
                .keys()
                .map(|k| (k.clone(), BackendSet::default()))
                .collect(),
            defs: taking_part,
        };
        let mut ignored = Vec::new();
        for e in endpoints.into_iter().filter(|e| e.cluster == cluster) {
            c.upsert(e, &mut ignored);
        }
        for key in old.defs.keys().chain(c.defs.keys()) {
            if old.defs.get(key) != c.defs.get(key) || old.backends.get(key) != c.backends.get(key)
            {
                self.rebuild.insert(key.clone());
            }
        }
        self.clusters.insert(cluster.to_string(), c);
    }

    /// Whether a remote definition adds backends to a local service: both
    /// global, the remote's shared.
    fn takes_part(&self, r: &Service) -> bool {
        self.defs
            .get(&r.key())
            .is_some_and(|s| s.is_global().unwrap_or(false))
            && r.is_global().unwrap_or(false)
            && r.is_shared().unwrap_or(false)
    }

    /// The services changed since the last flush, in key order: the
    /// backends of those patched (a backend added and removed again comes
    /// out as removed), and those put together again whose merged form
    /// changed, whole.
    pub fn flush(&mut self) -> Vec<ServiceChange> {
        let rebuild = std::mem::take(&mut self.rebuild);
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::new();
        for (key, touched) in &dirty {
            if rebuild.contains(key) || touched.is_empty() {
                continue;
            }
            let Some(g) = self.merged.get(key) else {
                continue;
            };
            let (added, removed): (Vec<_>, Vec<_>) = touched.iter().partition(|(_, inn)| **inn);
            out.push(ServiceChange::Backends {
                namespace: g.namespace.clone(),
                name: g.name.clone(),
                removed: removed.into_iter().map(|(b, _)| b.clone()).collect(),
                added: added.into_iter().map(|(b, _)| b.clone()).collect(),
            });
        }
        for key in rebuild {
            let Some(s) = self.defs.get(&key) else {
                continue;
            };
            let global = s.is_global().unwrap_or(false);
            let mut backends = Vec::new();
            for (name, c) in &self.clusters {
                if (global || *name == self.local) && c.defs.contains_key(&key) {
                    if let Some(set) = c.backends.get(&key) {
                        backends.extend(set.values().cloned());
                    }
                }
            }
            let g = GlobalService::of(s, backends);
            // Patched in this batch: changed since the last flush even when
            // equal to the patched form.
            if dirty.contains_key(&key) || self.merged.get(&key) != Some(&g) {
                self.merged.insert(key, g.clone());
                out.push(ServiceChange::Whole(g));
            }
        }
        out.sort_by_key(ServiceChange::key);
        out
    }
}

#[cfg(test)]
#[path = "merged_tests.rs"]
mod tests;
