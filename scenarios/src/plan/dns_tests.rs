//! The world's DNS in the plan: the server's namespace and routes, the
//! agents' `--dns-proxy`, the proxies' arguments, the pods' resolv.conf.

#![allow(clippy::unwrap_used)]

use super::*;

const FQDN: &str = r#"
name: fq
datapath: ebpf
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    underlay: isolated
    nodes:
      - name: n1
        pods: [{name: app1}, {name: other1}]
      - name: gw
        roles: [cluster-gateway]
dns:
  minTTL: 5
  records:
    api.example.com: [203.0.113.10]
"#;

fn plan(yaml: &str) -> Plan {
    Plan::new(&Scenario::parse("fq.yaml", yaml).unwrap()).unwrap()
}

fn lines(p: &Plan) -> Vec<String> {
    p.steps().iter().map(|s| s.ip_args().join(" ")).collect()
}

#[test]
fn the_dns_server_is_a_host_on_the_external_network() {
    let p = plan(FQDN);
    let d = p.dns.as_ref().unwrap();
    assert_eq!(d.netns, "mg-fq-dns");
    assert_eq!(d.server, Ipv4Addr::new(203, 0, 113, 53));
    assert_eq!(d.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
    assert_eq!(p.namespaces().last().unwrap(), "mg-fq-dns");
    let l = lines(&p);
    for want in [
        "link add eth0 netns mg-fq-dns type veth peer name dns0 netns mg-fq-ul",
        "-n mg-fq-dns addr add 203.0.113.53/32 dev eth0",
        "-n mg-fq-dns route add 198.18.0.0/15 dev eth0 scope link",
        "-n mg-fq-c1-n-n1 route add 203.0.113.53/32 dev eth0 scope link",
        // Pods reach it (dig @203.0.113.53) from their node's address.
        "netns exec mg-fq-c1-n-n1 nft add table ip mg_lab_masq",
    ] {
        assert!(l.iter().any(|x| x == want), "no {want:?} in {l:#?}");
    }
    // An isolated cluster's ordinary nodes still reach it.
    let iso: Vec<&String> = l.iter().filter(|x| x.contains("isolate iifname")).collect();
    assert!(iso[0].contains("\"dns0\""), "{iso:?}");
}

#[test]
fn agents_get_dns_proxy_and_proxies_their_arguments() {
    let p = plan(FQDN);
    let c = &p.clusters[0];
    let n1 = c.node("n1").unwrap();
    assert!(c.agent_args(n1).contains(&"--dns-proxy".to_string()));
    let d = p.dns.as_ref().unwrap();
    assert_eq!(
        d.proxy_args(n1),
        [
            "dnsproxy",
            "--policy",
            "/run/meshgate/lab/fq/c1/nodes/n1/dnsproxy-policy.json",
            "--bpf-pin-dir",
            "/run/meshgate/bpffs/meshgate/lab/fq/c1-n1",
            "--upstream",
            "203.0.113.53:53",
            "--state-dir",
            "/run/meshgate/lab/fq/c1/nodes/n1",
            "--min-ttl",
            "5",
        ]
    );
    assert_eq!(
        dns::proxy_log(n1),
        Path::new("/run/meshgate/lab/fq/c1/nodes/n1/dnsproxy.log")
    );
    assert_eq!(
        d.server_args(),
        [
            "lab",
            "dns-server",
            "--listen",
            "203.0.113.53:53",
            "--records",
            "/run/meshgate/lab/fq/dns/records.json",
        ]
    );
    assert_eq!(d.records.len(), 1);
}

#[test]
fn pods_get_a_resolv_conf_naming_the_cluster_ip() {
    let p = plan(FQDN);
    let d = p.dns.as_ref().unwrap();
    assert_eq!(
        d.resolv_conf(),
        "# written by meshgate lab\nnameserver 10.96.0.10\n"
    );
    let pods: Vec<&str> = p.pod_namespaces().collect();
    assert_eq!(pods, ["mg-fq-c1-p-app1", "mg-fq-c1-p-other1"]);
    assert_eq!(
        dns::resolv_conf_path(pods[0]),
        Path::new("/etc/netns/mg-fq-c1-p-app1/resolv.conf")
    );
}

#[test]
fn without_dns_nothing_changes() {
    let p = plan(&FQDN.replace(
        "dns:\n  minTTL: 5\n  records:\n    api.example.com: [203.0.113.10]\n",
        "",
    ));
    assert!(p.dns.is_none());
    let c = &p.clusters[0];
    assert!(!c
        .agent_args(c.node("n1").unwrap())
        .contains(&"--dns-proxy".to_string()));
    let l = lines(&p);
    assert!(!l
        .iter()
        .any(|x| x.contains("203.0.113.53") || x.contains("mg_lab_masq")));
    // No --min-ttl when the scenario has none.
    let p = plan(&FQDN.replace("  minTTL: 5\n", ""));
    let n1 = p.clusters[0].node("n1").unwrap();
    assert!(!p
        .dns
        .as_ref()
        .unwrap()
        .proxy_args(n1)
        .contains(&"--min-ttl".to_string()));
}
