#![allow(clippy::unwrap_used)]

use super::*;

const BASE: &str = r#"
name: w
clusters:
  - name: west
    id: 3
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        roles: [egress-gateway, cluster-gateway]
        pods:
          - name: a
            labels: {app: web}
      - name: n2
"#;

fn errors(yaml: &str) -> Vec<String> {
    match Scenario::parse("t.yaml", yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(ScenarioError::Invalid { errors, .. }) => {
            errors.iter().map(|e| e.to_string()).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

fn has(yaml: &str, needle: &str) {
    let errs = errors(yaml);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in {errs:#?}"
    );
}

#[test]
fn parses_a_good_scenario() {
    let s = Scenario::parse("t.yaml", BASE).unwrap();
    assert_eq!(s.name, "w");
    assert_eq!(
        s.clusters[0].nodes[0].roles,
        vec![Role::EgressGateway, Role::ClusterGateway]
    );
    assert_eq!(s.clusters[0].nodes[0].pods[0].labels["app"], "web");
    assert!(s.clusters[0].nodes[1].pods.is_empty());
}

#[test]
fn shipped_one_cluster_file_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("one-cluster.yaml");
    let s = Scenario::load(&path).unwrap();
    assert_eq!(s.name, "one");
    assert_eq!(s.clusters.len(), 1);
    assert_eq!(s.clusters[0].nodes.len(), 3);
    assert!(s.clusters[0].nodes.iter().all(|n| n.pods.len() == 2));
}

#[test]
fn message_names_file_and_field() {
    let yaml = format!("{BASE}  - name: east\n    id: 3\n    podCIDR: 10.2.0.0/16\n");
    let e = Scenario::parse("one-cluster.yaml", &yaml)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "one-cluster.yaml: clusters[1].id: 3 is already used by cluster \"west\""
    );
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let e = errors(&BASE.replace("    id: 3", "    id: 3\n    colour: red"));
    assert!(e[0].starts_with("t.yaml: "), "{e:?}");
    assert!(e[0].contains("unknown field `colour`"), "{e:?}");
    has(&format!("{BASE}extra: 1\n"), "unknown field `extra`");
    has(
        &BASE.replace("labels: {app: web}", "label: {app: web}"),
        "unknown field `label`",
    );
}

#[test]
fn unknown_role_is_rejected() {
    has(
        &BASE.replace("cluster-gateway]", "router]"),
        "unknown variant `router`",
    );
}

#[test]
fn bad_names() {
    has(
        &BASE.replace("name: w\n", "name: W\n"),
        "name: \"W\" contains 'W'",
    );
    has(
        &BASE.replace("name: w\n", "name: thirteen-char\n"),
        "name: \"thirteen-char\" is 13 characters long",
    );
    has(
        &BASE.replace("name: w\n", "name: \"\"\n"),
        "name: must not be empty",
    );
    has(
        &BASE.replace("name: west", "name: we_st"),
        "clusters[0].name: \"we_st\" contains '_'",
    );
    has(
        &BASE.replace("name: west", "name: x"),
        "clusters[0].name: \"x\" is reserved",
    );
    has(
        &BASE.replace("name: n2", "name: -n2"),
        "clusters[0].nodes[1].name: \"-n2\" must not start or end",
    );
    has(
        &BASE.replace("name: a\n", "name: A\n"),
        "clusters[0].nodes[0].pods[0].name",
    );
}

#[test]
fn duplicate_cluster_names_and_ids() {
    let yaml = format!("{BASE}  - name: west\n    id: 4\n    podCIDR: 10.2.0.0/16\n");
    has(
        &yaml,
        "clusters[1].name: \"west\" is already used by clusters[0]",
    );
    let yaml = format!("{BASE}  - name: east\n    id: 3\n    podCIDR: 10.2.0.0/16\n");
    has(
        &yaml,
        "clusters[1].id: 3 is already used by cluster \"west\"",
    );
}

#[test]
fn cluster_id_range() {
    has(
        &BASE.replace("id: 3", "id: 0"),
        "clusters[0].id: 0 is not in 1..=255",
    );
    has(
        &BASE.replace("id: 3", "id: 256"),
        "clusters[0].id: 256 is not in 1..=255",
    );
}

#[test]
fn no_clusters() {
    has(
        "name: w\nclusters: []\n",
        "clusters: at least one cluster is needed",
    );
}

#[test]
fn pod_cidr_problems() {
    has(
        &BASE.replace("10.1.0.0/16", "10.1.0.0"),
        "clusters[0].podCIDR: \"10.1.0.0\" is not an IPv4 CIDR",
    );
    has(
        &BASE.replace("10.1.0.0/16", "fd00::/64"),
        "is not an IPv4 CIDR",
    );
    has(
        &BASE.replace("10.1.0.0/16", "10.1.0.0/25"),
        "prefix /25 is longer than /24",
    );
    has(
        &BASE.replace("10.1.0.0/16", "10.1.2.3/16"),
        "has host bits set; did you mean 10.1.0.0/16?",
    );
    has(
        &BASE.replace("10.1.0.0/16", "10.1.0.0/24"),
        "has room for 1 node /24s but cluster \"west\" has 2 nodes",
    );
    has(
        &BASE.replace("10.1.0.0/16", "198.18.0.0/16"),
        "overlaps 198.18.0.0/15, the lab underlay",
    );
    has(
        &BASE.replace("10.1.0.0/16", "100.64.0.0/16"),
        "the tunnel IP range",
    );
    has(&BASE.replace("10.1.0.0/16", "169.254.0.0/16"), "link-local");
}

#[test]
fn overlapping_pod_cidrs() {
    let yaml = format!("{BASE}  - name: east\n    id: 4\n    podCIDR: 10.0.0.0/8\n");
    has(
        &yaml,
        "clusters[1].podCIDR: 10.0.0.0/8 overlaps 10.1.0.0/16, the podCIDR of cluster \"west\"",
    );
    let yaml = format!("{BASE}  - name: east\n    id: 4\n    podCIDR: 10.2.0.0/16\n");
    assert!(Scenario::parse("t.yaml", &yaml).is_ok());
}

#[test]
fn duplicate_nodes_and_pods() {
    has(
        &BASE.replace("name: n2", "name: n1"),
        "clusters[0].nodes[1].name: \"n1\" is already used by clusters[0].nodes[0]",
    );
    let yaml = BASE.replace(
        "      - name: n2\n",
        "      - name: n2\n        pods:\n          - name: a\n",
    );
    has(
        &yaml,
        "clusters[0].nodes[1].pods[0].name: \"a\" is already used by clusters[0].nodes[0].pods[0]",
    );
    let yaml = BASE.replace(
        "      - name: n2\n",
        "      - name: n2\n        pods:\n          - name: n1\n",
    );
    has(&yaml, "\"n1\" is already the name of clusters[0].nodes[0]");
    has(
        &BASE.replace("name: n2", "name: discovery"),
        "\"discovery\" is reserved",
    );
}

#[test]
fn same_pod_name_in_two_clusters_is_fine() {
    let yaml = format!(
        "{BASE}  - name: east\n    id: 4\n    podCIDR: 10.2.0.0/16\n    nodes:\n      - name: n1\n        pods:\n          - name: a\n"
    );
    assert!(Scenario::parse("t.yaml", &yaml).is_ok());
}

#[test]
fn too_many_nodes() {
    let mut yaml =
        "name: w\nclusters:\n  - name: big\n    id: 1\n    podCIDR: 10.0.0.0/8\n    nodes:\n"
            .to_string();
    for i in 0..240 {
        yaml.push_str(&format!("      - name: n{i}\n"));
    }
    has(
        &yaml,
        "clusters[0].nodes: 240 nodes; at most 239 per cluster",
    );
    let fine = yaml.replace("      - name: n239\n", "");
    assert!(Scenario::parse("t.yaml", &fine).is_ok());
}

#[test]
fn too_many_pods_on_a_node() {
    let mut yaml = "name: w\nclusters:\n  - name: c\n    id: 1\n    podCIDR: 10.0.0.0/16\n    nodes:\n      - name: n\n        pods:\n".to_string();
    for i in 0..240 {
        yaml.push_str(&format!("          - name: p{i}\n"));
    }
    has(
        &yaml,
        "clusters[0].nodes[0].pods: 240 pods; at most 239 per node",
    );
}

#[test]
fn externals() {
    let ok = format!("{BASE}externals:\n  - name: internet\n    ip: 203.0.113.10\n");
    let s = Scenario::parse("t.yaml", &ok).unwrap();
    assert_eq!(s.externals[0].ip, std::net::Ipv4Addr::new(203, 0, 113, 10));

    has(
        &format!("{BASE}externals:\n  - name: e\n    ip: 10.1.2.3\n"),
        "externals[0].ip: 10.1.2.3 is inside 10.1.0.0/16, the podCIDR of cluster \"west\"",
    );
    has(
        &format!("{BASE}externals:\n  - name: e\n    ip: 198.19.0.1\n"),
        "externals[0].ip: 198.19.0.1 is inside 198.18.0.0/15, the lab underlay",
    );
    has(
        &format!("{BASE}externals:\n  - name: e\n    ip: 127.0.0.1\n"),
        "not a unicast host address",
    );
    has(
        &format!("{BASE}externals:\n  - name: e\n    ip: nope\n"),
        "externals[0].ip",
    );
    has(
        &format!("{BASE}externals:\n  - name: e\n    ip: 203.0.113.1\n  - name: e\n    ip: 203.0.113.1\n"),
        "externals[1].name: \"e\" is already used by externals[0]",
    );
    has(
        &format!("{BASE}externals:\n  - name: e\n    ip: 203.0.113.1\n  - name: f\n    ip: 203.0.113.1\n"),
        "externals[1].ip: 203.0.113.1 is already used by externals[0]",
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let yaml = BASE
        .replace("id: 3", "id: 0")
        .replace("name: n2", "name: n1");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn rotate_interval_zero_is_refused_and_a_value_reaches_the_agent() {
    let zero = BASE.replace(
        "      - name: n2\n",
        "      - name: n2\n        rotateInterval: 0\n",
    );
    has(&zero, "clusters[0].nodes[1].rotateInterval");
    let two = BASE.replace(
        "      - name: n2\n",
        "      - name: n2\n        rotateInterval: 2\n",
    );
    let s = Scenario::parse("t.yaml", &two).unwrap();
    assert_eq!(s.clusters[0].nodes[1].rotate_interval, Some(2));
    let plan = crate::plan::Plan::new(&s).unwrap();
    let c = &plan.clusters[0];
    let args = c.agent_args(&c.nodes[1]);
    let at = args.iter().position(|a| a == "--rotate-interval").unwrap();
    assert_eq!(args[at + 1], "2");
    assert!(!c
        .agent_args(&c.nodes[0])
        .iter()
        .any(|a| a == "--rotate-interval"));
}

#[test]
fn services_are_parsed_and_checked() {
    let good = format!(
        "{BASE}    services:\n      - name: web\n        ports: [{{name: http, port: 80}}]\n        selector: {{app: web}}\n        annotations: {{service.cilium.io/global: \"true\"}}\n"
    );
    let s = Scenario::parse("t.yaml", &good).unwrap();
    assert!(s.clusters[0].services[0].is_global().unwrap());
    let bad = format!(
        "{BASE}    services:\n      - name: web\n        ports: [{{port: 80}}]\n        annotations: {{service.cilium.io/affinity: near}}\n"
    );
    has(&bad, "clusters[0].services");
    has(&bad, "near");
}

#[test]
fn shipped_three_clusters_file_has_services() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("three-clusters.yaml");
    let s = Scenario::load(&path).unwrap();
    assert_eq!(s.clusters.len(), 3);
    assert!(s.clusters.iter().all(|c| c
        .services
        .iter()
        .any(|x| x.name == "web" && x.is_global().unwrap())));
    assert_eq!(s.clusters[0].services.len(), 2);
}

#[test]
fn isolated_underlay_needs_a_cluster_gateway() {
    let isolated = BASE.replace(
        "    podCIDR: 10.1.0.0/16\n",
        "    podCIDR: 10.1.0.0/16\n    underlay: isolated\n",
    );
    let s = Scenario::parse("t.yaml", &isolated).unwrap();
    assert_eq!(s.clusters[0].underlay, Underlay::Isolated);
    let none = isolated.replace(
        "roles: [egress-gateway, cluster-gateway]",
        "roles: [egress-gateway]",
    );
    let errs = errors(&none);
    assert_eq!(
        errs,
        vec!["clusters[0].underlay: cluster \"west\" is isolated but none of its nodes has the role cluster-gateway, so nothing could leave it: give one or two of its nodes `roles: [cluster-gateway]`, or make its underlay routable"]
    );
    let e = Scenario::parse("gateways.yaml", &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("gateways.yaml: clusters[0].underlay: cluster \"west\""),
        "{e}"
    );
    has(
        &BASE.replace(
            "    podCIDR: 10.1.0.0/16\n",
            "    podCIDR: 10.1.0.0/16\n    underlay: walled\n",
        ),
        "unknown variant `walled`",
    );
    assert_eq!(
        Scenario::parse("t.yaml", BASE).unwrap().clusters[0].underlay,
        Underlay::Routable
    );
}

#[test]
fn shipped_gateways_file_isolates_two_clusters() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateways.yaml");
    let s = Scenario::load(&path).unwrap();
    let isolated: Vec<&str> = s
        .clusters
        .iter()
        .filter(|c| c.underlay == Underlay::Isolated)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(isolated, vec!["c1", "c2"]);
    for c in s
        .clusters
        .iter()
        .filter(|c| c.underlay == Underlay::Isolated)
    {
        let gws = c
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::ClusterGateway))
            .count();
        assert_eq!(gws, 2, "{}", c.name);
    }
}

#[test]
fn strict_needs_the_ebpf_datapath() {
    has(&format!("{BASE}strict: true\n"), "clusters[0].strict");
    has(
        &BASE.replace("    id: 3\n", "    id: 3\n    strict: true\n"),
        "set `datapath: ebpf`",
    );
    let s = Scenario::parse("t.yaml", &format!("{BASE}strict: true\ndatapath: ebpf\n")).unwrap();
    assert!(s.strict);
    let off = BASE.replace("    id: 3\n", "    id: 3\n    strict: false\n");
    assert_eq!(
        Scenario::parse("t.yaml", &format!("{off}strict: true\ndatapath: ebpf\n"))
            .unwrap()
            .clusters[0]
            .strict,
        Some(false)
    );
}

#[test]
fn service_vips_must_be_unique_and_outside_the_pod_cidr() {
    let svc = |name: &str, vip: &str| {
        format!("      - name: {name}\n        ports: [{{port: 80}}]\n        vip: {vip}\n")
    };
    let with = |block: String| format!("{BASE}    services:\n{block}");
    has(
        &with(svc("a", "10.96.3.10") + &svc("b", "10.96.3.10")),
        "10.96.3.10 is already the VIP of service \"a\"",
    );
    has(&with(svc("a", "10.1.0.5")), "inside the cluster's podCIDR");
    let s = Scenario::parse("t.yaml", &with(svc("a", "10.96.3.10"))).unwrap();
    assert_eq!(
        s.clusters[0].services[0].vip,
        Some("10.96.3.10".parse().unwrap())
    );
}

#[test]
fn policy_scenario_loads_and_a_bad_policy_is_named_by_its_index() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.yaml");
    let s = Scenario::load(&path).unwrap();
    assert_eq!(s.policies.len(), 3);
    let plan = crate::plan::Plan::new(&s).unwrap();
    assert_eq!(
        crate::scenario::check_policy_text(&plan.policies, "x"),
        Ok(3)
    );
    let args = plan.clusters[0].agent_args(&plan.clusters[0].nodes[0]);
    let at = args.iter().position(|a| a == "--policy").unwrap();
    assert!(args[at + 1].ends_with("policy/policies.yaml"), "{args:?}");
    assert!(!args.iter().any(|a| a == "--kube-apiserver"), "{args:?}");

    let text = std::fs::read_to_string(&path).unwrap();
    let bad = text.replacen("protocol: TCP", "protocol: TPC", 1);
    let e = Scenario::parse("policy.yaml", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("policy.yaml: policies[0]: CiliumNetworkPolicy default/db-ingress"),
        "{e}"
    );
    // The API server's addresses go to the agents with the policies.
    let with_api = format!("{text}\nkubeApiservers: [203.0.113.12]\n");
    let api = crate::plan::Plan::new(&Scenario::parse("policy.yaml", &with_api).unwrap()).unwrap();
    let args = api.clusters[0].agent_args(&api.clusters[0].nodes[0]);
    let at = args.iter().position(|a| a == "--kube-apiserver").unwrap();
    assert_eq!(args[at + 1], "203.0.113.12", "{args:?}");
    has(
        &format!("{BASE}kubeApiservers: [203.0.113.12]\n"),
        "kubeApiservers: the kube-apiserver entity is for the policies, and there are none",
    );
    let plain = text.replace("datapath: ebpf\n", "");
    let e = Scenario::parse("policy.yaml", &plain)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("policies: only the eBPF datapath enforces policies"),
        "{e}"
    );
}

#[test]
fn encryption_is_one_for_the_mesh_and_ipsec_takes_no_wireguard_backend() {
    let ipsec = BASE.replace("name: w\n", "name: w\nencryption: ipsec\n");
    let s = Scenario::parse("t.yaml", &ipsec).unwrap();
    assert_eq!(s.encryption, Encryption::Ipsec);
    let plan = crate::plan::Plan::new(&s).unwrap();
    let args = plan.clusters[0].agent_args(&plan.clusters[0].nodes[0]);
    let at = args.iter().position(|a| a == "--encryption").unwrap();
    assert_eq!(args[at + 1], "ipsec");
    assert!(args.iter().any(|a| a == "--ipsec-secret"));
    let d = plan.clusters[0].discovery_args(std::time::Duration::from_secs(10));
    let at = d.iter().position(|a| a == "--encryption").unwrap();
    assert_eq!(d[at + 1], "ipsec");
    // A cluster may repeat the world's value, never differ from it.
    let same = ipsec.replace("    id: 3\n", "    id: 3\n    encryption: ipsec\n");
    assert!(Scenario::parse("t.yaml", &same).is_ok());
    let mixed = BASE.replace("    id: 3\n", "    id: 3\n    encryption: ipsec\n");
    has(&mixed, "clusters[0].encryption: cluster \"west\" encrypts with ipsec but the world with wireguard: a mesh mixes no encryption");
    let with_backend = ipsec.replace("name: w\n", "name: w\nbackend: kernel\n");
    has(&with_backend, "with `encryption: ipsec` leave it out");
}

#[test]
fn pods_namespaces_service_accounts_and_namespace_labels_reach_the_agents() {
    let yaml = BASE.replace(
        "            labels: {app: web}\n",
        "            labels: {app: web}\n            namespace: shop\n            serviceAccount: payments\n",
    ) + "namespaces:\n  shop: {team: payments}\n";
    let s = Scenario::parse("t.yaml", &yaml).unwrap();
    let plan = crate::plan::Plan::new(&s).unwrap();
    assert_eq!(plan.namespaces["shop"]["team"], "payments");
    let c = &plan.clusters[0];
    let spec = &c.nodes[0].endpoint_specs()[0];
    assert_eq!(
        (spec.namespace.as_str(), spec.service_account.as_deref()),
        ("shop", Some("payments"))
    );
    let args = c.agent_args(&c.nodes[0]);
    let at = args.iter().position(|a| a == "--namespaces").unwrap();
    assert!(args[at + 1].ends_with("w/namespaces.yaml"), "{args:?}");
    // Without `namespaces:`, no file and no flag.
    let plain = crate::plan::Plan::new(&Scenario::parse("t.yaml", BASE).unwrap()).unwrap();
    let args = plain.clusters[0].agent_args(&plain.clusters[0].nodes[0]);
    assert!(!args.iter().any(|a| a == "--namespaces"), "{args:?}");

    has(
        &yaml.replace("namespace: shop", "namespace: Shop"),
        "pods[0].namespace: \"Shop\" contains 'S'",
    );
    has(
        &yaml.replace("  shop: {team", "  bad_ns: {team"),
        "namespaces.bad_ns",
    );
}
