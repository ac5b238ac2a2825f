#![allow(clippy::unwrap_used)]
use super::*;
use crate::model::Node;
use crate::registry::{Registry, RegistryConfig};
use crate::test_support::pb_node;

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        lease_ttl_ms: 1000,
        pod_cidrs: Vec::new(),
    })
    .unwrap()
}

fn node(name: &str, cidr: &str, key: u8) -> Node {
    use base64::Engine as _;
    let mut pb = pb_node(name, cidr);
    pb.wg_public_key = base64::engine::general_purpose::STANDARD.encode([key; 32]);
    Node::try_from(pb).unwrap()
}

fn ep(ip: &str, app: &str) -> crate::pb::Endpoint {
    crate::pb::Endpoint {
        ip: ip.into(),
        name: format!("pod-{ip}"),
        labels: [("app".to_string(), app.to_string())].into(),
        ..Default::default()
    }
}

/// Events with their revisions zeroed, to compare kinds and contents.
fn unstamped(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| crate::federation::with_revision(e.clone(), 0))
        .collect()
}

fn remote(state: RegistryState, events: Vec<Event>, version: i64) -> RemoteState {
    RemoteState {
        state,
        events,
        version,
        mod_revision: version * 10,
    }
}

#[test]
fn unchanged_state_gives_no_events() {
    let mut r = registry();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    assert!(diff(&r.state(), &r.state()).is_empty());
}

#[test]
fn diff_reports_new_nodes_identities_and_endpoints() {
    let mut r = registry();
    let before = r.state();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.report_endpoints("n1", "c1", vec![ep("10.1.0.10", "web")])
        .unwrap();
    let after = r.state();
    let events = diff(&before, &after);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        matches!(&events[0], Event::IdentityAdded { identity, .. } if identity.id == (1 << 16) | 256)
    );
    assert!(
        matches!(&events[1], Event::Upserted { node, .. } if node.name == "n1" && node.tunnel_ip.is_some())
    );
    assert!(
        matches!(&events[2], Event::EndpointUpserted { endpoint, .. } if endpoint.ip.to_string() == "10.1.0.10")
    );
}

#[test]
fn diff_reports_removed_endpoints_before_their_node() {
    let mut r = registry();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    r.register(node("n2", "10.1.1.0/24", 2), 0).unwrap();
    r.report_endpoints("n1", "c1", vec![ep("10.1.0.10", "web")])
        .unwrap();
    let before = r.state();
    r.deregister("n1", "c1").unwrap();
    let events = diff(&before, &r.state());
    assert_eq!(
        unstamped(&events),
        vec![
            Event::EndpointRemoved {
                revision: 0,
                ip: "10.1.0.10".parse().unwrap(),
                node: "n1".into(),
                cluster: "c1".into(),
            },
            Event::Removed {
                revision: 0,
                name: "n1".into(),
                cluster: "c1".into(),
                reason: RemoveReason::Deregistered,
            },
        ]
    );
}

#[test]
fn changed_node_is_upserted() {
    let mut r = registry();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let before = r.state();
    r.register(node("n1", "10.1.0.0/24", 9), 0).unwrap();
    let events = diff(&before, &r.state());
    assert!(
        matches!(&events[..], [Event::Upserted { node, .. }] if node.wg_public_key == node_key(9)),
        "{events:?}"
    );
}

fn node_key(b: u8) -> String {
    node("x", "10.9.0.0/24", b).wg_public_key
}

#[test]
fn next_version_uses_the_stored_events_and_a_gap_falls_back_to_the_diff() {
    let mut r = registry();
    r.register(node("n1", "10.1.0.0/24", 1), 0).unwrap();
    let held = r.state();
    let expired = r.expire(5000);
    assert_eq!(expired.len(), 1);
    let next = remote(r.state(), expired.clone(), 4);
    // The change right after ours: its own events, with the real reason.
    assert_eq!(events_for(&held, 3, &next), expired);
    assert!(matches!(
        &events_for(&held, 3, &next)[..],
        [Event::Removed {
            reason: RemoveReason::LeaseExpired,
            ..
        }]
    ));
    // Versions were missed: the stored events describe only the last change.
    let gap = events_for(&held, 2, &next);
    assert!(matches!(
        &gap[..],
        [Event::Removed {
            reason: RemoveReason::Deregistered,
            ..
        }]
    ));
}
