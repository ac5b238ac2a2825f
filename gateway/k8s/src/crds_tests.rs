#![allow(clippy::unwrap_used)]
//! The CRDs: the committed copies are current, and they keep what a user's
//! Cilium manifests hold.

use std::path::PathBuf;

use super::crds;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/crds")
}

#[test]
fn the_committed_crds_are_what_meshgate_crds_prints() {
    let mut stale = Vec::new();
    let mut names = Vec::new();
    for crd in crds::all() {
        let name = crds::file_name(&crd);
        let want = crds::to_yaml(&crd).unwrap();
        let path = dir().join(&name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(path.display().to_string());
        }
        names.push(name);
    }
    assert!(
        stale.is_empty(),
        "stale or missing CRDs: {stale:?}; run `cargo run -p meshgate-gateway --bin meshgate -- crds \
         --out-dir deploy/kubernetes/crds` and commit them"
    );
    // Nothing there that meshgate no longer generates.
    let mut there: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    there.sort();
    names.sort();
    assert_eq!(
        there,
        names,
        "files in {} that no CRD makes",
        dir().display()
    );
}

#[test]
fn the_cilium_kinds_keep_cilium_s_names_and_scopes() {
    let by_name: std::collections::BTreeMap<String, _> = crds::all()
        .into_iter()
        .map(|c| (c.metadata.name.clone().unwrap(), c))
        .collect();
    let expect = [
        (
            "ciliumnetworkpolicies.cilium.io",
            "CiliumNetworkPolicy",
            "Namespaced",
            "v2",
        ),
        (
            "ciliumclusterwidenetworkpolicies.cilium.io",
            "CiliumClusterwideNetworkPolicy",
            "Cluster",
            "v2",
        ),
        (
            "ciliumegressgatewaypolicies.cilium.io",
            "CiliumEgressGatewayPolicy",
            "Cluster",
            "v2",
        ),
        (
            "serviceexports.multicluster.x-k8s.io",
            "ServiceExport",
            "Namespaced",
            "v1alpha1",
        ),
        (
            "meshgateremoteclusters.meshgate.io",
            "MeshgateRemoteCluster",
            "Cluster",
            "v1alpha1",
        ),
    ];
    for (name, kind, scope, version) in expect {
        let c = &by_name[name];
        assert_eq!(c.spec.names.kind, kind);
        assert_eq!(c.spec.scope, scope, "{name}");
        assert_eq!(c.spec.versions[0].name, version, "{name}");
    }
    assert!(by_name["ciliumnetworkpolicies.cilium.io"]
        .spec
        .names
        .short_names
        .as_ref()
        .unwrap()
        .contains(&"cnp".to_string()));
}

/// The schema a CRD's version carries, as JSON.
fn schema(name: &str) -> serde_json::Value {
    let c = crds::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap();
    let s = c.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    serde_json::to_value(s).unwrap()
}

#[test]
fn a_policy_needs_neither_spec_nor_specs_typed_fields_and_rules_keep_what_they_do_not_type() {
    let cnp = schema("ciliumnetworkpolicies.cilium.io");
    let required: Vec<String> = cnp["required"]
        .as_array()
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    assert!(
        !required.contains(&"spec".to_string()),
        "spec or specs: {required:?}"
    );
    let rule = &cnp["properties"]["spec"];
    assert_eq!(rule["x-kubernetes-preserve-unknown-fields"], true, "{rule}");
    assert_eq!(cnp["properties"]["specs"]["type"], "array");
    let egress = &rule["properties"]["egress"]["items"];
    assert_eq!(egress["x-kubernetes-preserve-unknown-fields"], true);
    assert!(egress["properties"]["toFQDNs"].is_object(), "{egress}");
    assert!(rule["properties"]["ingressDeny"].is_object());
    // A ServiceExport is written without spec.
    let se = schema("serviceexports.multicluster.x-k8s.io");
    assert!(
        se["required"].as_array().is_none_or(|r| r.is_empty()),
        "{se}"
    );
}

#[test]
fn cilium_manifests_read_into_the_types_without_losing_a_field() {
    let text = include_str!("fixtures/policies.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    for item in v["items"].as_array().unwrap() {
        let kind = item["kind"].as_str().unwrap();
        let back = match kind {
            "CiliumNetworkPolicy" => serde_json::to_value(
                serde_json::from_value::<crds::CiliumNetworkPolicy>(item.clone()).unwrap(),
            ),
            "CiliumClusterwideNetworkPolicy" => serde_json::to_value(
                serde_json::from_value::<crds::CiliumClusterwideNetworkPolicy>(item.clone())
                    .unwrap(),
            ),
            "CiliumEgressGatewayPolicy" => serde_json::to_value(
                serde_json::from_value::<crds::CiliumEgressGatewayPolicy>(item.clone()).unwrap(),
            ),
            _ => continue,
        }
        .unwrap();
        assert_eq!(back["spec"], item["spec"], "{kind}");
    }
}
