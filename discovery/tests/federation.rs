//! Federation between real discovery servers on local ports: imports reach
//! the merged watch stream, a `local_only` watch leaves them out, a broken
//! link keeps them until the remote timeout, and a remote claiming our
//! cluster ID gets nothing applied.
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
