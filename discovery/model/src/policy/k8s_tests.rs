//! Kubernetes NetworkPolicy semantics, rule by rule.

use std::collections::BTreeMap;

use super::testutil::*;
use super::{Direction::*, PolicyEntry, Selection, Verdict, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::identity::Labels;

/// web, db and client in `shop`; client in `other`; web in the remote cluster.
fn world() -> BTreeMap<u32, Labels> {
    BTreeMap::from([
        (id(LOCAL, 1), pod(LOCAL, "shop", &[("app", "web")])),
        (id(LOCAL, 2), pod(LOCAL, "shop", &[("app", "db")])),
        (id(LOCAL, 3), pod(LOCAL, "shop", &[("app", "client")])),
        (id(LOCAL, 4), pod(LOCAL, "other", &[("app", "client")])),
        (id(REMOTE, 1), pod(REMOTE, "shop", &[("app", "client")])),
    ])
}
const WEB: u32 = 0x01_0101;
const DB: u32 = 0x01_0102;
const CLIENT: u32 = 0x01_0103;
const OTHER_CLIENT: u32 = 0x01_0104;
const REMOTE_CLIENT: u32 = 0x02_0101;

#[test]
fn ids_are_as_named() {
    assert_eq!(
        (id(LOCAL, 1), id(LOCAL, 4), id(REMOTE, 1)),
        (WEB, OTHER_CLIENT, REMOTE_CLIENT)
    );
}

#[test]
fn default_deny_ingress_selects_every_pod_of_the_namespace_only() {
    let c = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: shop
spec:
  podSelector: {}
  policyTypes:
  - Ingress
"#,
        &world(),
    );
    assert!(c.entries.is_empty());
    let sel = Selection {
        ingress: true,
        egress: false,
    };
    assert_eq!(
        c.selected,
        BTreeMap::from([(WEB, sel), (DB, sel), (CLIENT, sel)]),
        "pods of other namespaces and clusters are not selected"
    );
    assert!(!tcp(&c, WEB, CLIENT, 80, Ingress));
    assert!(tcp(&c, WEB, CLIENT, 80, Egress), "egress not selected");
    assert!(tcp(&c, OTHER_CLIENT, WEB, 80, Ingress));
}

#[test]
fn allow_from_label_in_the_same_namespace_on_a_port() {
    let c = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
    ports:
    - port: 5432
"#,
        &world(),
    );
    assert_eq!(
        c.entries,
        BTreeMap::from([(
            PolicyEntry {
                local_identity: DB,
                remote_identity: WEB,
                dport: 5432,
                proto: PROTO_TCP,
                direction: Ingress
            },
            Verdict::Allow
        )])
    );
    assert!(tcp(&c, DB, WEB, 5432, Ingress));
    assert!(!tcp(&c, DB, WEB, 5433, Ingress));
    assert!(!tcp(&c, DB, CLIENT, 5432, Ingress));
    assert!(!datapath_allows(&c, DB, WEB, 5432, PROTO_UDP, Ingress));
    assert_eq!(c.selected.len(), 1, "policyTypes defaults to Ingress only");
}

#[test]
fn empty_rule_allows_all_and_empty_list_denies_all() {
    let allow_all = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - {}
"#,
        &world(),
    );
    let any = PolicyEntry {
        local_identity: WEB,
        remote_identity: 0,
        dport: 0,
        proto: 0,
        direction: Ingress,
    };
    assert_eq!(
        allow_all.entries,
        BTreeMap::from([(any, Verdict::Allow)]),
        "one wildcard entry"
    );
    assert!(tcp(&allow_all, WEB, REMOTE_CLIENT, 1, Ingress));
    let deny_all = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress: []
"#,
        &world(),
    );
    assert!(deny_all.entries.is_empty());
    assert_eq!(
        deny_all.selected.get(&WEB),
        Some(&Selection {
            ingress: true,
            egress: true
        })
    );
    assert!(!tcp(&deny_all, WEB, DB, 53, Egress));
    let egress_only = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
"#,
        &world(),
    );
    assert_eq!(
        egress_only.selected.get(&WEB),
        Some(&Selection {
            ingress: false,
            egress: true
        })
    );
    assert!(tcp(&egress_only, WEB, DB, 80, Ingress));
    assert!(!tcp(&egress_only, WEB, DB, 80, Egress));
}

#[test]
fn egress_is_selected_when_egress_rules_exist() {
    let c = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to:
    - podSelector: {matchLabels: {app: db}}
    ports:
    - {protocol: TCP, port: 5432}
    - {protocol: UDP, port: 53}
    - {protocol: SCTP, port: 9}
"#,
        &world(),
    );
    assert_eq!(
        c.selected.get(&WEB),
        Some(&Selection {
            ingress: true,
            egress: true
        })
    );
    assert!(tcp(&c, WEB, DB, 5432, Egress));
    assert!(datapath_allows(&c, WEB, DB, 53, PROTO_UDP, Egress));
    assert!(datapath_allows(&c, WEB, DB, 9, PROTO_SCTP, Egress));
    assert!(!tcp(&c, WEB, DB, 53, Egress));
    assert!(!tcp(&c, WEB, CLIENT, 5432, Egress));
    assert!(
        !tcp(&c, WEB, DB, 5432, Ingress),
        "ingress selected by default"
    );
}

#[test]
fn namespace_selector_by_name_and_peer_scoping() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: other}
      podSelector:
        matchLabels: {app: client}
  - from:
    - podSelector: {}
    ports: [{port: 8080}]
"#;
    let mut ids = world();
    let other_db = id(LOCAL, 5);
    ids.insert(other_db, pod(LOCAL, "other", &[("app", "db")]));
    let c = compile_yaml(yaml, &ids);
    assert!(
        tcp(&c, WEB, OTHER_CLIENT, 443, Ingress),
        "namespace AND pod"
    );
    assert!(!tcp(&c, WEB, other_db, 443, Ingress));
    assert!(!tcp(&c, WEB, CLIENT, 443, Ingress));
    assert!(
        tcp(&c, WEB, CLIENT, 8080, Ingress),
        "podSelector {{}} = own namespace"
    );
    assert!(tcp(&c, WEB, DB, 8080, Ingress));
    assert!(!tcp(&c, WEB, other_db, 8080, Ingress), "own namespace only");
    assert!(
        !tcp(&c, WEB, REMOTE_CLIENT, 8080, Ingress),
        "no cluster label: local cluster only"
    );

    let all_ns = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {}
"#,
        &world(),
    );
    assert!(tcp(&all_ns, WEB, OTHER_CLIENT, 1, Ingress));
    assert!(tcp(&all_ns, WEB, CLIENT, 1, Ingress));
    let not_in = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [shop]}
"#,
        &world(),
    );
    assert!(tcp(&not_in, WEB, OTHER_CLIENT, 1, Ingress));
    assert!(!tcp(&not_in, WEB, CLIENT, 1, Ingress));
}

#[test]
fn cross_cluster_peer_by_cluster_label() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-east, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: client, io.cilium.k8s.policy.cluster: east}
"#;
    let c = compile_yaml(yaml, &world());
    assert!(tcp(&c, WEB, REMOTE_CLIENT, 80, Ingress));
    assert!(!tcp(&c, WEB, CLIENT, 80, Ingress), "west client not named");
    let mut scope = super::Scope::new(LOCAL);
    scope.peers_any_cluster = true;
    let loose = super::compile(
        &scope,
        &parse(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
"#,
        ),
        &world(),
    );
    assert!(tcp(&loose, WEB, REMOTE_CLIENT, 80, Ingress));
    assert!(tcp(&loose, WEB, CLIENT, 80, Ingress));
}

#[test]
fn match_expressions_in_subject_and_end_port_range() {
    let c = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: shop}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [web, db]}
  ingress:
  - ports:
    - {port: 8000, endPort: 8002}
"#,
        &world(),
    );
    assert_eq!(c.selected.len(), 2);
    assert_eq!(c.entries.len(), 6, "3 ports x 2 subjects, any peer");
    assert!(tcp(&c, DB, REMOTE_CLIENT, 8002, Ingress));
    assert!(!tcp(&c, DB, CLIENT, 8003, Ingress));
    assert!(!c.selected.contains_key(&CLIENT));
}

#[test]
fn two_policies_add_up() {
    let c = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 22}]
"#,
        &world(),
    );
    assert!(tcp(&c, DB, WEB, 5432, Ingress));
    assert!(tcp(&c, DB, CLIENT, 22, Ingress));
    assert!(!tcp(&c, DB, CLIENT, 5432, Ingress));
}

fn bad(spec: &str) -> super::PolicyError {
    parse_err(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: shop}}\nspec:\n{spec}"
    ))
}

fn assert_err(e: &super::PolicyError, field: &str, words: &[&str]) {
    let text = e.to_string();
    assert!(
        text.contains("NetworkPolicy shop/bad"),
        "names the policy: {text}"
    );
    assert_eq!(e.field(), Some(field), "{text}");
    for w in words {
        assert!(text.contains(w), "{text:?} should mention {w:?}");
    }
}

#[test]
fn bad_input_names_the_policy_the_field_and_the_fix() {
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}\n"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        &["not inside cidr 10.0.0.0/8"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n"),
        "spec.ingress[0].from[0].ipBlock",
        &["its own peer"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - ports:\n    - port: http\n"),
        "spec.ingress[0].ports[0].port",
        &["named port", "port number"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - ports: [{protocol: ICMP}]\n"),
        "spec.ingress[0].ports[0].protocol",
        &["TCP, UDP or SCTP"],
    );
    assert_err(
        &bad("  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{}]\n"),
        "spec.egress",
        &["policyTypes", "Egress"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingres: []\n"),
        "spec.ingres",
        &["supported fields", "ingress"],
    );
    assert_err(
        &bad("  ingress: []\n"),
        "spec.podSelector",
        &["podSelector: {}"],
    );
    assert_err(
        &bad("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n"),
        "spec.podSelector.matchExpressions[0].values",
        &["at least one value"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - ports: [{port: 1, endPort: 5000}]\n"),
        "spec.ingress[0].ports[0].endPort",
        &["split the rule"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - from: [{}]\n"),
        "spec.ingress[0].from[0]",
        &["podSelector"],
    );
    assert_err(
        &bad("  podSelector: {}\n  egress:\n    to: []\n"),
        "spec.egress",
        &["is a map, not a list"],
    );
    assert_err(
        &bad("  podSelector: {}\n  ingress:\n  - ports: [{port: 80, protocol: 6}]\n"),
        "spec.ingress[0].ports[0]",
        &["invalid type"],
    );
    assert_err(
        &bad("  podSelector: {}\n  policyTypes: Ingress\n"),
        "spec.policyTypes",
        &["is a string, not a list"],
    );
    let wrong_api = parse_err(
        "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {podSelector: {}}\n",
    );
    assert_err(&wrong_api, "apiVersion", &["networking.k8s.io/v1"]);
    let kind = parse_err("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n").to_string();
    assert!(
        kind.contains("document 1") && kind.contains("supported kinds"),
        "{kind}"
    );
}

#[test]
fn missing_namespace_is_default_and_lists_are_read() {
    let p = parse(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: a}
  spec: {podSelector: {}}
"#,
    );
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].id.to_string(), "NetworkPolicy default/a");
}
