//! CiliumNetworkPolicy `toFQDNs` and `toPorts[].rules.dns`: read, selected,
//! no entries of their own; what is refused.

use std::collections::BTreeMap;

use super::testutil::*;
use super::{summary, Direction::*, FqdnMatch, Peers, PortProto, Selection, PROTO_TCP, PROTO_UDP};
use crate::identity::Labels;

const WEB: u32 = 0x01_0101;
const DNS: u32 = 0x01_0102;

fn world() -> BTreeMap<u32, Labels> {
    BTreeMap::from([
        (id(LOCAL, 1), pod(LOCAL, "shop", &[("app", "web")])),
        (
            id(LOCAL, 2),
            pod(LOCAL, "kube-system", &[("k8s-app", "kube-dns")]),
        ),
    ])
}

/// Cilium's documented example: DNS to kube-dns limited to some names, and
/// the addresses of others reachable on 80/TCP.
const EXAMPLE: &str = r#"
  endpointSelector:
    matchLabels: {app: web}
  egress:
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: kube-system
        k8s:k8s-app: kube-dns
    toPorts:
    - ports:
      - {port: "53", protocol: ANY}
      rules:
        dns:
        - matchName: Cilium.io.
        - matchPattern: "*.cilium.io"
        - matchPattern: "*.api.cilium.io"
  - toFQDNs:
    - matchName: cilium.io
    - matchName: sub.cilium.io
    - matchPattern: "special*service.api.cilium.io"
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

#[test]
fn to_fqdns_and_dns_rules_are_read() {
    let p = parse(&cnp(EXAMPLE));
    let rules = &p[0].specs[0].rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].dns,
        vec![
            FqdnMatch::Name("cilium.io".into()),
            FqdnMatch::Pattern("*.cilium.io".into()),
            FqdnMatch::Pattern("*.api.cilium.io".into()),
        ]
    );
    assert!(matches!(rules[0].peers, Peers::Selected(ref s) if s.len() == 1));
    assert_eq!(
        rules[1].peers,
        Peers::Fqdns(vec![
            FqdnMatch::Name("cilium.io".into()),
            FqdnMatch::Name("sub.cilium.io".into()),
            FqdnMatch::Pattern("special*service.api.cilium.io".into()),
        ])
    );
    assert_eq!(
        rules[1].ports,
        vec![PortProto {
            proto: PROTO_TCP,
            port: 80
        }]
    );
    assert!(rules[1].dns.is_empty());
}

#[test]
fn fqdn_rules_select_in_egress_and_give_no_entries_dns_ports_compile_as_usual() {
    let c = compile_yaml(&cnp(EXAMPLE), &world());
    assert_eq!(
        c.selected,
        BTreeMap::from([(
            WEB,
            Selection {
                ingress: false,
                egress: true
            }
        )])
    );
    // Only the DNS rule's entries (53 on TCP, UDP and SCTP to kube-dns).
    assert_eq!(c.entries.len(), 3, "{:?}", c.entries);
    assert!(datapath_allows(&c, WEB, DNS, 53, PROTO_UDP, Egress));
    assert!(!tcp(&c, WEB, DNS, 80, Egress), "default deny in egress");
    assert!(
        !tcp(&c, WEB, 0, 80, Egress),
        "FQDN addresses are the proxy's"
    );
}

#[test]
fn a_lone_fqdn_rule_selects_and_allows_any_port() {
    let spec = "  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchPattern: \"*\"}]\n";
    let p = parse(&cnp(spec));
    assert_eq!(p[0].specs[0].rules[0].ports, vec![PortProto::ANY]);
    let c = compile_yaml(&cnp(spec), &world());
    assert!(c.entries.is_empty());
    assert!(c.selected.get(&WEB).is_some_and(|s| s.egress && !s.ingress));
}

#[test]
fn summary_shows_fqdn_and_dns_rules() {
    let p = parse(&cnp(EXAMPLE));
    assert_eq!(
        summary(&p[0]),
        "CiliumNetworkPolicy shop/p\n  \
         subject app=web,io.kubernetes.pod.namespace=shop; default deny: egress\n  \
         egress allow to [io.kubernetes.pod.namespace=kube-system,k8s-app=kube-dns] on \
         53/tcp, 53/udp, 53/sctp\n    \
         DNS lookups limited to name cilium.io or pattern *.cilium.io or pattern \
         *.api.cilium.io\n  \
         egress allow to addresses of name cilium.io or name sub.cilium.io or pattern \
         special*service.api.cilium.io on 80/tcp\n"
    );
}

#[test]
fn bad_fqdn_rules_are_refused_naming_the_field() {
    let egress = |rule: &str| format!("  endpointSelector: {{}}\n  egress:\n  - {rule}\n");
    assert_err(
        &egress("toFQDNs: [{matchName: \"*.example.com\"}]"),
        "spec.egress[0].toFQDNs[0].matchName",
        &["matchPattern"],
    );
    assert_err(
        &egress("toFQDNs: [{matchPattern: \"a.**.example.com\"}]"),
        "spec.egress[0].toFQDNs[0].matchPattern",
        &["leading `**.`"],
    );
    assert_err(
        &egress("toFQDNs: [{matchPattern: \"ex ample.com\"}]"),
        "spec.egress[0].toFQDNs[0].matchPattern",
        &["' '", "allowed"],
    );
    assert_err(
        &egress("toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]"),
        "spec.egress[0].toFQDNs[0]",
        &["both matchName and matchPattern"],
    );
    assert_err(
        &egress("toFQDNs: [{}]"),
        "spec.egress[0].toFQDNs[0]",
        &["neither"],
    );
    assert_err(
        &egress("toFQDNs: [{matchNames: a.com}]"),
        "spec.egress[0].toFQDNs[0].matchNames",
        &["supported fields: matchName, matchPattern"],
    );
    assert_err(
        &egress("toFQDNs: []"),
        "spec.egress[0].toFQDNs",
        &["is empty"],
    );
    assert_err(
        &egress("{toFQDNs: [{matchName: a.com}], toEndpoints: [{}]}"),
        "spec.egress[0].toFQDNs",
        &["cannot be combined with toEndpoints", "two egress rules"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - toFQDNs: [{matchName: a.com}]\n",
        "spec.ingress[0].toFQDNs",
        &["egress"],
    );
    assert_err(
        &egress("toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchPattern: \"\"}]}}]"),
        "spec.egress[0].toPorts[0].rules.dns[0].matchPattern",
        &["is empty"],
    );
    assert_err(
        &egress("toPorts: [{ports: [{port: \"53\"}], rules: {dns: []}}]"),
        "spec.egress[0].toPorts[0].rules.dns",
        &["is empty"],
    );
    assert_err(
        &egress("toPorts: [{ports: [{port: \"80\"}], rules: {kafka: [{}]}}]"),
        "spec.egress[0].toPorts[0].rules.kafka",
        &["L7 rules other than DNS"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchName: a.com}]}}]\n",
        "spec.ingress[0].toPorts[0].rules.dns",
        &["egress"],
    );
    assert_err(
        "  endpointSelector: {}\n  egressDeny:\n  - toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchName: a.com}]}}]\n",
        "spec.egressDeny[0].toPorts[0].rules.dns",
        &["deny rules"],
    );
}
