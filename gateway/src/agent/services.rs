//! The agent's copy of its cluster's services with merged backends, kept
//! from the watch stream (snapshot, then `service_updated` and
//! `service_backends` events). Applying
//! is pure; [`save`] writes `<state-dir>/services.json` atomically.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use meshgate_discovery::pb::watch_event::Event;
use meshgate_discovery::service::{backends_from_pb, GlobalService};
use serde::{Deserialize, Serialize};

pub const SERVICES_FILE: &str = "services.json";

/// `services.json` (docs/contracts.md), by `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Services {
    pub services: BTreeMap<String, GlobalService>,
}

impl Services {
    /// Applies one watch event; whether the services changed. An unreadable
    /// record is an error and changes nothing.
    pub fn apply(&mut self, event: &Event) -> Result<bool, String> {
        match event {
            Event::Snapshot(s) => {
                let mut next = BTreeMap::new();
                for g in &s.global_services {
                    let g = GlobalService::try_from(g)?;
                    next.insert(g.key(), g);
                }
                let changed = next != self.services;
                self.services = next;
                Ok(changed)
            }
            Event::ServiceUpdated(u) => {
                let g = u
                    .service
                    .as_ref()
                    .ok_or_else(|| format!("service event at revision {} is empty", u.revision))?;
                let g = GlobalService::try_from(g)?;
                Ok(self.services.insert(g.key(), g.clone()) != Some(g))
            }
            Event::ServiceBackends(u) => {
                let key = format!("{}/{}", u.namespace, u.name);
                let removed = backends_from_pb(&u.removed)?;
                let added = backends_from_pb(&u.added)?;
                let g = self.services.get_mut(&key).ok_or_else(|| {
                    format!(
                        "backends of service {key} at revision {}, which discovery never sent \
                         whole",
                        u.revision
                    )
                })?;
                let before = g.backends.clone();
                g.change_backends(&removed, &added);
                Ok(g.backends != before)
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
    use meshgate_discovery::pb;

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
    }
}
