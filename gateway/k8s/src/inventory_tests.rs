#![allow(clippy::unwrap_used)]
use super::*;
use crate::fixtures::{objects, NAMESPACES, NODES, PODS, POLICIES};

#[test]
fn the_node_gives_its_ipv4_pod_cidr_and_labels() {
    let nodes = objects(NODES, "Node");
    let n1 = node_facts(&nodes, "n1").unwrap();
    assert_eq!(n1.pod_cidr, Some("10.1.1.0/24".parse().unwrap()));
    assert_eq!(n1.labels["egress-gateway"], "true");
    assert!(node_facts(&nodes, "n9").is_none());
}

#[test]
fn pods_give_labels_service_account_and_ipv4_addresses_and_host_network_pods_are_left_out() {
    let pods = pod_facts(&objects(PODS, "Pod"));
    let web = &pods["shop/web-5d8f7c9b4-x2k1p"];
    assert_eq!(web.labels["app"], "web");
    assert_eq!(web.service_account.as_deref(), Some("web"));
    assert_eq!(web.ips, vec!["10.1.1.5".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(
        pods["shop/db-0"].ips,
        vec!["10.1.1.6".parse::<Ipv4Addr>().unwrap()]
    );
    assert!(!pods.contains_key("meshgate-system/meshgate-agent-abcde"));
}

#[test]
fn namespaces_give_their_labels() {
    let ns = namespace_labels(&objects(NAMESPACES, "Namespace"));
    assert_eq!(ns["shop"]["team"], "retail");
    assert!(ns.contains_key("meshgate-system"));
}

fn documents() -> Vec<PolicyDocument> {
    let kinds: Vec<(Watched, Objects)> = resources::POLICIES
        .iter()
        .map(|w| (*w, objects(POLICIES, w.kind)))
        .collect();
    policy_documents(kinds.iter().map(|(w, o)| (*w, o)))
}

#[test]
fn policy_objects_read_as_their_files_would_and_an_invalid_one_is_skipped_naming_it() {
    let docs = documents();
    assert_eq!(docs.len(), 5);
    assert!(
        docs.iter().all(|d| !d.yaml.contains("status")),
        "status is the API server's"
    );
    let parsed = parse_policies(&docs, &Default::default());
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    assert!(
        parsed.errors[0].contains("CiliumNetworkPolicy shop/broken"),
        "the error names the object: {}",
        parsed.errors[0]
    );
    let mut names: Vec<String> = parsed
        .file
        .identity
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "CiliumClusterwideNetworkPolicy allow-dns",
            "CiliumNetworkPolicy shop/web-egress",
            "NetworkPolicy shop/db-from-web"
        ]
    );
    assert_eq!(parsed.file.egress.len(), 1);
    assert_eq!(parsed.file.egress[0].name, "shop-out");
}
