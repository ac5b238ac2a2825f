//! Egress gateways in the plan: node labels as agent flags, `eg0` with the
//! egress IPs, the externals' routes back, the nodes' pod masquerade, and
//! `eg0` ports left open by isolation.

#![allow(clippy::unwrap_used)]

use super::*;

const EGRESS: &str = r#"
name: eg
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    underlay: isolated
    nodes:
      - name: n1
        labels: {zone: a}
        pods:
          - name: app1
            labels: {app: egress-client}
      - name: c
        roles: [cluster-gateway]
      - name: g1
        roles: [egress-gateway]
        labels: {egress: "true"}
        egressIPs: [203.0.113.50, 203.0.113.52]
      - name: g2
        roles: [egress-gateway]
externals:
  - name: internet
    ip: 203.0.113.10
"#;

fn plan() -> Plan {
    Plan::new(&Scenario::parse("eg.yaml", EGRESS).unwrap()).unwrap()
}

fn lines(p: &Plan) -> Vec<String> {
    p.steps().iter().map(|s| s.ip_args().join(" ")).collect()
}

#[test]
fn agents_get_the_scenario_labels_and_the_two_of_the_lab() {
    let p = plan();
    let c1 = &p.clusters[0];
    let labels = |node: &str| -> Vec<String> {
        let args = c1.agent_args(c1.node(node).unwrap());
        args.iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "--node-label")
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        labels("g1"),
        [
            "egress=true",
            "io.cilium.k8s.policy.cluster=c1",
            "kubernetes.io/hostname=g1"
        ]
    );
    assert_eq!(
        labels("n1"),
        [
            "io.cilium.k8s.policy.cluster=c1",
            "kubernetes.io/hostname=n1",
            "zone=a"
        ]
    );
    let args = c1.agent_args(c1.node("g1").unwrap()).join(" ");
    assert!(args.contains("--roles egress-gateway"), "{args}");
}

#[test]
fn egress_gateways_get_eg0_on_the_bridge_with_their_ips() {
    let p = plan();
    let g1 = p.clusters[0].node("g1").unwrap();
    assert_eq!(g1.egress_veth.as_deref(), Some("g1-2"));
    assert_eq!(p.clusters[0].node("n1").unwrap().egress_veth, None);
    let all = lines(&p);
    let g1_steps: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("mg-eg-c1-n-g1") && (l.contains("eg0") || l.contains("arp_")))
        .collect();
    assert_eq!(
        g1_steps,
        [
            "link add eg0 netns mg-eg-c1-n-g1 type veth peer name g1-2 netns mg-eg-ul",
            "netns exec mg-eg-c1-n-g1 sysctl -qw net.ipv4.conf.eth0.arp_ignore=1",
            "netns exec mg-eg-c1-n-g1 sysctl -qw net.ipv4.conf.eth0.arp_announce=2",
            "netns exec mg-eg-c1-n-g1 sysctl -qw net.ipv4.conf.eg0.arp_ignore=1",
            "netns exec mg-eg-c1-n-g1 sysctl -qw net.ipv4.conf.eg0.arp_announce=2",
            "-n mg-eg-c1-n-g1 addr add 203.0.113.50/32 dev eg0",
            "-n mg-eg-c1-n-g1 addr add 203.0.113.52/32 dev eg0",
            "-n mg-eg-c1-n-g1 link set eg0 up",
        ]
    );
    assert!(all.contains(&"-n mg-eg-ul link set g1-2 master br0 up".to_string()));
    // Never for all interfaces: the pods' veths answer ARP for the pod
    // gateway address, which is on lo.
    assert!(!all.iter().any(|l| l.contains("conf.all.arp_")), "{all:?}");
    // A gateway without egress IPs still has the interface, empty.
    assert!(all.contains(
        &"link add eg0 netns mg-eg-c1-n-g2 type veth peer name g1-3 netns mg-eg-ul".to_string()
    ));
    assert!(!all
        .iter()
        .any(|l| l.contains("mg-eg-c1-n-g2") && l.contains("addr add") && l.contains("eg0")));
    // Ordinary nodes and cluster gateways have no eg0 and keep the ARP defaults.
    assert!(!all
        .iter()
        .any(|l| (l.contains("-n-n1 ") || l.contains("-n-c "))
            && (l.contains("eg0") || l.contains("arp_"))));
}

#[test]
fn externals_route_every_egress_ip_back_on_link() {
    let all = lines(&plan());
    for ip in ["203.0.113.50", "203.0.113.52"] {
        let want = format!("-n mg-eg-x-internet route add {ip}/32 dev eth0 scope link");
        assert!(all.contains(&want), "missing `ip {want}`");
    }
}

#[test]
fn every_node_masquerades_its_pods_to_eth0_after_srcnat() {
    let all = lines(&plan());
    let masq: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("netns exec mg-eg-c1-n-n1 nft"))
        .collect();
    assert_eq!(
        masq,
        [
            "netns exec mg-eg-c1-n-n1 nft add table ip mg_lab_masq",
            "netns exec mg-eg-c1-n-n1 nft add chain ip mg_lab_masq postrouting \
             { type nat hook postrouting priority srcnat + 10; policy accept; }",
            "netns exec mg-eg-c1-n-n1 nft add rule ip mg_lab_masq postrouting \
             ip saddr 10.1.0.0/24 oifname \"eth0\" counter masquerade",
        ]
    );
    let g1 =
        "netns exec mg-eg-c1-n-g1 nft add rule ip mg_lab_masq postrouting ip saddr 10.1.2.0/24";
    assert!(all.iter().any(|l| l.starts_with(g1)), "{all:#?}");
    // Without externals nothing leaves the mesh: no masquerade (and no nft).
    let alone =
        EGRESS[..EGRESS.find("externals:").unwrap()].replace("    underlay: isolated\n", "");
    let p = Plan::new(&Scenario::parse("alone.yaml", &alone).unwrap()).unwrap();
    assert!(!lines(&p).iter().any(|l| l.contains(" nft ")));
}

#[test]
fn isolation_leaves_eg0_ports_on_the_shared_underlay() {
    let all = lines(&plan());
    let rules: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("nft add rule bridge mg_isolation"))
        .collect();
    assert_eq!(rules.len(), 2, "{rules:#?}");
    // Walled: the ordinary nodes' eth0 ports (n1, and the egress gateways'
    // eth0); never an eg0 port, which may talk to externals.
    assert!(
        rules[0].ends_with(
            "isolate iifname { \"n1-0\", \"n1-2\", \"n1-3\" } oifname != \
             { \"n1-0\", \"n1-1\", \"n1-2\", \"n1-3\", \"d1\", \"g1-2\", \"g1-3\" } counter drop"
        ),
        "{}",
        rules[0]
    );
}

#[test]
fn bridge_port_names_stay_unique_with_egress_ports() {
    let p = plan();
    let mut ports: Vec<String> = vec![p.clusters[0].discovery.ul_veth.clone()];
    for n in &p.clusters[0].nodes {
        ports.push(n.ul_veth.clone());
        ports.extend(n.egress_veth.clone());
    }
    ports.extend(p.externals.iter().map(|x| x.ul_veth.clone()));
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n, "{ports:?}");
    assert!(ports.iter().all(|v| v.len() <= 15));
}

#[test]
fn externals_run_the_lab_service_with_a_log_in_the_world_dir() {
    let p = plan();
    let x = &p.externals[0];
    assert_eq!(x.server_args().join(" "), "lab external-server --port 8080");
    assert_eq!(
        x.server_log(&p.world),
        PathBuf::from("/run/meshgate/lab/eg/externals/internet.log")
    );
}
