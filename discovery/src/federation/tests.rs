#![allow(clippy::unwrap_used)]

use super::*;
use crate::alloc::tunnel_ip;
use crate::model::{Node, RemoveReason};
use crate::pb;
use crate::test_support::key;

fn pnode(cluster: &str, id: u8, name: &str, cidr: &str, k: u32) -> pb::Node {
    pb::Node {
        name: name.into(),
        cluster: cluster.into(),
        cluster_id: u32::from(id),
        underlay_ip: format!("198.18.{id}.{}", 9 + k),
        listen_port: 51820,
        wg_public_key: key(u8::try_from(k).unwrap() + 10 * id),
        pod_cidrs: vec![cidr.into()],
        tunnel_ip: tunnel_ip(id, k).unwrap().to_string(),
        roles: vec![],
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    }
}

fn pep(cluster: &str, node: &str, ip: &str, identity: u32) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        name: format!("pod-{ip}"),
        namespace: "default".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        node: node.into(),
        cluster: cluster.into(),
        identity,
    }
}

fn pid(id: u32) -> pb::Identity {
    pb::Identity {
        id,
        labels: [("app".to_string(), "web".to_string())].into(),
    }
}

/// Cluster c2 (id 2): nodes n1 10.2.0.0/24 and n2 10.2.1.0/24, one pod each.
fn c2_snapshot() -> pb::Snapshot {
    pb::Snapshot {
        revision: 7,
        nodes: vec![
            pnode("c2", 2, "n1", "10.2.0.0/24", 1),
            pnode("c2", 2, "n2", "10.2.1.0/24", 2),
        ],
        endpoints: vec![
            pep("c2", "n1", "10.2.0.10", 2 << 16 | 256),
            pep("c2", "n2", "10.2.1.10", 2 << 16 | 256),
        ],
        identities: vec![pid(2 << 16 | 256)],
        cluster: "c2".into(),
        cluster_id: 2,
        ..Default::default()
    }
}

fn local_nodes() -> Vec<Node> {
    vec![Node::try_from(pnode("c1", 1, "n1", "10.1.0.0/24", 1)).unwrap()]
}

fn imports() -> Imports {
    Imports::new(&[
        "c2=http://198.18.2.2:7100".parse().unwrap(),
        "c3=http://198.18.3.2:7100".parse().unwrap(),
    ])
}

fn update(i: &mut Imports, name: &str, view: &mut RemoteView, now: u64) -> Update {
    let nodes = local_nodes();
    let refs: Vec<&Node> = nodes.iter().collect();
    let local = Local {
        cluster: "c1",
        cluster_id: 1,
        pod_cidrs: &[],
        nodes: &refs,
    };
    i.update(name, view, &local, now)
}

fn reasons(u: &Update) -> Vec<(&str, RejectReason)> {
    u.new_rejections
        .iter()
        .map(|r| (r.key.as_str(), r.reason))
        .collect()
}

fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Upserted { node, .. } => format!("+node {}/{}", node.cluster, node.name),
            Event::Removed { name, cluster, .. } => format!("-node {cluster}/{name}"),
            Event::EndpointUpserted { endpoint, .. } => format!("+ep {}", endpoint.ip),
            Event::EndpointRemoved { ip, .. } => format!("-ep {ip}"),
            Event::IdentityAdded { identity, .. } => format!("+id {}", identity.id),
            Event::ServiceUpdated { service, .. } => format!("~svc {}", service.key()),
            Event::ServiceBackends {
                namespace, name, ..
            } => format!("~backends {namespace}/{name}"),
            Event::MeshCidrs { clusters, .. } => format!("cidrs {}", clusters.len()),
        })
        .collect()
}

#[test]
fn remote_spec_parses_and_config_is_checked() {
    let r: RemoteConfig = "c2=http://198.18.2.2:7100".parse().unwrap();
    assert_eq!(
        (r.name.as_str(), r.url.as_str()),
        ("c2", "http://198.18.2.2:7100")
    );
    assert_eq!(r.urls, ["http://198.18.2.2:7100"]);
    let two: RemoteConfig = "c2=https://198.18.2.2:7100, https://198.18.2.3:7100"
        .parse()
        .unwrap();
    assert_eq!(
        two.urls,
        ["https://198.18.2.2:7100", "https://198.18.2.3:7100"]
    );
    assert_eq!(two.url, "https://198.18.2.2:7100,https://198.18.2.3:7100");
    for bad in [
        "c2",
        "=http://1.2.3.4:1",
        "c2=198.18.2.2:7100",
        "c2=http://198.18.2.2:7100,",
        "c2=http://198.18.2.2:7100,https://198.18.2.3:7100",
    ] {
        let e = bad.parse::<RemoteConfig>().unwrap_err().to_string();
        assert!(e.contains("NAME=http://IP:PORT"), "{e}");
    }
    let mut cfg = FederationConfig {
        remotes: vec![r.clone(), r.clone()],
        ..FederationConfig::default()
    };
    assert!(cfg
        .validate("c1")
        .unwrap_err()
        .to_string()
        .contains("twice"));
    cfg.remotes = vec![r];
    assert!(cfg
        .validate("c2")
        .unwrap_err()
        .to_string()
        .contains("own cluster"));
    assert!(cfg.validate("c1").is_ok());
}

#[test]
fn a_good_remote_is_imported_in_order_and_a_resync_without_change_is_silent() {
    let mut i = imports();
    let mut view = RemoteView::from_snapshot(c2_snapshot());
    let u = update(&mut i, "c2", &mut view, 0);
    assert!(u.new_rejections.is_empty(), "{:?}", u.new_rejections);
    assert_eq!(
        kinds(&u.events),
        [
            "+id 131328",
            "+node c2/n1",
            "+node c2/n2",
            "+ep 10.2.0.10",
            "+ep 10.2.1.10"
        ]
    );
    assert!(u.events.iter().all(|e| e.revision() == 0));
    assert_eq!(i.nodes().count(), 2);
    assert_eq!(i.endpoints().count(), 2);
    // The same snapshot again (a reconnect): nothing.
    i.disconnected("c2", "stream broke".into(), 100);
    let again = update(&mut i, "c2", &mut view, 200);
    assert!(again.events.is_empty(), "{:?}", again.events);
    let s = &i.status(300)[0];
    assert!(s.connected && s.disconnected_ms.is_none() && s.last_error.is_empty());
    // A reconnect whose snapshot lost n2: its endpoint, then it, go.
    let mut snap = c2_snapshot();
    snap.nodes.pop();
    snap.endpoints.pop();
    let u = update(&mut i, "c2", &mut RemoteView::from_snapshot(snap), 300);
    assert_eq!(kinds(&u.events), ["-ep 10.2.1.10", "-node c2/n2"]);
}

#[test]
fn events_after_the_snapshot_change_the_view() {
    let mut view = RemoteView::from_snapshot(c2_snapshot());
    view.apply(pb::watch_event::Event::EndpointRemoved(
        pb::EndpointRemoved {
            revision: 8,
            ip: "10.2.0.10".into(),
            node: "n2".into(), // not the holder: ignored
            cluster: "c2".into(),
        },
    ));
    assert_eq!(view.endpoints.len(), 2);
    view.apply(pb::watch_event::Event::Removed(pb::NodeRemoved {
        revision: 9,
        name: "n2".into(),
        cluster: "c2".into(),
        reason: 1,
    }));
    assert_eq!(view.nodes.len(), 1);
    assert_eq!(view.revision, 9);
    let mut i = imports();
    let u = update(&mut i, "c2", &mut view, 0);
    // n2's endpoint stays in the view but its node is gone: rejected.
    assert_eq!(
        reasons(&u),
        [("endpoint 10.2.1.10", RejectReason::EndpointOutsidePodCidr)]
    );
}

#[test]
fn a_remote_claiming_our_cluster_id_gets_nothing_applied() {
    let mut i = imports();
    let mut snap = c2_snapshot();
    snap.cluster_id = 1;
    let u = update(&mut i, "c2", &mut RemoteView::from_snapshot(snap), 0);
    assert!(u.events.is_empty());
    assert_eq!(reasons(&u), [("cluster", RejectReason::ClusterId)]);
    assert!(u.new_rejections[0].detail.contains("this cluster's (c1)"));
    assert_eq!(i.nodes().count(), 0);
    let s = &i.status(0)[0];
    assert_eq!(s.rejected[&RejectReason::ClusterId], 1);
    assert!(!s.connected && s.last_error.contains("claims cluster id 1"));
}

#[test]
fn a_remote_claiming_another_remotes_cluster_id_is_rejected_naming_it() {
    let mut i = imports();
    update(
        &mut i,
        "c2",
        &mut RemoteView::from_snapshot(c2_snapshot()),
        0,
    );
    let mut snap = c2_snapshot();
    snap.cluster = "c3".into();
    let mut view = RemoteView::from_snapshot(snap);
    let u = update(&mut i, "c3", &mut view, 0);
    assert_eq!(reasons(&u), [("cluster", RejectReason::ClusterId)]);
    assert!(
        u.new_rejections[0]
            .detail
            .contains("which remote c2 already has"),
        "{}",
        u.new_rejections[0].detail
    );
    // Counted once, not again on every event of the same view.
    let u = update(&mut i, "c3", &mut view, 10);
    assert!(u.new_rejections.is_empty());
    assert_eq!(i.status(10)[1].rejected[&RejectReason::ClusterId], 1);
}

#[test]
fn a_remote_serving_another_cluster_name_is_rejected() {
    let mut i = imports();
    let u = update(
        &mut i,
        "c3",
        &mut RemoteView::from_snapshot(c2_snapshot()),
        0,
    );
    assert_eq!(reasons(&u), [("cluster", RejectReason::ClusterName)]);
    assert_eq!(i.nodes().count(), 0);
}

#[test]
fn bad_records_are_rejected_one_by_one_and_the_rest_imported() {
    let mut snap = c2_snapshot();
    // A node of a third cluster (re-exported) and one of ours, claimed by c2.
    snap.nodes.push(pnode("c3", 3, "n9", "10.3.0.0/24", 1));
    // A node overlapping our n1's pod CIDR.
    snap.nodes.push(pnode("c2", 2, "n3", "10.1.0.0/25", 3));
    // A node whose tunnel IP lies in cluster 1's block.
    let mut hijack = pnode("c2", 2, "n4", "10.2.4.0/24", 4);
    hijack.tunnel_ip = tunnel_ip(1, 1).unwrap().to_string();
    snap.nodes.push(hijack);
    // A node that says another cluster ID.
    snap.nodes.push(pnode("c2", 5, "n5", "10.2.5.0/24", 5));
    // An unreadable node.
    let mut broken = pnode("c2", 2, "n6", "10.2.6.0/24", 6);
    broken.wg_public_key = "nope".into();
    snap.nodes.push(broken);
    // Identity in cluster 1's range, an endpoint using it, one outside its
    // node's CIDR, one of a third cluster.
    snap.identities.push(pid(1 << 16 | 256));
    snap.endpoints
        .push(pep("c2", "n1", "10.2.0.11", 1 << 16 | 256));
    snap.endpoints
        .push(pep("c2", "n1", "10.2.1.99", 2 << 16 | 256));
    snap.endpoints
        .push(pep("c3", "n9", "10.3.0.10", 3 << 16 | 256));
    let mut i = imports();
    let u = update(&mut i, "c2", &mut RemoteView::from_snapshot(snap), 0);
    let mut got = reasons(&u);
    got.sort();
    let mut want = vec![
        ("node c3/n9", RejectReason::ClusterName),
        ("node c2/n3", RejectReason::PodCidrOverlap),
        ("node c2/n4", RejectReason::TunnelIpRange),
        ("node c2/n5", RejectReason::ClusterId),
        ("node c2/n6", RejectReason::Invalid),
        ("identity 65792", RejectReason::IdentityRange),
        ("endpoint 10.2.0.11", RejectReason::IdentityRange),
        ("endpoint 10.2.1.99", RejectReason::EndpointOutsidePodCidr),
        ("endpoint 10.3.0.10", RejectReason::ClusterName),
    ];
    want.sort();
    assert_eq!(got, want);
    let overlap = u
        .new_rejections
        .iter()
        .find(|r| r.reason == RejectReason::PodCidrOverlap)
        .unwrap();
    assert!(
        overlap.detail.contains("10.1.0.0/25") && overlap.detail.contains("node c1/n1"),
        "{}",
        overlap.detail
    );
    // The good records still came in.
    let mut names: Vec<String> = i.nodes().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2"]);
    assert_eq!(i.endpoints().count(), 2);
    assert_eq!(i.identities().count(), 1);
    let s = &i.status(0)[0];
    assert_eq!(s.rejected[&RejectReason::EndpointOutsidePodCidr], 1);
    assert_eq!(s.rejected[&RejectReason::IdentityRange], 2);
}

#[test]
fn pod_cidrs_of_another_remote_are_protected() {
    let mut i = imports();
    update(
        &mut i,
        "c2",
        &mut RemoteView::from_snapshot(c2_snapshot()),
        0,
    );
    let snap = pb::Snapshot {
        revision: 1,
        nodes: vec![pnode("c3", 3, "n1", "10.2.0.0/16", 1)],
        endpoints: vec![],
        identities: vec![],
        cluster: "c3".into(),
        cluster_id: 3,
        ..Default::default()
    };
    let u = update(&mut i, "c3", &mut RemoteView::from_snapshot(snap), 0);
    assert_eq!(reasons(&u), [("node c3/n1", RejectReason::PodCidrOverlap)]);
    assert!(u.new_rejections[0].detail.contains("node c2/n1"));
}

#[test]
fn state_survives_a_broken_link_until_the_timeout() {
    let mut i = imports();
    update(
        &mut i,
        "c2",
        &mut RemoteView::from_snapshot(c2_snapshot()),
        0,
    );
    i.disconnected("c2", "connection refused".into(), 1_000);
    assert!(i.expire(60_999, 60_000).is_empty());
    assert_eq!(i.nodes().count(), 2);
    let s = &i.status(31_000)[0];
    assert_eq!(s.disconnected_ms, Some(30_000));
    assert!(!s.connected && s.last_error == "connection refused");
    let gone = i.expire(61_000, 60_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].0, "c2");
    assert_eq!(
        kinds(&gone[0].1),
        [
            "-ep 10.2.0.10",
            "-ep 10.2.1.10",
            "-node c2/n1",
            "-node c2/n2"
        ]
    );
    assert!(gone[0].1.iter().any(|e| matches!(
        e,
        Event::Removed {
            reason: RemoveReason::LeaseExpired,
            ..
        }
    )));
    assert_eq!(i.nodes().count(), 0);
    // Identities are never removed.
    assert_eq!(i.identities().count(), 1);
    // Expired once only; a failing reconnect does not restart the clock.
    i.disconnected("c2", "connection refused".into(), 62_000);
    assert!(i.expire(200_000, 60_000).is_empty());
    // Its cluster ID is free again.
    assert_eq!(i.status(0)[0].cluster_id, None);
}

#[test]
fn revisions_are_restamped_and_locality_is_told() {
    let mut i = imports();
    let u = update(
        &mut i,
        "c2",
        &mut RemoteView::from_snapshot(c2_snapshot()),
        0,
    );
    for (k, e) in u.events.into_iter().enumerate() {
        let e = with_revision(e, 100 + k as u64);
        assert_eq!(e.revision(), 100 + k as u64);
        assert!(!is_local(&e, "c1", 1));
        assert!(is_local(&e, "c2", 2));
    }
}

fn psvc(cluster: &str, name: &str, annotations: &[(&str, &str)]) -> pb::Service {
    pb::Service {
        vip: String::new(),
        name: name.into(),
        namespace: "default".into(),
        cluster: cluster.into(),
        ports: vec![pb::ServicePort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
        }],
        selector: [("app".to_string(), "web".to_string())].into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        exported: false,
    }
}

#[test]
fn a_remote_may_claim_only_its_own_valid_services() {
    let mut i = imports();
    let mut snap = c2_snapshot();
    snap.services = vec![
        psvc("c2", "web", &[("service.cilium.io/global", "true")]),
        psvc("c1", "stolen", &[]),
        psvc("c2", "bad", &[("service.cilium.io/affinity", "near")]),
    ];
    let u = update(&mut i, "c2", &mut RemoteView::from_snapshot(snap), 0);
    assert_eq!(
        reasons(&u),
        vec![
            ("service default/stolen", RejectReason::ClusterName),
            ("service default/bad", RejectReason::Invalid),
        ]
    );
    let names: Vec<String> = u.services.unwrap().iter().map(|s| s.key()).collect();
    assert_eq!(names, vec!["default/web".to_string()]);
    // The same definitions again (a reconnect): not handed out again.
    let mut snap = c2_snapshot();
    snap.services = vec![psvc("c2", "web", &[("service.cilium.io/global", "true")])];
    let u = update(&mut i, "c2", &mut RemoteView::from_snapshot(snap), 10);
    assert!(u.services.is_none());
}

#[test]
fn imported_identities_leave_the_view_and_a_resync_stays_silent() {
    let mut i = imports();
    let mut snap = c2_snapshot();
    // A second identity out of c2's range: rejected, so it stays in the view.
    snap.identities.push(pid(3 << 16 | 256));
    let mut view = RemoteView::from_snapshot(snap.clone());
    let u = update(&mut i, "c2", &mut view, 1);
    assert!(kinds(&u.events).contains(&format!("+id {}", 2 << 16 | 256)));
    assert_eq!(
        reasons(&u),
        vec![("identity 196864", RejectReason::IdentityRange)]
    );
    i.release("c2", &mut view);
    assert!(view.services.is_empty());
    assert_eq!(
        view.identities.keys().copied().collect::<Vec<u32>>(),
        vec![3 << 16 | 256],
        "the imported identity left the view, the rejected one stayed"
    );
    assert_eq!(i.identities().count(), 1, "still imported");

    // A whole check of the released view: nothing changes, the rejection
    // is still known (not counted again).
    let u = update(&mut i, "c2", &mut view, 2);
    assert!(u.events.is_empty(), "{:?}", kinds(&u.events));
    assert!(u.new_rejections.is_empty());
    let status = i.status(2);
    assert_eq!(
        status[0].rejected.get(&RejectReason::IdentityRange),
        Some(&1)
    );
    assert_eq!(status[0].identities, 1);

    // A node event after the release is judged one by one as before.
    let mut n = pnode("c2", 2, "n3", "10.2.2.0/24", 3);
    n.listen_port = 51821;
    let touched = view.apply(pb::watch_event::Event::Upserted(pb::NodeUpserted {
        revision: 8,
        node: Some(n),
    }));
    let nodes = local_nodes();
    let refs: Vec<&Node> = nodes.iter().collect();
    let local = Local {
        cluster: "c1",
        cluster_id: 1,
        pod_cidrs: &[],
        nodes: &refs,
    };
    let u = i.apply("c2", &mut view, &touched, &local, 3);
    assert_eq!(kinds(&u.events), vec!["+node c2/n3"]);

    // A resync (the same snapshot again) brings them back; nothing changes.
    let mut view = RemoteView::from_snapshot(snap);
    let u = update(&mut i, "c2", &mut view, 4);
    assert_eq!(kinds(&u.events), vec!["-node c2/n3"]);
    assert!(u.new_rejections.is_empty());

    // Not judged (never connected): nothing is dropped.
    let mut other = RemoteView::from_snapshot(c2_snapshot());
    i.release("c3", &mut other);
    assert_eq!(other.identities.len(), 1);
}

fn held_keys<T>(records: &std::collections::BTreeMap<String, Option<Box<T>>>) -> Vec<&str> {
    records
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(k, _)| k.as_str())
        .collect()
}

#[test]
fn records_imported_as_sent_leave_the_view_and_come_back_when_judged_again() {
    let mut i = imports();
    let mut snap = c2_snapshot();
    // Outside every node's CIDR: rejected, so it stays in the view.
    snap.endpoints
        .push(pep("c2", "n1", "10.2.9.9", 2 << 16 | 256));
    let mut view = RemoteView::from_snapshot(snap);
    update(&mut i, "c2", &mut view, 0);
    assert_eq!(held_keys(&view.nodes), Vec::<&str>::new());
    assert_eq!(held_keys(&view.endpoints), vec!["10.2.9.9"]);
    assert_eq!(view.endpoints.len(), 3, "released records keep their keys");

    let nodes = local_nodes();
    let refs: Vec<&Node> = nodes.iter().collect();
    let local = Local {
        cluster: "c1",
        cluster_id: 1,
        pod_cidrs: &[],
        nodes: &refs,
    };
    // n1 moves to 10.2.9.0/24: its released pod 10.2.0.10 is judged again
    // (from the imported record) and is now outside: removed, and held in
    // the view as sent; the pod that was outside is now inside.
    let mut apply = |view: &mut RemoteView, cidr: &str, rev: u64| {
        let touched = view.apply(pb::watch_event::Event::Upserted(pb::NodeUpserted {
            revision: rev,
            node: Some(pnode("c2", 2, "n1", cidr, 1)),
        }));
        i.apply("c2", view, &touched, &local, rev)
    };
    let u = apply(&mut view, "10.2.9.0/24", 8);
    assert_eq!(
        kinds(&u.events),
        ["-ep 10.2.0.10", "+node c2/n1", "+ep 10.2.9.9"]
    );
    assert_eq!(
        reasons(&u),
        vec![("endpoint 10.2.0.10", RejectReason::EndpointOutsidePodCidr)]
    );
    assert_eq!(held_keys(&view.endpoints), vec!["10.2.0.10"]);
    assert_eq!(
        view.endpoints["10.2.0.10"].as_deref(),
        Some(&pep("c2", "n1", "10.2.0.10", 2 << 16 | 256)),
        "given back exactly as sent"
    );
    // And back: both judged again, both imported as sent, none held.
    let u = apply(&mut view, "10.2.0.0/16", 9);
    assert_eq!(kinds(&u.events), ["+node c2/n1", "+ep 10.2.0.10"]);
    assert_eq!(held_keys(&view.endpoints), Vec::<&str>::new());
    assert_eq!(i.endpoints().count(), 3);

    // A removal that names another node or cluster than the released
    // endpoint's is not the holder's: nothing.
    for (node, cluster) in [("n1", "c2"), ("n2", "c3")] {
        let touched = view.apply(pb::watch_event::Event::EndpointRemoved(
            pb::EndpointRemoved {
                revision: 10,
                ip: "10.2.1.10".into(),
                node: node.into(),
                cluster: cluster.into(),
            },
        ));
        assert_eq!(touched, Touched::Nothing, "{node} of {cluster}");
    }
    // A removal of a released endpoint names its node: held or not, the
    // view knows it.
    let touched = view.apply(pb::watch_event::Event::EndpointRemoved(
        pb::EndpointRemoved {
            revision: 10,
            ip: "10.2.1.10".into(),
            node: "n2".into(),
            cluster: "c2".into(),
        },
    ));
    assert_eq!(touched, Touched::Endpoint("10.2.1.10".into()));
    let u = i.apply("c2", &mut view, &touched, &local, 10);
    assert_eq!(kinds(&u.events), ["-ep 10.2.1.10"]);
    assert_eq!(view.endpoints_on("n2").count(), 0);

    // A whole check of a view with released records judges them all again
    // and changes nothing.
    let u = update(&mut i, "c2", &mut view, 11);
    assert!(u.events.is_empty(), "{:?}", kinds(&u.events));
    assert!(u.new_rejections.is_empty());
    assert_eq!(i.endpoints().count(), 2);
}

#[test]
fn an_endpoint_ip_not_written_as_discovery_writes_it_is_refused() {
    let mut i = imports();
    let mut snap = c2_snapshot();
    snap.endpoints
        .push(pep("c2", "n1", " 10.2.0.11", 2 << 16 | 256));
    let u = update(&mut i, "c2", &mut RemoteView::from_snapshot(snap), 0);
    assert_eq!(
        reasons(&u),
        vec![("endpoint  10.2.0.11", RejectReason::Invalid)]
    );
    assert!(
        u.new_rejections[0].detail.contains("not written as"),
        "{:?}",
        u.new_rejections
    );
    assert_eq!(i.endpoints().count(), 2);
}

mod cidrs;
