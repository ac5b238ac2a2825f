//! Starts the real discovery server on a free local port and drives it over gRPC.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{next, pb_node, watch};
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::model::{Event, Node, RemoveReason, Snapshot, WatchItem};
use meshgate_discovery::server::{serve_with_listener, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Streaming;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), meshgate_discovery::Error>>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).expect("server task is gone");
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server did not shut down within 5 s (open watch streams?)")
            .expect("server task panicked")
            .expect("server returned an error");
    }

    async fn client(&self) -> DiscoveryClient<Channel> {
        connect(&format!("http://{}", self.addr))
            .await
            .expect("connect to discovery")
    }
}

fn config(dir: &Path, ttl: Duration) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster: "c1".into(),
        cluster_id: 1,
        state_dir: dir.to_path_buf(),
        lease_ttl: ttl,
        services: Vec::new(),
        federation: Default::default(),
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    }
}

async fn start(dir: &Path, ttl: Duration) -> Running {
    start_with(config(dir, ttl)).await
}

async fn start_with(cfg: ServerConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_listener(cfg, listener, async {
        let _ = stop_rx.await;
    }));
    Running { addr, stop, task }
}

async fn register(c: &mut DiscoveryClient<Channel>, node: pb::Node) -> pb::RegisterResponse {
    c.register(pb::RegisterRequest { node: Some(node) })
        .await
        .expect("register")
        .into_inner()
}

async fn snapshot(stream: &mut Streaming<pb::WatchEvent>) -> Snapshot {
    match next(stream, Duration::from_secs(2)).await {
        WatchItem::Snapshot(s) => s,
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    }
}

fn names(s: &Snapshot) -> Vec<&str> {
    s.nodes.iter().map(|n| n.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pushes_snapshot_upserts_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_millis(600)).await;
    let mut c = server.client().await;

    let r1 = register(&mut c, pb_node("n1", "10.1.0.0/24", 1)).await;
    assert_eq!(r1.node.as_ref().unwrap().tunnel_ip, "100.64.64.1");
    assert_eq!(r1.lease_ttl_ms, 600);

    // keep n1 alive
    let mut renewer = c.clone();
    let keepalive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            renewer
                .renew(pb::RenewRequest {
                    name: "n1".into(),
                    cluster: "c1".into(),
                })
                .await
                .expect("renew n1");
        }
    });

    let mut stream = watch(&mut c).await;
    let snap = snapshot(&mut stream).await;
    assert_eq!(names(&snap), ["n1"]);
    assert_eq!(snap.revision, 1);

    // upsert is pushed at once
    let t = Instant::now();
    let r2 = register(&mut c, pb_node("n2", "10.1.1.0/24", 2)).await;
    assert_eq!(r2.node.as_ref().unwrap().tunnel_ip, "100.64.64.2");
    match next(&mut stream, Duration::from_secs(2)).await {
        WatchItem::Event(Event::Upserted { revision, node }) => {
            assert_eq!(revision, 2);
            assert_eq!(node.name, "n2");
            assert_eq!(node.tunnel_ip.unwrap().to_string(), "100.64.64.2");
        }
        other => panic!("expected upsert of n2, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "upsert took {:?}",
        t.elapsed()
    );

    // identical re-register: no event (checked below: the next event is the removal)
    register(&mut c, pb_node("n2", "10.1.1.0/24", 2)).await;

    // deregister is pushed at once
    let t = Instant::now();
    c.deregister(pb::DeregisterRequest {
        name: "n2".into(),
        cluster: "c1".into(),
    })
    .await
    .expect("deregister");
    match next(&mut stream, Duration::from_secs(2)).await {
        WatchItem::Event(Event::Removed {
            revision,
            name,
            reason,
            ..
        }) => {
            assert_eq!((revision, name.as_str()), (3, "n2"));
            assert_eq!(reason, RemoveReason::Deregistered);
        }
        other => panic!("expected removal of n2, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "removal took {:?}",
        t.elapsed()
    );

    // n3 is never renewed: it expires after ~600 ms (+ up to one 200 ms sweep)
    let t = Instant::now();
    register(&mut c, pb_node("n3", "10.1.3.0/24", 3)).await;
    match next(&mut stream, Duration::from_secs(2)).await {
        WatchItem::Event(Event::Upserted { node, .. }) => assert_eq!(node.name, "n3"),
        other => panic!("expected upsert of n3, got {other:?}"),
    }
    match next(&mut stream, Duration::from_secs(3)).await {
        WatchItem::Event(Event::Removed { name, reason, .. }) => {
            assert_eq!(name, "n3");
            assert_eq!(reason, RemoveReason::LeaseExpired);
        }
        other => panic!("expected expiry of n3, got {other:?}"),
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(590) && took < Duration::from_millis(1500),
        "n3 expired after {took:?}, lease is 600 ms"
    );

    // renewed n1 is still there; renewing an unknown node is NOT_FOUND
    let mut fresh = watch(&mut c).await;
    assert_eq!(names(&snapshot(&mut fresh).await), ["n1"]);
    let e = c
        .renew(pb::RenewRequest {
            name: "n3".into(),
            cluster: "c1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // wrong cluster and overlaps are refused with a clear message
    let mut wrong = pb_node("n9", "10.9.0.0/24", 9);
    wrong.cluster = "c2".into();
    wrong.cluster_id = 2;
    let e = c
        .register(pb::RegisterRequest { node: Some(wrong) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("node n9 says cluster c2 (id 2) but this discovery serves c1 (id 1)"),
        "{}",
        e.message()
    );
    let e = c
        .register(pb::RegisterRequest {
            node: Some(pb_node("n8", "10.1.0.0/16", 8)),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("node n1"), "{}", e.message());
    let mut bad_key = pb_node("n7", "10.1.7.0/24", 7);
    bad_key.wg_public_key = "short".into();
    let e = c
        .register(pb::RegisterRequest {
            node: Some(bad_key),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    keepalive.abort();
    // graceful shutdown while two watch streams are open
    server.stop().await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_nodes_and_tunnel_ips() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_secs(10)).await;
    let mut c = server.client().await;
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let i = u8::try_from(i).unwrap();
        register(&mut c, pb_node(name, &format!("10.1.{i}.0/24"), i + 1)).await;
    }
    c.deregister(pb::DeregisterRequest {
        name: "n2".into(),
        cluster: "c1".into(),
    })
    .await
    .expect("deregister n2");
    let mut stream = watch(&mut c).await;
    let before = snapshot(&mut stream).await;
    server.stop().await;
    assert!(dir.path().join("state.redb").exists());

    let server = start(dir.path(), Duration::from_secs(10)).await;
    let mut c = server.client().await;
    let mut stream = watch(&mut c).await;
    let after = snapshot(&mut stream).await;
    assert_eq!(
        after, before,
        "nodes, tunnel IPs and revision survive a restart"
    );
    assert_eq!(after.revision, 4);
    let ips: Vec<String> = after
        .nodes
        .iter()
        .map(|n: &Node| n.tunnel_ip.unwrap().to_string())
        .collect();
    assert_eq!(ips, ["100.64.64.1", "100.64.64.3"]);

    // re-registering after the restart keeps the IP and emits nothing;
    // a new node gets the lowest free index (n2's freed one)
    let r = register(&mut c, pb_node("n3", "10.1.2.0/24", 3)).await;
    assert_eq!(r.node.unwrap().tunnel_ip, "100.64.64.3");
    let r = register(&mut c, pb_node("n4", "10.1.4.0/24", 4)).await;
    assert_eq!(r.node.unwrap().tunnel_ip, "100.64.64.2");
    match next(&mut stream, Duration::from_secs(2)).await {
        WatchItem::Event(Event::Upserted { revision, node }) => {
            assert_eq!((revision, node.name.as_str()), (5, "n4"));
        }
        other => panic!("expected upsert of n4, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn corrupt_state_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{\"format\":1,").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(dir.path(), Duration::from_secs(1));
    let e = serve_with_listener(cfg, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"format\":1,");
}

#[tokio::test]
async fn connect_to_nothing_fails_fast_with_the_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let t = Instant::now();
    let e = connect(&format!("http://{addr}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&addr.to_string()), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let e = connect("not a uri").await.unwrap_err().to_string();
    assert!(e.contains("http://IP:PORT"), "{e}");
}

fn pb_ep(name: &str, ip: &str, app: &str) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ..Default::default()
    }
}

async fn report(
    c: &mut DiscoveryClient<Channel>,
    node: &str,
    endpoints: Vec<pb::Endpoint>,
) -> Result<pb::ReportEndpointsResponse, tonic::Status> {
    c.report_endpoints(pb::ReportEndpointsRequest {
        node: node.into(),
        cluster: "c1".into(),
        endpoints,
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_get_identities_pushed_incrementally_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Duration::from_secs(30)).await;
    let mut c = server.client().await;
    register(&mut c, pb_node("n1", "10.1.0.0/24", 1)).await;
    let mut stream = watch(&mut c).await;
    snapshot(&mut stream).await;

    let out = report(
        &mut c,
        "n1",
        vec![
            pb_ep("a", "10.1.0.10", "web"),
            pb_ep("b", "10.1.0.11", "db"),
        ],
    )
    .await
    .expect("report");
    let ids: Vec<u32> = out.endpoints.iter().map(|e| e.identity).collect();
    assert_eq!(ids, [65_792, 65_793]);
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(match next(&mut stream, Duration::from_secs(2)).await {
            WatchItem::Event(Event::IdentityAdded { .. }) => "id+",
            WatchItem::Event(Event::EndpointUpserted { .. }) => "ep+",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["id+", "id+", "ep+", "ep+"]);

    // one endpoint changes: exactly one upsert is pushed
    report(
        &mut c,
        "n1",
        vec![
            pb_ep("a", "10.1.0.10", "web"),
            pb_ep("b", "10.1.0.11", "web"),
        ],
    )
    .await
    .expect("re-report");
    match next(&mut stream, Duration::from_secs(2)).await {
        WatchItem::Event(Event::EndpointUpserted { endpoint, .. }) => {
            assert_eq!(endpoint.ip.to_string(), "10.1.0.11");
            assert_eq!(endpoint.identity, 65_792);
        }
        other => panic!("expected one endpoint upsert, got {other:?}"),
    }

    // an IP outside the node's pod CIDR is refused, naming it
    let e = report(&mut c, "n1", vec![pb_ep("x", "10.9.0.1", "web")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("default/x")
            && e.message().contains("10.9.0.1")
            && e.message().contains("10.1.0.0/24"),
        "{}",
        e.message()
    );
    let e = report(&mut c, "ghost", vec![]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    drop(stream);
    server.stop().await;
    let server = start(dir.path(), Duration::from_secs(30)).await;
    let mut c = server.client().await;
    let mut stream = watch(&mut c).await;
    let snap = snapshot(&mut stream).await;
    let eps: Vec<(String, u32)> = snap
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.identity))
        .collect();
    assert_eq!(
        eps,
        [
            ("10.1.0.10".to_string(), 65_792),
            ("10.1.0.11".to_string(), 65_792)
        ]
    );
    let ids: Vec<u32> = snap.identities.iter().map(|i| i.id).collect();
    assert_eq!(ids, [65_792, 65_793], "identities survive the restart");
    server.stop().await;
}

#[tokio::test]
async fn cluster_pod_cidrs_refuse_nodes_outside_and_lead_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Duration::from_secs(30));
    cfg.pod_cidrs = vec!["10.1.0.0/16".parse().unwrap()];
    let server = start_with(cfg).await;
    let mut c = server.client().await;
    register(&mut c, pb_node("n1", "10.1.0.0/24", 1)).await;
    let status = c
        .register(pb::RegisterRequest {
            node: Some(pb_node("n2", "10.9.0.0/24", 2)),
        })
        .await
        .expect_err("a node outside the cluster's pod CIDRs must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("node n2: pod CIDR 10.9.0.0/24 is outside")
            && status.message().contains("(10.1.0.0/16)")
            && status.message().contains("discovery's --pod-cidr"),
        "{}",
        status.message()
    );
    for local_only in [false, true] {
        let mut stream = c
            .watch(pb::WatchRequest {
                local_only,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let s = match next(&mut stream, Duration::from_secs(2)).await {
            WatchItem::Snapshot(s) => s,
            other => panic!("first watch event must be a snapshot, got {other:?}"),
        };
        let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1"]);
        assert_eq!(
            s.clusters.len(),
            1,
            "local_only {local_only}: {:?}",
            s.clusters
        );
        let own = &s.clusters[0];
        assert_eq!((own.cluster.as_str(), own.cluster_id), ("c1", 1));
        assert_eq!(
            own.pod_cidrs,
            ["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn overlapping_cluster_pod_cidrs_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Duration::from_secs(30));
    cfg.pod_cidrs = vec![
        "10.1.0.0/16".parse().unwrap(),
        "10.1.4.0/24".parse().unwrap(),
    ];
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let e = serve_with_listener(cfg, listener, std::future::pending())
        .await
        .expect_err("overlapping --pod-cidr must be refused");
    assert_eq!(
        e.to_string(),
        "invalid discovery config: --pod-cidr: pod CIDRs 10.1.0.0/16 and 10.1.4.0/24 overlap; \
         list each range once"
    );
}

#[tokio::test]
async fn a_node_with_other_encryption_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Duration::from_secs(5));
    cfg.encryption = meshgate_discovery::model::Encryption::Ipsec;
    let server = start_with(cfg).await;
    let mut c = server.client().await;
    let err = c
        .register(pb::RegisterRequest {
            node: Some(pb_node("n1", "10.1.0.0/24", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let msg = err.message();
    assert!(
        msg.contains("registers with encryption wireguard but this mesh encrypts with ipsec")
            && msg.contains("start its agent with --encryption ipsec"),
        "{msg}"
    );
    let mut ok = pb_node("n2", "10.1.1.0/24", 2);
    ok.encryption = "ipsec".into();
    let r = register(&mut c, ok).await;
    assert_eq!(r.node.unwrap().encryption, "ipsec");
    let mut bad = pb_node("n3", "10.1.2.0/24", 3);
    bad.encryption = "rot13".into();
    let err = c
        .register(pb::RegisterRequest { node: Some(bad) })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("use wireguard or ipsec"),
        "{}",
        err.message()
    );
}
