#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::tests::sample;
use crate::test_support::pb_node;

fn meta_of(state: &RegistryState) -> Vec<u8> {
    serde_json::to_vec(&Meta {
        format: STATE_FORMAT,
        cluster: state.cluster.clone(),
        cluster_id: state.cluster_id,
        revision: state.revision,
        events: Vec::new(),
        writer: "r1".into(),
    })
    .unwrap()
}

/// `sample()` with a second node holding two endpoints.
fn two_nodes() -> RegistryState {
    let mut s = sample();
    s.nodes.insert(
        "n2".into(),
        Node::try_from(pb_node("n2", "10.1.1.0/24")).unwrap(),
    );
    s.allocations
        .insert("n2".into(), "100.64.64.2".parse().unwrap());
    for ip in ["10.1.1.11", "10.1.1.10"] {
        let mut e = s.endpoints[0].clone();
        e.ip = ip.parse().unwrap();
        e.node = "n2".into();
        s.endpoints.push(e);
    }
    s.endpoints.sort_by_key(|e| e.ip);
    s
}

fn mirror_of(state: &RegistryState) -> Mirror {
    let mut m = Mirror::default();
    for (k, v) in records(state).unwrap() {
        m.put(&k, &v, 1, 5).unwrap();
    }
    m.put(META, &meta_of(state), 3, 7).unwrap();
    m
}

#[test]
fn the_records_rebuild_the_state() {
    let state = two_nodes();
    let keys: Vec<String> = records(&state).unwrap().into_keys().collect();
    let identity = format!("identities/{}", state.identities[0].id);
    assert_eq!(
        keys,
        [
            "allocations/n1",
            "allocations/n2",
            "endpoints/n1",
            "endpoints/n2",
            identity.as_str(),
            "nodes/n1",
            "nodes/n2",
        ]
    );
    let remote = mirror_of(&state).remote().unwrap();
    assert_eq!(remote.state, state);
    assert_eq!((remote.version, remote.mod_revision), (3, 7));
    assert!(Mirror::default().remote().is_none(), "no meta, no state");
}

#[test]
fn a_change_writes_only_its_records() {
    let old = two_nodes();
    let before = records(&old).unwrap();
    // One endpoint of n2 goes: n2's endpoint list, nothing else.
    let mut new = old.clone();
    new.endpoints.retain(|e| e.ip.to_string() != "10.1.1.11");
    let ops = diff(&before, &records(&new).unwrap());
    assert_eq!(
        ops.iter().map(Op::key).collect::<Vec<_>>(),
        ["endpoints/n2"]
    );
    assert!(!ops[0].must_be_new(), "an update is not a creation");
    // n2 leaves: its node, allocation and endpoints are deleted.
    let mut gone = old.clone();
    gone.nodes.remove("n2");
    gone.allocations.remove("n2");
    gone.endpoints.retain(|e| e.node != "n2");
    let ops = diff(&before, &records(&gone).unwrap());
    assert_eq!(
        ops,
        [
            Op::Delete("allocations/n2".into()),
            Op::Delete("endpoints/n2".into()),
            Op::Delete("nodes/n2".into()),
        ]
    );
    // Coming back: the allocation is new (compare-and-swap on creation),
    // the node record is not guarded so.
    let ops = diff(&records(&gone).unwrap(), &before);
    let new_keys: Vec<&str> = ops
        .iter()
        .filter(|o| o.must_be_new())
        .map(Op::key)
        .collect();
    assert_eq!(new_keys, ["allocations/n2"]);
    assert!(diff(&before, &before).is_empty(), "no change, no write");
}

#[test]
fn big_changes_are_split_within_the_limits_keeping_room_for_meta() {
    let put = |i: usize, bytes: usize| Op::Put {
        key: format!("nodes/n{i}"),
        value: vec![b'x'; bytes],
        created: true,
    };
    let ops: Vec<Op> = (0..300).map(|i| put(i, 10)).collect();
    let c = chunks(ops, 128, 1 << 20, 2);
    assert_eq!(
        c.iter().map(Vec::len).collect::<Vec<_>>(),
        [128, 128, 44],
        "by count"
    );
    // Full to the last op: meta gets a transaction of its own.
    let c = chunks((0..128).map(|i| put(i, 10)).collect(), 128, 1 << 20, 1);
    assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [128, 0]);
    // By bytes; one op over the limit goes alone.
    let c = chunks(
        vec![put(0, 600), put(1, 600), put(2, 5000), put(3, 10)],
        128,
        1000,
        1,
    );
    assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1, 1]);
    // Nothing to write: one (empty) transaction, for meta.
    assert_eq!(chunks(Vec::new(), 128, 1000, 1).len(), 1);
}

#[test]
fn unreadable_records_are_errors_naming_the_key_and_change_nothing() {
    let state = sample();
    let mut m = mirror_of(&state);
    let e = m.put("nodes/n1", b"{not json", 2, 9).unwrap_err();
    assert_eq!(e.key, "nodes/n1");
    let other = Meta {
        format: STATE_FORMAT + 6,
        cluster: "c1".into(),
        cluster_id: 1,
        revision: 1,
        events: Vec::new(),
        writer: String::new(),
    };
    let e = m
        .put(META, &serde_json::to_vec(&other).unwrap(), 4, 10)
        .unwrap_err();
    assert!(e.reason.contains("format"), "{e}");
    assert_eq!(m.remote().unwrap().state, state, "nothing changed");
    // Keys of no record (leases, the old state) are left alone.
    m.put("lease/n1", b"", 1, 11).unwrap();
    m.put(OLD_STATE, b"whatever", 1, 12).unwrap();
    assert_eq!(m.remote().unwrap().state, state);
    m.delete("nodes/n1");
    assert!(!m.remote().unwrap().state.nodes.contains_key("n1"));
}

/// The writes made from a change's events alone keep the stored records
/// equal to the records of the whole state, over random changes; new
/// allocations and identities are the guarded creations.
#[test]
fn writes_from_events_keep_the_records_of_the_whole_state() {
    for seed in 1..=20u64 {
        let mut stored = Records::new();
        crate::store::tests::random_changes(seed, 300, |r, events, step| {
            let ops = change_ops(r, events, |k| stored.contains_key(k)).unwrap();
            for op in ops {
                if op.must_be_new() {
                    assert!(
                        !stored.contains_key(op.key()),
                        "seed {seed} step {step}: {} guarded as new but stored",
                        op.key()
                    );
                }
                match op {
                    Op::Put { key, value, .. } => {
                        stored.insert(key, value);
                    }
                    Op::Delete(key) => {
                        stored.remove(&key);
                    }
                }
            }
            assert_eq!(
                stored,
                records(&r.state()).unwrap(),
                "seed {seed} step {step}: {events:?}"
            );
        });
    }
}

/// A replica that follows the records each change writes (its watch), and
/// takes them record by record, holds what the replica that made the
/// changes holds, over random changes.
#[test]
fn a_follower_taking_each_change_record_by_record_holds_the_leaders_state() {
    for seed in 1..=20u64 {
        let mut stored = Records::new();
        let mut mirror = Mirror::default();
        let mut follower: Option<crate::registry::Registry> = None;
        let mut version = 0;
        crate::store::tests::random_changes(seed, 300, |r, events, step| {
            if events.is_empty() {
                return;
            }
            let f = follower
                .get_or_insert_with(|| crate::registry::Registry::new(r.config().clone()).unwrap());
            for op in change_ops(r, events, |k| stored.contains_key(k)).unwrap() {
                match op {
                    Op::Put { key, value, .. } => {
                        mirror.put(&key, &value, 1, 1).unwrap();
                        stored.insert(key, value);
                    }
                    Op::Delete(key) => {
                        mirror.delete(&key);
                        stored.remove(&key);
                    }
                }
            }
            version += 1;
            let meta = serde_json::to_vec(&Meta {
                format: STATE_FORMAT,
                cluster: "c1".into(),
                cluster_id: 1,
                revision: r.revision(),
                events: events.to_vec(),
                writer: "leader".into(),
            })
            .unwrap();
            mirror.put(META, &meta, version, version).unwrap();
            let patch = mirror.take_patch().unwrap();
            assert_eq!(patch.events, events, "seed {seed} step {step}");
            if let Err(e) = f.apply_records(&patch.changes, 0) {
                panic!("seed {seed} step {step}: {e}; {:?}", patch.changes);
            }
            assert_eq!(f.state(), r.state(), "seed {seed} step {step}: {events:?}");
            assert!(mirror.take_patch().unwrap().changes.nodes.is_empty());
        });
        assert!(follower.is_some(), "seed {seed}: no change made");
    }
}

/// Records a patch cannot judge alone are refused, and leave the
/// registry as it was (the caller reads the whole state instead).
#[test]
fn a_patch_that_does_not_fit_is_refused_and_changes_nothing() {
    let mut r = crate::registry::Registry::new(crate::registry::RegistryConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        lease_ttl_ms: 1000,
        pod_cidrs: Vec::new(),
    })
    .unwrap();
    let nodes = [
        ("n1", "10.1.0.0/24", "10.1.0.10", 1u8),
        ("n2", "10.1.1.0/24", "10.1.1.10", 2),
    ];
    for (name, cidr, ip, key) in nodes {
        use base64::Engine as _;
        let mut node = pb_node(name, cidr);
        node.wg_public_key = base64::engine::general_purpose::STANDARD.encode([key; 32]);
        r.register(Node::try_from(node).unwrap(), 0).unwrap();
        let ep = crate::pb::Endpoint {
            ip: ip.into(),
            name: format!("{name}-a"),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        r.report_endpoints(name, "c1", vec![ep]).unwrap();
    }
    let state = r.state();
    // n2 goes, its endpoints stay: not a state any replica writes.
    let gone = crate::registry::RecordChanges {
        revision: state.revision + 1,
        nodes: [("n2".to_string(), None)].into(),
        ..Default::default()
    };
    let e = r.apply_records(&gone, 0).unwrap_err();
    assert!(e.to_string().contains("n2"), "{e}");
    // An endpoint in another node's CIDR.
    let mut stray = state.endpoints[0].clone();
    stray.ip = "10.1.1.99".parse().unwrap();
    let wrong = crate::registry::RecordChanges {
        revision: state.revision + 1,
        endpoints: [("n1".to_string(), Some(vec![stray]))].into(),
        ..Default::default()
    };
    let e = r.apply_records(&wrong, 0).unwrap_err();
    assert!(
        e.to_string().contains("outside the node's pod CIDRs"),
        "{e}"
    );
    // An identity deleted.
    let id = state.identities[0].id;
    let deleted = crate::registry::RecordChanges {
        revision: state.revision + 1,
        identities: [(id, None)].into(),
        ..Default::default()
    };
    assert!(r.apply_records(&deleted, 0).is_err());
    assert_eq!(r.state(), state);
}
