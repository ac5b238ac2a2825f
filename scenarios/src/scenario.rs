//! Scenario YAML: the topology of a lab world (clusters, nodes, pods,
//! externals), parsed with serde and validated before anything is built.

pub mod dns;
mod validate;

pub use validate::{
    is_discovery_name, DISCOVERY_WORD, EXTERNAL_WORD, MAX_NAME, MAX_NODES_PER_CLUSTER,
    MAX_PODS_PER_NODE, MAX_SHORT_NAME,
};

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// World name: `[a-z0-9-]`, at most 12 characters (it goes into
    /// namespace and state-dir names).
    pub name: String,
    /// Free text, shown nowhere but kept for readers of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub clusters: Vec<Cluster>,
    /// Hosts outside every cluster ("the internet"), on the underlay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub externals: Vec<External>,
    /// The agents' pod datapath in every cluster that does not set its own:
    /// `plain` (default: pod CIDRs routed into WireGuard) or `ebpf`.
    #[serde(default, skip_serializing_if = "Datapath::is_plain")]
    pub datapath: Datapath,
    /// Strict encryption mode (agents' `--strict`, needs `datapath: ebpf`)
    /// in every cluster that does not set its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// The agents' WireGuard backend (`--backend`) in every cluster that
    /// does not set its own: `auto` (default: kernel where the kernel has
    /// WireGuard, else userspace), `kernel` or `userspace`.
    #[serde(default, skip_serializing_if = "Backend::is_auto")]
    pub backend: Backend,
    /// How nodes encrypt (the agents' and discoveries' `--encryption`):
    /// `wireguard` (default) or `ipsec` (the lab makes the world's mesh
    /// secret; `meshgate lab rotate-secret` rotates it). A mesh mixes none:
    /// a cluster may repeat the world's value, not differ from it.
    #[serde(default, skip_serializing_if = "is_wireguard")]
    pub encryption: Encryption,
    /// Identity policies, inline: each item one NetworkPolicy or
    /// CiliumNetworkPolicy object as `kubectl apply` takes it. Checked at
    /// `lab up`; given (as one file) to every agent of the clusters with
    /// the eBPF datapath. `meshgate lab policy` replaces them at run time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<serde_yaml::Value>,
    /// Namespaces' labels (`name: {key: value}`), as a cluster's API
    /// server would hold them: given to every agent (`--namespaces`), whose
    /// endpoints carry them as `io.cilium.k8s.namespace.labels.<key>` for
    /// namespace selectors by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The Kubernetes API server's addresses, as a cluster would have them
    /// (the agents' `--kube-apiserver`): the `kube-apiserver` entity of the
    /// policies. Needs `policies`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kube_apiservers: Vec<Ipv4Addr>,
    /// The world's DNS: an upstream server with these records on the
    /// external network, a DNS proxy on every node (needs `datapath:
    /// ebpf`), and pods' resolv.conf naming `clusterIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<dns::DnsSpec>,
}

pub use meshgate_model::model::Encryption;

fn is_wireguard(e: &Encryption) -> bool {
    *e == Encryption::Wireguard
}

/// Which WireGuard implementation the agents use (the agent's `--backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The kernel's where it has WireGuard, else userspace.
    #[default]
    Auto,
    /// The kernel's WireGuard; an agent fails to start without it.
    Kernel,
    /// Userspace WireGuard (boringtun on a TUN device).
    Userspace,
}

impl Backend {
    pub fn is_auto(&self) -> bool {
        *self == Backend::Auto
    }

    /// The agent's `--backend` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

/// How pod traffic between nodes is carried (the agent's `--datapath`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datapath {
    /// Pod CIDRs routed straight into the WireGuard device.
    #[default]
    Plain,
    /// The eBPF datapath: pod traffic in VXLAN (VNI = source identity)
    /// inside WireGuard.
    Ebpf,
}

impl Datapath {
    pub fn is_plain(&self) -> bool {
        *self == Datapath::Plain
    }

    /// The agent's `--datapath` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Datapath::Plain => "plain",
            Datapath::Ebpf => "ebpf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    pub name: String,
    /// Cluster ID, 1..=255, unique in the world.
    pub id: u32,
    /// IPv4 CIDR, prefix at most /24; node i gets the i-th /24 of it.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    /// `routable` (default): every node reaches every other cluster's
    /// nodes. `isolated`: only its `cluster-gateway` nodes reach outside
    /// the cluster; the lab enforces it on the underlay bridge.
    #[serde(default, skip_serializing_if = "Underlay::is_routable")]
    pub underlay: Underlay,
    /// This cluster's datapath; the scenario's `datapath` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<Datapath>,
    /// This cluster's strict encryption mode; the scenario's `strict` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// This cluster's WireGuard backend; the scenario's `backend` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// This cluster's encryption; the scenario's `encryption` when absent
    /// (and it must not differ from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// This cluster's services (the shape of discovery's `--services` file);
    /// global ones are merged across clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<meshgate_model::service::Service>,
    /// How the cluster's discovery runs: one replica on the embedded store
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoverySpec>,
}

/// `discovery: {replicas: 2, store: etcd}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// Discovery processes serving the cluster, 1..=4 (more than one needs
    /// `store: etcd`).
    #[serde(default = "one_replica")]
    pub replicas: u32,
    #[serde(default)]
    pub store: StoreKind,
}

fn one_replica() -> u32 {
    1
}

/// Where a cluster's discovery keeps its state in the lab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// `state.redb` in the discovery's state dir.
    #[default]
    Embedded,
    /// One etcd for the cluster, started by the lab.
    Etcd,
}

/// Whether a cluster's nodes reach other clusters' underlay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Underlay {
    #[default]
    Routable,
    Isolated,
}

impl Underlay {
    pub fn is_routable(&self) -> bool {
        *self == Underlay::Routable
    }
}

impl fmt::Display for Underlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Underlay::Routable => "routable",
            Underlay::Isolated => "isolated",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Seconds between automatic key rotations of this node's agent
    /// (`--rotate-interval`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_interval: Option<u64>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Node labels, given to the agent as `--node-label KEY=VALUE` (egress
    /// gateway policies select their gateways by them). The lab adds
    /// [`HOSTNAME_LABEL`] and [`CLUSTER_LABEL`] itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Egress IPs of an `egress-gateway` node: each a /32 on the node's
    /// second interface `eg0`, which sits on the external network.
    #[serde(default, rename = "egressIPs", skip_serializing_if = "Vec::is_empty")]
    pub egress_ips: Vec<Ipv4Addr>,
    /// A container runtime on the node: `containerd` starts one for it, and
    /// `lab run` makes containers there through `meshgate-cni`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

/// A node's container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
}

/// Node label the lab sets to the node's name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Node label the lab sets to the cluster's name.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    EgressGateway,
    ClusterGateway,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::EgressGateway => "egress-gateway",
            Role::ClusterGateway => "cluster-gateway",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its Kubernetes namespace (default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its service account (default: `default`), which policies select by
    /// `io.cilium.k8s.policy.serviceaccount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct External {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// One problem in a scenario, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `clusters[1].id`.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// A scenario file that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{}", join_field_errors(file, errors))]
    Invalid {
        file: String,
        errors: Vec<FieldError>,
    },
}

fn join_field_errors(file: &str, errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{file}: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: file.clone(),
            source,
        })?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(file);
        Scenario::parse(&label, &text)
    }

    /// Parses and validates scenario text; `file` names it in errors.
    pub fn parse(file: &str, yaml: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_yaml::from_str(yaml).map_err(|e| ScenarioError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let errors = validate::validate(&scenario);
        if errors.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError::Invalid {
                file: file.to_string(),
                errors,
            })
        }
    }

    /// The pod CIDR of a cluster, once validated.
    pub(crate) fn pod_net(cluster: &Cluster) -> Option<Ipv4Net> {
        cluster.pod_cidr.parse().ok()
    }
}

/// Policy objects as one YAML text (`---` between documents), as the
/// agents' `--policy` file.
pub fn policy_text(policies: &[serde_yaml::Value]) -> Result<String, String> {
    let mut out = String::new();
    for p in policies {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(p).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Parses policy YAML as the agent will (identity and egress gateway
/// policies; the parser's error, its source named `source`; an empty
/// `source` leaves the prefix out). Returns how many policies it holds.
pub fn check_policy_text(text: &str, source: &str) -> Result<usize, String> {
    meshgate_egress::parse_policy_text(text, source)
        .map(|p| p.identity.len() + p.egress.len())
        .map_err(|e| {
            let m = e.to_string();
            m.strip_prefix(": ").map(str::to_string).unwrap_or(m)
        })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod egress_tests;

#[cfg(test)]
mod dns_tests;
