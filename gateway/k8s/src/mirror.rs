//! The objects of one watched resource as last listed and watched, kept
//! apart from the I/O ([`super::watch`] feeds it the watcher's events).
//!
//! A (re)list is buffered until it is complete: the objects it has not
//! listed yet are not dropped meanwhile, so a relist after a broken watch
//! or a 410 Gone replaces the set at once, and an object that is in both
//! the old and the new set is never seen missing. Until the first list is
//! complete the mirror is not synced, and consumers apply nothing from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;

/// The objects by `namespace/name` (or `name` for cluster-scoped ones).
pub type Objects = BTreeMap<String, DynamicObject>;

/// The key of an object in [`Objects`].
pub fn key(o: &DynamicObject) -> String {
    let name = o.metadata.name.clone().unwrap_or_default();
    match &o.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

#[derive(Debug, Default)]
pub struct Mirror {
    live: Arc<Objects>,
    /// A list being read (after `Init`, until `InitDone`).
    pending: Option<Objects>,
    synced: bool,
}

impl Mirror {
    /// Takes one watcher event; true when the objects consumers see changed
    /// (an object added, changed by its resourceVersion, or removed; the
    /// first complete list).
    pub fn apply(&mut self, event: Event<DynamicObject>) -> bool {
        match event {
            Event::Init => {
                self.pending = Some(Objects::new());
                false
            }
            Event::InitApply(o) => {
                self.pending
                    .get_or_insert_with(Objects::new)
                    .insert(key(&o), o);
                false
            }
            Event::InitDone => {
                let listed = self.pending.take().unwrap_or_default();
                let changed = !self.synced || !same(&self.live, &listed);
                self.synced = true;
                if changed {
                    self.live = Arc::new(listed);
                }
                changed
            }
            Event::Apply(o) => {
                let k = key(&o);
                if self
                    .live
                    .get(&k)
                    .is_some_and(|old| old.metadata.resource_version == o.metadata.resource_version)
                {
                    return false;
                }
                Arc::make_mut(&mut self.live).insert(k, o);
                self.synced
            }
            Event::Delete(o) => {
                let k = key(&o);
                if !self.live.contains_key(&k) {
                    return false;
                }
                Arc::make_mut(&mut self.live).remove(&k);
                self.synced
            }
        }
    }

    /// Whether a first list was complete.
    #[cfg(test)]
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The objects now (cheap to clone).
    pub fn objects(&self) -> Arc<Objects> {
        self.live.clone()
    }
}

/// The same keys with the same resourceVersions.
fn same(a: &Objects, b: &Objects) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, oa), (kb, ob))| {
            ka == kb && oa.metadata.resource_version == ob.metadata.resource_version
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn obj(ns: &str, name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv}
        }))
        .unwrap()
    }

    fn keys(m: &Mirror) -> Vec<String> {
        m.objects().keys().cloned().collect()
    }

    #[test]
    fn nothing_is_visible_until_the_first_list_is_complete() {
        let mut m = Mirror::default();
        assert!(!m.apply(Event::Init));
        assert!(!m.apply(Event::InitApply(obj("a", "p1", "1"))));
        assert!(!m.synced());
        assert!(keys(&m).is_empty());
        assert!(m.apply(Event::InitDone));
        assert!(m.synced());
        assert_eq!(keys(&m), ["a/p1"]);
    }

    #[test]
    fn an_empty_first_list_is_a_change() {
        let mut m = Mirror::default();
        m.apply(Event::Init);
        assert!(m.apply(Event::InitDone), "consumers learn the set is empty");
    }

    #[test]
    fn a_relist_keeps_every_object_until_it_is_complete_and_reports_only_real_changes() {
        let mut m = Mirror::default();
        m.apply(Event::Init);
        m.apply(Event::InitApply(obj("a", "p1", "1")));
        m.apply(Event::InitApply(obj("a", "p2", "2")));
        m.apply(Event::InitDone);
        // A 410 Gone: the watcher lists again.
        assert!(!m.apply(Event::Init));
        assert_eq!(keys(&m), ["a/p1", "a/p2"], "nothing removed while listing");
        assert!(!m.apply(Event::InitApply(obj("a", "p2", "2"))));
        assert_eq!(keys(&m), ["a/p1", "a/p2"]);
        assert!(!m.apply(Event::InitApply(obj("a", "p1", "1"))));
        assert!(!m.apply(Event::InitDone), "the same set again is no change");
        // A relist that brings a change: one swap.
        m.apply(Event::Init);
        m.apply(Event::InitApply(obj("a", "p1", "5")));
        assert!(m.apply(Event::InitDone));
        assert_eq!(keys(&m), ["a/p1"]);
        assert_eq!(
            m.objects()["a/p1"].metadata.resource_version.as_deref(),
            Some("5")
        );
    }

    #[test]
    fn watch_events_change_the_set_and_repeats_do_not() {
        let mut m = Mirror::default();
        m.apply(Event::Init);
        m.apply(Event::InitDone);
        assert!(m.apply(Event::Apply(obj("a", "p1", "3"))));
        assert!(!m.apply(Event::Apply(obj("a", "p1", "3"))), "same version");
        assert!(m.apply(Event::Apply(obj("a", "p1", "4"))));
        assert!(m.apply(Event::Delete(obj("a", "p1", "5"))));
        assert!(!m.apply(Event::Delete(obj("a", "p1", "5"))));
        assert!(keys(&m).is_empty());
    }
}
