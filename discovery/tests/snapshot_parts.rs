//! Snapshots streamed in parts, against the real discovery server over
//! gRPC: a watcher that asks for parts gets the same state as one that
//! takes the snapshot whole, in parts of bounded size; the parts show the
//! state at one revision even while it changes under a slow reader, and
//! the changes follow the last part.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meshgate_discovery::client::{connect, pb, watch, DiscoveryClient, SnapshotParts};
use meshgate_discovery::server::{serve_with_listener, ServerConfig};
use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Streaming;

const NODES: u32 = 240;
const PER_NODE: u32 = 250;
/// The size the server aims at (`server::snapshots::PART_BYTES`), and what
/// one record (the last, which reaches it) may add.
const PART_BYTES: usize = 64 * 1024;
const RECORD_SLACK: usize = 1024;

fn node(n: u32) -> pb::Node {
    pb::Node {
        name: format!("n{n}"),
        cluster: "c1".into(),
        cluster_id: 1,
        underlay_ip: format!("198.18.{}.{}", 1 + n / 250, 1 + n % 250),
        listen_port: 51820,
        wg_public_key: {
            use base64::Engine as _;
            let mut key = [7u8; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            base64::engine::general_purpose::STANDARD.encode(key)
        },
        pod_cidrs: vec![format!("10.{}.{}.0/24", n / 256, n % 256)],
        ..Default::default()
    }
}

fn endpoints(n: u32, count: u32) -> pb::ReportEndpointsRequest {
    pb::ReportEndpointsRequest {
        node: format!("n{n}"),
        cluster: "c1".into(),
        endpoints: (0..count)
            .map(|i| pb::Endpoint {
                ip: format!("10.{}.{}.{}", n / 256, n % 256, 2 + i),
                name: format!("pod-{n}-{i}"),
                namespace: "default".into(),
                labels: [
                    ("app".to_string(), format!("a{}", i % 20)),
                    ("tier".to_string(), "backend".to_string()),
                ]
                .into(),
                ..Default::default()
            })
            .collect(),
    }
}

/// A discovery with `NODES` × `PER_NODE` endpoints (some 5 MB of snapshot,
/// more than HTTP/2 lets the server send ahead of a reader).
async fn populated() -> (
    tempfile::TempDir,
    DiscoveryClient<Channel>,
    tokio::sync::oneshot::Sender<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ServerConfig {
        listen: addr,
        cluster: "c1".into(),
        cluster_id: 1,
        state_dir: dir.path().to_path_buf(),
        lease_ttl: Duration::from_secs(3600),
        services: Vec::new(),
        federation: Default::default(),
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_with_listener(cfg, listener, async {
        let _ = stop_rx.await;
    }));
    let mut c = connect(&format!("http://{addr}")).await.unwrap();
    for n in 0..NODES {
        c.register(pb::RegisterRequest {
            node: Some(node(n)),
        })
        .await
        .unwrap();
        c.report_endpoints(endpoints(n, PER_NODE)).await.unwrap();
    }
    (dir, c, stop)
}

async fn raw_watch(c: &mut DiscoveryClient<Channel>, parts: bool) -> Streaming<pb::WatchEvent> {
    let req = pb::WatchRequest {
        snapshot_parts: parts,
        ..Default::default()
    };
    c.watch(req).await.unwrap().into_inner()
}

async fn next_raw(s: &mut Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("no watch message within 20 s")
        .unwrap()
        .expect("watch stream ended")
}

fn snapshot_of(e: pb::WatchEvent) -> pb::Snapshot {
    match e.event {
        Some(pb::watch_event::Event::Snapshot(s)) => s,
        other => panic!("want a snapshot, got {other:?}"),
    }
}

/// Reads a snapshot's parts off `s`: the parts as they came.
async fn read_parts(s: &mut Streaming<pb::WatchEvent>) -> Vec<pb::Snapshot> {
    let mut parts = Vec::new();
    loop {
        let part = snapshot_of(next_raw(s).await);
        let more = part.more;
        parts.push(part);
        if !more {
            return parts;
        }
    }
}

fn join(parts: Vec<pb::Snapshot>) -> pb::Snapshot {
    let mut joiner = SnapshotParts::default();
    let mut joined = None;
    for p in parts {
        let e = pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(p)),
        };
        joined = joiner.push(e).unwrap();
    }
    snapshot_of(joined.expect("the last part completes the snapshot"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_are_bounded_and_join_to_the_whole_snapshot() {
    let (_dir, mut c, stop) = populated().await;
    let mut whole_stream = raw_watch(&mut c, false).await;
    let whole = snapshot_of(next_raw(&mut whole_stream).await);
    assert!(!whole.more);
    assert_eq!(whole.endpoints.len(), (NODES * PER_NODE) as usize);
    assert!(
        whole.encoded_len() > 4 * 1024 * 1024,
        "{}",
        whole.encoded_len()
    );

    let mut parts_stream = raw_watch(&mut c, true).await;
    let parts = read_parts(&mut parts_stream).await;
    let sizes: Vec<usize> = parts.iter().map(Message::encoded_len).collect();
    assert!(
        parts.len() >= whole.encoded_len() / (PART_BYTES + RECORD_SLACK),
        "{} parts for {} bytes",
        parts.len(),
        whole.encoded_len()
    );
    assert!(
        sizes.iter().all(|b| *b <= PART_BYTES + RECORD_SLACK),
        "a part over the bound: {sizes:?}"
    );
    assert!(parts.iter().all(|p| p.revision == whole.revision));
    // The first part names the cluster; the others add records only.
    assert_eq!(parts[0].cluster, "c1");
    assert!(parts[1..]
        .iter()
        .all(|p| p.cluster.is_empty() && p.clusters.is_empty()));
    assert_eq!(join(parts), whole);

    // The client's stream joins them the same way.
    let mut joined = watch(&mut c, pb::WatchRequest::default()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), joined.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(snapshot_of(first), whole);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_the_state_at_one_revision_then_the_changes() {
    let (_dir, mut c, stop) = populated().await;
    let mut slow = raw_watch(&mut c, true).await;
    let first = snapshot_of(next_raw(&mut slow).await);
    assert!(first.more, "a 5 MB snapshot comes in more than one part");
    let at = first.revision;

    // While the reader has taken only the first part: n0 leaves, and a
    // node's endpoint changes.
    c.deregister(pb::DeregisterRequest {
        name: "n0".into(),
        cluster: "c1".into(),
    })
    .await
    .unwrap();
    let mut changed = endpoints(NODES - 1, PER_NODE);
    changed.endpoints[0].name = "renamed".into();
    c.report_endpoints(changed).await.unwrap();

    let mut parts = vec![first];
    parts.extend(read_parts(&mut slow).await);
    let s = join(parts);
    assert_eq!(s.revision, at);
    assert!(
        s.nodes.iter().any(|n| n.name == "n0"),
        "n0 was there at {at}"
    );
    assert_eq!(s.endpoints.len(), (NODES * PER_NODE) as usize);
    assert!(!s.endpoints.iter().any(|e| e.name == "renamed"));

    // Then the changes, in order, after the snapshot's revision: n0 goes
    // (its endpoints with it), then the renamed endpoint.
    let mut removed_n0 = false;
    loop {
        let e = next_raw(&mut slow).await;
        match e.event {
            Some(pb::watch_event::Event::Removed(r)) => {
                assert!(r.revision > at && r.name == "n0", "{r:?}");
                removed_n0 = true;
            }
            Some(pb::watch_event::Event::EndpointRemoved(r)) => {
                assert!(r.revision > at && r.node == "n0", "{r:?}");
            }
            Some(pb::watch_event::Event::EndpointUpserted(u)) => {
                assert!(u.revision > at);
                assert_eq!(u.endpoint.unwrap().name, "renamed");
                break;
            }
            other => panic!("unexpected event after the snapshot: {other:?}"),
        }
    }
    assert!(removed_n0, "n0's removal came before the later change");
    let _ = stop.send(());
}
