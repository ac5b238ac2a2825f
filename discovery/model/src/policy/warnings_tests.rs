//! No silent non-match: warnings (errors with `strict`), every problem of a
//! source reported, the L7 modes, and the hints: each suggested fix,
//! applied to the YAML, gives the meaning the message states.

use std::collections::BTreeMap;

use super::testutil::*;
use super::{
    parse_policies_report, Direction::*, L7Mode, ParseOptions, ParseReport, PolicyError,
    WarningKind,
};
use crate::identity::Labels;

const WEB: u32 = 0x01_0101;
const DB: u32 = 0x01_0102;
const OTHER_WEB: u32 = 0x01_0103;
const OTHER_DB: u32 = 0x01_0104;
const HOST: u32 = 1;

fn world() -> BTreeMap<u32, Labels> {
    let team = |mut l: Labels| {
        l.insert("io.cilium.k8s.namespace.labels.team".into(), "a".into());
        l
    };
    BTreeMap::from([
        (WEB, team(pod(LOCAL, "shop", &[("app", "web")]))),
        (DB, team(pod(LOCAL, "shop", &[("app", "db")]))),
        (OTHER_WEB, team(pod(LOCAL, "other", &[("app", "web")]))),
        (OTHER_DB, team(pod(LOCAL, "other", &[("app", "db")]))),
        (
            HOST,
            BTreeMap::from([("reserved:host".into(), String::new())]),
        ),
    ])
}

fn report(yaml: &str, opts: ParseOptions) -> ParseReport<PolicyError> {
    parse_policies_report(yaml, "test.yaml", &opts, &mut |_| {
        Ok::<bool, PolicyError>(false)
    })
}

fn strict() -> ParseOptions {
    ParseOptions {
        strict: true,
        ..ParseOptions::default()
    }
}

/// `cnp(spec)` parses with exactly one warning, at `field`, saying `words`;
/// with `strict` it is refused at the same field.
fn assert_warns(spec: &str, field: &str, words: &[&str]) {
    let yaml = cnp(spec);
    let r = report(&yaml, ParseOptions::default());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.policies.len(), 1);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    let w = &r.warnings[0];
    assert_eq!(w.field, field, "{w}");
    assert!(w.kind.strict_refuses(), "{w}");
    let text = w.to_string();
    assert!(
        text.starts_with("test.yaml: CiliumNetworkPolicy shop/p: "),
        "{text}"
    );
    for word in words {
        assert!(text.contains(word), "{text:?} should say {word:?}");
    }
    let s = report(&yaml, strict());
    assert!(s.policies.is_empty() && s.warnings.is_empty());
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert_eq!(s.errors[0].field(), Some(field));
    assert!(s.errors[0].to_string().contains("--strict-policy"));
}

fn no_warning(yaml: &str) {
    let r = report(yaml, ParseOptions::default());
    assert!(
        r.errors.is_empty() && r.warnings.is_empty(),
        "{:?} {:?}",
        r.errors,
        r.warnings
    );
}

#[test]
fn selectors_that_can_never_match_warn() {
    assert_warns(
        "  endpointSelector: {matchLabels: {io.cilium.k8s.policy.serviceacount: web}}\n",
        "spec.endpointSelector.matchLabels.io.cilium.k8s.policy.serviceacount",
        &["no endpoint carries", "io.cilium.k8s.policy.serviceaccount"],
    );
    assert_warns(
        "  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    - matchExpressions: [{key: reserved:ingres, operator: Exists}]\n",
        "spec.ingress[0].fromEndpoints[0].matchExpressions[0]",
        &["no identity carries \"reserved:ingres\"", "reserved:host"],
    );
    assert_warns(
        "  endpointSelector: {matchLabels: {reserved:host: \"\"}}\n",
        "spec.endpointSelector.matchLabels.reserved:host",
        &["endpoints never carry", "host policies are not supported"],
    );
    assert_warns(
        "  endpointSelector: {}\n  egress:\n  - toEntities: [ingress]\n",
        "spec.egress[0].toEntities[0]",
        &["matches nothing"],
    );
    // Reserved identities meshgate never gives out: the rule stays (it
    // selects that identity, as in Cilium) and warns, as an entity and as
    // a label.
    for (entity, why) in [
        ("init", "fail-closed"),
        ("health", "write host / remote-node"),
        ("unmanaged", "or write world"),
    ] {
        assert_warns(
            &format!("  endpointSelector: {{}}\n  ingress:\n  - fromEntities: [{entity}]\n"),
            "spec.ingress[0].fromEntities[0]",
            &["matches nothing", why],
        );
        assert_warns(
            &format!(
                "  endpointSelector: {{}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{reserved:{entity}: \"\"}}}}]\n"
            ),
            &format!("spec.egress[0].toEndpoints[0].matchLabels.reserved:{entity}"),
            &["meshgate", why],
        );
    }
    // `cluster` names them among others: no warning.
    no_warning(&cnp(
        "  endpointSelector: {}\n  egress:\n  - toEntities: [cluster]\n",
    ));
    // Known labels do not warn; a reserved label in a peer selects the
    // reserved identity (not scoped to the namespace), as in Cilium.
    let known = cnp(
        "  endpointSelector: {matchLabels: {io.cilium.k8s.policy.cluster: west}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {reserved:host: \"\"}}]\n",
    );
    no_warning(&known);
    let c = compile_yaml(&known, &world());
    assert!(tcp(&c, WEB, HOST, 80, Ingress));
    assert!(!tcp(&c, WEB, DB, 80, Ingress));
    // A negative requirement on an unknown key is always true: no warning.
    no_warning(&cnp(
        "  endpointSelector: {matchExpressions: [{key: io.cilium.k8s.policy.x, operator: DoesNotExist}]}\n",
    ));
}

#[test]
fn a_foreign_namespace_in_the_subject_is_overridden_with_a_warning() {
    let spec = "  endpointSelector:\n    matchLabels:\n      app: web\n      k8s:io.kubernetes.pod.namespace: other\n  ingress: [{}]\n";
    assert_warns(
        spec,
        "spec.endpointSelector",
        &["overridden", "put the policy in that namespace"],
    );
    let c = compile_yaml(&cnp(spec), &world());
    assert_eq!(
        c.selected.keys().copied().collect::<Vec<_>>(),
        vec![WEB],
        "as Cilium: the policy's own namespace"
    );
    // The fix: the policy in that namespace selects there, silently.
    let fixed = cnp(spec).replace("namespace: shop", "namespace: other");
    no_warning(&fixed);
    let c = compile_yaml(&fixed, &world());
    assert_eq!(
        c.selected.keys().copied().collect::<Vec<_>>(),
        vec![OTHER_WEB]
    );
    // Its own namespace named: no warning.
    no_warning(&cnp(&spec.replace("other", "shop")));
}

#[test]
fn a_namespace_label_peer_of_a_namespaced_policy_warns_and_the_hint_works() {
    let spec = "  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a}\n";
    assert_warns(
        spec,
        "spec.ingress[0].fromEndpoints[0]",
        &["only matches endpoints of the policy's own namespace"],
    );
    let c = compile_yaml(&cnp(spec), &world());
    let from = |c: &super::Compiled| {
        world()
            .keys()
            .copied()
            .filter(|r| tcp(c, WEB, *r, 80, Ingress))
            .collect::<Vec<_>>()
    };
    assert_eq!(from(&c), vec![WEB, DB]);
    // The hint, as written: every namespace with the label.
    let fixed = spec.replace(
        "    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a}\n",
        "    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a}\n      matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: Exists}]\n",
    );
    no_warning(&cnp(&fixed));
    assert_eq!(
        from(&compile_yaml(&cnp(&fixed), &world())),
        vec![WEB, DB, OTHER_WEB, OTHER_DB]
    );
}

#[test]
fn every_problem_of_a_source_is_reported() {
    let yaml = format!(
        "{}---\n{}---\napiVersion: cilium.io/v2\nkind: Nope\n",
        cnp(r#"
  endpointSelector: {matchLabels: {io.cilium.k8s.policy.nope: x}}
  ingress:
  - fromEntities: [wrld]
    toPorts: [{ports: [{port: "99999"}]}]
  - fromCIDR: ["2001:db8::/32"]
    bogus: 1
  egress:
  - toEndpoints: [{}]
    icmps: [{fields: [{type: Ping}]}]
"#),
        cnp("  endpointSelector: {}\n  ingress: [{}]\n").replace("name: p", "name: q"),
    );
    let r = report(&yaml, ParseOptions::default());
    let fields: Vec<Option<&str>> = r.errors.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        vec![
            Some("spec.ingress[0].fromEntities[0]"),
            Some("spec.ingress[0].toPorts[0].ports[0].port"),
            Some("spec.ingress[1].bogus"),
            Some("spec.ingress[1].fromCIDR[0]"),
            Some("spec.egress[0].icmps[0].fields[0].type"),
            None,
        ],
        "{:#?}",
        r.errors
    );
    assert!(r.errors[5].to_string().contains("document 3"));
    assert_eq!(r.warnings.len(), 1, "the subject's unknown label");
    assert_eq!(
        r.policies
            .iter()
            .map(|p| p.id.name.as_str())
            .collect::<Vec<_>>(),
        vec!["q"],
        "the good policy is still read"
    );
    // The first-error API keeps its meaning.
    assert_eq!(parse_err(&yaml), r.errors[0]);
}

#[test]
fn l7_rules_are_refused_by_default_and_ignored_on_request() {
    let spec = r#"
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /public}
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{topic: orders}]
"#;
    let yaml = cnp(spec);
    let r = report(&yaml, ParseOptions::default());
    let fields: Vec<Option<&str>> = r.errors.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        vec![
            Some("spec.ingress[0].toPorts[0].rules.http"),
            Some("spec.ingress[1].toPorts[0].rules.kafka"),
        ]
    );
    assert!(r.errors[0].to_string().contains("`--l7 ignore`"));
    // The hint: read with --l7 ignore, the L3/L4 part is enforced.
    let ignore = ParseOptions {
        l7: L7Mode::Ignore,
        ..ParseOptions::default()
    };
    let r = report(&yaml, ignore);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fields: Vec<&str> = r.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.ingress[0].toPorts[0].rules.http",
            "spec.ingress[1].toPorts[0].rules.kafka"
        ]
    );
    assert!(r.warnings[0].message.contains("not enforced"));
    let c = super::compile(&super::Scope::new(LOCAL), &r.policies, &world());
    assert!(tcp(&c, WEB, DB, 80, Ingress));
    assert!(!tcp(&c, WEB, OTHER_DB, 80, Ingress));
    assert!(tcp(&c, WEB, OTHER_DB, 9092, Ingress));
    assert!(!tcp(&c, WEB, DB, 81, Ingress));
    assert!(r
        .warnings
        .iter()
        .all(|w| w.kind == WarningKind::L7NotEnforced));
    // Strict and ignore: asked for, so still a warning, not a refusal.
    let r = report(
        &yaml,
        ParseOptions {
            strict: true,
            l7: L7Mode::Ignore,
        },
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.warnings.len(), 2);
    // L7 in a deny rule is refused in both modes; the fix (deny the port).
    let deny = "  endpointSelector: {}\n  ingressDeny:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: DELETE}]}\n";
    for opts in [ParseOptions::default(), ignore] {
        let r = report(&cnp(deny), opts);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(
            r.errors[0].field(),
            Some("spec.ingressDeny[0].toPorts[0].rules.http")
        );
        assert!(r.errors[0].to_string().contains("deny the ports"));
    }
    let fixed = deny.replace("      rules: {http: [{method: DELETE}]}\n", "");
    let c = compile_yaml(&cnp(&fixed), &world());
    assert!(!tcp(&c, WEB, DB, 80, Ingress));
    assert!(!tcp(&c, WEB, DB, 81, Ingress), "deny-only: selected");
}

type Check = fn(&super::Compiled);

/// One hint: `spec` is refused at `field` with `hint`; `fixed` (the hint
/// applied) parses, without warning, to what `check` asserts.
struct Hint {
    spec: &'static str,
    field: &'static str,
    hint: &'static str,
    fixed: &'static str,
    check: Check,
}

#[test]
fn hints_applied_give_the_stated_meaning() {
    let hints = [
        Hint {
            spec: "  ingress: [{}]\n",
            field: "spec.endpointSelector",
            hint: "use `endpointSelector: {}` for every endpoint of the namespace",
            fixed: "  endpointSelector: {}\n  ingress: [{}]\n",
            check: |c| {
                assert_eq!(c.selected.keys().copied().collect::<Vec<_>>(), vec![WEB, DB]);
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n    toPorts: [{ports: []}]\n",
            field: "spec.ingress[0].toPorts[0].ports",
            hint: "leave toPorts out to allow every port",
            fixed: "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n",
            check: |c| {
                assert!(tcp(c, WEB, DB, 1, Ingress) && tcp(c, WEB, DB, 65535, Ingress));
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n    toFQDNs: [{matchName: api.example.com}]\n",
            field: "spec.egress[0].toFQDNs",
            hint: "write them as two egress rules",
            fixed: "  endpointSelector: {}\n  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n  - toFQDNs: [{matchName: api.example.com}]\n",
            check: |c| {
                assert!(tcp(c, WEB, DB, 443, Egress));
                assert!(!tcp(c, WEB, HOST, 443, Egress));
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"0\", protocol: ICMP}]}]\n",
            field: "spec.ingress[0].toPorts[0].ports[0].protocol",
            hint: "ICMP types go in the rule's `icmps`",
            fixed: "  endpointSelector: {}\n  ingress:\n  - icmps: [{fields: [{type: EchoRequest}]}]\n",
            check: |c| {
                assert!(datapath_allows(c, WEB, DB, 264, super::PROTO_ICMP, Ingress));
                assert!(!tcp(c, WEB, DB, 80, Ingress));
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8, \"2001:db8::/32\"]\n",
            field: "spec.egress[0].toCIDR[1]",
            hint: "remove it",
            fixed: "  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n",
            check: |c| {
                let cidr = crate::identity::identity(0, 256);
                let mut w = world();
                w.insert(
                    cidr,
                    BTreeMap::from([
                        ("reserved:world".into(), String::new()),
                        ("cidr:10.0.0.0/8".into(), String::new()),
                    ]),
                );
                let c2 = super::compile(
                    &super::Scope::new(LOCAL),
                    &parse(&cnp("  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n")),
                    &w,
                );
                assert!(tcp(&c2, WEB, cidr, 80, Egress));
                assert!(c.entries.is_empty(), "no CIDR identity fed: nothing yet");
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n",
            field: "spec.egress[0].toCIDRSet[0].except[0]",
            hint: "or write 192.168.0.0/16 as its own entry",
            fixed: "  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8}, {cidr: 192.168.0.0/16}]\n",
            check: |c| {
                assert!(c.entries.is_empty());
                assert_eq!(c.selected.len(), 2);
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  ingress:\n    fromEndpoints: [{}]\n",
            field: "spec.ingress",
            hint: "write its items as a YAML list (lines starting with `- `)",
            fixed: "  endpointSelector: {}\n  ingress:\n    - fromEndpoints: [{}]\n",
            check: |c| assert!(tcp(c, WEB, DB, 80, Ingress) && !tcp(c, WEB, OTHER_DB, 80, Ingress)),
        },
        Hint {
            spec: "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: http}]}]\n",
            field: "spec.ingress[0].toPorts[0].ports[0].port",
            hint: "write the port number",
            fixed: "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\"}]}]\n",
            check: |c| assert!(tcp(c, WEB, OTHER_DB, 80, Ingress) && !tcp(c, WEB, DB, 81, Ingress)),
        },
        Hint {
            spec: "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"1000\", endPort: 3000}]}]\n",
            field: "spec.ingress[0].toPorts[0].ports[0].endPort",
            hint: "split the rule or allow all ports",
            fixed: "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"1000\", endPort: 2023}, {port: \"2024\", endPort: 3000}]}]\n",
            check: |c| {
                assert!(tcp(c, WEB, DB, 1000, Ingress) && tcp(c, WEB, DB, 3000, Ingress));
                assert!(!tcp(c, WEB, DB, 3001, Ingress));
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  egress:\n  - fromEndpoints: [{}]\n",
            field: "spec.egress[0].fromEndpoints",
            hint: "this direction's field is `toEndpoints`",
            fixed: "  endpointSelector: {}\n  egress:\n  - toEndpoints: [{}]\n",
            check: |c| assert!(tcp(c, WEB, DB, 80, Egress) && !tcp(c, WEB, OTHER_DB, 80, Egress)),
        },
        Hint {
            spec: "  endpointSelector: {}\n  egressDeny:\n  - toFQDNs: [{matchName: bad.example.com}]\n",
            field: "spec.egressDeny[0].toFQDNs",
            hint: "allow the names you want in `egress` instead, and the rest stays denied",
            fixed: "  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: good.example.com}]\n",
            check: |c| {
                assert!(c.selected.values().all(|s| s.egress));
                assert!(!tcp(c, WEB, DB, 80, Egress), "the rest is denied");
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {cidr:10.0.0.0/8: \"\"}}]\n",
            field: "spec.ingress[0].fromEndpoints[0].matchLabels.cidr:10.0.0.0/8",
            hint: "write the prefix in toCIDR / toCIDRSet (fromCIDR / fromCIDRSet on ingress)",
            fixed: "  endpointSelector: {}\n  ingress:\n  - fromCIDR: [10.0.0.0/8]\n",
            check: |c| {
                assert!(c.entries.is_empty(), "no CIDR identity fed");
                assert!(!tcp(c, WEB, DB, 80, Ingress), "selected, pods not matched");
            },
        },
        Hint {
            spec: "  endpointSelector: {}\n  egress:\n  - icmps: [{fields: []}]\n",
            field: "spec.egress[0].icmps[0].fields",
            hint: "list the ICMP types (`- {type: EchoRequest, family: IPv4}`)",
            fixed: "  endpointSelector: {}\n  egress:\n  - icmps: [{fields: [{type: EchoRequest, family: IPv4}]}]\n",
            check: |c| {
                assert!(datapath_allows(c, WEB, HOST, 264, super::PROTO_ICMP, Egress));
                assert!(!datapath_allows(c, WEB, HOST, 256, super::PROTO_ICMP, Egress));
            },
        },
        Hint {
            spec: "  endpointSelector: {matchExpressions: [{key: app, operator: Exists, values: [web]}]}\n  ingress: [{}]\n",
            field: "spec.endpointSelector.matchExpressions[0].values",
            hint: "takes no values; remove them",
            fixed: "  endpointSelector: {matchExpressions: [{key: app, operator: Exists}]}\n  ingress: [{}]\n",
            check: |c| assert_eq!(c.selected.keys().copied().collect::<Vec<_>>(), vec![WEB, DB]),
        },
        Hint {
            spec: "  endpointSelector: {}\n  egress:\n  - toEntities: [world-ipv6]\n",
            field: "spec.egress[0].toEntities[0]",
            hint: "use world (or world-ipv4)",
            fixed: "  endpointSelector: {}\n  egress:\n  - toEntities: [world-ipv4]\n",
            check: |c| {
                let mut w = world();
                w.insert(2, BTreeMap::from([("reserved:world".into(), String::new())]));
                let c2 = super::compile(
                    &super::Scope::new(LOCAL),
                    &parse(&cnp("  endpointSelector: {}\n  egress:\n  - toEntities: [world-ipv4]\n")),
                    &w,
                );
                assert!(tcp(&c2, WEB, 2, 80, Egress) && !tcp(&c2, WEB, HOST, 80, Egress));
                assert!(!tcp(c, WEB, HOST, 80, Egress));
            },
        },
    ];
    for h in hints {
        assert_err(h.spec, h.field, &[h.hint]);
        let fixed = cnp(h.fixed);
        no_warning(&fixed);
        (h.check)(&compile_yaml(&fixed, &world()));
    }
}

#[test]
fn network_policy_hints_applied_give_the_stated_meaning() {
    let np = |spec: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n, namespace: shop}}\nspec:\n{spec}"
        )
    };
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Check,
    );
    let cases: [Case; 4] = [
        (
            "  podSelector: {}\n  ingress:\n  - from: [{}]\n",
            "spec.ingress[0].from[0]",
            "`podSelector: {}` is every pod of the policy's namespace",
            "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n",
            |c| assert!(tcp(c, WEB, DB, 80, Ingress) && !tcp(c, WEB, OTHER_DB, 80, Ingress)),
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
            "spec.ingress[0].from[0].ipBlock",
            "write it as its own peer",
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n    - podSelector: {}\n",
            |c| assert!(tcp(c, WEB, DB, 80, Ingress) && !tcp(c, WEB, HOST, 80, Ingress)),
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{}]\n",
            "spec.egress",
            "add it, or remove the rules",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  egress: [{}]\n",
            |c| assert!(tcp(c, WEB, HOST, 80, Egress) && !tcp(c, WEB, DB, 80, Ingress)),
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports: [{port: http}]\n",
            "spec.ingress[0].ports[0].port",
            "write the port number",
            "  podSelector: {}\n  ingress:\n  - ports: [{port: 80}]\n",
            |c| assert!(tcp(c, WEB, HOST, 80, Ingress) && !tcp(c, WEB, HOST, 81, Ingress)),
        ),
    ];
    for (spec, field, hint, fixed, check) in cases {
        let e = parse_err(&np(spec));
        assert_eq!(e.field(), Some(field), "{e}");
        assert!(e.to_string().contains(hint), "{e} should say {hint:?}");
        let fixed = np(fixed);
        no_warning(&fixed);
        check(&compile_yaml(&fixed, &world()));
    }
}

#[test]
fn the_old_entity_hint_is_gone() {
    for spec in [
        "  endpointSelector: {}\n  egress:\n  - toEntities: [internet]\n",
        "  endpointSelector: {}\n  egress:\n  - toServices: [{k8sService: {serviceName: x}}]\n",
    ] {
        let e = parse_err(&cnp(spec)).to_string();
        assert!(!e.contains("omit the peers"), "{e}");
    }
}

#[test]
fn clusterwide_hint_applied_selects_every_namespace() {
    let ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n";
    let e = parse_err(&format!("{ccnp}  ingress: [{{}}]\n"));
    assert_eq!(e.field(), Some("spec.endpointSelector"));
    assert!(e
        .to_string()
        .contains("use `endpointSelector: {}` for every endpoint of every namespace"));
    let fixed = format!("{ccnp}  endpointSelector: {{}}\n  ingress: [{{}}]\n");
    no_warning(&fixed);
    let c = compile_yaml(&fixed, &world());
    assert_eq!(
        c.selected.keys().copied().collect::<Vec<_>>(),
        vec![WEB, DB, OTHER_WEB, OTHER_DB]
    );
}
