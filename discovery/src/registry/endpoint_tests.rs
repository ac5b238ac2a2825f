#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use super::*;
use crate::identity::identity;
use crate::pb;
use crate::test_support::{key, pb_node};

const TTL: u64 = 1000;

fn reg() -> Registry {
    Registry::new(RegistryConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        lease_ttl_ms: TTL,
        pod_cidrs: Vec::new(),
    })
    .unwrap()
}

fn node(name: &str, cidr: &str, key_byte: u8) -> Node {
    let mut p = pb_node(name, cidr);
    p.wg_public_key = key(key_byte);
    Node::try_from(p).unwrap()
}

fn ep(name: &str, ip: &str, app: &str) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        name: name.into(),
        namespace: String::new(),
        labels: [("app".to_string(), app.to_string())].into(),
        node: String::new(),
        cluster: String::new(),
        identity: 0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// n1 (10.1.0.0/24) and n2 (10.1.1.0/24), each with a web and a db pod.
fn two_nodes_reported() -> Registry {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.register(node("n2", "10.1.1.0/24", 2), 0).unwrap();
    r.report_endpoints(
        "n1",
        "c1",
        vec![
            ep("n1-a", "10.1.0.10", "web"),
            ep("n1-b", "10.1.0.11", "db"),
        ],
    )
    .unwrap();
    r.report_endpoints(
        "n2",
        "c1",
        vec![
            ep("n2-a", "10.1.1.10", "web"),
            ep("n2-b", "10.1.1.11", "db"),
        ],
    )
    .unwrap();
    r
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            Event::Upserted { .. } => "node+",
            Event::Removed { .. } => "node-",
            Event::EndpointUpserted { .. } => "ep+",
            Event::EndpointRemoved { .. } => "ep-",
            Event::IdentityAdded { .. } => "id+",
            Event::ServiceUpdated { .. } => "svc~",
            Event::ServiceBackends { .. } => "svc+-",
            Event::MeshCidrs { .. } => "cidrs",
        })
        .collect()
}

#[test]
fn report_allocates_identities_and_emits_one_event_per_change() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let out = r
        .report_endpoints(
            "n1",
            "c1",
            vec![
                ep("n1-a", "10.1.0.10", "web"),
                ep("n1-b", "10.1.0.11", "db"),
            ],
        )
        .unwrap();
    assert_eq!(kinds(&out.events), ["id+", "id+", "ep+", "ep+"]);
    let revs: Vec<u64> = out.events.iter().map(Event::revision).collect();
    assert_eq!(revs, [2, 3, 4, 5], "one revision per event");
    assert_eq!(out.endpoints.len(), 2);
    let a = r.endpoint(&ip("10.1.0.10")).unwrap();
    assert_eq!(a.identity, identity(1, 256));
    assert_eq!((a.node.as_str(), a.cluster.as_str()), ("n1", "c1"));
    assert_eq!(
        r.endpoint(&ip("10.1.0.11")).unwrap().identity,
        identity(1, 257)
    );
    let labels = r.identities().labels(identity(1, 256)).unwrap();
    assert_eq!(labels["app"], "web");
    assert_eq!(labels["io.kubernetes.pod.namespace"], "default");
    assert_eq!(labels["io.cilium.k8s.policy.cluster"], "c1");
}

#[test]
fn same_labels_share_identity_across_nodes() {
    let r = two_nodes_reported();
    let id = |s| r.endpoint(&ip(s)).unwrap().identity;
    assert_eq!(id("10.1.0.10"), id("10.1.1.10"));
    assert_eq!(id("10.1.0.11"), id("10.1.1.11"));
    assert_ne!(id("10.1.0.10"), id("10.1.0.11"));
    assert_eq!(r.identities().len(), 2);
    let snap = r.snapshot();
    assert_eq!(snap.endpoints.len(), 4);
    assert_eq!(snap.identities.len(), 2);
}

#[test]
fn rereport_identical_is_idempotent_and_one_change_is_one_upsert() {
    let mut r = two_nodes_reported();
    let rev = r.revision();
    let same = vec![
        ep("n1-a", "10.1.0.10", "web"),
        ep("n1-b", "10.1.0.11", "db"),
    ];
    assert!(r
        .report_endpoints("n1", "", same)
        .unwrap()
        .events
        .is_empty());
    assert_eq!(r.revision(), rev);
    // n1-b changes its labels to an existing set: exactly one upsert
    let changed = vec![
        ep("n1-a", "10.1.0.10", "web"),
        ep("n1-b", "10.1.0.11", "web"),
    ];
    let out = r.report_endpoints("n1", "c1", changed).unwrap();
    assert_eq!(kinds(&out.events), ["ep+"]);
    match &out.events[0] {
        Event::EndpointUpserted { revision, endpoint } => {
            assert_eq!(*revision, rev + 1);
            assert_eq!(endpoint.ip, ip("10.1.0.11"));
            assert_eq!(endpoint.identity, identity(1, 256));
        }
        other => panic!("expected an endpoint upsert, got {other:?}"),
    }
    // a pod that goes away is one removal; a new label set one identity + one upsert
    let out = r
        .report_endpoints(
            "n1",
            "c1",
            vec![
                ep("n1-a", "10.1.0.10", "web"),
                ep("n1-c", "10.1.0.12", "cache"),
            ],
        )
        .unwrap();
    assert_eq!(kinds(&out.events), ["id+", "ep-", "ep+"]);
    assert!(r.endpoint(&ip("10.1.0.11")).is_none());
    assert_eq!(
        r.endpoint(&ip("10.1.0.12")).unwrap().identity,
        identity(1, 258)
    );
}

#[test]
fn node_expiry_and_deregistration_remove_its_endpoints() {
    let mut r = two_nodes_reported();
    r.renew("n1", "c1", 500).unwrap();
    let events = r.expire(TTL);
    assert_eq!(kinds(&events), ["ep-", "ep-", "node-"]);
    assert!(r.endpoints_of("n2").is_empty());
    assert_eq!(r.endpoints_of("n1").len(), 2);
    let events = r.deregister("n1", "c1").unwrap();
    assert_eq!(kinds(&events), ["ep-", "ep-", "node-"]);
    assert!(r.snapshot().endpoints.is_empty());
    // identities stay allocated
    assert_eq!(r.snapshot().identities.len(), 2);
}

#[test]
fn ip_outside_pod_cidr_is_refused_naming_endpoint_ip_and_cidr() {
    let mut r = two_nodes_reported();
    let rev = r.revision();
    let e = r
        .report_endpoints(
            "n1",
            "c1",
            vec![ep("n1-a", "10.1.0.10", "web"), ep("stray", "10.9.0.5", "x")],
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, RegistryError::EndpointOutsidePodCidr { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("default/stray") && msg.contains("10.9.0.5") && msg.contains("10.1.0.0/24"),
        "{msg}"
    );
    assert_eq!(r.revision(), rev, "a refused report changes nothing");
    assert_eq!(r.identities().len(), 2, "no identity allocated for it");
}

#[test]
fn ip_claimed_twice_is_refused() {
    let mut r = two_nodes_reported();
    let e = r
        .report_endpoints(
            "n1",
            "c1",
            vec![ep("x", "10.1.0.10", "web"), ep("y", "10.1.0.10", "db")],
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("default/x of node n1 already has"),
        "{e}"
    );
    // An IP freed by a node that left can be claimed by the next one.
    let mut r2 = reg();
    r2.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r2.report_endpoints("n1", "c1", vec![ep("a", "10.1.0.10", "web")])
        .unwrap();
    r2.deregister("n1", "c1").unwrap();
    r2.register(node("n2", "10.1.0.0/24", 2), 0).unwrap();
    assert!(r2
        .report_endpoints("n2", "c1", vec![ep("a", "10.1.0.10", "web")])
        .is_ok());
}

#[test]
fn report_of_unregistered_node_or_other_cluster_fails() {
    let mut r = reg();
    let e = r.report_endpoints("n1", "c1", vec![]).unwrap_err();
    assert!(matches!(e, RegistryError::NotRegistered { .. }), "{e}");
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let e = r.report_endpoints("n1", "c2", vec![]).unwrap_err();
    assert!(matches!(e, RegistryError::WrongCluster { .. }), "{e}");
}

#[test]
fn pod_cidr_change_drops_endpoints_outside() {
    let mut r = two_nodes_reported();
    let out = r.register(node("n1", "10.1.5.0/24", 1), 10).unwrap();
    assert_eq!(kinds(&out.events), ["node+", "ep-", "ep-"]);
    assert!(r.endpoints_of("n1").is_empty());
}

#[test]
fn restart_keeps_identities_and_endpoints() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    // db first, so a fresh allocator would number them the other way round
    r.report_endpoints("n1", "c1", vec![ep("n1-b", "10.1.0.11", "db")])
        .unwrap();
    r.report_endpoints(
        "n1",
        "c1",
        vec![
            ep("n1-a", "10.1.0.10", "web"),
            ep("n1-b", "10.1.0.11", "db"),
        ],
    )
    .unwrap();
    let state = r.state();
    let json = serde_json::to_string(&state).unwrap();
    let back: RegistryState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let mut r2 = Registry::from_state(r.config().clone(), back, 0).unwrap();
    assert_eq!(r2.snapshot(), r.snapshot());
    assert_eq!(
        r2.endpoint(&ip("10.1.0.11")).unwrap().identity,
        identity(1, 256)
    );
    // after the restart, the node reports again: nothing changes
    let out = r2
        .report_endpoints(
            "n1",
            "c1",
            vec![
                ep("n1-a", "10.1.0.10", "web"),
                ep("n1-b", "10.1.0.11", "db"),
            ],
        )
        .unwrap();
    assert!(out.events.is_empty(), "{:?}", out.events);
    // even when every endpoint was gone meanwhile, identities are kept
    r2.deregister("n1", "c1").unwrap();
    r2.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r2.report_endpoints("n1", "c1", vec![ep("n1-a", "10.1.0.10", "web")])
        .unwrap();
    assert_eq!(
        r2.endpoint(&ip("10.1.0.10")).unwrap().identity,
        identity(1, 257)
    );
}

#[test]
fn old_state_without_endpoints_or_identities_loads() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(r.state()).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("endpoints");
    obj.remove("identities");
    let state: RegistryState = serde_json::from_value(json).unwrap();
    let r2 = Registry::from_state(r.config().clone(), state, 0).unwrap();
    assert_eq!(r2.len(), 1);
    assert!(r2.identities().is_empty());
}

#[test]
fn stored_endpoint_with_wrong_identity_is_inconsistent() {
    let r = two_nodes_reported();
    let mut state = r.state();
    state.endpoints[0].identity = identity(1, 999);
    let e = Registry::from_state(r.config().clone(), state, 0).unwrap_err();
    assert!(matches!(e, RegistryError::StateInconsistent { .. }), "{e}");
    let mut state = r.state();
    state.nodes.remove("n2");
    state.allocations.remove("n2");
    let e = Registry::from_state(r.config().clone(), state, 0).unwrap_err();
    assert!(e.to_string().contains("its node is not stored"), "{e}");
}
