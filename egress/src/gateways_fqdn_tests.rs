//! The planner's `destinationFQDNs` half: what each node's DNS proxy gets.

use std::collections::{BTreeMap, BTreeSet};

use crate::dnsproxy::state::FqdnEgress;
use crate::fqdn::NameMatch;
use crate::testworld::{excluded, ip, net, policies, routes, via, west};
use crate::{fqdn_tag, EgressPolicy, FqdnRoutes};

/// A policy `name` for app=web pods through the egress=true nodes, with
/// `destinations` (spec lines, indented two spaces).
fn fqdn_policy(name: &str, destinations: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  selectors: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n{destinations}\
         \x20 egressGateway: {{nodeSelector: {{matchLabels: {{egress: \"true\"}}}}}}\n"
    )
}

fn api_only() -> Vec<EgressPolicy> {
    policies(&fqdn_policy(
        "api",
        "  destinationFQDNs: [{matchName: api.example.com}, {matchPattern: \"*.cdn.example.com\"}]\n  \
         excludedCIDRs: [10.0.0.0/8]\n",
    ))
}

fn names() -> Vec<NameMatch> {
    vec![
        NameMatch::MatchName("api.example.com".into()),
        NameMatch::MatchPattern("*.cdn.example.com".into()),
    ]
}

fn entry(sources: &[&str], gateways: &[&str], snat: Option<&str>) -> FqdnRoutes {
    FqdnRoutes {
        egress: FqdnEgress {
            policy: "api".into(),
            tag: fqdn_tag("api"),
            names: names(),
            sources: sources.iter().map(|s| ip(s)).collect(),
            excluded: vec![net("10.0.0.0/8")],
            snat_index: 0,
            gateways: gateways.iter().map(|g| ip(g)).collect(),
        },
        snat: snat.map(ip),
    }
}

#[test]
fn worker_gives_its_selected_pods_and_their_gateways() {
    let p = west().plan("west/a", &api_only());
    assert_eq!(
        p.fqdn,
        vec![entry(&["10.1.0.5"], &["100.64.0.11", "100.64.0.12"], None)]
    );
    assert_eq!(
        p.routes,
        routes(&[("10.1.0.5", "10.0.0.0/8", excluded())]),
        "no CIDR routes; the excluded CIDR as for any policy"
    );
    assert_eq!(p.status[0].endpoints, 1);
    assert_eq!(p.status[0].gateways.len(), 2);
    assert_eq!(
        p.watched,
        BTreeSet::from(["west/gw1".to_string(), "west/gw2".to_string()])
    );
    assert!(p.snat.is_empty() && p.problems.is_empty(), "{p:?}");
}

#[test]
fn gateway_of_a_names_only_policy_snats_like_for_cidrs() {
    let p = west().plan("west/gw1", &api_only());
    let want = entry(&[], &["100.64.0.11", "100.64.0.12"], Some("192.0.2.11"));
    assert_eq!(p.fqdn, vec![want.clone()]);
    assert_eq!(
        p.snat,
        BTreeMap::from([(ip("192.0.2.11"), "eth0".to_string())])
    );
    assert!(p.gateway_of_any);
    assert!(p.status[0].gateways[0].usable);
    // The source on west/a: a wildcard route for the SNAT of what west/a's
    // proxy steers here, used by from_mesh only.
    let wildcard = crate::Route {
        excluded: false,
        gateways: Vec::new(),
        snat: Some(ip("192.0.2.11")),
        gateway_only: true,
    };
    assert_eq!(
        p.routes,
        routes(&[
            ("10.1.0.5", "10.0.0.0/8", excluded()),
            ("10.1.0.5", "0.0.0.0/0", wildcard)
        ])
    );
    let proxy = want.to_proxy(&BTreeMap::from([(ip("192.0.2.11"), 3)]));
    assert_eq!(proxy.snat_index, 3);
    assert_eq!(
        entry(&["10.1.0.5"], &[], None)
            .to_proxy(&BTreeMap::new())
            .snat_index,
        0
    );
}

#[test]
fn fqdn_routes_use_the_cidr_routes_gateways_through_failover() {
    let both = policies(&fqdn_policy(
        "api",
        "  destinationCIDRs: [192.0.2.0/24]\n  destinationFQDNs: [{matchName: api.example.com}, \
         {matchPattern: \"*.cdn.example.com\"}]\n  excludedCIDRs: [10.0.0.0/8]\n",
    ));
    let mut w = west();
    w.pod("10.1.0.7", "west/a", "shop", &[("app", "web")]);
    w.down.insert("west/gw1".into());
    let p = w.plan("west/a", &both);
    let cidr = &p.routes[&(ip("10.1.0.5"), net("192.0.2.0/24"))];
    assert_eq!(*cidr, via(&["100.64.0.12"], None));
    assert_eq!(
        p.fqdn,
        vec![entry(&["10.1.0.5", "10.1.0.7"], &["100.64.0.12"], None)]
    );
    assert_eq!(p.fqdn[0].egress.gateways, cidr.gateways);
}

#[test]
fn nodes_without_pods_or_snat_for_the_policy_get_no_entry() {
    let mut w = west();
    w.node("west/b", &[], "100.64.0.2", "192.0.2.2");
    assert!(w.plan("west/b", &api_only()).fqdn.is_empty());
    // A CIDR-only policy has none anywhere.
    let cidrs = crate::testworld::web_out();
    assert!(w.plan("west/a", &cidrs).fqdn.is_empty());
    assert!(w.plan("west/gw1", &cidrs).fqdn.is_empty());
}

#[test]
fn tags_are_stable_never_zero_and_collisions_are_reported() {
    // Pinned: tags outlive agent restarts in mg_egress.
    assert_eq!(fqdn_tag("out"), 40261);
    assert_eq!(fqdn_tag("api"), 37613);
    assert_ne!(fqdn_tag(""), 0);
    assert_eq!(fqdn_tag("p196"), fqdn_tag("p222"), "a known collision");
    let dest = "  destinationFQDNs: [{matchName: api.example.com}]\n";
    let text = format!("{}{}", fqdn_policy("p222", dest), fqdn_policy("p196", dest));
    let p = west().plan("west/a", &policies(&text));
    let got: Vec<&str> = p.fqdn.iter().map(|f| f.egress.policy.as_str()).collect();
    assert_eq!(got, vec!["p196"], "the second by name gets no FQDN routes");
    assert_eq!(p.status.len(), 2, "both still have status");
    assert!(
        p.problems
            .iter()
            .any(|m| m.contains("p196 and p222") && m.contains("p222's destinationFQDNs")),
        "{:?}",
        p.problems
    );
}
