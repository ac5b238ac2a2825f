//! CiliumNetworkPolicy (L3/L4) semantics, rule by rule.

use std::collections::BTreeMap;

use super::testutil::*;
use super::{Direction::*, PolicyEntry, Selection, Verdict, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::identity::Labels;

fn world() -> BTreeMap<u32, Labels> {
    BTreeMap::from([
        (id(LOCAL, 1), pod(LOCAL, "shop", &[("app", "web")])),
        (id(LOCAL, 2), pod(LOCAL, "shop", &[("app", "db")])),
        (id(LOCAL, 3), pod(LOCAL, "shop", &[("app", "client")])),
        (id(LOCAL, 4), pod(LOCAL, "other", &[("app", "client")])),
        (id(REMOTE, 1), pod(REMOTE, "shop", &[("app", "client")])),
        (id(REMOTE, 2), pod(REMOTE, "shop", &[("app", "db")])),
    ])
}
const WEB: u32 = 0x01_0101;
const DB: u32 = 0x01_0102;
const CLIENT: u32 = 0x01_0103;
const OTHER_CLIENT: u32 = 0x01_0104;
const REMOTE_CLIENT: u32 = 0x02_0101;
const REMOTE_DB: u32 = 0x02_0102;

#[test]
fn allow_from_endpoints_on_ports_in_the_policy_namespace() {
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
"#),
        &world(),
    );
    assert!(tcp(&c, WEB, CLIENT, 80, Ingress));
    assert!(!tcp(&c, WEB, CLIENT, 81, Ingress));
    assert!(
        !tcp(&c, WEB, OTHER_CLIENT, 80, Ingress),
        "peer scoped to the policy namespace"
    );
    assert!(
        !tcp(&c, WEB, REMOTE_CLIENT, 80, Ingress),
        "local cluster by default"
    );
    assert_eq!(
        c.selected,
        BTreeMap::from([(
            WEB,
            Selection {
                ingress: true,
                egress: false
            }
        )])
    );
}

#[test]
fn empty_rule_is_default_deny_and_empty_selector_is_the_namespace() {
    let deny = compile_yaml(
        &cnp("  endpointSelector: {}\n  ingress:\n  - {}\n"),
        &world(),
    );
    assert!(
        deny.entries.is_empty(),
        "Cilium's `ingress: [{{}}]` allows nothing"
    );
    assert_eq!(
        deny.selected.keys().copied().collect::<Vec<_>>(),
        vec![WEB, DB, CLIENT]
    );
    let ns = compile_yaml(
        &cnp("  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  - fromEndpoints: [{}]\n"),
        &world(),
    );
    assert!(tcp(&ns, DB, WEB, 1, Ingress));
    assert!(tcp(&ns, DB, CLIENT, 1, Ingress));
    assert!(!tcp(&ns, DB, OTHER_CLIENT, 1, Ingress));
}

#[test]
fn cross_cluster_by_cluster_label_and_any_namespace_by_label() {
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints:
    - matchLabels:
        app: db
        io.cilium.k8s.policy.cluster: east
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: other
"#),
        &world(),
    );
    assert!(tcp(&c, WEB, REMOTE_DB, 5432, Egress));
    assert!(!tcp(&c, WEB, DB, 5432, Egress), "east only");
    assert!(tcp(&c, WEB, OTHER_CLIENT, 1, Egress), "namespace named");
    assert!(!tcp(&c, WEB, CLIENT, 1, Egress));
    assert!(
        tcp(&c, WEB, CLIENT, 1, Ingress),
        "ingress is not selected by an egress-only policy"
    );
    let expr = compile_yaml(
        &cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints:
    - matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: Exists}
      - {key: app, operator: NotIn, values: [web]}
"#),
        &world(),
    );
    assert!(tcp(&expr, WEB, REMOTE_DB, 1, Egress));
    assert!(tcp(&expr, WEB, DB, 1, Egress), "every cluster");
    assert!(!tcp(&expr, WEB, WEB, 1, Egress));
}

#[test]
fn l4_only_rule_and_protocol_any() {
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toPorts:
    - ports:
      - port: "53"
      - {port: "443", protocol: TCP}
"#),
        &world(),
    );
    let e = |proto, dport| PolicyEntry {
        local_identity: WEB,
        remote_identity: 0,
        dport,
        proto,
        direction: Egress,
    };
    assert_eq!(
        c.entries,
        BTreeMap::from([
            (e(PROTO_TCP, 53), Verdict::Allow),
            (e(PROTO_UDP, 53), Verdict::Allow),
            (e(PROTO_SCTP, 53), Verdict::Allow),
            (e(PROTO_TCP, 443), Verdict::Allow),
        ]),
        "no protocol = ANY = TCP, UDP and SCTP on that port; any peer"
    );
    assert!(datapath_allows(&c, WEB, REMOTE_DB, 53, PROTO_UDP, Egress));
    assert!(!datapath_allows(&c, WEB, DB, 443, PROTO_UDP, Egress));
}

#[test]
fn deny_rules_win_and_select() {
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
"#),
        &world(),
    );
    assert!(tcp(&c, DB, CLIENT, 22, Ingress));
    assert!(!tcp(&c, DB, CLIENT, 5432, Ingress), "deny wins");
    assert!(tcp(&c, DB, WEB, 5432, Ingress));
    // Deny-only policy: selected (default deny), and deny stays a deny.
    let only = compile_yaml(
        &cnp(
            "  endpointSelector: {matchLabels: {app: db}}\n  egressDeny:\n  - toPorts: [{ports: [{port: \"25\"}]}]\n",
        ),
        &world(),
    );
    assert_eq!(
        only.selected.get(&DB),
        Some(&Selection {
            ingress: false,
            egress: true
        })
    );
    assert!(!tcp(&only, DB, WEB, 80, Egress));
    let open = compile_yaml(
        &cnp("  endpointSelector: {matchLabels: {app: db}}\n  enableDefaultDeny: {egress: false}\n  egressDeny:\n  - toPorts: [{ports: [{port: \"25\"}]}]\n"),
        &world(),
    );
    assert!(open.selected.is_empty());
    assert!(tcp(&open, DB, WEB, 80, Egress));
    assert!(!tcp(&open, DB, WEB, 25, Egress));
}

#[test]
fn same_key_from_allow_and_deny_policies_is_deny() {
    let yaml = format!(
        "{}---\n{}",
        cnp("  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n"),
        cnp("  endpointSelector: {}\n  ingressDeny:\n  - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n")
            .replace("name: p", "name: q")
    );
    let c = compile_yaml(&yaml, &world());
    assert!(c.entries.values().all(|v| *v == Verdict::Deny));
    assert!(!tcp(&c, WEB, CLIENT, 80, Ingress));
}

#[test]
fn specs_list_gives_several_subjects() {
    let c = compile_yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
- endpointSelector: {matchLabels: {app: db}}
  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]
"#,
        &world(),
    );
    assert!(tcp(&c, WEB, CLIENT, 1, Ingress));
    assert!(tcp(&c, DB, WEB, 1, Ingress));
    assert!(!tcp(&c, DB, CLIENT, 1, Ingress));
}

#[test]
fn unsupported_fields_are_errors_naming_policy_field_and_fix() {
    assert_err(
        "  endpointSelector: {}\n  egressDeny:\n  - toFQDNs: [{matchName: example.com}]\n",
        "spec.egressDeny[0].toFQDNs",
        &["not supported in deny rules", "Cilium"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\"}]\n      rules: {http: [{method: GET}]}\n",
        "spec.ingress[0].toPorts[0].rules.http",
        &["L7 rules other than DNS", "--l7 ignore"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: ICMP}]}]\n",
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        &["TCP, UDP, SCTP or ANY"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: https}]}]\n",
        "spec.ingress[0].toPorts[0].ports[0].port",
        &["named port"],
    );
    assert_err(
        "  endpointSelector: {matchLabels: {container:app: web}}\n",
        "spec.endpointSelector.matchLabels.container:app",
        &["label source"],
    );
    assert_err(
        "  ingress: [{}]\n",
        "spec.endpointSelector",
        &["endpointSelector: {}"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - fromEndpoints: [{}]\n",
        "spec.egress[0].fromEndpoints",
        &["toEndpoints"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: []}]\n",
        "spec.ingress[0].toPorts[0].ports",
        &["leave toPorts out"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n    fromEndpoints: [{}]\n",
        "spec.ingress",
        &["is a map, not a list", "- "],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toEndpoints: [{matchLabels: {app: [a]}}]\n",
        "spec.egress[0].toEndpoints[0]",
        &["invalid type"],
    );
    assert_err(
        "  endpointSelector: {}\n  nodeSelector: {}\n",
        "spec.nodeSelector",
        &["node policies"],
    );
}

#[test]
fn default_deny_off_keeps_allows_and_port_zero_is_any_port() {
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports:
      - {port: 0, protocol: UDP}
      - port: 8080
"#),
        &world(),
    );
    assert!(c.selected.is_empty(), "enableDefaultDeny.ingress false");
    assert!(tcp(&c, WEB, DB, 1, Ingress), "not selected: all allowed");
    let any_udp = PolicyEntry {
        local_identity: WEB,
        remote_identity: CLIENT,
        dport: 0,
        proto: PROTO_UDP,
        direction: Ingress,
    };
    assert_eq!(c.entries.get(&any_udp), Some(&Verdict::Allow));
    assert!(
        c.entries.contains_key(&PolicyEntry {
            dport: 8080,
            proto: PROTO_TCP,
            ..any_udp
        }),
        "a YAML number is read as a port too"
    );
}

#[test]
fn broken_yaml_and_missing_names_say_where() {
    let e = parse_err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a\n")
        .to_string();
    assert!(
        e.starts_with("test.yaml: document 1: not valid YAML") && e.contains("line"),
        "{e}"
    );
    let e = parse_err(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: shop}\nspec: {endpointSelector: {}}\n",
    )
    .to_string();
    assert!(e.contains("no metadata.name"), "{e}");
    let e = parse_err(&format!(
        "{}---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: c}}\nspec: {{}}\n",
        cnp("  endpointSelector: {}\n")
    ))
    .to_string();
    assert_eq!(
        e,
        "test.yaml: CiliumClusterwideNetworkPolicy c: spec.endpointSelector: is required; use \
         `endpointSelector: {}` for every endpoint of every namespace"
    );
    let e = parse_err(&cnp(
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"70000\"}]}]\n",
    ));
    assert_eq!(
        e.field(),
        Some("spec.ingress[0].toPorts[0].ports[0].port"),
        "{e}"
    );
}
