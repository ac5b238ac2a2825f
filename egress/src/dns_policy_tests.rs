//! The DNS proxy's view of identity policies.

use std::collections::BTreeMap;

use meshgate_model::identity::{endpoint_labels, identity, Labels};
use meshgate_model::policy::{parse_policies, Policy, Scope, PROTO_TCP, PROTO_UDP};

use crate::dns_policy::identity_dns;
use crate::dnsproxy::state::{FqdnReach, IdentityDns};
use crate::fqdn::NameMatch;

const LOCAL: u8 = 1;
const REMOTE: u8 = 2;

fn pod(cluster: u8, ns: &str, app: &str) -> Labels {
    let l = Labels::from([("app".to_string(), app.to_string())]);
    endpoint_labels(&l, ns, if cluster == LOCAL { "west" } else { "east" })
}

fn world() -> BTreeMap<u32, Labels> {
    BTreeMap::from([
        (identity(LOCAL, 256), pod(LOCAL, "shop", "web")),
        (identity(LOCAL, 257), pod(LOCAL, "shop", "db")),
        (identity(LOCAL, 258), pod(LOCAL, "shop", "batch")),
        (identity(REMOTE, 256), pod(REMOTE, "shop", "web")),
    ])
}
const WEB: u32 = 0x01_0100;
const DB: u32 = 0x01_0101;
const BATCH: u32 = 0x01_0102;

fn policies(yaml: &str) -> Vec<Policy> {
    parse_policies(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-dns, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchPattern: "*.cilium.io"}, {matchName: cilium.io}]
  - toFQDNs: [{matchName: cilium.io}, {matchPattern: "special*service.api.cilium.io"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-fqdn, namespace: shop}
spec:
  endpointSelector: {matchExpressions: [{key: app, operator: In, values: [web, batch]}]}
  egress:
  - toFQDNs: [{matchPattern: "**.example.com"}]
  - toPorts:
    - ports: [{port: "53"}]
      rules:
        dns: [{matchName: cilium.io}, {matchPattern: "*"}]
  ingress:
  - toPorts: [{ports: [{port: "8080"}]}]
"#;

#[test]
fn local_identities_get_their_lookups_and_reach() {
    let got = identity_dns(&Scope::new(LOCAL), &policies(POLICIES), &world());
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        vec![WEB, DB, BATCH],
        "local identities only, each listed"
    );
    assert_eq!(
        got[&DB],
        IdentityDns::default(),
        "no rule: unrestricted, no reach"
    );
    let web = &got[&WEB];
    assert_eq!(
        web.lookups,
        Some(vec![
            NameMatch::MatchName("cilium.io".into()),
            NameMatch::MatchPattern("*".into()),
            NameMatch::MatchPattern("*.cilium.io".into()),
        ]),
        "the union of both policies' DNS rules, once each"
    );
    assert_eq!(
        web.reach,
        vec![
            FqdnReach {
                names: vec![
                    NameMatch::MatchName("cilium.io".into()),
                    NameMatch::MatchPattern("special*service.api.cilium.io".into()),
                ],
                ports: vec![(PROTO_TCP, 80), (PROTO_UDP, 53)],
            },
            FqdnReach {
                names: vec![NameMatch::MatchPattern("**.example.com".into())],
                ports: Vec::new(),
            },
        ]
    );
    assert_eq!(
        got[&BATCH],
        IdentityDns {
            lookups: Some(vec![
                NameMatch::MatchName("cilium.io".into()),
                NameMatch::MatchPattern("*".into()),
            ]),
            reach: vec![FqdnReach {
                names: vec![NameMatch::MatchPattern("**.example.com".into())],
                ports: Vec::new(),
            }],
        }
    );
}

#[test]
fn fqdn_rules_without_dns_rules_leave_lookups_unrestricted() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress:
  - toFQDNs: [{matchName: db.example.com}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;
    let got = identity_dns(&Scope::new(LOCAL), &policies(yaml), &world());
    assert_eq!(got[&DB].lookups, None);
    assert_eq!(
        got[&DB].reach,
        vec![FqdnReach {
            names: vec![NameMatch::MatchName("db.example.com".into())],
            ports: vec![(PROTO_TCP, 5432)],
        }]
    );
    assert_eq!(got[&WEB], IdentityDns::default());
    let remote = identity_dns(&Scope::new(REMOTE), &policies(yaml), &world());
    assert_eq!(remote.keys().copied().collect::<Vec<_>>(), vec![0x02_0100]);
}
