//! What the datapath's service load-balancing maps should hold, from the
//! merged global services the agent receives. Pure: tested without root.
//!
//! A service with a VIP gets one frontend per port (VIP, port, protocol);
//! its backends are the merged backends of every cluster, on the same port,
//! flagged local when they are in this node's cluster (affinity is applied
//! per connection by the datapath).

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshgate_ebpf::{Affinity, Backend, Frontend, Proto};
use meshgate_model::service::{self, GlobalService, Protocol};

/// Frontend -> affinity and backends (local first, then by address).
pub type LbState = BTreeMap<Frontend, (Affinity, Vec<Backend>)>;

/// The changes that bring `applied` to `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LbChanges {
    pub set: Vec<(Frontend, Affinity, Vec<Backend>)>,
    pub remove: Vec<Frontend>,
}

fn affinity(a: service::Affinity) -> Affinity {
    match a {
        service::Affinity::Local => Affinity::Local,
        service::Affinity::Remote => Affinity::Remote,
        service::Affinity::None => Affinity::None,
    }
}

/// The backends order the maps keep: this cluster's first.
pub fn normalize(backends: &mut [Backend]) {
    backends.sort_by_key(|b| (!b.local, b.addr, b.port));
}

/// The frontends of `services` as seen by a node of `cluster`.
pub fn desired(cluster: &str, services: &BTreeMap<String, GlobalService>) -> LbState {
    let mut out = LbState::new();
    for s in services.values() {
        let Some(vip) = s.vip else { continue };
        for p in &s.ports {
            let proto = match p.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
            };
            let mut backends: Vec<Backend> = s
                .backends
                .iter()
                .filter_map(|b| match b.ip {
                    IpAddr::V4(addr) => Some(Backend {
                        addr,
                        port: p.port,
                        local: b.cluster == cluster,
                    }),
                    IpAddr::V6(_) => None,
                })
                .collect();
            normalize(&mut backends);
            backends.dedup();
            out.insert(
                Frontend {
                    vip,
                    port: p.port,
                    proto,
                },
                (affinity(s.affinity), backends),
            );
        }
    }
    out
}

/// Backends of `before` that `now` no longer has (same address and port).
pub fn gone(before: Option<&(Affinity, Vec<Backend>)>, now: &[Backend]) -> Vec<Backend> {
    before
        .map(|(_, b)| {
            b.iter()
                .filter(|old| !now.iter().any(|n| n.addr == old.addr && n.port == old.port))
                .copied()
                .collect()
        })
        .unwrap_or_default()
}

/// Frontends to write (new or changed) and, when `prune`, to remove.
pub fn diff(applied: &LbState, desired: &LbState, prune: bool) -> LbChanges {
    let set = desired
        .iter()
        .filter(|(fe, want)| applied.get(*fe) != Some(*want))
        .map(|(fe, (a, b))| (*fe, *a, b.clone()))
        .collect();
    let remove = if prune {
        applied
            .keys()
            .filter(|fe| !desired.contains_key(*fe))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    LbChanges { set, remove }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_model::service::{Backend as SvcBackend, ServicePort};

    fn web(vip: Option<&str>, backends: &[(&str, &str)]) -> GlobalService {
        GlobalService {
            namespace: "default".into(),
            name: "web".into(),
            global: true,
            shared: true,
            affinity: service::Affinity::Local,
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                ServicePort {
                    name: "dns".into(),
                    port: 53,
                    protocol: Protocol::Udp,
                },
            ],
            backends: backends
                .iter()
                .map(|(c, ip)| SvcBackend {
                    cluster: c.to_string(),
                    ip: ip.parse().unwrap(),
                    node: "n1".into(),
                    name: "p".into(),
                })
                .collect(),
            vip: vip.map(|v| v.parse().unwrap()),
        }
    }

    fn svcs(s: GlobalService) -> BTreeMap<String, GlobalService> {
        BTreeMap::from([(s.key(), s)])
    }

    #[test]
    fn a_port_is_a_frontend_and_backends_of_this_cluster_come_first() {
        let d = desired(
            "c2",
            &svcs(web(
                Some("10.96.2.10"),
                &[
                    ("c1", "10.1.0.10"),
                    ("c2", "10.2.0.10"),
                    ("c1", "10.1.1.10"),
                ],
            )),
        );
        assert_eq!(d.len(), 2);
        let fe = Frontend {
            vip: "10.96.2.10".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        };
        let (a, b) = &d[&fe];
        assert_eq!(*a, Affinity::Local);
        let got: Vec<(String, bool)> = b.iter().map(|b| (b.addr.to_string(), b.local)).collect();
        assert_eq!(
            got,
            [
                ("10.2.0.10".to_string(), true),
                ("10.1.0.10".to_string(), false),
                ("10.1.1.10".to_string(), false)
            ]
        );
        assert!(b.iter().all(|b| b.port == 80));
        assert!(desired("c2", &svcs(web(None, &[("c1", "10.1.0.10")]))).is_empty());
    }

    #[test]
    fn a_backend_leaving_rewrites_only_that_service_and_pruning_waits_for_a_snapshot() {
        let before = desired(
            "c1",
            &svcs(web(
                Some("10.96.1.10"),
                &[("c1", "10.1.0.10"), ("c2", "10.2.0.10")],
            )),
        );
        let after = desired("c1", &svcs(web(Some("10.96.1.10"), &[("c2", "10.2.0.10")])));
        let ch = diff(&before, &after, true);
        assert_eq!(ch.set.len(), 2);
        assert!(ch.set.iter().all(|(_, _, b)| b.len() == 1 && !b[0].local));
        assert!(ch.remove.is_empty());
        assert_eq!(diff(&after, &after, true), LbChanges::default());
        let none = LbState::new();
        assert_eq!(diff(&after, &none, false), LbChanges::default());
        assert_eq!(diff(&after, &none, true).remove.len(), 2);
        let fe = *after.keys().next().unwrap();
        let gone = gone(before.get(&fe), &after[&fe].1);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].addr.to_string(), "10.1.0.10");
    }
}
