//! One example per construct of Cilium's policy language that issue 17
//! adds (entities, CIDR rules, clusterwide policies, namespace labels,
//! service accounts, deny precedence, ICMP, requires), written in the style
//! of Cilium's documentation, with the identities the agent feeds: pods,
//! the reserved identities and the CIDR identities of the policies'
//! prefixes (labels as `interfaces.md` says).

use std::collections::{BTreeMap, BTreeSet};

use super::testutil::*;
use super::{
    compile, icmp_type, parse_policies_report, Compiled, Direction::*, ParseOptions, PolicyEntry,
    PolicyError, PolicyState, Scope, Verdict, PROTO_ICMP, PROTO_TCP,
};
use crate::identity::{identity, Labels};

const WEB: u32 = 0x01_0101;
const DB: u32 = 0x01_0102;
const CLIENT: u32 = 0x01_0103;
const OTHER: u32 = 0x01_0104;
const TEAM_B: u32 = 0x01_0105;
const REMOTE_CLIENT: u32 = 0x02_0101;
const HOST: u32 = 1;
const WORLD: u32 = 2;
const UNMANAGED: u32 = 3;
const HEALTH: u32 = 4;
const INIT: u32 = 5;
const REMOTE_NODE: u32 = 6;
const KUBE_APISERVER: u32 = 7;
/// CIDR identities, in the order of [`PREFIXES`].
const PREFIXES: [&str; 4] = ["10.0.0.0/8", "10.96.0.0/12", "20.1.0.0/16", "0.0.0.0/0"];
const C10: u32 = 0x0100;
const C10_96: u32 = 0x0101;
const C20_1: u32 = 0x0102;

fn with(mut l: Labels, pairs: &[(&str, &str)]) -> Labels {
    for (k, v) in pairs {
        l.insert(k.to_string(), v.to_string());
    }
    l
}

fn net(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The agent's identities: pods (namespace `shop` labelled team=a, `other`
/// team=b), the reserved ones, and one CIDR identity per prefix but
/// 0.0.0.0/0 (which the world identity carries).
fn world() -> BTreeMap<u32, Labels> {
    let team = |t| [("io.cilium.k8s.namespace.labels.team", t)];
    let mut w = BTreeMap::from([
        (
            WEB,
            with(
                pod(LOCAL, "shop", &[("app", "web")]),
                &[
                    team("a")[0],
                    ("io.cilium.k8s.policy.serviceaccount", "web-sa"),
                ],
            ),
        ),
        (
            DB,
            with(
                pod(LOCAL, "shop", &[("app", "db")]),
                &[
                    team("a")[0],
                    ("io.cilium.k8s.policy.serviceaccount", "db-sa"),
                ],
            ),
        ),
        (
            CLIENT,
            with(pod(LOCAL, "shop", &[("app", "client")]), &team("a")),
        ),
        (
            OTHER,
            with(pod(LOCAL, "other", &[("app", "client")]), &team("b")),
        ),
        (
            TEAM_B,
            with(pod(LOCAL, "tools", &[("app", "web")]), &team("b")),
        ),
        (
            REMOTE_CLIENT,
            with(pod(REMOTE, "shop", &[("app", "client")]), &team("a")),
        ),
    ]);
    for (id, name) in [
        (HOST, "host"),
        (UNMANAGED, "unmanaged"),
        (HEALTH, "health"),
        (INIT, "init"),
        (REMOTE_NODE, "remote-node"),
        (KUBE_APISERVER, "kube-apiserver"),
    ] {
        w.insert(
            id,
            BTreeMap::from([(format!("reserved:{name}"), String::new())]),
        );
    }
    w.insert(
        WORLD,
        BTreeMap::from([
            ("reserved:world".to_string(), String::new()),
            ("cidr:0.0.0.0/0".to_string(), String::new()),
        ]),
    );
    for (i, p) in PREFIXES.iter().enumerate().take(3) {
        let mut l = BTreeMap::from([("reserved:world".to_string(), String::new())]);
        for q in PREFIXES {
            if net(q).contains(&net(p)) {
                l.insert(format!("cidr:{q}"), String::new());
            }
        }
        w.insert(identity(0, 256 + i as u16), l);
    }
    w
}

fn all_ids() -> BTreeSet<u32> {
    world().keys().copied().collect()
}

/// The peers `local` may reach (egress) or be reached by (ingress) on TCP 80.
fn peers(c: &Compiled, local: u32, dir: super::Direction) -> BTreeSet<u32> {
    all_ids()
        .into_iter()
        .filter(|&r| tcp(c, local, r, 80, dir))
        .collect()
}

fn set(ids: &[u32]) -> BTreeSet<u32> {
    ids.iter().copied().collect()
}

fn web_egress(rules: &str) -> Compiled {
    compile_yaml(
        &cnp(&format!(
            "  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n{rules}"
        )),
        &world(),
    )
}

fn web_ingress(rules: &str) -> Compiled {
    compile_yaml(
        &cnp(&format!(
            "  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n{rules}"
        )),
        &world(),
    )
}

#[test]
fn entities_select_cilium_s_identities() {
    let cidrs = [C10, C10_96, C20_1];
    let local_pods = [WEB, DB, CLIENT, OTHER, TEAM_B];
    let in_cluster = [HOST, REMOTE_NODE, INIT, HEALTH, UNMANAGED, KUBE_APISERVER];
    let cluster: Vec<u32> = local_pods.iter().chain(&in_cluster).copied().collect();
    let world_ids: Vec<u32> = [WORLD].iter().chain(&cidrs).copied().collect();
    let table: [(&str, Vec<u32>); 11] = [
        ("world", world_ids.clone()),
        ("world-ipv4", world_ids),
        ("host", vec![HOST]),
        ("remote-node", vec![REMOTE_NODE]),
        ("kube-apiserver", vec![KUBE_APISERVER]),
        ("init", vec![INIT]),
        ("health", vec![HEALTH]),
        ("unmanaged", vec![UNMANAGED]),
        ("cluster", cluster),
        ("all", all_ids().into_iter().collect()),
        ("ingress", vec![]),
    ];
    for (entity, want) in table {
        let c = web_egress(&format!("  - toEntities: [{entity}]\n"));
        assert_eq!(peers(&c, WEB, Egress), set(&want), "toEntities: [{entity}]");
        let c = web_ingress(&format!("  - fromEntities: [{entity}]\n"));
        assert_eq!(
            peers(&c, WEB, Ingress),
            set(&want),
            "fromEntities: [{entity}]"
        );
    }
    // Cilium's documented example: egress to the world, on one port.
    let c = web_egress(
        "  - toEntities:\n    - world\n    toPorts:\n    - ports:\n      - port: \"443\"\n        protocol: TCP\n",
    );
    assert!(tcp(&c, WEB, WORLD, 443, Egress));
    assert!(
        tcp(&c, WEB, C20_1, 443, Egress),
        "CIDR identities are world"
    );
    assert!(!tcp(&c, WEB, WORLD, 80, Egress));
    assert!(!tcp(&c, WEB, DB, 443, Egress));
    // `cluster` is the local cluster even where selectors reach every
    // cluster (Cilium's older default).
    let mut loose = Scope::new(LOCAL);
    loose.peers_any_cluster = true;
    let c = compile(
        &loose,
        &parse(&cnp(
            "  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEntities: [cluster]\n",
        )),
        &world(),
    );
    assert!(!tcp(&c, WEB, REMOTE_CLIENT, 1, Egress));
    assert!(tcp(&c, WEB, OTHER, 1, Egress) && tcp(&c, WEB, HOST, 1, Egress));
    let c = compile(
        &loose,
        &parse(&cnp(
            "  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: client}}]\n",
        )),
        &world(),
    );
    assert!(
        tcp(&c, WEB, REMOTE_CLIENT, 1, Egress),
        "an endpoint selector does reach it"
    );
    // Entities are not scoped to the policy's namespace nor to an
    // endpoint's cluster, and an endpoint selector never reaches them.
    let c = web_egress(
        "  - toEndpoints:\n    - matchExpressions:\n      - {key: app, operator: DoesNotExist}\n",
    );
    assert!(peers(&c, WEB, Egress).is_empty());
}

#[test]
fn entity_errors_name_the_fix() {
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toEntities: [world-ipv6]\n",
        "spec.egress[0].toEntities[0]",
        &["IPv4-only", "use world"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toEntities: [internet]\n",
        "spec.egress[0].toEntities[0]",
        &["not an entity", "world, world-ipv4, cluster"],
    );
    // The fix of the first applied: the world.
    let c = web_egress("  - toEntities: [world]\n");
    assert_eq!(peers(&c, WEB, Egress), set(&[WORLD, C10, C10_96, C20_1]));
}

#[test]
fn cidr_rules_select_cidr_identities_with_except() {
    // toCIDR: one prefix (written with host bits; Cilium canonicalises).
    let c = web_egress("  - toCIDR:\n    - 20.1.2.3/16\n");
    assert_eq!(peers(&c, WEB, Egress), set(&[C20_1]));
    // toCIDRSet with except.
    let c =
        web_egress("  - toCIDRSet:\n    - cidr: 10.0.0.0/8\n      except:\n      - 10.96.0.0/12\n");
    assert_eq!(peers(&c, WEB, Egress), set(&[C10]));
    // 0.0.0.0/0 but the private range: the world identity and 20.1/16.
    let c = web_egress("  - toCIDRSet:\n    - cidr: 0.0.0.0/0\n      except: [10.0.0.0/8]\n");
    assert_eq!(peers(&c, WEB, Egress), set(&[WORLD, C20_1]));
    // fromCIDR / fromCIDRSet.
    let c = web_ingress("  - fromCIDR: [10.96.0.0/12]\n");
    assert_eq!(peers(&c, WEB, Ingress), set(&[C10_96]));
    let c = web_ingress(
        "  - fromCIDRSet:\n    - cidr: 10.0.0.0/8\n      except: [10.96.0.0/12]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
    );
    assert_eq!(peers(&c, WEB, Ingress), set(&[C10]));
    assert!(!tcp(&c, WEB, C10, 81, Ingress));
    // Kubernetes ipBlock reads the same.
    let c = compile_yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.96.0.0/12]
"#,
        &world(),
    );
    assert_eq!(peers(&c, WEB, Egress), set(&[C10]));
    // The selector keys are canonical prefixes (what policy/cidr.rs scans).
    let p = parse(&cnp(
        "  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 10.1.2.3/8, except: [10.96.1.1/12]}]\n",
    ));
    let text = super::summary(&p[0]);
    assert!(
        text.contains("egress allow to [cidr:10.0.0.0/8,!cidr:10.96.0.0/12]"),
        "{text}"
    );
}

#[test]
fn cidr_errors_name_the_field_and_the_fix() {
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n",
        "spec.egress[0].toCIDRSet[0].except[0]",
        &["192.168.0.0/16 is not inside cidr 10.0.0.0/8"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toCIDR: [\"2001:db8::/32\"]\n",
        "spec.egress[0].toCIDR[0]",
        &["IPv6", "IPv4-only", "remove it"],
    );
    assert_err(
        "  endpointSelector: {}\n  ingress:\n  - fromCIDRSet: [{cidr: \"fd00::/8\"}]\n",
        "spec.ingress[0].fromCIDRSet[0].cidr",
        &["IPv6"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.300/8]\n",
        "spec.egress[0].toCIDR[0]",
        &["not a CIDR", "10.0.0.0/8"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidrGroupRef: corp}]\n",
        "spec.egress[0].toCIDRSet[0].cidrGroupRef",
        &["CiliumCIDRGroup"],
    );
    // One address is a /32.
    let p = parse(&cnp(
        "  endpointSelector: {}\n  egress:\n  - toCIDR: [192.0.2.1]\n",
    ));
    assert!(super::summary(&p[0]).contains("[cidr:192.0.2.1/32]"));
}

const CCNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: cw\nspec:\n";

#[test]
fn clusterwide_policies_select_every_namespace() {
    // Subjects in every namespace; peers of every namespace.
    let c = compile_yaml(
        &format!(
            "{CCNP}  endpointSelector:\n    matchLabels: {{app: web}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {{app: client}}\n"
        ),
        &world(),
    );
    assert_eq!(
        c.selected.keys().copied().collect::<Vec<_>>(),
        vec![WEB, TEAM_B],
        "app=web of shop and tools"
    );
    assert_eq!(peers(&c, WEB, Ingress), set(&[CLIENT, OTHER]));
    assert_eq!(peers(&c, TEAM_B, Ingress), set(&[CLIENT, OTHER]));
    let p = parse(&format!("{CCNP}  endpointSelector: {{}}\n"));
    assert_eq!(p[0].id.namespace, "");
    assert_eq!(p[0].id.to_string(), "CiliumClusterwideNetworkPolicy cw");
    // An endpointSelector naming a namespace, or namespace labels.
    let c = compile_yaml(
        &format!(
            "{CCNP}  endpointSelector:\n    matchLabels:\n      k8s:io.kubernetes.pod.namespace: other\n  ingress: [{{}}]\n"
        ),
        &world(),
    );
    assert_eq!(c.selected.keys().copied().collect::<Vec<_>>(), vec![OTHER]);
    let c = compile_yaml(
        &format!(
            "{CCNP}  endpointSelector:\n    matchLabels:\n      k8s:io.cilium.k8s.namespace.labels.team: b\n  egress:\n  - toEntities: [kube-apiserver]\n"
        ),
        &world(),
    );
    assert_eq!(
        c.selected.keys().copied().collect::<Vec<_>>(),
        vec![OTHER, TEAM_B]
    );
    assert_eq!(peers(&c, OTHER, Egress), set(&[KUBE_APISERVER]));
    // Its metadata.namespace means nothing; its errors name it.
    let e = parse_err(&format!(
        "{CCNP}  endpointSelector: {{}}\n  egress:\n  - toPorts: [{{ports: []}}]\n"
    ));
    assert!(
        e.to_string().starts_with(
            "test.yaml: CiliumClusterwideNetworkPolicy cw: spec.egress[0].toPorts[0].ports"
        ),
        "{e}"
    );
}

#[test]
fn namespace_selectors_by_label() {
    // NetworkPolicy: matchLabels and matchExpressions on namespace labels.
    let np = |sel: &str| {
        compile_yaml(
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from:\n    - namespaceSelector:\n{sel}"
            ),
            &world(),
        )
    };
    let c = np("        matchLabels: {team: b}\n");
    assert_eq!(peers(&c, WEB, Ingress), set(&[OTHER, TEAM_B]));
    let c = np("        matchExpressions: [{key: team, operator: NotIn, values: [b]}]\n");
    assert_eq!(peers(&c, WEB, Ingress), set(&[WEB, DB, CLIENT]));
    let c = np("        matchLabels: {kubernetes.io/metadata.name: tools}\n");
    assert_eq!(peers(&c, WEB, Ingress), set(&[TEAM_B]));
    // CNP: a namespace-label key beside a namespace requirement.
    let c = web_ingress(
        "  - fromEndpoints:\n    - matchLabels:\n        k8s:io.cilium.k8s.namespace.labels.team: b\n        app: client\n      matchExpressions:\n      - {key: k8s:io.kubernetes.pod.namespace, operator: Exists}\n",
    );
    assert_eq!(peers(&c, WEB, Ingress), set(&[OTHER]));
}

#[test]
fn service_accounts_are_selectable() {
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector:
    matchLabels:
      io.cilium.k8s.policy.serviceaccount: db-sa
  ingress:
  - fromEndpoints:
    - matchLabels:
        k8s:io.cilium.k8s.policy.serviceaccount: web-sa
"#),
        &world(),
    );
    assert_eq!(c.selected.keys().copied().collect::<Vec<_>>(), vec![DB]);
    assert_eq!(peers(&c, DB, Ingress), set(&[WEB]));
    let r = parse_policies_report(
        &cnp("  endpointSelector: {matchLabels: {io.cilium.k8s.policy.serviceaccount: db-sa}}\n"),
        "test.yaml",
        &ParseOptions::default(),
        &mut |_| Ok::<bool, PolicyError>(false),
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn deny_rules_win_over_allows_with_entities_and_cidrs() {
    // Allow all egress, deny the world but 20.1/16 is denied too (deny wins
    // at whichever lookup it is found); allow the cluster, deny the remote
    // nodes.
    let c = compile_yaml(
        &cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEntities: [all]
  - toCIDR: [20.1.0.0/16]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  egressDeny:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
  - toCIDR: [20.1.0.0/16]
  ingress:
  - fromEntities: [cluster]
  ingressDeny:
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#),
        &world(),
    );
    let ids = all_ids();
    let want: BTreeSet<u32> = ids
        .iter()
        .copied()
        .filter(|id| *id != C10 && *id != C20_1)
        .collect();
    assert_eq!(peers(&c, WEB, Egress), want);
    assert!(
        !tcp(&c, WEB, C20_1, 443, Egress),
        "deny wins over the port allow"
    );
    assert!(
        tcp(&c, WEB, C10_96, 443, Egress),
        "the except is not denied"
    );
    assert!(!tcp(&c, WEB, REMOTE_NODE, 80, Ingress));
    assert!(tcp(&c, WEB, REMOTE_NODE, 22, Ingress));
    assert!(tcp(&c, WEB, HOST, 80, Ingress));
    assert!(!tcp(&c, WEB, WORLD, 80, Ingress), "not in the cluster");
    // A deny-only entity policy selects (default deny) in its direction.
    let c = compile_yaml(
        &cnp("  endpointSelector: {matchLabels: {app: web}}\n  egressDeny:\n  - toEntities: [world]\n"),
        &world(),
    );
    assert!(c.selected.get(&WEB).is_some_and(|s| s.egress));
    assert!(!tcp(&c, WEB, WORLD, 80, Egress));
    assert!(!tcp(&c, WEB, DB, 80, Egress), "selected: default deny");
    // Deny all (the `all` entity) beats any allow.
    let c = web_egress("  - toEndpoints: [{}]\n  egressDeny:\n  - toEntities: [all]\n");
    assert!(peers(&c, WEB, Egress).is_empty());
    assert_eq!(
        c.entries.get(&PolicyEntry {
            local_identity: WEB,
            remote_identity: 0,
            dport: 0,
            proto: 0,
            direction: Egress
        }),
        Some(&Verdict::Deny)
    );
}

#[test]
fn icmp_rules_give_one_entry_per_type() {
    let c = web_ingress(
        r#"  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps:
    - fields:
      - type: 8
        family: IPv4
      - type: EchoReply
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
    );
    let icmp = |t: u8| datapath_allows(&c, WEB, CLIENT, 256 + u16::from(t), PROTO_ICMP, Ingress);
    assert!(icmp(8) && icmp(0));
    assert!(!icmp(3));
    assert!(
        tcp(&c, WEB, CLIENT, 80, Ingress),
        "toPorts is an alternative"
    );
    assert!(!tcp(&c, WEB, CLIENT, 81, Ingress));
    assert_eq!(icmp_type(8).port, 264);
    let p = parse(&cnp(
        "  endpointSelector: {}\n  egress:\n  - icmps: [{fields: [{type: EchoRequest, family: IPv4}]}]\n",
    ));
    let text = super::summary(&p[0]);
    assert!(
        text.contains("egress allow to any peer on icmp type 8 (EchoRequest)"),
        "{text}"
    );
    // ICMP in a deny rule.
    let c =
        web_egress("  - toEntities: [all]\n  egressDeny:\n  - icmps: [{fields: [{type: 8}]}]\n");
    assert!(!datapath_allows(&c, WEB, WORLD, 264, PROTO_ICMP, Egress));
    assert!(datapath_allows(&c, WEB, WORLD, 256, PROTO_ICMP, Egress));
    assert!(datapath_allows(&c, WEB, WORLD, 80, PROTO_TCP, Egress));
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - icmps: [{fields: [{type: 128, family: IPv6}]}]\n",
        "spec.egress[0].icmps[0].fields[0].family",
        &["IPv4-only"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - icmps: [{fields: [{type: Ping}]}]\n",
        "spec.egress[0].icmps[0].fields[0].type",
        &["not an ICMP type name", "EchoRequest"],
    );
    assert_err(
        "  endpointSelector: {}\n  egress:\n  - icmps: [{fields: [{type: 300}]}]\n",
        "spec.egress[0].icmps[0].fields[0].type",
        &["0..=255"],
    );
}

#[test]
fn requires_are_anded_onto_the_endpoint_selectors_of_the_direction() {
    let yaml = cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromRequires:
    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a}
  - fromEndpoints:
    - matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: Exists}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEntities: [host]
"#);
    let c = compile_yaml(&yaml, &world());
    assert_eq!(
        peers(&c, WEB, Ingress),
        set(&[WEB, DB, CLIENT, HOST]),
        "team a only (not other, tools); entities untouched"
    );
    let r = parse_policies_report(&yaml, "test.yaml", &ParseOptions::default(), &mut |_| {
        Ok::<bool, PolicyError>(false)
    });
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert_eq!(r.warnings[0].field, "spec.ingress[0].fromRequires");
    assert!(r.warnings[0].message.contains("deprecated"));
    assert_eq!(r.warnings[0].kind, super::WarningKind::Deprecated);
    let strict = ParseOptions {
        strict: true,
        ..ParseOptions::default()
    };
    let r = parse_policies_report(&yaml, "test.yaml", &strict, &mut |_| {
        Ok::<bool, PolicyError>(false)
    });
    assert!(
        r.errors.is_empty(),
        "enforced, so not refused: {:?}",
        r.errors
    );
}

#[test]
fn state_follows_compile_for_entity_and_cidr_peers() {
    let policies = parse(&cnp(r#"
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEntities: [cluster]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
  egressDeny:
  - toEntities: [kube-apiserver]
"#));
    let scope = Scope::new(LOCAL);
    let mut st = PolicyState::new(scope.clone());
    let mut maps = Compiled::default();
    st.sync_policies(policies.clone())
        .expect("sync")
        .apply_to(&mut maps);
    for (id, l) in world() {
        st.add_identity(id, l).apply_to(&mut maps);
    }
    let want = compile(&scope, &policies, &world());
    assert_eq!(maps, want);
    assert!(tcp(&want, WEB, C10, 1, Egress));
    assert!(!tcp(&want, WEB, C10_96, 1, Egress));
    assert!(!tcp(&want, WEB, KUBE_APISERVER, 1, Egress));
    st.remove_identity(C10).apply_to(&mut maps);
    let mut less = world();
    less.remove(&C10);
    assert_eq!(maps, compile(&scope, &policies, &less));
}

#[test]
fn ids_are_as_named() {
    assert_eq!(
        (id(LOCAL, 1), id(LOCAL, 5), id(REMOTE, 1), identity(0, 258)),
        (WEB, TEAM_B, REMOTE_CLIENT, C20_1)
    );
}
