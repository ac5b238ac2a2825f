#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::tests::pb_node;
use crate::model::Node;
use crate::store::tests::sample;

#[test]
fn records_round_trip_and_a_change_writes_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DbStore::open(dir.path()).unwrap();
    assert!(s.load().unwrap().is_none(), "a new database holds nothing");
    let mut state = sample();
    s.save(&state, &[]).unwrap();
    // meta, the node, its allocation, the identity, the endpoint.
    assert_eq!(s.last_written(), 5);
    drop(s);
    let mut s = DbStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap(), Some(state.clone()));

    // One more node: meta, the node and its allocation; nothing else.
    let n2 = Node::try_from(pb_node("n2", "10.1.1.0/24")).unwrap();
    state.nodes.insert("n2".into(), n2);
    state
        .allocations
        .insert("n2".into(), "100.64.64.2".parse().unwrap());
    state.revision += 1;
    s.save(&state, &[]).unwrap();
    assert_eq!(s.last_written(), 3);
    // The same state again: nothing written.
    s.save(&state, &[]).unwrap();
    assert_eq!(s.last_written(), 3, "an unchanged state is not written");
    // A removal is one write beside meta.
    state.endpoints.clear();
    state.revision += 1;
    s.save(&state, &[]).unwrap();
    assert_eq!(s.last_written(), 2);
    drop(s);
    let mut s = DbStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap(), Some(state));
}

#[test]
fn state_json_is_migrated_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = sample();
    let mut json = EmbeddedStore::open(dir.path()).unwrap();
    json.save(&state, &[]).unwrap();
    let mut s = DbStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap(), Some(state.clone()));
    assert!(!dir.path().join(STATE_FILE).exists());
    assert!(
        dir.path().join(MIGRATED_FILE).exists(),
        "the old file is kept"
    );
    drop(s);
    // A state.json written afterwards (an older binary) is not read again.
    let mut other = state.clone();
    other.revision += 10;
    EmbeddedStore::open(dir.path())
        .unwrap()
        .save(&other, &[])
        .unwrap();
    let mut s = DbStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap(), Some(state));
}

#[test]
fn a_corrupt_state_json_is_refused_before_any_database_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
    let e = DbStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("state.json") && e.contains("corrupt"), "{e}");
    assert!(!dir.path().join(DB_FILE).exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
        "{not json"
    );
}

/// Changes written from their events alone (as the server saves them)
/// load back as the registry holds them, over random registrations, pod
/// CIDR changes, endpoint reports, deregistrations and expiries.
#[test]
fn changes_written_from_their_events_load_as_the_registry_holds_them() {
    use crate::registry::{Registry, RegistryConfig};
    use base64::Engine as _;
    for seed in 1..=20u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DbStore::open(dir.path()).unwrap();
        assert!(s.load().unwrap().is_none());
        let mut r = Registry::new(RegistryConfig {
            cluster: "c1".into(),
            cluster_id: 1,
            lease_ttl_ms: 1000,
            pod_cidrs: Vec::new(),
        })
        .unwrap();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut now = 0;
        for step in 0..200 {
            let n = next(6) as u8;
            let name = format!("n{n}");
            let events = match next(10) {
                0..=2 => {
                    let prefix = if next(3) == 0 { 25 } else { 24 };
                    let mut p = pb_node(&name, &format!("10.1.{n}.0/{prefix}"));
                    p.wg_public_key = base64::engine::general_purpose::STANDARD.encode([n + 1; 32]);
                    r.register(Node::try_from(p).unwrap(), now)
                        .map(|x| x.events)
                        .unwrap_or_default()
                }
                3..=7 => {
                    let eps = (0..next(6))
                        .map(|i| crate::pb::Endpoint {
                            ip: format!("10.1.{n}.{}", 1 + next(200)),
                            name: format!("p{i}"),
                            labels: [("app".to_string(), format!("a{}", next(5)))].into(),
                            ..Default::default()
                        })
                        .collect();
                    r.report_endpoints(&name, "c1", eps)
                        .map(|x| x.events)
                        .unwrap_or_default()
                }
                8 => r.deregister(&name, "c1").unwrap(),
                _ => {
                    now += 600;
                    r.expire(now)
                }
            };
            s.save_change(&r, &events).unwrap();
            if step % 50 == 49 {
                assert_eq!(
                    s.load().unwrap(),
                    Some(r.state()),
                    "seed {seed} step {step}"
                );
            }
        }
        drop(s);
        let mut s = DbStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), Some(r.state()), "seed {seed}, reopened");
        // A whole-state save after changes written from events diffs against
        // what is stored: nothing stale is left.
        let mut st = r.state();
        st.endpoints.clear();
        st.revision += 1;
        s.save_change(&r, &[]).unwrap();
        s.save(&st, &[]).unwrap();
        assert_eq!(s.load().unwrap(), Some(st), "seed {seed}, whole save");
    }
}
