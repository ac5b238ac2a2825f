//! The custom resources meshgate reads, as Rust types, and the CRDs
//! generated from them (`meshgate crds`; committed copies in
//! `deploy/kubernetes/crds/`, checked current by a test).
//!
//! Cilium's kinds (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
//! CiliumEgressGatewayPolicy) and MCS's ServiceExport keep their group,
//! version, kind, names and shape, so a user's manifests apply unchanged;
//! they are for clusters where neither Cilium's nor MCS's CRDs are
//! installed. The fields meshgate reads are typed; every rule object also
//! keeps fields it does not type (`x-kubernetes-preserve-unknown-fields`),
//! so the API server never prunes a field of a policy written for Cilium:
//! the policy parser (`meshgate_model::policy`) then refuses or warns
//! about it, as it does for files, rather than a pruned field silently
//! widening a policy. `MeshgateRemoteCluster` is ours: a federated
//! cluster's discovery.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A list of JSON objects, kept whole by the API server.
fn open_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// A Kubernetes label selector.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement of a [`LabelSelector`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: SelectorOperator,
    /// The values of `In` and `NotIn`; empty for the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators of a [`LabelSelectorRequirement`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A name or pattern (`*` within a label, a leading `**.` for any depth).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FqdnSelector {
    /// An exact name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// A CIDR with exceptions.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CidrRule {
    /// The prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// A CiliumCIDRGroup by name (refused by meshgate's parser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    /// Prefixes inside `cidr` that are not selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A port and protocol.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    /// A number (as a string, as Cilium writes it) or a named port.
    pub port: String,
    /// The last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// TCP, UDP, SCTP or ANY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// L7 rules of a port rule: `dns` is what meshgate reads; others are kept.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct L7Rules {
    /// Which names the selected endpoints may look up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<FqdnSelector>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Ports (and L7 rules) a rule allows.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One ingress (or ingressDeny) rule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_requires: Vec<LabelSelector>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    #[serde(default, rename = "fromCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_nodes: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub icmps: Vec<serde_json::Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One egress (or egressDeny) rule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_requires: Vec<LabelSelector>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<String>,
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Vec::is_empty")]
    pub to_fqdns: Vec<FqdnSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_nodes: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub to_services: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub icmps: Vec<serde_json::Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Which directions a rule's endpoints default-deny.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// A Cilium policy rule (`spec`, or one of `specs`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Rule {
    /// The endpoints the rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// The nodes the rule applies to (host policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "open_objects")]
    pub labels: Vec<serde_json::Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The status Cilium writes on its policies; kept whole, meshgate writes none.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct OpenStatus {
    #[serde(flatten)]
    #[schemars(skip)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

/// `CiliumNetworkPolicy` (cilium.io/v2, namespaced): `spec`, `specs`, or both.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNetworkPolicy",
    doc = "Cilium's namespaced identity policy: `spec`, `specs`, or both (accepted as Cilium writes it).",
    plural = "ciliumnetworkpolicies",
    singular = "ciliumnetworkpolicy",
    shortname = "cnp",
    shortname = "ciliumnp",
    category = "cilium",
    category = "ciliumpolicy",
    namespaced,
    no_spec,
    status = "OpenStatus"
)]
pub struct PolicyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<Rule>,
}

/// `CiliumClusterwideNetworkPolicy` (cilium.io/v2, cluster-scoped).
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy",
    doc = "Cilium's cluster-wide identity policy (accepted as Cilium writes it).",
    plural = "ciliumclusterwidenetworkpolicies",
    singular = "ciliumclusterwidenetworkpolicy",
    shortname = "ccnp",
    category = "cilium",
    category = "ciliumpolicy",
    no_spec,
    status = "OpenStatus"
)]
pub struct ClusterwidePolicyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<Rule>,
}

/// Which pods an egress gateway policy selects.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// A gateway of an egress gateway policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressGateway {
    /// The candidate gateway nodes.
    pub node_selector: LabelSelector,
    /// The gateway's interface whose address is the egress IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The egress IP.
    #[serde(default, rename = "egressIP", skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
}

/// `CiliumEgressGatewayPolicy` (cilium.io/v2, cluster-scoped), with
/// meshgate's `destinationFQDNs` beside Cilium's fields.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumEgressGatewayPolicy",
    doc = "Cilium's egress gateway policy, with meshgate's destinationFQDNs.",
    plural = "ciliumegressgatewaypolicies",
    singular = "ciliumegressgatewaypolicy",
    category = "cilium",
    category = "ciliumpolicy"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct CiliumEgressGatewayPolicySpec {
    pub selectors: Vec<EgressSelector>,
    #[serde(
        default,
        rename = "destinationCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destination_cidrs: Vec<String>,
    #[serde(
        default,
        rename = "excludedCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub excluded_cidrs: Vec<String>,
    /// meshgate: destinations by name, as the DNS proxy resolved them.
    #[serde(
        default,
        rename = "destinationFQDNs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destination_fqdns: Vec<FqdnSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_gateway: Option<EgressGateway>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_gateways: Vec<EgressGateway>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// MCS's `ServiceExport` (multicluster.x-k8s.io/v1alpha1, namespaced): its
/// name and namespace export the Service of the same name.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    doc = "MCS: exports the Service of the same name and namespace to the clusterset.",
    plural = "serviceexports",
    singular = "serviceexport",
    shortname = "svcex",
    namespaced,
    no_spec,
    status = "OpenStatus"
)]
pub struct ServiceExportFields {}

/// `MeshgateRemoteCluster` (meshgate.io/v1alpha1, cluster-scoped): a
/// federated cluster, named by `metadata.name`, whose discovery this
/// cluster's discovery imports from.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "meshgate.io",
    version = "v1alpha1",
    kind = "MeshgateRemoteCluster",
    doc = "A federated cluster (metadata.name) whose discovery this cluster imports from.",
    plural = "meshgateremoteclusters",
    singular = "meshgateremotecluster",
    shortname = "mrc",
    category = "meshgate"
)]
#[serde(rename_all = "camelCase")]
pub struct MeshgateRemoteClusterSpec {
    /// Each discovery replica's URL (`https://HOST:PORT`), all of one
    /// scheme. Over TLS, discovery presents its own certificate and checks
    /// the remote's against the mesh CA, as with `--remote`.
    #[schemars(length(min = 1))]
    pub discovery_urls: Vec<String>,
}

/// Every CRD meshgate ships, in a stable order.
pub fn all(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        CiliumNetworkPolicy::crd(),
        CiliumClusterwideNetworkPolicy::crd(),
        CiliumEgressGatewayPolicy::crd(),
        ServiceExport::crd(),
        MeshgateRemoteCluster::crd(),
    ]
}

/// The file name of a CRD's committed copy: `<plural>.<group>.yaml`.
pub fn file_name(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default())
}

/// A CRD as YAML, as `meshgate crds` prints it and the committed copies hold it.
pub fn to_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated by `meshgate crds` from gateway/k8s/src/crds.rs: do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}
