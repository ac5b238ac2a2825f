//! Node labels and egress IPs in scenarios, and the shipped egress.yaml.

#![allow(clippy::unwrap_used)]

use super::*;

/// A scenario whose node `n2` (nodes[1]) gets `extra` (indented as a node
/// field) and whose world ends with `tail`.
fn with(extra: &str, tail: &str) -> String {
    format!(
        r#"
name: w
datapath: ebpf
clusters:
  - name: west
    id: 3
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
      - name: n2
{extra}
{tail}"#
    )
}

fn errors(yaml: &str) -> Vec<String> {
    match Scenario::parse("t.yaml", yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(ScenarioError::Invalid { errors, .. }) => {
            errors.iter().map(|e| e.to_string()).collect()
        }
        Err(e) => panic!("expected field errors, got {e}"),
    }
}

#[test]
fn node_labels_and_egress_ips_parse() {
    let yaml = with(
        "        roles: [egress-gateway]\n        labels: {egress: \"true\", topology.kubernetes.io/zone: a}\n        egressIPs: [203.0.113.50, 203.0.113.51]",
        "externals:\n  - name: internet\n    ip: 203.0.113.10\n",
    );
    let s = Scenario::parse("t.yaml", &yaml).unwrap();
    let n2 = &s.clusters[0].nodes[1];
    assert_eq!(n2.labels["egress"], "true");
    assert_eq!(n2.labels["topology.kubernetes.io/zone"], "a");
    assert_eq!(
        n2.egress_ips,
        [
            Ipv4Addr::new(203, 0, 113, 50),
            Ipv4Addr::new(203, 0, 113, 51)
        ]
    );
    assert!(s.clusters[0].nodes[0].labels.is_empty());
}

#[test]
fn bad_label_keys_and_values_name_the_field() {
    let e = errors(&with(
        "        labels: {\"a b\": x, \"\": y, ok: \"v,w\"}",
        "",
    ));
    assert_eq!(
        e,
        [
            "clusters[0].nodes[1].labels: label key \"\": a label key must not be empty",
            "clusters[0].nodes[1].labels: label key \"a b\": it contains ' '; only A-Z, a-z, 0-9, -, _ and . are allowed",
            "clusters[0].nodes[1].labels: label \"ok\": the value contains ','; only A-Z, a-z, 0-9, -, _ and . are allowed",
        ]
    );
    let e = errors(&with("        labels: {\"k=v\": x}", ""));
    assert_eq!(
        e,
        ["clusters[0].nodes[1].labels: label key \"k=v\": it contains '='; only A-Z, a-z, 0-9, -, _ and . are allowed"]
    );
}

#[test]
fn the_labels_the_lab_sets_are_refused() {
    let e = errors(&with(
        "        labels: {kubernetes.io/hostname: other, io.cilium.k8s.policy.cluster: east}",
        "",
    ));
    assert_eq!(
        e,
        [
            "clusters[0].nodes[1].labels: label \"io.cilium.k8s.policy.cluster\" is set by the lab (to the node's cluster's name); leave it out",
            "clusters[0].nodes[1].labels: label \"kubernetes.io/hostname\" is set by the lab (to the node's own name); leave it out",
        ]
    );
}

#[test]
fn egress_ips_need_the_egress_gateway_role() {
    let e = errors(&with(
        "        roles: [cluster-gateway]\n        egressIPs: [203.0.113.50]",
        "",
    ));
    assert_eq!(
        e,
        ["clusters[0].nodes[1].egressIPs: node \"n2\" has egress IPs but not the role egress-gateway: add `roles: [egress-gateway]`, or leave egressIPs out"]
    );
}

#[test]
fn egress_ips_are_checked_like_externals_and_unique_in_the_world() {
    let gw = |ips: &str| format!("        roles: [egress-gateway]\n        egressIPs: [{ips}]");
    let at = "clusters[0].nodes[1].egressIPs";
    assert_eq!(
        errors(&with(&gw("10.1.9.9"), "")),
        [format!(
            "{at}[0]: 10.1.9.9 is inside 10.1.0.0/16, the podCIDR of cluster \"west\""
        )]
    );
    assert_eq!(
        errors(&with(&gw("198.18.3.50"), "")),
        [format!(
            "{at}[0]: 198.18.3.50 is inside 198.18.0.0/15, the lab underlay"
        )]
    );
    assert_eq!(
        errors(&with(&gw("100.64.0.9"), "")),
        [format!(
            "{at}[0]: 100.64.0.9 is inside 100.64.0.0/10, the tunnel IP range"
        )]
    );
    assert!(
        errors(&with(&gw("169.254.1.1"), ""))[0].starts_with(&format!(
            "{at}[0]: 169.254.1.1 is inside 169.254.0.0/16, link-local"
        ))
    );
    assert_eq!(
        errors(&with(&gw("224.0.0.1"), "")),
        [format!("{at}[0]: 224.0.0.1 is not a unicast host address")]
    );
    assert_eq!(
        errors(&with(&gw("203.0.113.50, 203.0.113.50"), "")),
        [format!(
            "{at}[1]: 203.0.113.50 is already used by clusters[0].nodes[1].egressIPs[0] (an egress IP of west/n2)"
        )]
    );
    // An external on a gateway's egress IP.
    assert_eq!(
        errors(&with(
            &gw("203.0.113.50"),
            "externals:\n  - name: internet\n    ip: 203.0.113.50\n"
        )),
        ["externals[0].ip: 203.0.113.50 is already used by clusters[0].nodes[1].egressIPs[0] (an egress IP of west/n2)"]
    );
    // Across clusters too.
    let two = with(&gw("203.0.113.50"), "")
        .replace("clusters:\n", "clusters:\n  - name: east\n    id: 4\n    podCIDR: 10.2.0.0/16\n    nodes:\n      - name: g\n        roles: [egress-gateway]\n        egressIPs: [203.0.113.50]\n");
    assert_eq!(
        errors(&two),
        ["clusters[1].nodes[1].egressIPs[0]: 203.0.113.50 is already used by clusters[0].nodes[0].egressIPs[0] (an egress IP of east/g)"]
    );
}

fn egress_yaml() -> (String, std::path::PathBuf) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("egress.yaml");
    (std::fs::read_to_string(&path).unwrap(), path)
}

/// egress.yaml loads whole: its egress gateway policies pass the same
/// check the agents apply (`meshgate_egress::parse_policy_text`).
#[test]
fn shipped_egress_file_loads() {
    let (_, path) = egress_yaml();
    let s = Scenario::load(&path).unwrap_or_else(|e| panic!("egress.yaml: {e}"));
    assert_eq!(s.policies.len(), 2);
    // A bad egress policy is refused at load with the field named.
    let (text, _) = egress_yaml();
    let bad = text.replacen(
        "        interface: eg0\n",
        "        interface: eg0\n        egressIP: 203.0.113.50\n",
        1,
    );
    assert_ne!(bad, text);
    let err = Scenario::parse("egress.yaml", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("egress-client") && err.contains("egressIP"),
        "{err}"
    );
}

/// What egress.yaml holds besides its policies' parse.
#[test]
fn shipped_egress_file_has_gateways_egress_ips_and_externals() {
    let (text, _) = egress_yaml();
    let mut s: Scenario = serde_yaml::from_str(&text).unwrap();
    let policies = std::mem::take(&mut s.policies);
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[0]["kind"], "CiliumEgressGatewayPolicy");
    assert_eq!(
        policies[0]["spec"]["egressGateway"]["interface"], "eg0",
        "{policies:?}"
    );
    assert_eq!(super::validate::validate(&s), []);
    let plan = crate::plan::Plan::new(&s).unwrap();
    let c1 = plan.cluster("c1").unwrap();
    let ips = |c: &crate::plan::ClusterPlan, n: &str| c.node(n).unwrap().egress_ips.clone();
    assert_eq!(ips(c1, "g1"), [Ipv4Addr::new(203, 0, 113, 50)]);
    assert_eq!(ips(c1, "g2"), [Ipv4Addr::new(203, 0, 113, 51)]);
    assert_eq!(
        ips(plan.cluster("c2").unwrap(), "g1"),
        [Ipv4Addr::new(203, 0, 113, 60)]
    );
    let labels = c1.node_labels(c1.node("g2").unwrap());
    assert_eq!(labels["egress"], "true");
    assert_eq!(labels[HOSTNAME_LABEL], "g2");
    assert_eq!(labels[CLUSTER_LABEL], "c1");
    let (_, app1) = c1.pod("app1").unwrap();
    assert_eq!(app1.labels["app"], "egress-client");
    let names: Vec<(&str, Ipv4Addr)> = plan
        .externals
        .iter()
        .map(|x| (x.name.as_str(), x.ip))
        .collect();
    assert_eq!(
        names,
        [
            ("internet", Ipv4Addr::new(203, 0, 113, 10)),
            ("internet-excluded", Ipv4Addr::new(203, 0, 113, 200)),
        ]
    );
    // The external is inside the destination, the other in the excluded range.
    let cidr = |v: &serde_yaml::Value| v[0].as_str().unwrap().parse::<Ipv4Net>().unwrap();
    let (dest, excluded) = (
        cidr(&policies[0]["spec"]["destinationCIDRs"]),
        cidr(&policies[0]["spec"]["excludedCIDRs"]),
    );
    assert!(dest.contains(&names[0].1) && !excluded.contains(&names[0].1));
    assert!(dest.contains(&names[1].1) && excluded.contains(&names[1].1));
    assert!(plan.clusters.iter().all(|c| c.datapath == Datapath::Ebpf));
}
