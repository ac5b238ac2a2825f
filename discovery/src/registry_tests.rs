#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use super::*;
use crate::alloc::tunnel_ip;
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

fn ip(k: u32) -> Option<Ipv4Addr> {
    tunnel_ip(1, k)
}

#[test]
fn register_allocates_and_emits_upsert() {
    let mut r = reg();
    let out = r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    assert_eq!(out.node.tunnel_ip, ip(1));
    assert_eq!(
        out.events,
        vec![Event::Upserted {
            revision: 1,
            node: out.node.clone()
        }]
    );
    assert_eq!(r.revision(), 1);
    let out2 = r.register(node("n2", "10.1.1.0/24", 2), 0).unwrap();
    assert_eq!(out2.node.tunnel_ip, ip(2));
    assert_eq!(out2.events[0].revision(), 2);
    assert_eq!(r.snapshot().nodes.len(), 2);
}

#[test]
fn reregister_identical_is_idempotent_but_renews() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let mut again = node("n1", "10.1.0.0/24", 1);
    again.tunnel_ip = Some(Ipv4Addr::new(1, 2, 3, 4)); // client value is ignored
    let out = r.register(again, 800).unwrap();
    assert!(out.events.is_empty());
    assert_eq!(out.node.tunnel_ip, ip(1));
    assert_eq!(r.revision(), 1);
    assert_eq!(r.lease_expires_at("n1"), Some(800 + TTL));
}

#[test]
fn reregister_with_changes_upserts_and_keeps_ip() {
    let mut r = reg();
    r.register(node("n0", "10.1.5.0/24", 9), 0).unwrap();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    for change in [
        |n: &mut Node| n.listen_port = 51821,
        |n: &mut Node| n.wg_public_key = key(42),
        |n: &mut Node| n.underlay_ip = "198.18.1.99".parse().unwrap(),
    ] {
        let mut n = r.get("n1").unwrap().clone();
        change(&mut n);
        let rev = r.revision();
        let out = r.register(n.clone(), 10).unwrap();
        assert_eq!(out.events.len(), 1, "change must emit one upsert");
        assert_eq!(out.events[0].revision(), rev + 1);
        assert_eq!(out.node.tunnel_ip, ip(2), "tunnel IP is sticky");
        assert_eq!(r.get("n1"), Some(&out.node));
    }
}

#[test]
fn lease_expiry_timing() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.register(node("n2", "10.1.1.0/24", 2), 0).unwrap();
    assert_eq!(r.next_expiry(), Some(TTL));
    r.renew("n2", "c1", 500).unwrap();
    assert!(r.expire(TTL - 1).is_empty());
    let ev = r.expire(TTL);
    assert_eq!(
        ev,
        vec![Event::Removed {
            revision: 3,
            name: "n1".into(),
            cluster: "c1".into(),
            reason: RemoveReason::LeaseExpired
        }]
    );
    assert!(r.get("n1").is_none());
    assert!(r.expire(500 + TTL - 1).is_empty());
    assert_eq!(r.expire(500 + TTL).len(), 1);
    assert!(r.is_empty());
    assert_eq!(r.revision(), 4);
}

#[test]
fn expiring_many_gives_distinct_revisions() {
    let mut r = reg();
    for i in 0..3u8 {
        r.register(node(&format!("n{i}"), &format!("10.1.{i}.0/24"), i), 0)
            .unwrap();
    }
    let revs: Vec<u64> = r.expire(TTL).iter().map(Event::revision).collect();
    assert_eq!(revs, vec![4, 5, 6]);
}

#[test]
fn renew_errors() {
    let mut r = reg();
    let e = r.renew("ghost", "c1", 0).unwrap_err();
    assert!(matches!(e, RegistryError::NotRegistered { .. }), "{e}");
    assert!(e.to_string().contains("register again"));
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.renew("n1", "", 10).unwrap();
    let e = r.renew("n1", "c2", 10).unwrap_err();
    assert!(matches!(e, RegistryError::WrongCluster { .. }), "{e}");
    // lease ran out but not swept yet: not renewed
    let e = r.renew("n1", "c1", 10 + TTL).unwrap_err();
    assert!(matches!(e, RegistryError::NotRegistered { .. }), "{e}");
}

#[test]
fn deregister_is_idempotent_and_frees_ip() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.register(node("n2", "10.1.1.0/24", 2), 0).unwrap();
    let ev = r.deregister("n1", "c1").unwrap();
    assert_eq!(
        ev,
        vec![Event::Removed {
            revision: 3,
            name: "n1".into(),
            cluster: "c1".into(),
            reason: RemoveReason::Deregistered
        }]
    );
    assert!(r.deregister("n1", "c1").unwrap().is_empty());
    assert_eq!(r.revision(), 3);
    assert!(r.deregister("n2", "c9").is_err());
    // freed IP is the lowest free one again
    let out = r.register(node("n3", "10.1.3.0/24", 3), 0).unwrap();
    assert_eq!(out.node.tunnel_ip, ip(1));
}

#[test]
fn allocation_sticky_across_restart_and_leases_restart() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.register(node("n2", "10.1.1.0/24", 2), 0).unwrap();
    r.deregister("n1", "c1").unwrap();
    let state = r.state();
    let json = serde_json::to_string(&state).unwrap();
    let back: RegistryState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let mut r2 = Registry::from_state(r.config().clone(), back, 50_000).unwrap();
    assert_eq!(r2.revision(), 3);
    assert_eq!(r2.get("n2").unwrap().tunnel_ip, ip(2));
    assert_eq!(r2.lease_expires_at("n2"), Some(50_000 + TTL));
    assert!(
        r2.expire(50_000).is_empty(),
        "restart must not expire everyone"
    );
    let out = r2.register(node("n2", "10.1.1.0/24", 2), 50_001).unwrap();
    assert!(out.events.is_empty());
    assert_eq!(out.node.tunnel_ip, ip(2));
}

#[test]
fn from_state_rejects_other_cluster_and_inconsistency() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let other = RegistryConfig {
        cluster: "c2".into(),
        cluster_id: 2,
        lease_ttl_ms: TTL,
        pod_cidrs: Vec::new(),
    };
    let e = Registry::from_state(other, r.state(), 0).unwrap_err();
    assert!(
        e.to_string().contains("belongs to cluster c1 (id 1)"),
        "{e}"
    );
    let mut bad = r.state();
    bad.allocations.clear();
    let e = Registry::from_state(r.config().clone(), bad, 0).unwrap_err();
    assert!(matches!(e, RegistryError::StateInconsistent { .. }), "{e}");
}

#[test]
fn overlap_rejected_naming_other_node() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/16", 1), 0).unwrap();
    let e = r.register(node("n2", "10.1.7.0/24", 2), 0).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::PodCidrOverlap { .. }), "{msg}");
    assert!(
        msg.contains("10.1.7.0/24") && msg.contains("10.1.0.0/16") && msg.contains("node n1"),
        "{msg}"
    );
    assert!(r.get("n2").is_none());
    assert_eq!(r.revision(), 1, "a rejected registration changes nothing");
    // the same node may keep its own range
    r.register(node("n1", "10.1.0.0/16", 1), 1).unwrap();
    // IPv6 and IPv4 never overlap
    r.register(node("n3", "fd00::/64", 3), 1).unwrap();
}

#[test]
fn wrong_cluster_rejected() {
    let mut r = reg();
    let mut p = pb_node("n1", "10.1.0.0/24");
    p.cluster = "c2".into();
    p.cluster_id = 2;
    let e = r.register(Node::try_from(p).unwrap(), 0).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("node n1 says cluster c2 (id 2) but this discovery serves c1 (id 1)"),
        "{e}"
    );
    let mut p = pb_node("n1", "10.1.0.0/24");
    p.cluster_id = 3; // right name, wrong id
    assert!(r.register(Node::try_from(p).unwrap(), 0).is_err());
    assert!(r.is_empty());
}

#[test]
fn duplicate_key_rejected() {
    let mut r = reg();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let e = r.register(node("n2", "10.1.1.0/24", 1), 0).unwrap_err();
    assert!(
        e.to_string().contains("already used by registered node n1"),
        "{e}"
    );
}

#[test]
fn exhaustion_surfaces_as_error_without_change() {
    let mut r = Registry::new(RegistryConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        lease_ttl_ms: TTL,
        pod_cidrs: Vec::new(),
    })
    .unwrap();
    let mut state = r.state();
    for k in crate::alloc::K_MIN..=crate::alloc::K_MAX {
        state
            .allocations
            .insert(format!("ghost{k}"), ip(k).unwrap());
    }
    r = Registry::from_state(r.config().clone(), state, 0).unwrap();
    let e = r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap_err();
    assert!(matches!(e, RegistryError::Alloc(_)), "{e}");
    assert!(r.is_empty());
}

fn reg_with_cidrs(cidrs: &[&str]) -> Registry {
    Registry::new(RegistryConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        lease_ttl_ms: TTL,
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
    })
    .unwrap()
}

#[test]
fn a_node_outside_the_clusters_pod_cidrs_is_refused_naming_both_and_the_fix() {
    let mut r = reg_with_cidrs(&["10.1.0.0/16", "10.11.0.0/16"]);
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.register(node("n2", "10.11.7.0/24", 2), 0).unwrap();
    let mut n3 = node("n3", "10.1.1.0/24", 3);
    // One CIDR inside, one outside.
    n3.pod_cidrs.push("10.2.0.0/24".parse().unwrap());
    let e = r.register(n3, 0).unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::Invalid(ModelError::PodCidrOutsideCluster { .. })
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "node n3: pod CIDR 10.2.0.0/24 is outside the pod CIDRs of cluster c1 \
         (10.1.0.0/16, 10.11.0.0/16); give the node a range inside them (the agent's \
         --pod-cidr), or add its range to discovery's --pod-cidr"
    );
    // Wider than a cluster CIDR it contains: outside too.
    let e = r.register(node("n4", "10.0.0.0/15", 4), 0).unwrap_err();
    assert!(e.to_string().contains("pod CIDR 10.0.0.0/15"), "{e}");
    assert_eq!(r.len(), 2, "nothing registered");
    assert_eq!(r.revision(), 2, "no revision taken");
    // Without cluster CIDRs any range goes (as before).
    reg().register(node("n3", "10.2.0.0/24", 3), 0).unwrap();
}

#[test]
fn the_snapshot_lists_this_clusters_cidrs() {
    let r = reg_with_cidrs(&["10.1.0.0/16"]);
    let s = r.snapshot();
    assert_eq!(s.clusters.len(), 1);
    assert_eq!(s.clusters[0], r.own_cidrs());
    assert_eq!(
        (s.clusters[0].cluster.as_str(), s.clusters[0].cluster_id),
        ("c1", 1)
    );
    assert_eq!(s.clusters[0].pod_cidrs[0].to_string(), "10.1.0.0/16");
    // None configured: the entry is there, empty.
    assert!(reg().snapshot().clusters[0].pod_cidrs.is_empty());
}
