#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn the_agent_of_the_node_is_allowed() {
    assert_eq!(authorize(Some("c1/n1"), "c1", "c1", "n1"), Ok(()));
}

#[test]
fn another_cluster_is_denied_and_named() {
    let e = authorize(Some("c2/n1"), "c1", "c1", "n1").unwrap_err();
    assert!(matches!(e, Denied::OtherCluster { .. }));
    let text = e.to_string();
    assert!(
        text.contains("c2/n1") && text.contains("serves cluster c1"),
        "{text}"
    );
    // Claiming the other cluster in the request does not help.
    assert!(matches!(
        authorize(Some("c2/n1"), "c1", "c2", "n1"),
        Err(Denied::OtherCluster { .. })
    ));
}

#[test]
fn another_node_is_denied_and_named() {
    let e = authorize(Some("c1/n2"), "c1", "c1", "n1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the client certificate is for c1/n2, but the request is for c1/n1"
    );
}

#[test]
fn non_agents_and_missing_certificates_are_denied() {
    assert_eq!(
        authorize(None, "c1", "c1", "n1"),
        Err(Denied::NoCertificate)
    );
    assert!(matches!(
        authorize(Some("discovery.c1"), "c1", "c1", "n1"),
        Err(Denied::NotAnAgent { .. })
    ));
}

fn client(ca: &str) -> ClientTls {
    ClientTls {
        ca_pem: String::new(),
        ca_file: PathBuf::from(ca),
        identity: None,
        server_name: "discovery.c1.meshgate".into(),
    }
}

#[test]
fn failures_are_explained() {
    let t = client("/x/ca.pem");
    let e = "https://1.2.3.4:7100";
    let s = explain_failure("invalid peer certificate: UnknownIssuer", e, &t).unwrap();
    assert_eq!(
        s,
        "the certificate of discovery at https://1.2.3.4:7100 is not signed by the CA in /x/ca.pem"
    );
    let s = explain_failure("received fatal alert: CertificateRequired", e, &t).unwrap();
    assert!(s.contains("requires a client certificate"), "{s}");
    let s = explain_failure("received fatal alert: UnknownCA", e, &t).unwrap();
    assert!(s.contains("refused our certificate"), "{s}");
    let s = explain_failure("invalid peer certificate: NotValidForName", e, &t).unwrap();
    assert!(s.contains("discovery.c1.meshgate"), "{s}");
    assert_eq!(explain_failure("connection refused", e, &t), None);
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let err = ClientTls::from_files(&missing, None, None, None, "c1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.pem") && err.contains("--tls-ca"),
        "{err}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let err = ClientTls::from_files(&junk, None, None, None, "c1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("junk.pem") && err.contains("not valid"),
        "{err}"
    );
    let err = ServerTls::from_files(&junk, &junk, &junk)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("junk.pem") && err.contains("--tls-cert"),
        "{err}"
    );
}

#[test]
fn a_certificate_is_not_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let req = crate::certs::files::CertRequest {
        mesh: "m".into(),
        agents: vec![("c1".into(), "n1".into())],
        ..Default::default()
    };
    crate::certs::files::write_certs(dir.path(), &req).unwrap();
    let l = crate::certs::files::CertLayout::new(dir.path());
    let cert = l.agent_cert("c1", "n1");
    let err = ClientTls::from_files(&l.ca_cert(), Some(&cert), Some(&cert), None, "c1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("--tls-key") && err.contains("n1.pem"), "{err}");
    let ok = ClientTls::from_files(
        &l.ca_cert(),
        Some(&cert),
        Some(&l.agent_key("c1", "n1")),
        None,
        "c1",
    )
    .unwrap();
    assert_eq!(ok.server_name, "discovery.c1.meshgate");
    assert!(!format!("{ok:?}").contains("PRIVATE"));
    let err = ClientTls::from_files(&l.ca_cert(), Some(&cert), None, None, "c1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("--tls-key"), "{err}");
}
