//! Global services between real discovery servers on local ports: the
//! merged view reaches the `Services` RPC and the watch stream, only the
//! service whose backends changed is pushed, and `local_only` watches carry
//! definitions but no merged view.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::federation::{FederationConfig, RemoteConfig};
use meshgate_discovery::server::{serve_with_listener, ServerConfig};
use meshgate_discovery::service::{
    backends_from_pb, GlobalService, Protocol, Service, ServicePort,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

fn svc(name: &str, app: &str, global: bool) -> Service {
    Service {
        vip: None,
        name: name.into(),
        namespace: "default".into(),
        cluster: String::new(),
        ports: vec![ServicePort {
            name: String::new(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        selector: BTreeMap::from([("app".to_string(), app.to_string())]),
        annotations: if global {
            BTreeMap::from([("service.cilium.io/global".to_string(), "true".to_string())])
        } else {
            BTreeMap::new()
        },
        exported: false,
    }
}

async fn start(
    dir: &Path,
    cluster: &str,
    id: u8,
    listener: TcpListener,
    remote: (&str, SocketAddr),
    services: Vec<Service>,
) {
    let cfg = ServerConfig {
        listen: listener.local_addr().unwrap(),
        cluster: cluster.into(),
        cluster_id: id,
        state_dir: dir.join(cluster),
        lease_ttl: Duration::from_secs(30),
        services,
        federation: FederationConfig {
            remotes: vec![RemoteConfig::new(remote.0, format!("http://{}", remote.1))],
            remote_timeout: Duration::from_secs(30),
        },
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    tokio::spawn(serve_with_listener(cfg, listener, std::future::pending()));
}

async fn report(c: &mut DiscoveryClient<Channel>, cluster: &str, id: u8, pods: &[(u8, &str)]) {
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
        .unwrap();
    c.report_endpoints(pb::ReportEndpointsRequest {
        node: "n1".into(),
        cluster: cluster.into(),
        endpoints: pods
            .iter()
            .map(|(host, app)| pb::Endpoint {
                ip: format!("10.{id}.0.{host}"),
                name: format!("p{host}"),
                namespace: String::new(),
                labels: [("app".to_string(), app.to_string())].into(),
                ..Default::default()
            })
            .collect(),
    })
    .await
    .unwrap();
}

/// `namespace/name` → sorted `cluster ip` of the backends.
async fn services(c: &mut DiscoveryClient<Channel>) -> BTreeMap<String, Vec<String>> {
    let r = c
        .services(pb::ServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    r.services
        .iter()
        .map(|s| {
            let mut b: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{} {}", b.cluster, b.ip))
                .collect();
            b.sort();
            (format!("{}/{}", s.namespace, s.name), b)
        })
        .collect()
}

#[tokio::test]
async fn global_service_backends_are_merged_and_pushed_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    start(
        dir.path(),
        "c1",
        1,
        l1,
        ("c2", a2),
        vec![svc("web", "web", true), svc("db", "db", false)],
    )
    .await;
    start(
        dir.path(),
        "c2",
        2,
        l2,
        ("c1", a1),
        vec![svc("web", "web", true), svc("db", "db", true)],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c1 = connect(&format!("http://{a1}")).await.unwrap();
    let mut c2 = connect(&format!("http://{a2}")).await.unwrap();
    report(&mut c2, "c2", 2, &[(10, "web"), (11, "db")]).await;

    // c2's local-only snapshot: its definitions, no merged view.
    let mut s = c2
        .watch(pb::WatchRequest {
            local_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match s.message().await.unwrap().and_then(|e| e.event) {
        Some(pb::watch_event::Event::Snapshot(s)) => {
            assert_eq!(s.services.len(), 2);
            assert!(s.services.iter().all(|x| x.cluster == "c2"));
            assert!(s.global_services.is_empty());
        }
        other => panic!("want a snapshot, got {other:?}"),
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = services(&mut c1).await;
        if got.get("default/web") == Some(&vec!["c2 10.2.0.10".to_string()]) {
            // c1's db is not global: c2's db backend is not merged into it.
            assert_eq!(got.get("default/db"), Some(&vec![]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c1 never merged c2's web: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A watcher of c1 sees web in its snapshot, then only web's new
    // backend (not db, not web whole) when c1's own web pod appears; one
    // that does not take backend changes (an older agent) gets web whole.
    let req = pb::WatchRequest {
        local_only: false,
        backend_deltas: true,
        snapshot_parts: true,
    };
    let mut w = meshgate_discovery::client::watch(&mut c1, req)
        .await
        .unwrap();
    let mut older = c1
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        older.message().await.unwrap().and_then(|e| e.event),
        Some(pb::watch_event::Event::Snapshot(_))
    ));
    let mut web = match w.message().await.unwrap().and_then(|e| e.event) {
        Some(pb::watch_event::Event::Snapshot(s)) => {
            assert_eq!(s.global_services.len(), 2);
            let web = s.global_services.iter().find(|g| g.name == "web").unwrap();
            GlobalService::try_from(web).unwrap()
        }
        other => panic!("want a snapshot, got {other:?}"),
    };
    report(&mut c1, "c1", 1, &[(10, "web")]).await;
    let changed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match w.message().await.unwrap().and_then(|e| e.event) {
                Some(pb::watch_event::Event::ServiceBackends(u)) => return u,
                Some(pb::watch_event::Event::ServiceUpdated(u)) => {
                    panic!("want only the backends that changed, got {u:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("no service_backends within 5 s");
    assert_eq!((changed.name.as_str(), changed.removed.len()), ("web", 0));
    let added: Vec<String> = changed
        .added
        .iter()
        .map(|b| format!("{} {}", b.cluster, b.ip))
        .collect();
    assert_eq!(added, vec!["c1 10.1.0.10"]);
    web.change_backends(&[], &backends_from_pb(&changed.added).unwrap());
    let b: Vec<String> = web
        .backends
        .iter()
        .map(|b| format!("{} {}", b.cluster, b.ip))
        .collect();
    assert_eq!(b, vec!["c1 10.1.0.10", "c2 10.2.0.10"]);
    let whole = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match older.message().await.unwrap().and_then(|e| e.event) {
                Some(pb::watch_event::Event::ServiceUpdated(u)) => return u.service.unwrap(),
                Some(pb::watch_event::Event::ServiceBackends(u)) => {
                    panic!("a watcher without backend_deltas got {u:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("no service_updated for the older watcher within 5 s");
    assert_eq!(
        GlobalService::try_from(&whole).unwrap().backends,
        web.backends,
        "the older watcher's whole service"
    );
}

/// Polls `c`'s Services RPC until `ok` holds.
async fn services_until(
    c: &mut DiscoveryClient<Channel>,
    what: &str,
    ok: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = services(c).await;
        if ok(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 10 s; services: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn service_definitions_replaced_at_run_time_reach_watchers_and_remote_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    // c1 defines api as global; c2's definitions come from a feed (as the
    // Kubernetes API's Services would), starting with web only.
    start(
        dir.path(),
        "c1",
        1,
        l1,
        ("c2", a2),
        vec![svc("api", "api", true)],
    )
    .await;
    let (feed, rx) = tokio::sync::watch::channel(vec![svc("web", "web", false)]);
    let cfg = ServerConfig {
        listen: a2,
        cluster: "c2".into(),
        cluster_id: 2,
        state_dir: dir.path().join("c2"),
        lease_ttl: Duration::from_secs(30),
        services: Vec::new(),
        federation: FederationConfig {
            remotes: vec![RemoteConfig::new("c1", format!("http://{a1}"))],
            remote_timeout: Duration::from_secs(30),
        },
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    tokio::spawn(meshgate_discovery::server::serve_on_with_feeds(
        cfg,
        None,
        meshgate_discovery::store::StoreChoice::Embedded,
        l2,
        meshgate_discovery::server::Feeds {
            services: Some(rx),
            remotes: None,
        },
        std::future::pending(),
    ));
    let mut c1 = connect(&format!("http://{a1}")).await.unwrap();
    let mut c2 = loop {
        match connect(&format!("http://{a2}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    report(&mut c2, "c2", 2, &[(10, "web"), (11, "api")]).await;
    services_until(&mut c2, "c2 serves the feed's web", |s| {
        s.get("default/web") == Some(&vec!["c2 10.2.0.10".to_string()])
    })
    .await;
    let mut w = meshgate_discovery::client::watch(
        &mut c2,
        pb::WatchRequest {
            local_only: false,
            backend_deltas: true,
            snapshot_parts: true,
        },
    )
    .await
    .unwrap();
    match w.message().await.unwrap().and_then(|e| e.event) {
        Some(pb::watch_event::Event::Snapshot(s)) => {
            let names: Vec<&str> = s.global_services.iter().map(|g| g.name.as_str()).collect();
            assert_eq!(names, ["web"]);
        }
        other => panic!("want a snapshot, got {other:?}"),
    }
    // api is defined, web goes: watchers get a fresh snapshot without web,
    // and c1 merges c2's api backend into its own api.
    feed.send(vec![svc("api", "api", true)]).unwrap();
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(pb::watch_event::Event::Snapshot(s)) =
                w.message().await.unwrap().and_then(|e| e.event)
            {
                return s;
            }
        }
    })
    .await
    .expect("a fresh snapshot after the definitions changed");
    let names: Vec<&str> = fresh
        .global_services
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(names, ["api"], "web is gone, api is there");
    services_until(&mut c2, "c2 serves api, not web", |s| {
        s.get("default/api") == Some(&vec!["c2 10.2.0.11".to_string()])
            && !s.contains_key("default/web")
    })
    .await;
    services_until(&mut c1, "c1 merges c2's api", |s| {
        s.get("default/api") == Some(&vec!["c2 10.2.0.11".to_string()])
    })
    .await;
}
