#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use super::files::{write_certs, CertLayout, CertRequest};
use super::*;
use crate::tls::subject_cn;

fn der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

fn request() -> CertRequest {
    CertRequest {
        mesh: "m1".into(),
        clusters: vec![("c1".into(), vec!["198.18.1.2".parse().unwrap()])],
        agents: vec![("c1".into(), "n1".into()), ("c1".into(), "n2".into())],
        force: false,
    }
}

#[test]
fn identities_are_in_the_cn() {
    let ca = MeshCa::generate("m1").unwrap();
    let d = ca.discovery_cert("c1", &[]).unwrap();
    assert_eq!(subject_cn(&der(&d.cert_pem)).unwrap(), "discovery.c1");
    let a = ca.agent_cert("c2", "n1").unwrap();
    assert_eq!(subject_cn(&der(&a.cert_pem)).unwrap(), "c2/n1");
    assert_eq!(discovery_server_name("c1"), "discovery.c1.meshgate");
}

#[test]
fn certs_are_signed_by_the_ca() {
    use x509_parser::prelude::*;
    let ca = MeshCa::generate("m1").unwrap();
    let other = MeshCa::generate("m2").unwrap();
    let ca_der = der(ca.cert_pem());
    let (_, ca_x) = parse_x509_certificate(&ca_der).unwrap();
    assert!(ca_x.is_ca());
    let issued = ca.agent_cert("c1", "n1").unwrap();
    let leaf_der = der(&issued.cert_pem);
    let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
    assert_eq!(leaf.issuer(), ca_x.subject());
    assert!(leaf.verify_signature(Some(ca_x.public_key())).is_ok());
    let other_der = der(other.cert_pem());
    let (_, other_x) = parse_x509_certificate(&other_der).unwrap();
    assert!(leaf.verify_signature(Some(other_x.public_key())).is_err());
}

#[test]
fn debug_never_shows_keys() {
    let ca = MeshCa::generate("m1").unwrap();
    let issued = ca.agent_cert("c1", "n1").unwrap();
    let text = format!("{issued:?} {ca:?}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[test]
fn bad_names_are_refused_before_any_file() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
        let mut req = request();
        req.agents.push(("c1".into(), bad.into()));
        let err = write_certs(dir.path(), &req).unwrap_err().to_string();
        assert!(err.contains("node name"), "{bad}: {err}");
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn writes_the_layout_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let report = write_certs(dir.path(), &request()).unwrap();
    assert!(report.new_ca);
    let l = CertLayout::new(dir.path());
    let files = [
        l.ca_cert(),
        l.ca_key(),
        l.discovery_cert("c1"),
        l.discovery_key("c1"),
        l.agent_cert("c1", "n1"),
        l.agent_key("c1", "n2"),
    ];
    for f in &files {
        assert!(report.written.contains(f), "{} not reported", f.display());
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        let key = f.to_string_lossy().ends_with("-key.pem");
        assert_eq!(mode, if key { 0o600 } else { 0o644 }, "{}", f.display());
    }
    assert_eq!(
        l.agent_cert("c1", "n1"),
        dir.path().join("agents/c1/n1.pem")
    );
    assert_eq!(l.discovery_cert("c1"), dir.path().join("clusters/c1.pem"));
    // No temporary files left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_existing_ca_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let l = CertLayout::new(dir.path());
    write_certs(dir.path(), &request()).unwrap();
    let ca1 = std::fs::read_to_string(l.ca_cert()).unwrap();
    let mut more = request();
    more.clusters.clear();
    more.agents = vec![("c1".into(), "n3".into())];
    let report = write_certs(dir.path(), &more).unwrap();
    assert!(!report.new_ca);
    assert_eq!(std::fs::read_to_string(l.ca_cert()).unwrap(), ca1);
    // n3 is signed by the kept CA.
    use x509_parser::prelude::*;
    let ca_der = der(&ca1);
    let (_, ca_x) = parse_x509_certificate(&ca_der).unwrap();
    let n3 = der(&std::fs::read_to_string(l.agent_cert("c1", "n3")).unwrap());
    let (_, n3) = parse_x509_certificate(&n3).unwrap();
    assert!(n3.verify_signature(Some(ca_x.public_key())).is_ok());

    more.force = true;
    let report = write_certs(dir.path(), &more).unwrap();
    assert!(report.new_ca);
    assert_ne!(std::fs::read_to_string(l.ca_cert()).unwrap(), ca1);
}

#[test]
fn a_ca_without_its_key_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let l = CertLayout::new(dir.path());
    write_certs(dir.path(), &request()).unwrap();
    std::fs::remove_file(l.ca_key()).unwrap();
    let err = write_certs(dir.path(), &request()).unwrap_err().to_string();
    assert!(
        err.contains("ca-key.pem") && err.contains("--force"),
        "{err}"
    );
}
