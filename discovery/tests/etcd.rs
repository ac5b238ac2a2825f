//! Two discovery replicas of one cluster on a real etcd (started on
//! loopback, on free ports, with a temporary data dir, killed on drop).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod common;
#[path = "etcd/harness.rs"]
mod harness;

use common::{next, pb_node, watch};
use harness::{endpoint, free_port, register, snapshot_of, wait_upsert, Etcd, Relay, Replica};
use meshgate_discovery::client::{pb, DiscoveryClient};
use meshgate_discovery::model::{Event, Snapshot, WatchItem};
use meshgate_discovery::store::StoreChoice;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_state_allocate_uniquely_and_survive_one_dying() {
    let etcd = Etcd::start();
    let ttl = Duration::from_millis(1500);
    let a = Replica::start(etcd.store(), ttl).await;
    let b = Replica::start(etcd.store(), ttl).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    // A node registered at A appears in B's watch, and one registered at B
    // in A's; tunnel IPs are not handed out twice.
    let mut wa = watch(&mut ca).await;
    let mut wb = watch(&mut cb).await;
    let n1 = register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    wait_upsert(&mut wb, "n1").await;
    let n2 = register(&mut cb, pb_node("n2", "10.1.1.0/24", 2)).await;
    wait_upsert(&mut wa, "n2").await;
    assert_ne!(n1.tunnel_ip, n2.tunnel_ip);

    // Both allocate identities at once, through different replicas: every
    // label set gets one ID, no ID is given to two label sets, and both
    // replicas agree.
    for round in 0..6u32 {
        let (ra, rb) = tokio::join!(
            ca.report_endpoints(pb::ReportEndpointsRequest {
                node: "n1".into(),
                cluster: "c1".into(),
                endpoints: (0..=round)
                    .map(|i| endpoint(&format!("10.1.0.{}", 10 + i), &format!("a{i}")))
                    .collect(),
            }),
            cb.report_endpoints(pb::ReportEndpointsRequest {
                node: "n2".into(),
                cluster: "c1".into(),
                endpoints: (0..=round)
                    .map(|i| endpoint(&format!("10.1.1.{}", 10 + i), &format!("b{i}")))
                    .collect(),
            }),
        );
        ra.expect("report at A");
        rb.expect("report at B");
    }
    // Each replica's watchers got every endpoint, whichever replica took
    // the report, in increasing revisions.
    for (replica, stream) in [("A", &mut wa), ("B", &mut wb)] {
        let mut seen = BTreeSet::new();
        let mut last = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < 12 {
            let left = deadline.saturating_duration_since(Instant::now());
            let WatchItem::Event(event) = next(stream, left).await else {
                panic!("{replica}: a second snapshot on a healthy watch");
            };
            assert!(
                event.revision() > last,
                "{replica}: revision {} after {last}: {event:?}",
                event.revision()
            );
            last = event.revision();
            if let Event::EndpointUpserted { endpoint, .. } = event {
                seen.insert(endpoint.ip);
            }
        }
    }
    let (sa, sb) = (snapshot_of(&mut ca).await, snapshot_of(&mut cb).await);
    let ids = |s: &Snapshot| -> BTreeMap<u32, String> {
        s.identities
            .iter()
            .map(|i| (i.id, i.labels.get("app").cloned().unwrap_or_default()))
            .collect()
    };
    assert_eq!(ids(&sa), ids(&sb), "the replicas disagree on identities");
    let apps: BTreeSet<String> = ids(&sa).into_values().collect();
    assert_eq!(apps.len(), 12, "one identity per label set: {:?}", ids(&sa));
    assert_eq!(ids(&sa).len(), 12, "no label set twice: {:?}", ids(&sa));
    assert_eq!(sa.endpoints.len(), 12);
    assert_eq!(sb.endpoints.len(), 12);

    // n1 renews only at B; A must not expire it (its lease is 1.5 s).
    let t = Instant::now();
    while t.elapsed() < ttl * 3 {
        for name in ["n1", "n2"] {
            cb.renew(pb::RenewRequest {
                name: name.into(),
                cluster: "c1".into(),
            })
            .await
            .expect("renew at B");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sa = snapshot_of(&mut ca).await;
    let names: Vec<&str> = sa.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"], "A expired a node renewed at B");

    // A dies; B goes on serving, and its watchers get later changes.
    a.kill();
    let n3 = register(&mut cb, pb_node("n3", "10.1.3.0/24", 3)).await;
    wait_upsert(&mut wb, "n3").await;
    assert!(![n1.tunnel_ip, n2.tunnel_ip].contains(&n3.tunnel_ip));
    // Nobody renews any more: B expires all three.
    let t = Instant::now();
    loop {
        let s = snapshot_of(&mut cb).await;
        if s.nodes.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < ttl * 4,
            "B did not expire unrenewed nodes: {:?}",
            s.nodes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Their lease keys went with them.
    let mut kv = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    let leases = kv
        .get(
            "/meshgate/c1/lease/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let left: Vec<String> = leases
        .kvs()
        .iter()
        .map(|k| String::from_utf8_lossy(k.key()).into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "lease keys of removed nodes stayed: {left:?}"
    );
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_later_loads_the_shared_state() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(10);
    let a = Replica::start(etcd.store(), ttl).await;
    let mut ca = a.client().await;
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    let b = Replica::start(etcd.store(), ttl).await;
    let mut cb = b.client().await;
    let s = snapshot_of(&mut cb).await;
    assert_eq!(s.nodes.len(), 1, "{s:?}");
    // Its first change does not overwrite A's.
    register(&mut cb, pb_node("n2", "10.1.1.0/24", 2)).await;
    let s = snapshot_of(&mut ca).await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"]);
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gone_refuses_changes_and_keeps_watchers_served() {
    let mut etcd = Etcd::start();
    let a = Replica::start(etcd.store(), Duration::from_secs(10)).await;
    let mut ca = a.client().await;
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    let mut w = watch(&mut ca).await;
    next(&mut w, Duration::from_secs(2)).await;
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    let err = ca
        .register(pb::RegisterRequest {
            node: Some(pb_node("n2", "10.1.1.0/24", 2)),
        })
        .await
        .expect_err("a change without etcd must be refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("etcd"), "{err}");
    // Nothing half-applied: the last state is still served, without n2.
    let s = snapshot_of(&mut ca).await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1"]);
    a.kill();
}

#[tokio::test]
async fn unreachable_etcd_at_start_is_a_clear_error() {
    let port = free_port();
    let store: StoreChoice = format!("etcd://127.0.0.1:{port}").parse().unwrap();
    let r = Replica::start(store, Duration::from_secs(10)).await;
    let err = tokio::time::timeout(Duration::from_secs(15), r.task)
        .await
        .expect("discovery did not give up on an unreachable etcd within 15 s")
        .unwrap()
        .expect_err("must fail without etcd")
        .to_string();
    assert!(
        err.contains(&format!("etcd://127.0.0.1:{port}")) && err.contains("etcd-server"),
        "{err}"
    );
}

// Small figures, so that a test makes a replica compact with few writes.
const COMPACT_EVERY: u32 = 50;
const KEEP_REVISIONS: i64 = 20;

/// The store of `etcd`, compacting every [`COMPACT_EVERY`] writes.
fn compacting(etcd: &Etcd) -> StoreChoice {
    match etcd.store() {
        StoreChoice::Etcd { endpoints, .. } => StoreChoice::Etcd {
            endpoints,
            compaction: meshgate_discovery::store::Compaction {
                every: COMPACT_EVERY,
                keep: KEEP_REVISIONS,
            },
        },
        other => other,
    }
}

/// Renews n1 through `c` (a replica on a [`compacting`] store) until etcd
/// has compacted its history past `revision`.
async fn compact_past(etcd: &Etcd, c: &mut DiscoveryClient<Channel>, revision: i64) {
    let writes = 2 * COMPACT_EVERY + 10;
    for _ in 0..writes {
        c.renew(pb::RenewRequest {
            name: "n1".into(),
            cluster: "c1".into(),
        })
        .await
        .expect("renew");
    }
    let mut kv = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        let old = kv
            .get(
                "/meshgate/c1/meta",
                Some(etcd_client::GetOptions::new().with_revision(revision)),
            )
            .await;
        match old {
            Err(e) if e.to_string().contains("compacted") => return,
            other => assert!(
                t.elapsed() < Duration::from_secs(5),
                "revision {revision} was not compacted after {writes} writes (keeping \
                 {KEEP_REVISIONS}): {:?}",
                other.map(|r| r.header().map(|h| h.revision()))
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_is_compacted_and_replicas_keep_following() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(30);
    let store = compacting(&etcd);
    let a = Replica::start(store.clone(), ttl).await;
    let b = Replica::start(store, ttl).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    // Every renewal is a write; enough of them make A compact all but the
    // last KEEP_REVISIONS revisions, the first state write among them.
    compact_past(&etcd, &mut ca, 2).await;
    // B still follows A's changes, and A B's.
    let mut wb = watch(&mut cb).await;
    register(&mut ca, pb_node("n2", "10.1.1.0/24", 2)).await;
    wait_upsert(&mut wb, "n2").await;
    let mut wa = watch(&mut ca).await;
    register(&mut cb, pb_node("n3", "10.1.2.0/24", 3)).await;
    wait_upsert(&mut wa, "n3").await;
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_take_the_shared_state_refuses_changes_instead_of_overwriting() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(30);
    // Misconfigured: the same cluster name with another cluster ID.
    let a = Replica::start(etcd.store(), ttl).await;
    let b = Replica::start_as(etcd.store(), ttl, 2).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = pb_node("n2", "10.1.1.0/24", 2);
    other.cluster_id = 2;
    let err = cb
        .register(pb::RegisterRequest { node: Some(other) })
        .await
        .expect_err("B cannot take A's state, so it must not write over it");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    // A's state is intact.
    let s = snapshot_of(&mut ca).await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1"]);
    register(&mut ca, pb_node("n3", "10.1.3.0/24", 3)).await;
    a.kill();
    b.kill();
}

/// Every key under the cluster's prefix, relative, with its value and
/// mod revision; and the revision read at.
async fn keys(etcd: &Etcd) -> (Vec<(String, Vec<u8>, i64)>, i64) {
    let mut kv = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    let all = kv
        .get(
            "/meshgate/c1/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let keys = all
        .kvs()
        .iter()
        .map(|k| {
            let key = String::from_utf8_lossy(k.key()).into_owned();
            let key = key.trim_start_matches("/meshgate/c1/").to_string();
            (key, k.value().to_vec(), k.mod_revision())
        })
        .collect();
    (keys, all.header().unwrap().revision())
}

fn endpoints_of(node: u8, count: u32) -> pb::ReportEndpointsRequest {
    pb::ReportEndpointsRequest {
        node: format!("n{node}"),
        cluster: "c1".into(),
        endpoints: (0..count)
            .map(|i| {
                endpoint(
                    &format!("10.1.{node}.{}", 10 + i),
                    &format!("app{}", i % 10),
                )
            })
            .collect(),
    }
}

/// A cluster over what the one-key store took (1 MiB, about 5,000
/// endpoints) is kept one key per record; a change writes only its own
/// records; a replica started later reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_the_old_one_key_limit_is_kept_one_key_per_record() {
    const NODES: u8 = 80;
    const PER_NODE: u32 = 100;
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(120);
    let a = Replica::start(etcd.store(), ttl).await;
    let mut ca = a.client().await;
    for n in 0..NODES {
        register(
            &mut ca,
            pb_node(&format!("n{n}"), &format!("10.1.{n}.0/24"), n + 1),
        )
        .await;
        ca.report_endpoints(endpoints_of(n, PER_NODE))
            .await
            .expect("report endpoints");
    }
    let (all, _) = keys(&etcd).await;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, _, _) in &all {
        *kinds.entry(k.split('/').next().unwrap()).or_default() += 1;
    }
    let n = usize::from(NODES);
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("allocations", n),
            ("endpoints", n),
            ("identities", 10),
            ("lease", n),
            ("meta", 1),
            ("nodes", n),
        ]),
        "one key per node, allocation, identity and node's endpoints, and no single-key state"
    );
    let bytes: usize = all.iter().map(|(_, v, _)| v.len()).sum();
    assert!(
        bytes > 1024 * 1024,
        "the records hold {bytes} bytes: not over the old one-key limit"
    );

    // One pod more on n5: n5's endpoint list and meta are written, nothing else.
    ca.report_endpoints(endpoints_of(5, PER_NODE + 1))
        .await
        .expect("report endpoints");
    let (all, revision) = keys(&etcd).await;
    let touched: Vec<&str> = all
        .iter()
        .filter(|(_, _, r)| *r == revision)
        .map(|(k, _, _)| k.as_str())
        .collect();
    assert_eq!(touched, ["endpoints/n5", "meta"]);

    let b = Replica::start(etcd.store(), ttl).await;
    let s = snapshot_of(&mut b.client().await).await;
    assert_eq!(s.nodes.len(), n);
    assert_eq!(s.endpoints.len(), n * PER_NODE as usize + 1);
    assert_eq!(s.identities.len(), 10);
    a.kill();
    b.kill();
}

/// What a discovery before one key per record wrote (the whole state in
/// `state`) is read, rewritten as records and kept as `state.migrated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_key_state_of_an_older_discovery_is_migrated_and_kept() {
    use meshgate_discovery::model::Node;
    use meshgate_discovery::registry::{Registry, RegistryConfig};
    let etcd = Etcd::start();
    let mut r = Registry::new(RegistryConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        lease_ttl_ms: 60_000,
        pod_cidrs: Vec::new(),
    })
    .unwrap();
    // 50 nodes: over 128 records, more than one etcd transaction takes.
    const NODES: u8 = 50;
    for n in 0..NODES {
        let name = format!("n{n}");
        r.register(
            Node::try_from(pb_node(&name, &format!("10.1.{n}.0/24"), n + 1)).unwrap(),
            0,
        )
        .unwrap();
        r.report_endpoints(&name, "c1", vec![endpoint(&format!("10.1.{n}.10"), "web")])
            .unwrap();
    }
    let tunnel_ips: BTreeMap<String, String> = r
        .state()
        .nodes
        .values()
        .map(|n| (n.name.clone(), format!("{:?}", n.tunnel_ip)))
        .collect();
    let old = serde_json::to_vec(&serde_json::json!({
        "format": 1,
        "state": r.state(),
        "events": [],
    }))
    .unwrap();
    let mut kv = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    kv.put("/meshgate/c1/state", old.clone(), None)
        .await
        .unwrap();

    let a = Replica::start(etcd.store(), Duration::from_secs(60)).await;
    let mut ca = a.client().await;
    let s = snapshot_of(&mut ca).await;
    let held: BTreeMap<String, String> = s
        .nodes
        .iter()
        .map(|n| (n.name.clone(), format!("{:?}", n.tunnel_ip)))
        .collect();
    assert_eq!(
        held, tunnel_ips,
        "the nodes and their tunnel IPs, as they were"
    );
    assert_eq!(s.endpoints.len(), usize::from(NODES));
    let (all, _) = keys(&etcd).await;
    let names: BTreeSet<&str> = all.iter().map(|(k, _, _)| k.as_str()).collect();
    for k in [
        "meta",
        "nodes/n1",
        "allocations/n1",
        "endpoints/n1",
        "state.migrated",
    ] {
        assert!(names.contains(k), "no {k} after the migration: {names:?}");
    }
    assert!(!names.contains("state"), "the single key stayed: {names:?}");
    let revisions: BTreeSet<i64> = all
        .iter()
        .filter(|(k, _, _)| !k.starts_with("lease/"))
        .map(|(_, _, r)| *r)
        .collect();
    assert_eq!(
        revisions.len(),
        2,
        "151 records and meta go in two transactions (etcd takes 128 operations in one)"
    );
    let kept = all.iter().find(|(k, _, _)| k == "state.migrated").unwrap();
    assert_eq!(kept.1, old, "the old state is kept as it was");
    // Allocation goes on from the migrated state.
    let new = register(&mut ca, pb_node("new", "10.2.0.0/24", 200)).await;
    let new_ip = format!(
        "{:?}",
        Some(new.tunnel_ip.parse::<std::net::Ipv4Addr>().unwrap())
    );
    assert!(
        !tunnel_ips.values().any(|ip| *ip == new_ip),
        "{new_ip} handed out twice"
    );
    a.kill();
}

/// A replica cut off from etcd while the other changes the state and etcd
/// compacts the history it would have watched: once back, it reads
/// everything again, and its watchers get what changed and no removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_through_a_compaction_resyncs_without_spurious_removals() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(60);
    let store = compacting(&etcd);
    let relay = Relay::start(etcd.client).await;
    let a = Replica::start(store.clone(), ttl).await;
    let b = Replica::start(relay.store(&store), ttl).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut wb = watch(&mut cb).await;
    match next(&mut wb, Duration::from_secs(3)).await {
        WatchItem::Snapshot(_) => {}
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    }
    // 30 nodes: more keys than B reads in one page.
    for i in 0..30u8 {
        register(
            &mut ca,
            pb_node(&format!("n{i}"), &format!("10.1.{i}.0/24"), i + 1),
        )
        .await;
    }
    // B follows A before the cut.
    wait_upsert(&mut wb, "n29").await;
    let (_, cut_at) = keys(&etcd).await;

    relay.cut();
    let err = cb
        .register(pb::RegisterRequest {
            node: Some(pb_node("b", "10.2.0.0/24", 99)),
        })
        .await
        .expect_err("B is cut off from etcd: its changes must be refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    register(&mut ca, pb_node("n30", "10.1.30.0/24", 31)).await;
    ca.report_endpoints(endpoints_of(0, 3))
        .await
        .expect("report endpoints");
    compact_past(&etcd, &mut ca, cut_at).await;
    relay.heal();

    // B's watchers get n30 and n0's endpoints, and nothing removed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut got_n30, mut endpoints) = (false, BTreeSet::new());
    while !(got_n30 && endpoints.len() == 3) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "B did not catch up within 10 s (n30: {got_n30}, endpoints {endpoints:?})"
        );
        match next(&mut wb, left).await {
            WatchItem::Event(Event::Upserted { node, .. }) => got_n30 |= node.name == "n30",
            WatchItem::Event(Event::EndpointUpserted { endpoint, .. }) => {
                endpoints.insert(endpoint.ip);
            }
            WatchItem::Event(e @ (Event::Removed { .. } | Event::EndpointRemoved { .. })) => {
                panic!("a spurious removal after the resync: {e:?}")
            }
            WatchItem::Snapshot(s) => panic!("a second snapshot on B's watch: {s:?}"),
            _ => {}
        }
    }
    let (sa, sb) = (snapshot_of(&mut ca).await, snapshot_of(&mut cb).await);
    assert_eq!(sb.nodes, sa.nodes, "B holds A's nodes");
    assert_eq!(sb.endpoints, sa.endpoints, "B holds A's endpoints");
    a.kill();
    b.kill();
}
