//! The discovery server with mutual TLS on 127.0.0.1: certificates made by
//! `certs` chain to the CA; agents may act only for the node their
//! certificate names; clients without a certificate, with one from another
//! CA, or without TLS are refused with a clear message.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meshgate_discovery::certs::files::{write_certs, CertLayout, CertRequest};
use meshgate_discovery::client::{connect, connect_with, explain_status, pb, ClientTls};
use meshgate_discovery::server::{serve_with_listener_tls, ServerConfig};
use meshgate_discovery::tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Running {
    url: String,
    _stop: oneshot::Sender<()>,
}

fn make_certs(dir: &Path, mesh: &str) -> CertLayout {
    let req = CertRequest {
        mesh: mesh.into(),
        clusters: vec![("c1".into(), vec!["127.0.0.1".parse().unwrap()])],
        agents: vec![
            ("c1".into(), "n1".into()),
            ("c1".into(), "n2".into()),
            ("c2".into(), "n1".into()),
        ],
        force: false,
    };
    write_certs(dir, &req).unwrap();
    CertLayout::new(dir)
}

async fn start(state: &Path, certs: &CertLayout) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let cfg = ServerConfig {
        listen: addr,
        cluster: "c1".into(),
        cluster_id: 1,
        state_dir: state.to_path_buf(),
        lease_ttl: Duration::from_secs(10),
        services: Vec::new(),
        federation: Default::default(),
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    let tls = ServerTls::from_files(
        &certs.discovery_cert("c1"),
        &certs.discovery_key("c1"),
        &certs.ca_cert(),
    )
    .unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(serve_with_listener_tls(cfg, Some(tls), listener, async {
        let _ = rx.await;
    }));
    Running {
        url: format!("https://{addr}"),
        _stop: stop,
    }
}

fn agent_tls(certs: &CertLayout, cluster: &str, node: &str) -> ClientTls {
    ClientTls::from_files(
        &certs.ca_cert(),
        Some(&certs.agent_cert(cluster, node)),
        Some(&certs.agent_key(cluster, node)),
        None,
        "c1",
    )
    .unwrap()
}

fn node(name: &str, cluster: &str, k: u8) -> pb::Node {
    use base64::Engine as _;
    pb::Node {
        name: name.into(),
        cluster: cluster.into(),
        cluster_id: 1,
        underlay_ip: format!("198.18.1.{}", 10 + k),
        listen_port: 51820,
        wg_public_key: base64::engine::general_purpose::STANDARD.encode([k; 32]),
        pod_cidrs: vec![format!("10.1.{k}.0/24")],
        tunnel_ip: String::new(),
        roles: vec![],
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    }
}

async fn register(
    url: &str,
    tls: &ClientTls,
    n: pb::Node,
) -> Result<pb::RegisterResponse, (tonic::Code, String)> {
    let mut c = connect_with(url, Some(tls))
        .await
        .map_err(|e| (tonic::Code::Unavailable, e.to_string()))?;
    c.register(pb::RegisterRequest { node: Some(n) })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| (s.code(), explain_status(&s, url, Some(tls))))
}

#[tokio::test]
async fn agents_act_only_for_their_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"), "m1");
    let d = start(&dir.path().join("state"), &certs).await;

    let ok = register(&d.url, &agent_tls(&certs, "c1", "n1"), node("n1", "c1", 1))
        .await
        .unwrap();
    assert!(!ok.node.unwrap().tunnel_ip.is_empty());

    let (code, msg) = register(&d.url, &agent_tls(&certs, "c2", "n1"), node("n1", "c1", 1))
        .await
        .unwrap_err();
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(
        msg.contains("c2/n1") && msg.contains("serves cluster c1"),
        "{msg}"
    );

    let (code, msg) = register(&d.url, &agent_tls(&certs, "c1", "n2"), node("n1", "c1", 1))
        .await
        .unwrap_err();
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(
        msg.contains("for c1/n2, but the request is for c1/n1"),
        "{msg}"
    );

    // Renew, report and deregister are checked the same way.
    let mut other = connect_with(&d.url, Some(&agent_tls(&certs, "c1", "n2")))
        .await
        .unwrap();
    let s = other
        .deregister(pb::DeregisterRequest {
            name: "n1".into(),
            cluster: "c1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    let s = other
        .renew(pb::RenewRequest {
            name: "n1".into(),
            cluster: "c1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    let s = other
        .report_endpoints(pb::ReportEndpointsRequest {
            node: "n1".into(),
            cluster: "c1".into(),
            endpoints: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    // Any agent of the mesh may watch.
    let mut stream = other
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

#[tokio::test]
async fn a_discovery_can_watch_another_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"), "m1");
    let d = start(&dir.path().join("state"), &certs).await;
    // Discovery c2's certificate, used as a client of c1 (federation).
    write_certs(
        &dir.path().join("certs"),
        &CertRequest {
            mesh: "m1".into(),
            clusters: vec![("c2".into(), vec![])],
            ..Default::default()
        },
    )
    .unwrap();
    let c2 = ServerTls::from_files(
        &certs.discovery_cert("c2"),
        &certs.discovery_key("c2"),
        &certs.ca_cert(),
    )
    .unwrap();
    let mut client = connect_with(&d.url, Some(&c2.client_for("c1")))
        .await
        .unwrap();
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    // It may not register nodes.
    let s = client
        .register(pb::RegisterRequest {
            node: Some(node("n1", "c1", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn clients_without_a_good_certificate_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"), "m1");
    let foreign = make_certs(&dir.path().join("foreign"), "m2");
    let d = start(&dir.path().join("state"), &certs).await;

    // No client certificate.
    let mut anon = agent_tls(&certs, "c1", "n1");
    anon.identity = None;
    let (_, msg) = register(&d.url, &anon, node("n1", "c1", 1))
        .await
        .unwrap_err();
    assert!(msg.contains("requires a client certificate"), "{msg}");

    // A certificate from another CA.
    let mut stranger = agent_tls(&foreign, "c1", "n1");
    stranger.ca_pem = agent_tls(&certs, "c1", "n1").ca_pem;
    let (_, msg) = register(&d.url, &stranger, node("n1", "c1", 1))
        .await
        .unwrap_err();
    assert!(msg.contains("refused our certificate"), "{msg}");

    // Trusting another CA: discovery's certificate is not signed by it.
    let (_, msg) = register(
        &d.url,
        &agent_tls(&foreign, "c1", "n1"),
        node("n1", "c1", 1),
    )
    .await
    .unwrap_err();
    assert!(
        msg.contains("is not signed by the CA in") && msg.contains("foreign/ca.pem"),
        "{msg}"
    );

    // The wrong server name.
    let mut misnamed = agent_tls(&certs, "c1", "n1");
    misnamed.server_name = "discovery.c2.meshgate".into();
    let (_, msg) = register(&d.url, &misnamed, node("n1", "c1", 1))
        .await
        .unwrap_err();
    assert!(
        msg.contains("not valid for the name discovery.c2.meshgate"),
        "{msg}"
    );

    // Plaintext.
    let plain = d.url.replace("https://", "http://");
    let result = match connect(&plain).await {
        Ok(mut c) => c
            .register(pb::RegisterRequest {
                node: Some(node("n1", "c1", 1)),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(result.is_err(), "a plaintext client got through");
}
