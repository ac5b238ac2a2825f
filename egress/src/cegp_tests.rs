//! Parsing `CiliumEgressGatewayPolicy` documents and mixed policy files.

use std::net::Ipv4Addr;

use meshgate_model::policy::{NAMESPACE_LABEL, NAMESPACE_NAME_LABEL};

use crate::fqdn::NameMatch;
use crate::{
    parse_policy_file, parse_policy_text, summary, EgressIpSource, ParseError, PolicyFile,
};

fn parse(text: &str) -> PolicyFile {
    parse_policy_text(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ParseError {
    match parse_policy_text(text, "test.yaml") {
        Ok(p) => panic!("parsed, expected an error: {p:?}"),
        Err(e) => e,
    }
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A policy named `out` with `spec` (indented by two spaces) under it.
fn policy(spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata:\n  name: out\nspec:\n{spec}")
}

const BASIC: &str = "  selectors:
  - podSelector:
      matchLabels:
        app: web
  destinationCIDRs: [\"0.0.0.0/0\"]
  egressGateway:
    nodeSelector:
      matchLabels:
        egress: \"true\"
";

/// Asserts the error names `field` and says `what`, with the file, the
/// document and the policy in its text.
fn assert_field(e: &ParseError, field: &str, what: &str) {
    assert_eq!(e.field(), Some(field), "{e}");
    let m = e.to_string();
    assert!(
        m.starts_with(&format!(
            "test.yaml: document 1: CiliumEgressGatewayPolicy/out: {field}: "
        )),
        "{m}"
    );
    assert!(m.contains(what), "{m}");
}

#[test]
fn documented_shape_with_one_gateway_and_egress_ip() {
    // The shape of Cilium's documented example.
    let f = parse(
        "apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata:
  name: egress-sample
spec:
  selectors:
  - podSelector:
      matchLabels:
        org: empire
        class: mediabot
        io.kubernetes.pod.namespace: default
  - namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: shop
    nodeSelector:
      matchExpressions:
      - {key: zone, operator: In, values: [a, b]}
  destinationCIDRs:
  - \"192.0.2.13/32\"
  - 198.51.100.0/24
  excludedCIDRs:
  - 198.51.100.128/25
  egressGateway:
    nodeSelector:
      matchLabels:
        egress-node: \"true\"
    egressIP: 10.168.60.100
",
    );
    assert!(f.identity.is_empty());
    let [p] = &f.egress[..] else { panic!("{f:?}") };
    assert_eq!(p.name, "egress-sample");
    assert_eq!(p.selectors.len(), 2);
    let s0 = &p.selectors[0];
    assert_eq!(
        s0.pods.to_string(),
        "class=mediabot,io.kubernetes.pod.namespace=default,org=empire"
    );
    assert!(s0.namespaces.is_none() && s0.nodes.is_none());
    let s1 = &p.selectors[1];
    assert!(s1.pods.requirements.is_empty(), "no podSelector: every pod");
    assert_eq!(
        s1.namespaces.as_ref().map(|s| s.to_string()).as_deref(),
        Some("kubernetes.io/metadata.name=shop")
    );
    assert_eq!(
        s1.nodes.as_ref().map(|s| s.to_string()).as_deref(),
        Some("zone in (a,b)")
    );
    assert_eq!(
        p.destinations.cidrs,
        vec![
            "192.0.2.13/32".parse().expect("cidr"),
            "198.51.100.0/24".parse().expect("cidr")
        ]
    );
    assert_eq!(
        p.destinations.excluded,
        vec!["198.51.100.128/25".parse().expect("cidr")]
    );
    assert_eq!(p.gateways.len(), 1);
    assert_eq!(p.gateways[0].nodes.to_string(), "egress-node=true");
    assert_eq!(
        p.gateways[0].egress_ip,
        EgressIpSource::Ip(Ipv4Addr::new(10, 168, 60, 100))
    );

    // Selector matching: pod labels, namespace name, node labels.
    let pod = labels(&[
        ("org", "empire"),
        ("class", "mediabot"),
        (NAMESPACE_LABEL, "default"),
    ]);
    assert!(s0.matches(&pod, "default", None));
    assert!(!s0.matches(&labels(&[("org", "empire")]), "default", None));
    let zone_a = labels(&[("zone", "a")]);
    assert!(s1.matches(&labels(&[]), "shop", Some(&zone_a)));
    assert!(!s1.matches(&labels(&[]), "other", Some(&zone_a)));
    assert!(!s1.matches(&labels(&[]), "shop", Some(&labels(&[("zone", "c")]))));
    assert!(!s1.matches(&labels(&[]), "shop", None), "unknown node");
}

#[test]
fn interface_default_and_several_gateways() {
    let f = parse(&policy(
        "  selectors: [{podSelector: {}}]
  destinationCIDRs: [0.0.0.0/0]
  egressGateways:
  - nodeSelector: {matchLabels: {pool: a}}
    interface: eg0
  - nodeSelector: {matchLabels: {pool: b}}
  - nodeSelector: {matchLabels: {pool: c}}
    egressIP: \"\"
",
    ));
    let p = &f.egress[0];
    let got: Vec<_> = p.gateways.iter().map(|g| g.egress_ip.clone()).collect();
    assert_eq!(
        got,
        vec![
            EgressIpSource::Interface("eg0".into()),
            EgressIpSource::DefaultRoute,
            EgressIpSource::DefaultRoute,
        ]
    );
    assert!(p.selectors[0].pods.requirements.is_empty());
}

#[test]
fn cilium_source_prefixes_are_read_in_pod_selectors() {
    let f = parse(&policy(
        "  selectors: [{podSelector: {matchLabels: {\"k8s:app\": web, \"any:tier\": front}}}]
  destinationCIDRs: [0.0.0.0/0]
  egressGateway: {nodeSelector: {}}
",
    ));
    // In the order of the keys as written (`any:` sorts before `k8s:`).
    assert_eq!(
        f.egress[0].selectors[0].pods.to_string(),
        "tier=front,app=web"
    );
}

#[test]
fn mixed_files_keep_both_kinds_in_order() {
    let text = format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: shop}}
spec: {{podSelector: {{}}}}
---
{}---
apiVersion: v1
kind: List
items:
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {{name: db, namespace: shop}}
  spec: {{endpointSelector: {{}}}}
- apiVersion: cilium.io/v2
  kind: CiliumEgressGatewayPolicy
  metadata: {{name: second}}
  spec:
    selectors: [{{podSelector: {{}}}}]
    destinationCIDRs: [192.0.2.0/24]
    egressGateway: {{nodeSelector: {{}}}}
",
        policy(BASIC)
    );
    let f = parse(&text);
    let ids: Vec<_> = f.identity.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(
        ids,
        vec!["NetworkPolicy shop/web", "CiliumNetworkPolicy shop/db"]
    );
    let names: Vec<_> = f.egress.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["out", "second"]);
}

#[test]
fn duplicate_names_are_refused_naming_both_documents() {
    let text = format!("{}---\n{}", policy(BASIC), policy(BASIC));
    let e = err(&text);
    assert!(
        matches!(
            e,
            ParseError::Duplicate {
                index: 2,
                first: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(
        m.starts_with(
            "test.yaml: document 2: CiliumEgressGatewayPolicy/out is already defined in document 1"
        ),
        "{m}"
    );
}

#[test]
fn identity_errors_pass_through() {
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: s}\n\
                 spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: \"*.example.com\"}]\n");
    assert!(matches!(e, ParseError::Identity(_)), "{e:?}");
    assert_eq!(e.field(), Some("spec.egress[0].toFQDNs[0].matchName"));
    let e = err("kind: Pod\n");
    assert!(
        e.to_string()
            .contains("CiliumEgressGatewayPolicy (cilium.io/v2)"),
        "{e}"
    );
}

#[test]
fn metadata_refusals() {
    let e = err(&policy(BASIC).replace("  name: out\n", "  name: out\n  namespace: shop\n"));
    assert_field(&e, "metadata.namespace", "cluster-scoped");
    let e = err(&policy(BASIC).replace("  name: out\n", "  labels: {a: b}\n"));
    assert!(matches!(e, ParseError::Document { index: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("has no metadata.name"), "{e}");
    let e = err(&policy(BASIC).replace("cilium.io/v2", "cilium.io/v2alpha1"));
    assert_field(&e, "apiVersion", "read in version cilium.io/v2");
    // Other metadata and a printed status are fine.
    parse(&format!(
        "{}status: {{conditions: []}}\n",
        policy(BASIC).replace("  name: out\n", "  name: out\n  labels: {a: b}\n  uid: x\n")
    ));
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let cases = [
        (policy(BASIC) + "extra: 1\n", "extra"),
        (policy(&format!("{BASIC}  foo: 1\n")), "spec.foo"),
        (
            policy(&BASIC.replace(
                "        egress: \"true\"\n",
                "        egress: \"true\"\n    foo: bar\n",
            )),
            "spec.egressGateway.foo",
        ),
        (
            policy(&BASIC.replace("  - podSelector:\n", "  - bar: 1\n    podSelector:\n")),
            "spec.selectors[0].bar",
        ),
        (
            policy(&BASIC.replace(
                "      matchLabels:\n        app: web\n",
                "      matchLabel: {app: web}\n",
            )),
            "spec.selectors[0].podSelector.matchLabel",
        ),
        (
            policy(&BASIC.replace(
                "      matchLabels:\n        egress: \"true\"\n",
                "      matchExpressions: [{key: a, operator: Exists, value: x}]\n",
            )),
            "spec.egressGateway.nodeSelector.matchExpressions[0].value",
        ),
    ];
    for (text, field) in cases {
        let e = err(&text);
        assert_field(&e, field, "");
    }
}

#[test]
fn fqdn_destinations_are_read_with_or_without_cidrs() {
    let f = parse(&policy(&format!(
        "{BASIC}  destinationFQDNs: [{{matchName: API.example.com.}}, {{matchPattern: \"*.example.com\"}}]\n"
    )));
    let p = &f.egress[0];
    assert_eq!(
        p.destinations.cidrs,
        vec!["0.0.0.0/0".parse::<ipnet::Ipv4Net>().expect("cidr")]
    );
    assert_eq!(
        p.destinations.fqdns,
        vec![
            NameMatch::MatchName("api.example.com".into()),
            NameMatch::MatchPattern("*.example.com".into()),
        ]
    );
    assert_eq!(
        summary(p),
        "CiliumEgressGatewayPolicy/out: [pods app=web] to 0.0.0.0/0 and addresses of name \
         api.example.com or pattern *.example.com via nodes [egress=true] (default-route \
         interface)\n"
    );
    let only = BASIC.replace(
        "  destinationCIDRs: [\"0.0.0.0/0\"]\n",
        "  destinationFQDNs: [{matchPattern: \"**.example.com\"}]\n  excludedCIDRs: [10.0.0.0/8]\n",
    );
    let f = parse(&policy(&only));
    let p = &f.egress[0];
    assert!(p.destinations.cidrs.is_empty());
    assert_eq!(
        summary(p),
        "CiliumEgressGatewayPolicy/out: [pods app=web] to addresses of pattern **.example.com \
         excluding 10.0.0.0/8 via nodes [egress=true] (default-route interface)\n"
    );
}

#[test]
fn bad_fqdn_destinations_are_refused_naming_the_field() {
    let with = |list: &str| policy(&format!("{BASIC}  destinationFQDNs: {list}\n"));
    let cases = [
        (
            "[{matchName: \"*.a.com\"}]",
            "spec.destinationFQDNs[0].matchName",
            "matchPattern",
        ),
        (
            "[{matchPattern: \"a.**.com\"}]",
            "spec.destinationFQDNs[0].matchPattern",
            "`**.`",
        ),
        (
            "[{matchPattern: \"a_b c\"}]",
            "spec.destinationFQDNs[0].matchPattern",
            "allowed",
        ),
        (
            "[{matchName: a.com, matchPattern: b.com}]",
            "spec.destinationFQDNs[0]",
            "both",
        ),
        ("[{}]", "spec.destinationFQDNs[0]", "neither"),
        ("[{matchName: \"\"}]", "spec.destinationFQDNs[0]", "neither"),
        (
            "[{matchNames: a.com}]",
            "spec.destinationFQDNs[0].matchNames",
            "matchName, matchPattern",
        ),
        (
            "[{matchName: a.com}, {matchName: A.com}]",
            "spec.destinationFQDNs[1]",
            "twice",
        ),
        ("[]", "spec.destinationFQDNs", "is empty"),
        ("a.com", "spec.destinationFQDNs", "not a list"),
    ];
    for (list, field, what) in cases {
        assert_field(&err(&with(list)), field, what);
    }
    let neither = BASIC.replace("  destinationCIDRs: [\"0.0.0.0/0\"]\n", "");
    assert_field(
        &err(&policy(&neither)),
        "spec.destinationCIDRs",
        "or the names in destinationFQDNs",
    );
}

#[test]
fn egress_ip_and_interface_together_are_refused() {
    let e = err(&policy(&BASIC.replace(
        "  egressGateway:\n",
        "  egressGateway:\n    egressIP: 192.0.2.1\n    interface: eg0\n",
    )));
    assert_field(&e, "spec.egressGateway", "give one");
    let e = err(&policy(
        "  selectors: [{podSelector: {}}]
  destinationCIDRs: [0.0.0.0/0]
  egressGateways:
  - nodeSelector: {}
  - {nodeSelector: {}, egressIP: 192.0.2.1, interface: eg0}
",
    ));
    assert_field(&e, "spec.egressGateways[1]", "egressIP and interface");
}

#[test]
fn gateway_refusals() {
    let with_gw = |gw: &str| {
        policy(&format!(
            "  selectors: [{{podSelector: {{}}}}]\n  destinationCIDRs: [0.0.0.0/0]\n{gw}"
        ))
    };
    let e = err(&with_gw(""));
    assert_field(&e, "spec.egressGateway", "is missing");
    let e = err(&with_gw(
        "  egressGateway: {nodeSelector: {}}\n  egressGateways: [{nodeSelector: {}}]\n",
    ));
    assert_field(&e, "spec", "give one");
    let e = err(&with_gw("  egressGateways: []\n"));
    assert_field(&e, "spec.egressGateways", "is empty");
    let e = err(&with_gw("  egressGateway: {interface: eg0}\n"));
    assert_field(&e, "spec.egressGateway.nodeSelector", "is required");
    let e = err(&with_gw(
        "  egressGateway: {nodeSelector: {}, egressIP: \"2001:db8::1\"}\n",
    ));
    assert_field(&e, "spec.egressGateway.egressIP", "the mesh is IPv4 only");
    let e = err(&with_gw(
        "  egressGateway: {nodeSelector: {}, egressIP: gw1}\n",
    ));
    assert_field(&e, "spec.egressGateway.egressIP", "not an IP address");
    let e = err(&with_gw(
        "  egressGateway: {nodeSelector: {}, interface: [eg0]}\n",
    ));
    assert_field(&e, "spec.egressGateway.interface", "not a string");
    let e = err(&with_gw("  egressGateway: [{nodeSelector: {}}]\n"));
    assert_field(&e, "spec.egressGateway", "not a map");
}

#[test]
fn selector_refusals() {
    let with_sel = |sel: &str| {
        policy(&format!(
            "  selectors: {sel}\n  destinationCIDRs: [0.0.0.0/0]\n  egressGateway: {{nodeSelector: {{}}}}\n"
        ))
    };
    assert_field(&err(&with_sel("[]")), "spec.selectors", "at least one");
    assert_field(
        &err(&with_sel("[{nodeSelector: {}}]")),
        "spec.selectors[0]",
        "neither podSelector nor namespaceSelector",
    );
    assert_field(
        &err(&with_sel("[{namespaceSelector: {matchLabels: {team: a}}}]")),
        "spec.selectors[0].namespaceSelector.matchLabels.team",
        NAMESPACE_NAME_LABEL,
    );
    assert_field(
        &err(&with_sel(
            "[{namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}}]",
        )),
        "spec.selectors[0].namespaceSelector.matchExpressions[0].key",
        "only by its name",
    );
    assert_field(
        &err(&with_sel(
            "[{podSelector: {matchLabels: {\"io.cilium.k8s.namespace.labels.team\": a}}}]",
        )),
        "spec.selectors[0].podSelector.matchLabels.io.cilium.k8s.namespace.labels.team",
        "namespace labels",
    );
    assert_field(
        &err(&with_sel(
            "[{podSelector: {matchLabels: {\"reserved:host\": \"\"}}}]",
        )),
        "spec.selectors[0].podSelector.matchLabels.reserved:host",
        "label source",
    );
    assert_field(
        &err(&with_sel(
            "[{podSelector: {matchExpressions: [{key: a, operator: Has}]}}]",
        )),
        "spec.selectors[0].podSelector.matchExpressions[0].operator",
        "In, NotIn, Exists or DoesNotExist",
    );
    assert_field(
        &err(&with_sel("[{podSelector: [app]}]")),
        "spec.selectors[0].podSelector",
        "not a map",
    );
    assert_field(
        &err(&with_sel("{podSelector: {}}")),
        "spec.selectors",
        "not a list",
    );
}

#[test]
fn cidr_refusals() {
    let with = |dst: &str, excl: &str| {
        policy(&format!(
            "  selectors: [{{podSelector: {{}}}}]\n  destinationCIDRs: {dst}\n  excludedCIDRs: {excl}\n  egressGateway: {{nodeSelector: {{}}}}\n"
        ))
    };
    assert_field(
        &err(&with("[]", "[]")),
        "spec.destinationCIDRs",
        "is missing or empty",
    );
    assert_field(
        &err(&with("[\"2001:db8::/32\"]", "[]")),
        "spec.destinationCIDRs[0]",
        "the mesh is IPv4 only",
    );
    assert_field(
        &err(&with("[0.0.0.0/0]", "[\"fd00::/8\"]")),
        "spec.excludedCIDRs[0]",
        "the mesh is IPv4 only",
    );
    assert_field(
        &err(&with("[192.0.2.0/24, 198.51.100.7/24]", "[]")),
        "spec.destinationCIDRs[1]",
        "198.51.100.7/24 has host bits set; use 198.51.100.0/24",
    );
    assert_field(
        &err(&with("[0.0.0.0/0]", "[10.1.2.3/8]")),
        "spec.excludedCIDRs[0]",
        "use 10.0.0.0/8",
    );
    assert_field(
        &err(&with("[192.0.2.1]", "[]")),
        "spec.destinationCIDRs[0]",
        "192.0.2.1/32 for one address",
    );
    assert_field(
        &err(&with("[nowhere]", "[]")),
        "spec.destinationCIDRs[0]",
        "not a CIDR",
    );
    assert_field(
        &err(&with("[7]", "[]")),
        "spec.destinationCIDRs[0]",
        "not a CIDR string",
    );
    assert_field(
        &err(&with("[192.0.2.0/24, 192.0.2.0/24]", "[]")),
        "spec.destinationCIDRs[1]",
        "listed twice",
    );
    assert_field(
        &err(&with("[192.0.2.0/24]", "[192.0.2.0/24]")),
        "spec.excludedCIDRs[0]",
        "also in destinationCIDRs",
    );
}

#[test]
fn summary_names_selectors_destinations_and_gateways() {
    let f = parse(&policy(
        "  selectors:
  - podSelector: {matchLabels: {app: web}}
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
    nodeSelector: {matchLabels: {zone: a}}
  destinationCIDRs: [0.0.0.0/0]
  excludedCIDRs: [10.0.0.0/8, 192.168.0.0/16]
  egressGateways:
  - {nodeSelector: {matchLabels: {egress: \"true\"}}, egressIP: 192.0.2.10}
  - {nodeSelector: {matchLabels: {io.cilium.k8s.policy.cluster: east}}, interface: eg0}
  - {nodeSelector: {matchLabels: {pool: b}}}
",
    ));
    assert_eq!(
        summary(&f.egress[0]),
        "CiliumEgressGatewayPolicy/out: [pods app=web] or \
         [namespaces kubernetes.io/metadata.name=shop on nodes zone=a] to 0.0.0.0/0 \
         excluding 10.0.0.0/8,192.168.0.0/16 via nodes [egress=true] (egress IP 192.0.2.10) \
         and nodes [io.cilium.k8s.policy.cluster=east] (interface eg0) and nodes [pool=b] \
         (default-route interface)\n"
    );
}

#[test]
fn files_are_read_and_unreadable_ones_named() {
    let dir = std::env::temp_dir().join(format!("meshgate-egress-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("p.yaml");
    std::fs::write(&path, policy(BASIC)).expect("write");
    let f = parse_policy_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.egress.len(), 1);
    let _ = std::fs::remove_file(&path);
    let e = parse_policy_file(&dir.join("missing.yaml")).expect_err("missing file");
    assert!(e.to_string().starts_with("cannot read policy file"), "{e}");
    let _ = std::fs::remove_dir(&dir);
}
