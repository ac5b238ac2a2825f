//! A remote's cluster pod CIDRs: taken from its own entry of its
//! snapshot, checked against ours and the other remotes', listed while the
//! remote is configured.

use super::*;
use crate::cidrs::ClusterCidrs;

/// `snap` announcing `cidrs` as its cluster's (its own entry first).
fn announcing(mut snap: pb::Snapshot, cidrs: &[&str]) -> pb::Snapshot {
    snap.clusters = vec![pb::ClusterCidrs {
        cluster: snap.cluster.clone(),
        cluster_id: snap.cluster_id,
        pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
    }];
    snap
}

/// Cluster c3 (id 3), no nodes.
fn c3_snapshot() -> pb::Snapshot {
    pb::Snapshot {
        revision: 1,
        cluster: "c3".into(),
        cluster_id: 3,
        ..Default::default()
    }
}

/// [`update`] with this cluster's `--pod-cidr` 10.1.0.0/16.
fn update_ours(i: &mut Imports, name: &str, snap: pb::Snapshot, now: u64) -> Update {
    let nodes = local_nodes();
    let refs: Vec<&Node> = nodes.iter().collect();
    let ours = ["10.1.0.0/16".parse().unwrap()];
    let local = Local {
        cluster: "c1",
        cluster_id: 1,
        pod_cidrs: &ours,
        nodes: &refs,
    };
    i.update(name, &mut RemoteView::from_snapshot(snap), &local, now)
}

fn listed(i: &Imports) -> Vec<(String, Vec<String>)> {
    i.cluster_cidrs()
        .map(|c: &ClusterCidrs| {
            (
                format!("{}/{}", c.cluster, c.cluster_id),
                c.pod_cidrs.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

fn entry(name: &str, cidrs: &[&str]) -> (String, Vec<String>) {
    (
        name.to_string(),
        cidrs.iter().map(|c| c.to_string()).collect(),
    )
}

#[test]
fn a_remotes_own_cidrs_are_accepted_once_and_a_reconnect_with_the_same_is_silent() {
    let mut i = imports();
    let mut snap = announcing(c2_snapshot(), &["10.2.0.0/16", "10.20.0.0/16"]);
    // An entry of another cluster is not the remote's to announce.
    snap.clusters.push(pb::ClusterCidrs {
        cluster: "c9".into(),
        cluster_id: 9,
        pod_cidrs: vec!["10.9.0.0/16".into()],
    });
    let u = update_ours(&mut i, "c2", snap.clone(), 0);
    assert!(u.cidrs_changed);
    assert!(u.new_rejections.is_empty(), "{:?}", u.new_rejections);
    assert_eq!(
        listed(&i),
        [entry("c2/2", &["10.2.0.0/16", "10.20.0.0/16"])]
    );
    // A reconnect with the same CIDRs: nothing to send again.
    i.disconnected("c2", "stream broke".into(), 10);
    let u = update_ours(&mut i, "c2", snap.clone(), 20);
    assert!(!u.cidrs_changed);
    assert!(u.events.is_empty(), "{:?}", kinds(&u.events));
    // The remote restarted with another range: sent again, replaced.
    let u = update_ours(
        &mut i,
        "c2",
        announcing(c2_snapshot(), &["10.2.0.0/15"]),
        30,
    );
    assert!(u.cidrs_changed);
    assert_eq!(listed(&i), [entry("c2/2", &["10.2.0.0/15"])]);
}

#[test]
fn only_the_entry_naming_the_remote_itself_counts() {
    let mut snap = c2_snapshot();
    snap.clusters = vec![pb::ClusterCidrs {
        cluster: "c2".into(),
        cluster_id: 5, // not the ID the snapshot says
        pod_cidrs: vec!["10.2.0.0/16".into()],
    }];
    assert!(RemoteView::from_snapshot(snap.clone()).cidrs.is_empty());
    let mut i = imports();
    let u = update_ours(&mut i, "c2", snap, 0);
    assert!(!u.cidrs_changed);
    assert!(listed(&i).is_empty());
    // Without an entry (an older remote, or no --pod-cidr): none listed.
    let u = update_ours(&mut i, "c2", c2_snapshot(), 1);
    assert!(!u.cidrs_changed);
    assert!(listed(&i).is_empty());
}

#[test]
fn cidrs_overlapping_ours_another_remotes_or_its_own_are_rejected_and_counted_once() {
    let mut i = imports();
    let snap = announcing(
        c2_snapshot(),
        &[
            "10.2.0.0/16",
            "10.1.128.0/17", // inside ours (10.1.0.0/16)
            "10.2.3.0/24",   // inside its own first one
            "10.4.0.5/16",   // host bits
            "nope",
        ],
    );
    let u = update_ours(&mut i, "c2", snap.clone(), 0);
    assert!(u.cidrs_changed);
    let mut got = reasons(&u);
    got.sort();
    let mut want = vec![
        ("pod_cidr 10.1.128.0/17", RejectReason::PodCidrOverlap),
        ("pod_cidr 10.2.3.0/24", RejectReason::PodCidrOverlap),
        ("pod_cidr 10.4.0.5/16", RejectReason::Invalid),
        ("pod_cidr nope", RejectReason::Invalid),
    ];
    want.sort();
    assert_eq!(got, want);
    let detail = |key: &str| {
        u.new_rejections
            .iter()
            .find(|r| r.key == key)
            .map(|r| r.detail.clone())
            .unwrap()
    };
    let d = detail("pod_cidr 10.1.128.0/17");
    assert!(
        d.contains("remote c2")
            && d.contains("10.1.128.0/17")
            && d.contains("this cluster's (c1) pod CIDR 10.1.0.0/16")
            && d.contains("--pod-cidr"),
        "{d}"
    );
    assert!(detail("pod_cidr 10.2.3.0/24").contains("its own pod CIDR 10.2.0.0/16"));
    assert!(detail("pod_cidr 10.4.0.5/16").contains("use 10.4.0.0/16"));
    // The rest of the remote still came in.
    assert_eq!(i.nodes().count(), 2);
    assert_eq!(listed(&i), [entry("c2/2", &["10.2.0.0/16"])]);

    // c3 claims part of c2's range, and a range of its own.
    let u = update_ours(
        &mut i,
        "c3",
        announcing(c3_snapshot(), &["10.2.128.0/17", "10.3.0.0/16"]),
        0,
    );
    assert!(u.cidrs_changed);
    assert_eq!(
        reasons(&u),
        [("pod_cidr 10.2.128.0/17", RejectReason::PodCidrOverlap)]
    );
    assert!(
        u.new_rejections[0]
            .detail
            .contains("pod CIDR 10.2.0.0/16 of remote c2"),
        "{}",
        u.new_rejections[0].detail
    );
    assert_eq!(
        listed(&i),
        [
            entry("c2/2", &["10.2.0.0/16"]),
            entry("c3/3", &["10.3.0.0/16"])
        ]
    );

    // Reconnects with the same: nothing new, nothing counted again.
    let u = update_ours(&mut i, "c2", snap, 10);
    assert!(!u.cidrs_changed && u.new_rejections.is_empty());
    let status = i.status(10);
    assert_eq!(status[0].rejected[&RejectReason::PodCidrOverlap], 2);
    assert_eq!(status[0].rejected[&RejectReason::Invalid], 2);
    assert_eq!(status[1].rejected[&RejectReason::PodCidrOverlap], 1);
}

#[test]
fn accepted_cidrs_outlive_the_remotes_expiry_and_still_guard_the_range() {
    let mut i = imports();
    let snap = announcing(c2_snapshot(), &["10.2.0.0/16"]);
    update_ours(&mut i, "c2", snap.clone(), 0);
    i.disconnected("c2", "connection refused".into(), 1_000);
    let gone = i.expire(61_000, 60_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(i.nodes().count(), 0, "nodes expire as before");
    assert_eq!(listed(&i), [entry("c2/2", &["10.2.0.0/16"])]);
    // Still c2's: c3 may not take it.
    let u = update_ours(
        &mut i,
        "c3",
        announcing(c3_snapshot(), &["10.2.0.0/24"]),
        61_100,
    );
    assert_eq!(
        reasons(&u),
        [("pod_cidr 10.2.0.0/24", RejectReason::PodCidrOverlap)]
    );
    assert!(!u.cidrs_changed);
    // c2 back with the same range: its nodes return, its CIDRs unchanged.
    let u = update_ours(&mut i, "c2", snap, 62_000);
    assert!(!u.cidrs_changed);
    assert_eq!(i.nodes().count(), 2);
    assert_eq!(listed(&i), [entry("c2/2", &["10.2.0.0/16"])]);
}

#[test]
fn a_remote_rejected_whole_keeps_its_listed_cidrs() {
    let mut i = imports();
    update_ours(&mut i, "c2", announcing(c2_snapshot(), &["10.2.0.0/16"]), 0);
    // It comes back claiming our cluster ID: nothing of it applies.
    let mut snap = announcing(c2_snapshot(), &["10.22.0.0/16"]);
    snap.cluster_id = 1;
    let u = update_ours(&mut i, "c2", snap, 10);
    assert_eq!(reasons(&u), [("cluster", RejectReason::ClusterId)]);
    assert!(!u.cidrs_changed);
    assert_eq!(listed(&i), [entry("c2/2", &["10.2.0.0/16"])]);
}
