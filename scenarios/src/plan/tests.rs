#![allow(clippy::unwrap_used)]

use super::*;

const TWO: &str = r#"
name: lab
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        pods:
          - name: a
          - name: b
      - name: n2
        pods:
          - name: c
  - name: c2
    id: 7
    podCIDR: 10.7.0.0/16
    nodes:
      - name: n1
externals:
  - name: internet
    ip: 203.0.113.10
"#;

fn plan() -> Plan {
    Plan::new(&Scenario::parse("two.yaml", TWO).unwrap()).unwrap()
}

#[test]
fn names_and_addresses_follow_the_contract() {
    let p = plan();
    assert_eq!(p.underlay_ns, "mg-lab-ul");
    assert_eq!(p.state_dir, PathBuf::from("/run/meshgate/lab/lab"));

    let c1 = &p.clusters[0];
    assert_eq!(c1.discovery.netns, "mg-lab-c1-d");
    assert_eq!(c1.discovery.ip, Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(c1.discovery.port, 7100);
    assert_eq!(
        c1.discovery.state_dir,
        PathBuf::from("/run/meshgate/lab/lab/c1/discovery")
    );

    let n1 = &c1.nodes[0];
    assert_eq!(n1.netns, "mg-lab-c1-n-n1");
    assert_eq!(n1.underlay_ip, Ipv4Addr::new(198, 18, 1, 10));
    assert_eq!(n1.pod_cidr.to_string(), "10.1.0.0/24");
    assert_eq!(
        n1.state_dir,
        PathBuf::from("/run/meshgate/lab/lab/c1/nodes/n1")
    );
    assert_eq!(n1.pods[0].netns, "mg-lab-c1-p-a");
    assert_eq!(n1.pods[0].ip, Ipv4Addr::new(10, 1, 0, 10));
    assert_eq!(n1.pods[1].ip, Ipv4Addr::new(10, 1, 0, 11));
    assert_eq!(n1.pods[1].node_veth, "pod1");

    let n2 = &c1.nodes[1];
    assert_eq!(n2.underlay_ip, Ipv4Addr::new(198, 18, 1, 11));
    assert_eq!(n2.pod_cidr.to_string(), "10.1.1.0/24");
    assert_eq!(n2.pods[0].ip, Ipv4Addr::new(10, 1, 1, 10));
    assert_eq!(n2.pods[0].node_veth, "pod0");

    let c2 = &p.clusters[1];
    assert_eq!(c2.discovery.ip, Ipv4Addr::new(198, 18, 7, 2));
    assert_eq!(c2.nodes[0].netns, "mg-lab-c2-n-n1");
    assert_eq!(c2.nodes[0].underlay_ip, Ipv4Addr::new(198, 18, 7, 10));

    assert_eq!(p.externals[0].netns, "mg-lab-x-internet");
    assert_eq!(p.externals[0].ip, Ipv4Addr::new(203, 0, 113, 10));
}

#[test]
fn interface_names_fit_and_are_unique_on_the_bridge() {
    let p = plan();
    let mut ul: Vec<&str> = Vec::new();
    for c in &p.clusters {
        ul.push(&c.discovery.ul_veth);
        ul.extend(c.nodes.iter().map(|n| n.ul_veth.as_str()));
    }
    ul.extend(p.externals.iter().map(|x| x.ul_veth.as_str()));
    let n = ul.len();
    ul.sort();
    ul.dedup();
    assert_eq!(ul.len(), n, "{ul:?}");
    assert!(ul.iter().all(|v| v.len() <= 15));
    assert_eq!(p.clusters[1].nodes[0].ul_veth, "n7-0");
}

#[test]
fn namespaces_in_creation_order_and_unique() {
    let ns = plan().namespaces();
    assert_eq!(
        ns,
        [
            "mg-lab-ul",
            "mg-lab-c1-d",
            "mg-lab-c1-n-n1",
            "mg-lab-c1-p-a",
            "mg-lab-c1-p-b",
            "mg-lab-c1-n-n2",
            "mg-lab-c1-p-c",
            "mg-lab-c2-d",
            "mg-lab-c2-n-n1",
            "mg-lab-x-internet",
        ]
    );
    assert!(ns.iter().all(|n| n.starts_with(&ns_prefix("lab"))));
}

#[test]
fn process_arguments_follow_the_contract() {
    let p = plan();
    let c1 = &p.clusters[0];
    assert_eq!(
        c1.discovery_args(Duration::from_secs(10)).join(" "),
        "discovery --listen 198.18.1.2:7100 --cluster c1 --cluster-id 1 \
         --pod-cidr 10.1.0.0/16 --state-dir /run/meshgate/lab/lab/c1/discovery --lease-ttl 10 \
         --tls-cert /run/meshgate/lab/lab/certs/clusters/c1.pem \
         --tls-key /run/meshgate/lab/lab/certs/clusters/c1-key.pem \
         --client-ca /run/meshgate/lab/lab/certs/ca.pem \
         --remote c2=https://198.18.7.2:7100"
    );
    assert_eq!(p.clusters[1].remotes, ["c1=https://198.18.1.2:7100"]);
    assert_eq!(
        c1.agent_args(&c1.nodes[1]).join(" "),
        "agent --node n2 --cluster c1 --cluster-id 1 --discovery https://198.18.1.2:7100 \
         --underlay-ip 198.18.1.11 --pod-cidr 10.1.1.0/24 --state-dir /run/meshgate/lab/lab/c1/nodes/n2 \
         --endpoints /run/meshgate/lab/lab/c1/nodes/n2/endpoints.yaml \
         --pod-labels /run/meshgate/lab/lab/c1/nodes/n2/pod-labels.yaml \
         --tls-ca /run/meshgate/lab/lab/certs/ca.pem \
         --tls-cert /run/meshgate/lab/lab/certs/agents/c1/n2.pem \
         --tls-key /run/meshgate/lab/lab/certs/agents/c1/n2-key.pem \
         --metrics-addr 127.0.0.1:9962 \
         --node-label io.cilium.k8s.policy.cluster=c1 --node-label kubernetes.io/hostname=n2"
    );
}

#[test]
fn endpoint_specs_are_the_nodes_pods() {
    let p = plan();
    let n1 = &p.clusters[0].nodes[0];
    let specs = n1.endpoint_specs();
    assert_eq!(specs.len(), n1.pods.len());
    assert_eq!(specs[0].name, n1.pods[0].name);
    assert_eq!(specs[0].namespace, "default");
    assert_eq!(specs[0].ip, std::net::IpAddr::V4(n1.pods[0].ip));
    assert_eq!(specs[0].labels, n1.pods[0].labels);
}

#[test]
fn steps_create_every_namespace_first_and_wire_pods() {
    let p = plan();
    let steps = p.steps();
    let created: Vec<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::AddNamespace(ns) => Some(ns.clone()),
            Step::Ip(_) => None,
        })
        .collect();
    assert_eq!(created, p.namespaces());
    let lines: Vec<String> = steps.iter().map(|s| s.ip_args().join(" ")).collect();
    let has = |l: &str| assert!(lines.iter().any(|x| x == l), "missing `ip {l}`");
    has("netns add mg-lab-ul");
    has("-n mg-lab-ul link add br0 type bridge");
    has("link add eth0 netns mg-lab-c1-n-n1 type veth peer name n1-0 netns mg-lab-ul");
    has("-n mg-lab-c1-n-n1 addr add 198.18.1.10/15 dev eth0");
    has("netns exec mg-lab-c1-n-n1 sysctl -qw net.ipv4.ip_forward=1");
    has("link add eth0 netns mg-lab-c1-p-b type veth peer name pod1 netns mg-lab-c1-n-n1");
    has("-n mg-lab-c1-p-b link set eth0 mtu 1420 up");
    has("-n mg-lab-c1-p-b addr add 10.1.0.11/32 dev eth0");
    has("-n mg-lab-c1-p-b route add default via 169.254.1.1 dev eth0 onlink");
    has("netns exec mg-lab-c1-n-n1 sysctl -qw net.ipv4.conf.pod1.proxy_arp=1");
    has("-n mg-lab-c1-n-n1 route add 10.1.0.11/32 dev pod1");
    has("-n mg-lab-x-internet addr add 203.0.113.10/32 dev eth0");
    has("-n mg-lab-x-internet route add 198.18.0.0/15 dev eth0 scope link");
    has("-n mg-lab-c2-n-n1 route add 203.0.113.10/32 dev eth0 scope link");
    // Every command in a namespace comes after that namespace is created.
    for (i, l) in lines.iter().enumerate() {
        for ns in p.namespaces() {
            if l.split(' ').any(|w| w == ns) {
                let made = lines
                    .iter()
                    .position(|x| *x == format!("netns add {ns}"))
                    .unwrap();
                assert!(made <= i, "`{l}` before `netns add {ns}`");
            }
        }
    }
}

#[test]
fn last_node_of_a_full_cluster() {
    let mut yaml =
        "name: w\nclusters:\n  - name: big\n    id: 255\n    podCIDR: 10.0.0.0/8\n    nodes:\n"
            .to_string();
    for i in 0..239 {
        yaml.push_str(&format!("      - name: n{i}\n"));
    }
    let p = Plan::new(&Scenario::parse("t.yaml", &yaml).unwrap()).unwrap();
    let last = p.clusters[0].nodes.last().unwrap();
    assert_eq!(last.underlay_ip, Ipv4Addr::new(198, 18, 255, 248));
    assert_eq!(last.pod_cidr.to_string(), "10.0.238.0/24");
    assert_eq!(last.ul_veth, "n255-238");
}

fn gateways_plan() -> Plan {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateways.yaml");
    Plan::new(&Scenario::load(&path).unwrap()).unwrap()
}

#[test]
fn isolated_clusters_get_bridge_rules_for_their_ordinary_nodes_only() {
    let p = gateways_plan();
    let nft: Vec<String> = p
        .steps()
        .iter()
        .map(|s| s.ip_args().join(" "))
        .filter(|a| a.starts_with("netns exec mg-gw-ul nft"))
        .collect();
    assert_eq!(nft.len(), 2 + 2 * 2, "{nft:#?}");
    assert!(nft[0].ends_with("nft add table bridge mg_isolation"));
    assert_eq!(
        nft[2],
        "netns exec mg-gw-ul nft add rule bridge mg_isolation isolate iifname { \"n1-2\", \"n1-3\" } oifname != { \"n1-0\", \"n1-1\", \"n1-2\", \"n1-3\", \"d1\" } counter drop"
    );
    assert!(nft[3].contains("isolate oifname { \"n1-2\", \"n1-3\" } iifname !="));
    assert!(nft[4].contains("{ \"n2-2\" }"));
    // A world without isolated clusters has no bridge rules at all.
    assert!(!plan()
        .steps()
        .iter()
        .any(|s| s.ip_args().iter().any(|a| a == steps::ISOLATION_TABLE)));
}

#[test]
fn gateways_get_their_role_and_the_wait_follows_the_path_rule() {
    let p = gateways_plan();
    let c1 = &p.clusters[0];
    let args = c1.agent_args(c1.node("g1").unwrap());
    let at = args.iter().position(|a| a == "--roles").unwrap();
    assert_eq!(args[at + 1], "cluster-gateway");
    assert!(!c1
        .agent_args(c1.node("n3").unwrap())
        .contains(&"--roles".to_string()));
    assert!(p.direct_peers(("c1", "n3"), ("c1", "g2")));
    assert!(p.direct_peers(("c1", "g1"), ("c2", "g2")));
    assert!(p.direct_peers(("c1", "g1"), ("c3", "n1")));
    assert!(!p.direct_peers(("c1", "n3"), ("c2", "g1")));
    assert!(!p.direct_peers(("c3", "n1"), ("c2", "n3")));
    assert!(plan().direct_peers(("c1", "n1"), ("c2", "n1")));
}

#[test]
fn ebpf_datapath_per_world_or_cluster_sets_agent_flags_pins_and_pod_mtu() {
    // The world says ebpf, c2 overrides it back to plain.
    let yaml = TWO
        .replace("name: lab\n", "name: lab\ndatapath: ebpf\n")
        .replace("    id: 7\n", "    id: 7\n    datapath: plain\n");
    let p = Plan::new(&Scenario::parse("dp.yaml", &yaml).unwrap()).unwrap();
    let (c1, c2) = (&p.clusters[0], &p.clusters[1]);
    assert_eq!(
        (c1.datapath, c2.datapath),
        (Datapath::Ebpf, Datapath::Plain)
    );
    let n1 = &c1.nodes[0];
    assert_eq!(
        n1.bpf_pin_dir,
        PathBuf::from("/run/meshgate/bpffs/meshgate/lab/lab/c1-n1")
    );
    let args = c1.agent_args(n1).join(" ");
    assert!(
        args.contains("--datapath ebpf --bpf-pin-dir /run/meshgate/bpffs/meshgate/lab/lab/c1-n1"),
        "{args}"
    );
    assert!(!c2.agent_args(&c2.nodes[0]).join(" ").contains("--datapath"));
    assert_eq!(n1.endpoint_specs()[1].interface.as_deref(), Some("pod1"));
    // Pods of the ebpf cluster get the MTU that fits VXLAN inside WireGuard.
    let mtus: Vec<String> = p
        .steps()
        .iter()
        .map(|s| s.ip_args().join(" "))
        .filter(|a| a.contains(" mtu "))
        .collect();
    assert!(
        mtus.iter()
            .any(|a| a.contains("-n mg-lab-c1-p-a link set eth0 mtu 1370")),
        "{mtus:?}"
    );
    assert!(
        mtus.iter()
            .any(|a| a.contains("-n mg-lab-c1-n-n1 link set pod0 mtu 1370")),
        "{mtus:?}"
    );
    assert!(
        mtus.iter()
            .all(|a| !a.contains("mg-lab-c2") || a.contains("mtu 1420")),
        "{mtus:?}"
    );
    let bad = TWO.replace("name: lab\n", "name: lab\ndatapath: xdp\n");
    let err = Scenario::parse("bad.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("xdp"), "{err}");
}

#[test]
fn the_backend_is_passed_per_cluster_and_auto_passes_nothing() {
    let yaml = TWO
        .replace("name: lab\n", "name: lab\nbackend: userspace\n")
        .replace("    id: 7\n", "    id: 7\n    backend: kernel\n");
    let p = Plan::new(&Scenario::parse("two.yaml", &yaml).unwrap()).unwrap();
    let args = |c: &ClusterPlan| c.agent_args(&c.nodes[0]).join(" ");
    assert!(
        args(&p.clusters[0]).contains("--backend userspace"),
        "{}",
        args(&p.clusters[0])
    );
    assert!(
        args(&p.clusters[1]).contains("--backend kernel"),
        "{}",
        args(&p.clusters[1])
    );
    assert!(
        !args(&plan().clusters[0]).contains("--backend"),
        "auto is the agent's default"
    );
    let bad = Scenario::parse(
        "two.yaml",
        &TWO.replace("name: lab\n", "name: lab\nbackend: ipsec\n"),
    );
    let err = bad.unwrap_err().to_string();
    assert!(
        err.contains("backend") && err.contains("userspace"),
        "{err}"
    );
}
