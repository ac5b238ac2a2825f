//! Plans of clusters with several discovery replicas on etcd.
#![allow(clippy::unwrap_used)]

use super::*;

const HA: &str = r#"
name: ha
clusters:
  - name: c1
    id: 4
    podCIDR: 10.4.0.0/16
    discovery: {replicas: 3, store: etcd}
    nodes:
      - name: n1
  - name: c2
    id: 5
    podCIDR: 10.5.0.0/16
    nodes:
      - name: n1
"#;

fn plan() -> Plan {
    Plan::new(&Scenario::parse("ha.yaml", HA).unwrap()).unwrap()
}

#[test]
fn replicas_get_their_own_namespace_address_and_state_dir() {
    let p = plan();
    let c1 = &p.clusters[0];
    let replicas: Vec<(u8, &str, Ipv4Addr)> = c1
        .discovery_replicas()
        .map(|(k, d)| (k, d.netns.as_str(), d.ip))
        .collect();
    assert_eq!(
        replicas,
        [
            (1, "mg-ha-c1-d", Ipv4Addr::new(198, 18, 4, 2)),
            (2, "mg-ha-c1-d2", Ipv4Addr::new(198, 18, 4, 3)),
            (3, "mg-ha-c1-d3", Ipv4Addr::new(198, 18, 4, 4)),
        ]
    );
    assert_eq!(c1.replicas[0].ul_veth, "d4r2");
    assert_eq!(
        c1.replicas[1].state_dir,
        PathBuf::from("/run/meshgate/lab/ha/c1/discovery-3")
    );
    for ns in ["mg-ha-c1-d2", "mg-ha-c1-d3"] {
        assert!(p.namespaces().iter().any(|n| n == ns), "{ns}");
    }
    // The other cluster keeps one replica and the embedded store.
    let c2 = &p.clusters[1];
    assert_eq!(c2.discovery_replicas().count(), 1);
    assert!(c2.etcd.is_none());
    assert!(!c2
        .discovery_args(Duration::from_secs(10))
        .contains(&"--store".to_string()));
}

#[test]
fn replicas_share_the_clusters_etcd_and_agents_get_every_url() {
    let p = plan();
    let c1 = &p.clusters[0];
    let e = c1.etcd.as_ref().unwrap();
    assert_eq!(
        (e.netns.as_str(), e.ul_veth.as_str(), e.ip),
        ("mg-ha-c1-e", "e4", Ipv4Addr::new(198, 18, 4, 9))
    );
    assert!(p.namespaces().iter().any(|n| n == "mg-ha-c1-e"));
    let etcd = c1.etcd_args().unwrap().join(" ");
    assert!(
        etcd.contains("--listen-client-urls http://198.18.4.9:2379")
            && etcd.contains("--data-dir /run/meshgate/lab/ha/c1/etcd"),
        "{etcd}"
    );
    for (_, d) in c1.discovery_replicas() {
        let args = c1.replica_args(d, Duration::from_secs(10)).join(" ");
        assert!(args.contains("--store etcd://198.18.4.9:2379"), "{args}");
        assert!(args.contains(&format!("--listen {}:7100", d.ip)), "{args}");
    }
    let agent = c1.agent_args(&c1.nodes[0]).join(" ");
    assert!(
        agent.contains(
            "--discovery https://198.18.4.2:7100,https://198.18.4.3:7100,https://198.18.4.4:7100"
        ),
        "{agent}"
    );
}

#[test]
fn several_replicas_need_etcd_and_at_most_four() {
    let err = |yaml: &str| Scenario::parse("x.yaml", yaml).unwrap_err().to_string();
    let e = err(&HA.replace("{replicas: 3, store: etcd}", "{replicas: 2}"));
    assert!(
        e.contains("clusters[0].discovery.store") && e.contains("store: etcd"),
        "{e}"
    );
    let e = err(&HA.replace("replicas: 3", "replicas: 5"));
    assert!(e.contains("clusters[0].discovery.replicas"), "{e}");
    let e = err(&HA.replace("store: etcd", "store: zookeeper"));
    assert!(e.contains("zookeeper"), "{e}");
    let e = err(&HA.replace(
        "- name: n1\n  - name: c2",
        "- name: discovery-2\n  - name: c2",
    ));
    assert!(e.contains("reserved"), "{e}");
}
