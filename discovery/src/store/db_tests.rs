#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::Node;
use crate::store::tests::sample;
use crate::test_support::pb_node;

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
/// load back as the registry holds them, over random changes.
#[test]
fn changes_written_from_their_events_load_as_the_registry_holds_them() {
    for seed in 1..=20u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DbStore::open(dir.path()).unwrap();
        assert!(s.load().unwrap().is_none());
        let mut last = None;
        crate::store::tests::random_changes(seed, 200, |r, events, step| {
            s.save_change(r, events).unwrap();
            if step % 50 == 49 {
                assert_eq!(
                    s.load().unwrap(),
                    Some(r.state()),
                    "seed {seed} step {step}"
                );
            }
            last = Some(r.state());
        });
        let last = last.unwrap();
        drop(s);
        let mut s = DbStore::open(dir.path()).unwrap();
        assert_eq!(
            s.load().unwrap(),
            Some(last.clone()),
            "seed {seed}, reopened"
        );
        // A whole-state save after changes written from events diffs against
        // what is stored: nothing stale is left.
        let mut st = last;
        st.endpoints.clear();
        st.revision += 1;
        let r = crate::registry::Registry::from_state(
            crate::registry::RegistryConfig {
                cluster: "c1".into(),
                cluster_id: 1,
                lease_ttl_ms: 1000,
                pod_cidrs: Vec::new(),
            },
            st.clone(),
            0,
        )
        .unwrap();
        s.save_change(&r, &[]).unwrap();
        s.save(&st, &[]).unwrap();
        assert_eq!(s.load().unwrap(), Some(st), "seed {seed}, whole save");
    }
}
