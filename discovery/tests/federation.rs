//! Federation between real discovery servers on local ports: imports reach
//! the merged watch stream, a `local_only` watch leaves them out, a broken
//! link keeps them until the remote timeout, a remote claiming our
//! cluster ID gets nothing applied, and every cluster's pod CIDRs are
//! announced once and outlive a remote's expiry.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::federation::{FederationConfig, RemoteConfig};
use meshgate_discovery::server::{serve_with_listener, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), meshgate_discovery::Error>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server did not stop within 5 s")
            .expect("server task panicked")
            .expect("server returned an error");
    }

    async fn client(&self) -> DiscoveryClient<Channel> {
        connect(&url(self.addr))
            .await
            .expect("connect to discovery")
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn bind() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn start(
    dir: &Path,
    listener: TcpListener,
    cluster: &str,
    id: u8,
    remotes: &[(&str, SocketAddr)],
    timeout: Duration,
) -> Running {
    start_with_cidrs(dir, listener, cluster, id, remotes, timeout, &[])
}

/// [`start`] with the cluster's `--pod-cidr`s.
fn start_with_cidrs(
    dir: &Path,
    listener: TcpListener,
    cluster: &str,
    id: u8,
    remotes: &[(&str, SocketAddr)],
    timeout: Duration,
    pod_cidrs: &[&str],
) -> Running {
    let addr = listener.local_addr().unwrap();
    let cfg = ServerConfig {
        listen: addr,
        cluster: cluster.into(),
        cluster_id: id,
        state_dir: dir.join(cluster),
        lease_ttl: Duration::from_secs(30),
        services: Vec::new(),
        federation: FederationConfig {
            remotes: remotes
                .iter()
                .map(|(n, a)| RemoteConfig::new(*n, url(*a)))
                .collect(),
            remote_timeout: timeout,
        },
        pod_cidrs: pod_cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        encryption: Default::default(),
    };
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_listener(cfg, listener, async {
        let _ = stop_rx.await;
    }));
    Running { addr, stop, task }
}

/// Registers node n1 of `cluster` (pod CIDR 10.<id>.0.0/24) with one pod.
async fn node_with_pod(c: &mut DiscoveryClient<Channel>, cluster: &str, id: u8) {
    let node = pb::Node {
        name: "n1".into(),
        cluster: cluster.into(),
        cluster_id: u32::from(id),
        underlay_ip: format!("198.18.{id}.10"),
        listen_port: 51820,
        wg_public_key: base64::engine::general_purpose::STANDARD.encode([id; 32]),
        pod_cidrs: vec![format!("10.{id}.0.0/24")],
        tunnel_ip: String::new(),
        roles: vec![],
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    };
    c.register(pb::RegisterRequest { node: Some(node) })
        .await
        .expect("register");
    c.report_endpoints(pb::ReportEndpointsRequest {
        node: "n1".into(),
        cluster: cluster.into(),
        endpoints: vec![pb::Endpoint {
            ip: format!("10.{id}.0.10"),
            name: "web".into(),
            namespace: String::new(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: String::new(),
            cluster: String::new(),
            identity: 0,
        }],
    })
    .await
    .expect("report endpoints");
}

/// The nodes (`cluster/name`) and endpoint IPs of a fresh watch snapshot.
async fn snapshot(c: &mut DiscoveryClient<Channel>, local_only: bool) -> pb::Snapshot {
    let mut s = c
        .watch(pb::WatchRequest {
            local_only,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    match s.message().await.expect("watch").and_then(|e| e.event) {
        Some(pb::watch_event::Event::Snapshot(s)) => s,
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    }
}

fn node_names(s: &pb::Snapshot) -> Vec<String> {
    let mut v: Vec<String> = s
        .nodes
        .iter()
        .map(|n| format!("{}/{}", n.cluster, n.name))
        .collect();
    v.sort();
    v
}

async fn status(c: &mut DiscoveryClient<Channel>) -> pb::FederationStatusResponse {
    c.federation_status(pb::FederationStatusRequest {})
        .await
        .expect("federation status")
        .into_inner()
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_merge_into_the_watch_and_outlive_a_broken_link_until_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, a1) = bind().await;
    let (l2, a2) = bind().await;
    let c2 = start(
        dir.path(),
        l2,
        "c2",
        2,
        &[("c1", a1)],
        Duration::from_secs(60),
    );
    let c1 = start(
        dir.path(),
        l1,
        "c1",
        1,
        &[("c2", a2)],
        Duration::from_millis(1500),
    );
    let mut k1 = c1.client().await;
    let mut k2 = c2.client().await;
    node_with_pod(&mut k1, "c1", 1).await;
    node_with_pod(&mut k2, "c2", 2).await;

    // Each sees both clusters; the snapshot names the sender's cluster.
    for k in [k1.clone(), k2.clone()] {
        eventually(
            "both clusters in the merged snapshot",
            Duration::from_secs(5),
            || {
                let mut k = k.clone();
                async move {
                    let s = snapshot(&mut k, false).await;
                    node_names(&s) == ["c1/n1", "c2/n1"] && s.endpoints.len() == 2
                }
            },
        )
        .await;
    }
    let s = snapshot(&mut k1, false).await;
    assert_eq!((s.cluster.as_str(), s.cluster_id), ("c1", 1));
    let mut ids: Vec<u32> = s.identities.iter().map(|i| i.id).collect();
    ids.sort();
    assert_eq!(ids, [1 << 16 | 256, 2 << 16 | 256]);
    // A local-only watch (what federated discoveries ask for) has only c1's own.
    let own = snapshot(&mut k1, true).await;
    assert_eq!(node_names(&own), ["c1/n1"]);
    assert_eq!(own.identities.len(), 1);

    let st = status(&mut k1).await;
    let r = &st.remotes[0];
    assert_eq!(
        (r.name.as_str(), r.cluster_id, r.connected),
        ("c2", 2, true)
    );
    assert_eq!((r.nodes, r.endpoints, r.identities), (1, 1, 1));
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);

    // c2 goes away: its state stays until the timeout, then goes with events.
    let mut stream = k1
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap(); // snapshot
    let stopped = Instant::now();
    c2.stop().await;
    let mut removed = Vec::new();
    while removed.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("no removal within 5 s of c2 stopping")
            .unwrap()
            .unwrap();
        match msg.event {
            Some(pb::watch_event::Event::EndpointRemoved(r)) => removed.push(r.ip),
            Some(pb::watch_event::Event::Removed(r)) => removed.push(r.name),
            other => panic!("unexpected event {other:?}"),
        }
    }
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "c2's state went after {took:?}, before the 1.5 s remote timeout"
    );
    assert_eq!(removed, ["10.2.0.10", "n1"]);
    let st = status(&mut k1).await;
    assert!(!st.remotes[0].connected);
    assert!(!st.remotes[0].last_error.is_empty());
    c1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_claiming_our_cluster_id_is_rejected_whole_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, _) = bind().await;
    let (l3, a3) = bind().await;
    // "c3" runs with cluster ID 1: c1's.
    let rogue = start(dir.path(), l3, "c3", 1, &[], Duration::from_secs(60));
    let c1 = start(
        dir.path(),
        l1,
        "c1",
        1,
        &[("c3", a3)],
        Duration::from_secs(60),
    );
    let mut kr = rogue.client().await;
    let mut node = pb::Node {
        name: "n1".into(),
        cluster: "c3".into(),
        cluster_id: 1,
        underlay_ip: "198.18.3.10".into(),
        listen_port: 51820,
        wg_public_key: base64::engine::general_purpose::STANDARD.encode([3; 32]),
        pod_cidrs: vec!["10.3.0.0/24".into()],
        tunnel_ip: String::new(),
        roles: vec![],
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    };
    kr.register(pb::RegisterRequest {
        node: Some(node.clone()),
    })
    .await
    .unwrap();
    let mut k1 = c1.client().await;
    let k = k1.clone();
    eventually("the rejection counted", Duration::from_secs(5), || {
        let mut k = k.clone();
        async move { status(&mut k).await.remotes[0].rejected.get("cluster_id") == Some(&1) }
    })
    .await;
    // More changes at the rogue: still nothing, and counted once.
    node.name = "n2".into();
    node.pod_cidrs = vec!["10.3.1.0/24".into()];
    node.wg_public_key = base64::engine::general_purpose::STANDARD.encode([4; 32]);
    kr.register(pb::RegisterRequest { node: Some(node) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = snapshot(&mut k1, false).await;
    assert!(s.nodes.is_empty(), "{:?}", node_names(&s));
    let st = status(&mut k1).await;
    let r = &st.remotes[0];
    assert_eq!((r.connected, r.nodes, r.cluster_id), (false, 0, 0));
    assert_eq!(r.rejected.get("cluster_id"), Some(&1));
    assert!(
        r.last_error.contains("claims cluster id 1"),
        "{}",
        r.last_error
    );
    c1.stop().await;
    rogue.stop().await;
}

/// `(cluster/id, cidrs)` of each entry of a snapshot's or event's `clusters`.
fn cidr_list(clusters: &[pb::ClusterCidrs]) -> Vec<(String, Vec<String>)> {
    clusters
        .iter()
        .map(|c| {
            (
                format!("{}/{}", c.cluster, c.cluster_id),
                c.pod_cidrs.clone(),
            )
        })
        .collect()
}

fn only_c1() -> Vec<(String, Vec<String>)> {
    vec![("c1/1".to_string(), vec!["10.1.0.0/16".to_string()])]
}

fn both_clusters() -> Vec<(String, Vec<String>)> {
    let mut v = only_c1();
    v.push(("c2/2".to_string(), vec!["10.2.0.0/16".to_string()]));
    v
}

/// The next event of `stream`; panics if none comes within 10 s.
async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    what: &str,
) -> pb::watch_event::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: no watch event within 10 s"))
        .expect("watch stream error")
        .expect("watch stream ended")
        .event
        .expect("empty watch event")
}

fn c2_with_cidrs(dir: &Path, listener: TcpListener) -> Running {
    start_with_cidrs(
        dir,
        listener,
        "c2",
        2,
        &[],
        Duration::from_secs(60),
        &["10.2.0.0/16"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_cidrs_are_announced_once_and_outlive_the_remote() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, _) = bind().await;
    let (l2, a2) = bind().await;
    let c1 = start_with_cidrs(
        dir.path(),
        l1,
        "c1",
        1,
        &[("c2", a2)],
        Duration::from_millis(1500),
        &["10.1.0.0/16"],
    );
    let mut k1 = c1.client().await;
    // c2 does not serve yet: c1 lists only itself.
    let mut stream = k1
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    match next_event(&mut stream, "snapshot").await {
        pb::watch_event::Event::Snapshot(s) => assert_eq!(cidr_list(&s.clusters), only_c1()),
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    }

    // c2 comes up: one MeshCidrs with both, c1 first.
    let c2 = c2_with_cidrs(dir.path(), l2);
    let first_rev = match next_event(&mut stream, "MeshCidrs once c2 is up").await {
        pb::watch_event::Event::MeshCidrs(m) => {
            assert_eq!(cidr_list(&m.clusters), both_clusters());
            m.revision
        }
        other => panic!("expected MeshCidrs when c2 was first accepted, got {other:?}"),
    };
    assert_eq!(
        cidr_list(&snapshot(&mut k1, false).await.clusters),
        both_clusters()
    );
    // A local-only watcher (a remote discovery) gets only c1's own.
    assert_eq!(
        cidr_list(&snapshot(&mut k1, true).await.clusters),
        only_c1()
    );

    // c2 restarts with the same range: c1 reconnects without a new MeshCidrs.
    c2.stop().await;
    let k = k1.clone();
    eventually("c1 sees c2's link broken", Duration::from_secs(5), || {
        let mut k = k.clone();
        async move { !status(&mut k).await.remotes[0].connected }
    })
    .await;
    let l2 = TcpListener::bind(a2).await.expect("bind c2's port again");
    let c2 = c2_with_cidrs(dir.path(), l2);
    let k = k1.clone();
    eventually("c1 reconnected to c2", Duration::from_secs(10), || {
        let mut k = k.clone();
        async move { status(&mut k).await.remotes[0].connected }
    })
    .await;
    // A node at c2 marks how far c1's events are read.
    let mut k2 = c2.client().await;
    node_with_pod(&mut k2, "c2", 2).await;
    loop {
        match next_event(&mut stream, "c2/n1 imported after the reconnect").await {
            pb::watch_event::Event::Upserted(u)
                if u.node.as_ref().is_some_and(|n| n.cluster == "c2") =>
            {
                break
            }
            pb::watch_event::Event::MeshCidrs(m) => panic!(
                "MeshCidrs sent again (revision {}, first {first_rev}) though c2's CIDRs did \
                 not change: {:?}",
                m.revision,
                cidr_list(&m.clusters)
            ),
            _ => {}
        }
    }

    // c2 goes for good: its node expires, its CIDRs stay listed.
    c2.stop().await;
    loop {
        match next_event(&mut stream, "c2/n1 removed at the remote timeout").await {
            pb::watch_event::Event::Removed(r) if r.cluster == "c2" => break,
            pb::watch_event::Event::MeshCidrs(m) => {
                panic!("MeshCidrs on c2's expiry: {:?}", cidr_list(&m.clusters))
            }
            _ => {}
        }
    }
    let s = snapshot(&mut k1, false).await;
    assert!(s.nodes.is_empty(), "{:?}", node_names(&s));
    assert_eq!(cidr_list(&s.clusters), both_clusters());
    c1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remotes_given_at_run_time_are_linked_and_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, a1) = bind().await;
    let (l2, a2) = bind().await;
    let c2 = start_with_cidrs(
        dir.path(),
        l2,
        "c2",
        2,
        &[],
        Duration::from_secs(60),
        &["10.2.0.0/16"],
    );
    // c1 has no --remote; its remotes come from a feed (as the Kubernetes
    // API's MeshgateRemoteClusters would give them), empty at first.
    let (feed, rx) = tokio::sync::watch::channel(Vec::<RemoteConfig>::new());
    let cfg = ServerConfig {
        listen: a1,
        cluster: "c1".into(),
        cluster_id: 1,
        state_dir: dir.path().join("c1"),
        lease_ttl: Duration::from_secs(30),
        services: Vec::new(),
        federation: FederationConfig {
            remotes: Vec::new(),
            remote_timeout: Duration::from_secs(1),
        },
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    let c1 = tokio::spawn(meshgate_discovery::server::serve_on_with_feeds(
        cfg,
        None,
        meshgate_discovery::store::StoreChoice::Embedded,
        l1,
        meshgate_discovery::server::Feeds {
            services: None,
            remotes: Some(rx),
        },
        std::future::pending(),
    ));
    let mut k2 = c2.client().await;
    node_with_pod(&mut k2, "c2", 2).await;
    let mut k1 = loop {
        match connect(&url(a1)).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(status(&mut k1).await.remotes.is_empty());
    // Given: linked, and c2's node imported.
    feed.send(vec![RemoteConfig::new("c2", url(a2))]).unwrap();
    eventually("c1 imports c2's node", Duration::from_secs(10), || {
        let mut k = k1.clone();
        async move { node_names(&snapshot(&mut k, false).await) == ["c2/n1"] }
    })
    .await;
    let st = status(&mut k1).await;
    assert_eq!(st.remotes.len(), 1);
    assert!(st.remotes[0].connected);
    let listed = |s: &pb::Snapshot| s.clusters.iter().any(|c| c.cluster == "c2");
    eventually("c2's pod CIDRs are listed", Duration::from_secs(10), || {
        let mut k = k1.clone();
        async move { listed(&snapshot(&mut k, false).await) }
    })
    .await;
    // A name this cluster serves is refused.
    feed.send(vec![
        RemoteConfig::new("c2", url(a2)),
        RemoteConfig::new("c1", url(a1)),
    ])
    .unwrap();
    // Taken away: unlinked, and its state expires after the remote timeout.
    feed.send(Vec::new()).unwrap();
    eventually(
        "c2 unlinked and its node expired",
        Duration::from_secs(10),
        || {
            let mut k = k1.clone();
            async move {
                let st = status(&mut k).await;
                let unlinked = st
                    .remotes
                    .iter()
                    .all(|r| !r.connected && r.last_error.contains("deleted"));
                unlinked && snapshot(&mut k, false).await.nodes.is_empty()
            }
        },
    )
    .await;
    // Once its state expired, the unlinked remote is forgotten: it leaves
    // the listing and the mesh's pod CIDRs (a broken link keeps both).
    eventually(
        "c2 forgotten, its pod CIDRs no longer listed",
        Duration::from_secs(10),
        || {
            let mut k = k1.clone();
            async move {
                status(&mut k).await.remotes.is_empty() && !listed(&snapshot(&mut k, false).await)
            }
        },
    )
    .await;
    c1.abort();
    c2.stop().await;
}
