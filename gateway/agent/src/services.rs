//! The agent's copy of its cluster's services with merged backends, kept
//! from the watch stream (snapshot, then `service_updated` and
//! `service_backends` events). Applying
//! is pure; [`save`] writes `<state-dir>/services.json` atomically.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use meshgate_model::pb::watch_event::Event;
use meshgate_model::service::{GlobalService, ServiceChange};
use serde::{Deserialize, Serialize};

pub const SERVICES_FILE: &str = "services.json";

/// `services.json` (docs/contracts.md), by `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Services {
    pub services: BTreeMap<String, GlobalService>,
}

impl Services {
    /// Applies one watch event; whether the services changed. An unreadable
    /// service is an error, and this copy then leaves it out rather than
    /// keep a stale one (a later change of its backends finds it missing,
    /// and the agent asks for a snapshot).
    pub fn apply(&mut self, event: &Event) -> Result<bool, String> {
        match event {
            Event::Snapshot(s) => {
                let mut next = BTreeMap::new();
                let mut unreadable = Vec::new();
                for g in &s.global_services {
                    match GlobalService::try_from(g) {
                        Ok(g) => {
                            next.insert(g.key(), g);
                        }
                        Err(e) => unreadable.push(format!("{}/{}: {e}", g.namespace, g.name)),
                    }
                }
                let changed = next != self.services;
                self.services = next;
                match unreadable.is_empty() {
                    true => Ok(changed),
                    false => Err(format!(
                        "the snapshot's services {} are unreadable; left out",
                        unreadable.join(", ")
                    )),
                }
            }
            Event::ServiceUpdated(u) => {
                let g = u
                    .service
                    .as_ref()
                    .ok_or_else(|| format!("service event at revision {} is empty", u.revision))?;
                match GlobalService::try_from(g) {
                    Ok(g) => Ok(self.services.insert(g.key(), g.clone()) != Some(g)),
                    Err(e) => {
                        self.services.remove(&format!("{}/{}", g.namespace, g.name));
                        Err(format!(
                            "service {}/{} is unreadable ({e}); left out",
                            g.namespace, g.name
                        ))
                    }
                }
            }
            Event::ServiceBackends(u) => {
                let change = ServiceChange::try_from(u)?;
                let key = change.key();
                let before = self.services.get(&key).cloned();
                change
                    .apply_to(&mut self.services)
                    .map_err(|e| format!("{e} (revision {})", u.revision))?;
                Ok(self.services.get(&key) != before.as_ref())
            }
            _ => Ok(false),
        }
    }
}

pub fn save(dir: &Path, services: &Services) -> anyhow::Result<()> {
    let path = dir.join(SERVICES_FILE);
    let bytes = serde_json::to_vec_pretty(services).context("encoding the services")?;
    super::persist::write_atomic(&path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_model::pb;

    fn svc(backends: &[&str]) -> pb::GlobalService {
        pb::GlobalService {
            vip: String::new(),
            name: "web".into(),
            namespace: "default".into(),
            global: true,
            shared: true,
            affinity: "local".into(),
            ports: vec![pb::ServicePort {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
            }],
            backends: backends
                .iter()
                .map(|ip| pb::Backend {
                    ip: ip.to_string(),
                    cluster: "c1".into(),
                    node: "n1".into(),
                    name: "p".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn snapshot_then_update() {
        let mut s = Services::default();
        let snap = Event::Snapshot(pb::Snapshot {
            global_services: vec![svc(&["10.1.0.10"])],
            ..Default::default()
        });
        assert!(s.apply(&snap).unwrap());
        assert!(!s.apply(&snap).unwrap());
        let up = Event::ServiceUpdated(pb::ServiceUpdated {
            revision: 3,
            service: Some(svc(&["10.1.0.10", "10.2.0.10"])),
        });
        assert!(s.apply(&up).unwrap());
        assert_eq!(s.services["default/web"].backends.len(), 2);
    }

    #[test]
    fn backend_changes_apply_to_the_copy_and_an_unknown_service_is_an_error() {
        let mut s = Services::default();
        let snap = Event::Snapshot(pb::Snapshot {
            global_services: vec![svc(&["10.1.0.10", "10.1.0.11"])],
            ..Default::default()
        });
        s.apply(&snap).unwrap();
        let backend = |ip: &str| svc(&[ip]).backends.remove(0);
        let change = |name: &str, removed: &[&str], added: &[&str]| {
            Event::ServiceBackends(pb::ServiceBackendsChanged {
                revision: 4,
                namespace: "default".into(),
                name: name.into(),
                removed: removed.iter().map(|ip| backend(ip)).collect(),
                added: added.iter().map(|ip| backend(ip)).collect(),
            })
        };
        assert!(s
            .apply(&change("web", &["10.1.0.10"], &["10.1.0.12"]))
            .unwrap());
        let ips: Vec<String> = s.services["default/web"]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect();
        assert_eq!(ips, ["10.1.0.11", "10.1.0.12"]);
        // Already so (a snapshot taken between two pushes): unchanged.
        assert!(!s.apply(&change("web", &["10.1.0.10"], &[])).unwrap());
        let err = s.apply(&change("db", &[], &["10.1.0.13"])).unwrap_err();
        assert!(
            err.contains("default/db") && err.contains("never sent whole"),
            "{err}"
        );
        // An unreadable whole service is left out, not kept stale: a later
        // change of its backends then asks for a snapshot.
        let mut bad = svc(&["10.1.0.10"]);
        bad.affinity = "sideways".into();
        let up = Event::ServiceUpdated(pb::ServiceUpdated {
            revision: 5,
            service: Some(bad),
        });
        let err = s.apply(&up).unwrap_err();
        assert!(
            err.contains("default/web") && err.contains("sideways"),
            "{err}"
        );
        assert!(s.services.is_empty());
        assert!(s.apply(&change("web", &[], &["10.1.0.14"])).is_err());
    }
}
