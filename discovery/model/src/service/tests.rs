#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::pb;

use super::*;

fn svc(cluster: &str, name: &str, annotations: &[(&str, &str)]) -> Service {
    Service {
        vip: None,
        name: name.into(),
        namespace: "default".into(),
        cluster: cluster.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        selector: BTreeMap::from([("app".to_string(), name.to_string())]),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        exported: false,
    }
}

fn ep(cluster: &str, ip: &str, ns: &str, app: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        name: format!("pod-{ip}"),
        namespace: ns.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        node: "n1".into(),
        cluster: cluster.into(),
        identity: 0,
    }
}

const GLOBAL: (&str, &str) = (GLOBAL_ANNOTATION, "true");

fn clusters_of(g: &GlobalService) -> Vec<(String, String)> {
    g.backends
        .iter()
        .map(|b| (b.cluster.clone(), b.ip.to_string()))
        .collect()
}

#[test]
fn selector_matches_labels_and_namespace() {
    let s = svc("c1", "web", &[]);
    assert!(s.selects(&ep("c1", "10.1.0.10", "default", "web")));
    assert!(!s.selects(&ep("c1", "10.1.0.11", "default", "db")));
    assert!(!s.selects(&ep("c1", "10.1.0.12", "other", "web")));
    let mut empty = s.clone();
    empty.selector.clear();
    assert!(!empty.selects(&ep("c1", "10.1.0.10", "default", "web")));
}

#[test]
fn two_clusters_merged_with_cluster_tags() {
    let services = vec![svc("c1", "web", &[GLOBAL]), svc("c2", "web", &[GLOBAL])];
    let eps = [
        ep("c1", "10.1.0.10", "default", "web"),
        ep("c2", "10.2.0.10", "default", "web"),
        ep("c2", "10.2.0.11", "default", "db"),
    ];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let m = merge("c1", &services, &refs);
    let web = &m["default/web"];
    assert!(web.global);
    assert_eq!(
        clusters_of(web),
        vec![
            ("c1".to_string(), "10.1.0.10".to_string()),
            ("c2".to_string(), "10.2.0.10".to_string())
        ]
    );
}

#[test]
fn exported_is_global() {
    let mut a = svc("c1", "web", &[]);
    a.exported = true;
    let mut b = svc("c2", "web", &[]);
    b.exported = true;
    let eps = [ep("c2", "10.2.0.10", "default", "web")];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let m = merge("c1", &[a, b], &refs);
    assert_eq!(m["default/web"].backends.len(), 1);
}

#[test]
fn shared_false_contributes_no_backends_but_consumes() {
    let services = vec![
        svc("c1", "web", &[GLOBAL]),
        svc("c2", "web", &[GLOBAL, (SHARED_ANNOTATION, "false")]),
    ];
    let eps = [
        ep("c1", "10.1.0.10", "default", "web"),
        ep("c2", "10.2.0.10", "default", "web"),
    ];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let c1 = merge("c1", &services, &refs);
    assert_eq!(clusters_of(&c1["default/web"]).len(), 1);
    assert_eq!(c1["default/web"].backends[0].cluster, "c1");
    // c2 still sees its own backends and c1's.
    let c2 = merge("c2", &services, &refs);
    assert_eq!(c2["default/web"].backends.len(), 2);
    assert!(!c2["default/web"].shared);
}

#[test]
fn non_global_definition_elsewhere_is_not_merged() {
    let services = vec![svc("c1", "web", &[GLOBAL]), svc("c2", "web", &[])];
    let eps = [
        ep("c1", "10.1.0.10", "default", "web"),
        ep("c2", "10.2.0.10", "default", "web"),
    ];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let m = merge("c1", &services, &refs);
    assert_eq!(m["default/web"].backends.len(), 1);
    // and a local non-global service sees only local backends
    let m2 = merge("c2", &services, &refs);
    assert!(!m2["default/web"].global);
    assert_eq!(m2["default/web"].backends[0].cluster, "c2");
    assert_eq!(m2["default/web"].backends.len(), 1);
}

#[test]
fn remote_only_service_is_not_listed() {
    let services = vec![svc("c2", "web", &[GLOBAL])];
    assert!(merge("c1", &services, &[]).is_empty());
}

#[test]
fn affinity_parsing() {
    assert_eq!(svc("c1", "w", &[]).affinity().unwrap(), Affinity::None);
    for (v, a) in [
        ("local", Affinity::Local),
        ("remote", Affinity::Remote),
        ("none", Affinity::None),
    ] {
        assert_eq!(
            svc("c1", "w", &[(AFFINITY_ANNOTATION, v)])
                .affinity()
                .unwrap(),
            a
        );
    }
    let err = svc("c1", "web", &[(AFFINITY_ANNOTATION, "nearest")])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("default/web") && err.contains("nearest"),
        "{err}"
    );
    let err = svc("c1", "web", &[(GLOBAL_ANNOTATION, "yes")])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("yes") && err.contains(GLOBAL_ANNOTATION),
        "{err}"
    );
}

#[test]
fn validation_names_the_field() {
    let mut s = svc("c1", "web", &[]);
    s.ports.clear();
    assert!(s.validate().unwrap_err().to_string().contains("`ports`"));
    let dup = vec![svc("c1", "web", &[]), svc("c1", "web", &[])];
    assert!(matches!(
        validate_all(&dup),
        Err(ServiceError::Duplicate { .. })
    ));
}

#[test]
fn changed_lists_only_differences() {
    let services = vec![svc("c1", "web", &[GLOBAL]), svc("c1", "db", &[])];
    let eps = [ep("c1", "10.1.0.10", "default", "web")];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let before = merge("c1", &services, &[]);
    let after = merge("c1", &services, &refs);
    let diff = changed(&before, &after);
    assert_eq!(diff.len(), 1);
    assert_eq!(diff[0].name, "web");
}

#[test]
fn pb_roundtrip() {
    let s = svc("c1", "web", &[GLOBAL]);
    assert_eq!(Service::try_from(&pb::Service::from(&s)).unwrap(), s);
    let eps = [ep("c1", "10.1.0.10", "default", "web")];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let m = merge("c1", &[s], &refs);
    let g = &m["default/web"];
    assert_eq!(
        &GlobalService::try_from(&pb::GlobalService::from(g)).unwrap(),
        g
    );
}
