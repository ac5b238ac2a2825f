#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::super::{merge, AFFINITY_ANNOTATION, GLOBAL_ANNOTATION, SHARED_ANNOTATION};
use super::*;
use crate::service::{Protocol, ServicePort};

/// A small fixed-seed generator, so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn svc(cluster: &str, name: &str, annotations: &[(&str, &str)]) -> Service {
    Service {
        name: name.into(),
        namespace: "default".into(),
        cluster: cluster.into(),
        ports: vec![ServicePort {
            name: String::new(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        selector: BTreeMap::from([("app".to_string(), name.to_string())]),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        exported: false,
        vip: None,
    }
}

const CLUSTERS: [&str; 4] = ["c1", "c2", "c3", "c4"];
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A random definition set for `cluster`: some services, some global,
/// some not shared, one with an unreadable annotation.
fn random_defs(rng: &mut Rng, cluster: &str) -> Vec<Service> {
    let mut defs = Vec::new();
    for name in NAMES {
        let mut ann: Vec<(&str, &str)> = Vec::new();
        match rng.below(6) {
            0 => continue,
            1 => {}
            2 => ann.push((SHARED_ANNOTATION, "false")),
            3 => ann.push((GLOBAL_ANNOTATION, "yes")),
            _ => {}
        }
        if rng.below(4) != 0 {
            ann.push((GLOBAL_ANNOTATION, "true"));
        }
        if rng.below(3) == 0 {
            ann.push((AFFINITY_ANNOTATION, "local"));
        }
        let mut map: Vec<(&str, &str)> = Vec::new();
        for (k, v) in ann {
            map.retain(|(k2, _)| *k2 != k);
            map.push((k, v));
        }
        defs.push(svc(cluster, name, &map));
    }
    defs
}

fn random_endpoint(rng: &mut Rng) -> Endpoint {
    let c = rng.below(CLUSTERS.len());
    let ip: IpAddr = format!("10.{}.0.{}", c + 1, rng.below(12)).parse().unwrap();
    Endpoint {
        ip,
        name: format!("pod-{}", rng.below(3)),
        namespace: if rng.below(8) == 0 {
            "other"
        } else {
            "default"
        }
        .into(),
        labels: BTreeMap::from([("app".to_string(), NAMES[rng.below(NAMES.len())].into())]),
        node: format!("n{}", rng.below(2)),
        cluster: CLUSTERS[c].into(),
        identity: 0,
    }
}

fn full(
    defs: &BTreeMap<&str, Vec<Service>>,
    endpoints: &BTreeMap<IpAddr, Endpoint>,
) -> BTreeMap<String, GlobalService> {
    let all: Vec<Service> = defs.values().flatten().cloned().collect();
    let eps: Vec<&Endpoint> = endpoints.values().collect();
    merge("c1", &all, &eps)
}

#[test]
fn incremental_merge_equals_the_full_merge_on_random_changes() {
    for seed in 1..=40u64 {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9));
        let mut defs: BTreeMap<&str, Vec<Service>> = BTreeMap::new();
        defs.insert("c1", random_defs(&mut rng, "c1"));
        let mut endpoints: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
        let mut m = MergedServices::new("c1", &defs["c1"], endpoints.values());
        // Watchers' copies, kept from what is pushed: one from the start,
        // one that takes a snapshot (the merged map as it is) now and then,
        // also between two flushes.
        let mut watcher: BTreeMap<String, GlobalService> = BTreeMap::new();
        for change in m.flush() {
            change.apply_to(&mut watcher).unwrap();
        }
        let mut late: BTreeMap<String, GlobalService> = as_btree(&m);
        let start = full(&defs, &endpoints);
        assert_eq!(as_btree(&m), start, "seed {seed}: start");
        assert_eq!(watcher, start, "seed {seed}: start, as pushed");
        for step in 0..300 {
            match rng.below(10) {
                0 => {
                    // A remote's definitions change (a snapshot, or expiry).
                    let c = CLUSTERS[1 + rng.below(CLUSTERS.len() - 1)];
                    let d = if rng.below(4) == 0 {
                        Vec::new()
                    } else {
                        random_defs(&mut rng, c)
                    };
                    m.set_cluster(c, &d, endpoints.values());
                    defs.insert(c, d);
                }
                1..=3 => {
                    let keys: Vec<IpAddr> = endpoints.keys().copied().collect();
                    if let Some(ip) = keys.get(rng.below(keys.len().max(1))) {
                        let e = endpoints.remove(ip).unwrap();
                        m.endpoint_removed(&e.cluster, e.ip);
                    }
                }
                _ => {
                    let e = random_endpoint(&mut rng);
                    if let Some(old) = endpoints.get(&e.ip) {
                        if old.cluster != e.cluster {
                            // An IP moves: its removal comes first.
                            m.endpoint_removed(&old.cluster, old.ip);
                        }
                    }
                    m.endpoint_upserted(&e);
                    endpoints.insert(e.ip, e);
                }
            }
            if rng.below(5) == 0 {
                late = as_btree(&m);
            }
            // Flush only now and then: changes pile up between flushes.
            if rng.below(3) == 0 {
                continue;
            }
            let pushed = m.flush();
            let want = full(&defs, &endpoints);
            assert_eq!(as_btree(&m), want, "seed {seed} step {step}");
            for change in &pushed {
                change.apply_to(&mut watcher).unwrap();
                change.apply_to(&mut late).unwrap();
            }
            assert_eq!(watcher, want, "seed {seed} step {step}: as pushed");
            assert_eq!(late, want, "seed {seed} step {step}: snapshot, then pushed");
        }
    }
}

/// The changes `m.flush()` pushes, as (kind, key, removed, added): "whole"
/// with the backend count in `added`, or "backends" with the IPs' count.
fn pushed(m: &mut MergedServices, watcher: &mut BTreeMap<String, GlobalService>) -> Vec<String> {
    m.flush()
        .into_iter()
        .map(|c| {
            c.apply_to(watcher).unwrap();
            match c {
                ServiceChange::Whole(g) => format!("whole {} {}", g.key(), g.backends.len()),
                ServiceChange::Backends {
                    ref removed,
                    ref added,
                    ..
                } => format!("backends {} -{} +{}", c.key(), removed.len(), added.len()),
            }
        })
        .collect()
}

#[test]
fn an_endpoint_change_pushes_only_the_backends_of_the_services_it_is_in() {
    let local = vec![
        svc("c1", "a", &[(GLOBAL_ANNOTATION, "true")]),
        svc("c1", "b", &[(GLOBAL_ANNOTATION, "true")]),
    ];
    let mut w = BTreeMap::new();
    let mut m = MergedServices::new("c1", &local, []);
    assert_eq!(
        pushed(&mut m, &mut w),
        ["whole default/a 0", "whole default/b 0"]
    );
    let remote = vec![svc("c2", "a", &[(GLOBAL_ANNOTATION, "true")])];
    m.set_cluster("c2", &remote, []);
    assert!(
        pushed(&mut m, &mut w).is_empty(),
        "no backends yet: nothing to push"
    );
    let mut e = Endpoint {
        ip: "10.2.0.1".parse().unwrap(),
        name: "p".into(),
        namespace: "default".into(),
        labels: BTreeMap::from([("app".to_string(), "a".to_string())]),
        node: "n1".into(),
        cluster: "c2".into(),
        identity: 0,
    };
    m.endpoint_upserted(&e);
    assert_eq!(pushed(&mut m, &mut w), ["backends default/a -0 +1"]);
    assert_eq!(w["default/a"].backends[0].cluster, "c2");
    // The same endpoint again: nothing.
    m.endpoint_upserted(&e);
    assert!(pushed(&mut m, &mut w).is_empty());
    // c2 does not define b: its pods labelled b are no backends of ours.
    e.labels.insert("app".into(), "b".into());
    m.endpoint_upserted(&e);
    assert_eq!(pushed(&mut m, &mut w), ["backends default/a -1 +0"]);
    assert!(w["default/a"].backends.is_empty());
    // A backend that came and went between two flushes goes out as removed
    // (a watcher may have seen it in a snapshot).
    e.labels.insert("app".into(), "a".into());
    m.endpoint_upserted(&e);
    m.endpoint_removed("c2", e.ip);
    assert_eq!(pushed(&mut m, &mut w), ["backends default/a -1 +0"]);
    // A cluster that goes away takes its contribution with it (whole: a
    // cluster's definitions changed).
    m.endpoint_upserted(&e);
    pushed(&mut m, &mut w);
    m.set_cluster("c2", &[], []);
    assert_eq!(pushed(&mut m, &mut w), ["whole default/a 0"]);
    assert_eq!(w, as_btree(&m));
}

/// The merged services as an ordered map (as watchers keep them).
fn as_btree(m: &MergedServices) -> BTreeMap<String, GlobalService> {
    m.services().clone().into_iter().collect()
}
