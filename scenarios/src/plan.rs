//! The world plan: every name and address of a lab world, computed from a
//! validated scenario without touching the system (docs/contracts.md, "Lab
//! addressing").

pub mod dns;
mod steps;
pub mod vips;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use meshgate_model::certs::files::CertLayout;
use meshgate_model::endpoint::{EndpointSpec, DEFAULT_NAMESPACE};
use serde::{Deserialize, Serialize};

use crate::scenario::{
    Datapath, Role, Scenario, StoreKind, Underlay, CLUSTER_LABEL, HOSTNAME_LABEL,
};

pub use steps::Step;

/// The underlay every node, discovery and external is attached to.
pub const UNDERLAY_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15);
/// Tunnel IPs, allocated by discovery.
pub const TUNNEL_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);
/// Link-local range; pods route via 169.254.1.1.
pub const LINK_LOCAL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16);
/// Every pod's default gateway (answered by the node).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const DISCOVERY_PORT: u16 = 7100;
/// etcd's client and peer ports (a cluster's etcd, when it has one).
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// A cluster's etcd is at underlay host .9 (replicas at .2 to .5, nodes from .10).
pub const ETCD_HOST: u8 = 9;
pub const POD_MTU: u32 = 1420;
/// What VXLAN adds to a pod packet (outer IPv4 20, UDP 8, VXLAN 8, inner
/// Ethernet 14): with the eBPF datapath pods get `POD_MTU - VXLAN_OVERHEAD`,
/// so a full-size pod packet in VXLAN still fits the WireGuard MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Where the lab bind-mounts the host's `/sys/fs/bpf`: agents run under
/// `ip netns exec`, which mounts a fresh sysfs over `/sys` and so hides
/// `/sys/fs/bpf`; this path stays visible to them and is the same bpffs.
pub const BPFFS_ROOT: &str = "/run/meshgate/bpffs";
/// Where each lab agent serves Prometheus metrics, inside its node's namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9962";
/// The TCP port of every external's service (it answers each connection
/// with the source address it saw).
pub const EXTERNAL_PORT: u16 = 8080;
/// The second interface of an egress-gateway node: a veth on the external
/// network (the underlay bridge, where the externals are) holding the
/// node's egress IPs.
pub const EGRESS_INTERFACE: &str = "eg0";
/// Name of the bridge in the underlay namespace.
pub const BRIDGE: &str = "br0";
/// Where world state lives: `<LAB_ROOT>/<world>/`.
pub const LAB_ROOT: &str = "/run/meshgate/lab";

/// The state directory of a world.
pub fn world_dir(world: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(world)
}

/// The state directory of a node's agent.
pub fn agent_dir(world: &str, cluster: &str, node: &str) -> PathBuf {
    world_dir(world).join(cluster).join("nodes").join(node)
}

/// The state directory of a cluster's discovery.
pub fn discovery_dir(world: &str, cluster: &str) -> PathBuf {
    world_dir(world).join(cluster).join("discovery")
}

/// The bpffs directory holding the pins of a world's eBPF datapaths
/// (`/sys/fs/bpf/meshgate/lab/<world>` seen from the host).
pub fn bpf_world_dir(world: &str) -> PathBuf {
    Path::new(BPFFS_ROOT)
        .join("meshgate")
        .join("lab")
        .join(world)
}

/// The pod MTU of a cluster with this datapath.
pub fn pod_mtu(datapath: Datapath) -> u32 {
    match datapath {
        Datapath::Plain => POD_MTU,
        Datapath::Ebpf => POD_MTU - VXLAN_OVERHEAD,
    }
}

/// Where a world's mesh CA and certificates are: `<world dir>/certs`.
pub fn certs_dir(world: &str) -> PathBuf {
    world_dir(world).join("certs")
}

/// The world's IPsec mesh secret, shared by all its agents.
pub fn ipsec_secret_file(world: &str) -> PathBuf {
    world_dir(world).join("ipsec-secret")
}

/// Prefix shared by every namespace of a world.
pub fn ns_prefix(world: &str) -> String {
    format!("mg-{world}-")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub world: String,
    /// Namespace holding the bridge `br0`.
    pub underlay_ns: String,
    pub state_dir: PathBuf,
    pub clusters: Vec<ClusterPlan>,
    pub externals: Vec<ExternalPlan>,
    /// The scenario's `policies`, as the text of [`policies_file`].
    #[serde(default)]
    pub policies: String,
    /// The world's DNS (the scenario's `dns:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<dns::DnsPlan>,
    /// The scenario's `namespaces` (labels by namespace), written to
    /// [`namespaces_file`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// The world's namespaces file, given to every agent as `--namespaces`.
pub fn namespaces_file(world: &str) -> PathBuf {
    world_dir(world).join("namespaces.yaml")
}

/// The world's policy file, given to every eBPF-datapath agent as `--policy`.
pub fn policies_file(world: &str) -> PathBuf {
    world_dir(world).join("policies.yaml")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub name: String,
    pub id: u8,
    pub pod_cidr: Ipv4Net,
    pub discovery: DiscoveryPlan,
    pub nodes: Vec<NodePlan>,
    /// The world's certificate directory ([`certs_dir`]); discovery and
    /// agents use mutual TLS with the certificates in it.
    #[serde(default)]
    pub certs: PathBuf,
    /// `NAME=URL` of every other cluster's discovery, passed as `--remote`
    /// (federation: every discovery imports from every other).
    #[serde(default)]
    pub remotes: Vec<String>,
    /// The cluster's services, written to [`ClusterPlan::services_file`]
    /// and passed to its discovery as `--services`.
    #[serde(default)]
    pub services: Vec<meshgate_model::service::Service>,
    /// Isolated: only its cluster-gateway nodes reach other clusters.
    #[serde(default)]
    pub underlay: Underlay,
    /// The agents' `--datapath`.
    #[serde(default)]
    pub datapath: Datapath,
    /// The agents run with `--strict`.
    #[serde(default)]
    pub strict: bool,
    /// The agents' `--backend`.
    #[serde(default)]
    pub backend: crate::scenario::Backend,
    /// The agents' and discovery's `--encryption`.
    #[serde(default)]
    pub encryption: crate::scenario::Encryption,
    /// Discovery replicas 2, 3, ... (replica 1 is `discovery`); they all
    /// keep the cluster's state in `etcd`.
    #[serde(default)]
    pub replicas: Vec<DiscoveryPlan>,
    /// The cluster's etcd, when its discovery uses one.
    #[serde(default)]
    pub etcd: Option<EtcdPlan>,
    /// The agents' `--policy` file (eBPF datapath and scenario policies).
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// The agents run with `--dns-proxy` (the world has `dns:`).
    #[serde(default)]
    pub dns_proxy: bool,
    /// The agents' `--namespaces` file (the scenario has `namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces_file: Option<PathBuf>,
    /// The agents' `--kube-apiserver` addresses (with a policy file only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kube_apiservers: Vec<Ipv4Addr>,
}

/// A cluster's etcd: one member in a namespace of its own on the underlay,
/// so it outlives any discovery replica and its namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdPlan {
    pub netns: String,
    /// The bridge-side end of its veth, in the underlay namespace.
    pub ul_veth: String,
    pub ip: Ipv4Addr,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryPlan {
    pub netns: String,
    /// The bridge-side end of its veth, in the underlay namespace.
    pub ul_veth: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub ul_veth: String,
    pub underlay_ip: Ipv4Addr,
    /// This node's /24 of the cluster's podCIDR.
    pub pod_cidr: Ipv4Net,
    #[serde(default)]
    pub roles: Vec<Role>,
    /// `--rotate-interval` of the agent, seconds.
    #[serde(default)]
    pub rotate_interval: Option<u64>,
    pub state_dir: PathBuf,
    /// The agent's `--bpf-pin-dir` (used with the eBPF datapath).
    #[serde(default)]
    pub bpf_pin_dir: PathBuf,
    pub pods: Vec<PodPlan>,
    /// The scenario's node labels (the agent's `--node-label`s, beside the
    /// two the lab adds: see [`ClusterPlan::node_labels`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Egress IPs on the node's [`EGRESS_INTERFACE`] (each a /32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_ips: Vec<Ipv4Addr>,
    /// The bridge-side end of the node's [`EGRESS_INTERFACE`] veth, on the
    /// external network (egress-gateway nodes have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_veth: Option<String>,
    /// The node's container runtime, if the scenario gives it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::scenario::Runtime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodPlan {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub netns: String,
    /// The node-side end of the pod's veth (`pod<j>`).
    pub node_veth: String,
    pub ip: Ipv4Addr,
    /// Its namespace (none: `default`) and service account (none:
    /// `default`), as the scenario gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalPlan {
    pub name: String,
    pub netns: String,
    pub ul_veth: String,
    pub ip: Ipv4Addr,
}

impl ExternalPlan {
    /// `meshgate` arguments of the external's TCP service
    /// ([`crate::external_server`]).
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "lab".into(),
            "external-server".into(),
            "--port".into(),
            EXTERNAL_PORT.to_string(),
        ]
    }

    /// The log of the external's service, in the world dir.
    pub fn server_log(&self, world: &str) -> PathBuf {
        world_dir(world)
            .join("externals")
            .join(format!("{}.log", self.name))
    }
}

/// What the plan could not compute: only for scenarios that skipped
/// validation.
#[derive(Debug, thiserror::Error)]
#[error("scenario not validated: {0}")]
pub struct PlanError(String);

fn offset(addr: Ipv4Addr, by: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr).wrapping_add(by))
}

impl Plan {
    /// Computes the plan of a scenario returned by [`Scenario::load`] or
    /// [`Scenario::parse`] (which validate it).
    pub fn new(s: &Scenario) -> Result<Plan, PlanError> {
        let world = s.name.as_str();
        let mut clusters = Vec::with_capacity(s.clusters.len());
        for c in &s.clusters {
            let id = u8::try_from(c.id)
                .map_err(|_| PlanError(format!("cluster {} id {}", c.name, c.id)))?;
            let pod_cidr = Scenario::pod_net(c)
                .ok_or_else(|| PlanError(format!("cluster {} podCIDR {}", c.name, c.pod_cidr)))?;
            let prefix = format!("mg-{world}-{}", c.name);
            let discovery = DiscoveryPlan {
                netns: format!("{prefix}-d"),
                ul_veth: format!("d{id}"),
                ip: Ipv4Addr::new(198, 18, id, 2),
                port: DISCOVERY_PORT,
                state_dir: discovery_dir(world, &c.name),
            };
            let spec = c
                .discovery
                .clone()
                .unwrap_or(crate::scenario::DiscoverySpec {
                    replicas: 1,
                    store: StoreKind::Embedded,
                });
            let replicas = (2..=spec.replicas)
                .map(|k| {
                    let k = u8::try_from(k)
                        .map_err(|_| PlanError(format!("cluster {}: replicas", c.name)))?;
                    Ok(DiscoveryPlan {
                        netns: format!("{prefix}-d{k}"),
                        ul_veth: format!("d{id}r{k}"),
                        ip: Ipv4Addr::new(198, 18, id, 1 + k),
                        port: DISCOVERY_PORT,
                        state_dir: world_dir(world)
                            .join(&c.name)
                            .join(format!("discovery-{k}")),
                    })
                })
                .collect::<Result<Vec<_>, PlanError>>()?;
            let etcd = (spec.store == StoreKind::Etcd).then(|| EtcdPlan {
                netns: format!("{prefix}-e"),
                ul_veth: format!("e{id}"),
                ip: Ipv4Addr::new(198, 18, id, ETCD_HOST),
                client_port: ETCD_CLIENT_PORT,
                peer_port: ETCD_PEER_PORT,
                data_dir: world_dir(world).join(&c.name).join("etcd"),
            });
            let mut nodes = Vec::with_capacity(c.nodes.len());
            for (i, n) in c.nodes.iter().enumerate() {
                let i = u32::try_from(i).map_err(|_| PlanError("too many nodes".into()))?;
                let host = u8::try_from(10 + i)
                    .map_err(|_| PlanError(format!("cluster {}: too many nodes", c.name)))?;
                let base = offset(pod_cidr.network(), i << 8);
                let node_cidr = Ipv4Net::new(base, 24)
                    .map_err(|_| PlanError(format!("cluster {} /24 {i}", c.name)))?;
                if !pod_cidr.contains(&base) {
                    return Err(PlanError(format!("cluster {}: podCIDR too small", c.name)));
                }
                let pods = n
                    .pods
                    .iter()
                    .enumerate()
                    .map(|(j, p)| PodPlan {
                        name: p.name.clone(),
                        labels: p.labels.clone(),
                        netns: format!("{prefix}-p-{}", p.name),
                        node_veth: format!("pod{j}"),
                        ip: offset(base, 10 + j as u32),
                        namespace: p.namespace.clone(),
                        service_account: p.service_account.clone(),
                    })
                    .collect();
                nodes.push(NodePlan {
                    name: n.name.clone(),
                    netns: format!("{prefix}-n-{}", n.name),
                    ul_veth: format!("n{id}-{i}"),
                    underlay_ip: Ipv4Addr::new(198, 18, id, host),
                    pod_cidr: node_cidr,
                    roles: n.roles.clone(),
                    rotate_interval: n.rotate_interval,
                    state_dir: agent_dir(world, &c.name, &n.name),
                    bpf_pin_dir: bpf_world_dir(world).join(format!("{}-{}", c.name, n.name)),
                    pods,
                    labels: n.labels.clone(),
                    egress_ips: n.egress_ips.clone(),
                    runtime: n.runtime,
                    egress_veth: n
                        .roles
                        .contains(&Role::EgressGateway)
                        .then(|| format!("g{id}-{i}")),
                });
            }
            let policy_file = (!s.policies.is_empty()
                && c.datapath.unwrap_or(s.datapath) == Datapath::Ebpf)
                .then(|| policies_file(world));
            let kube_apiservers = match policy_file {
                Some(_) => s.kube_apiservers.clone(),
                None => Vec::new(),
            };
            clusters.push(ClusterPlan {
                name: c.name.clone(),
                id,
                pod_cidr,
                discovery,
                nodes,
                remotes: Vec::new(),
                certs: certs_dir(world),
                services: vips::assign(id, &c.services),
                underlay: c.underlay,
                datapath: c.datapath.unwrap_or(s.datapath),
                replicas,
                etcd,
                strict: c.strict.unwrap_or(s.strict),
                backend: c.backend.unwrap_or(s.backend),
                encryption: c.encryption.unwrap_or(s.encryption),
                policy_file,
                dns_proxy: s.dns.is_some(),
                namespaces_file: (!s.namespaces.is_empty()).then(|| namespaces_file(world)),
                kube_apiservers,
            });
        }
        let urls: Vec<(String, String)> = clusters
            .iter()
            .map(|c| {
                let replicas: Vec<String> = c.discovery_replicas().map(|(_, d)| d.url()).collect();
                (c.name.clone(), replicas.join(","))
            })
            .collect();
        for c in &mut clusters {
            c.remotes = urls
                .iter()
                .filter(|(name, _)| *name != c.name)
                .map(|(name, url)| format!("{name}={url}"))
                .collect();
        }
        let externals = s
            .externals
            .iter()
            .enumerate()
            .map(|(k, x)| ExternalPlan {
                name: x.name.clone(),
                netns: format!("mg-{world}-x-{}", x.name),
                ul_veth: format!("x{k}"),
                ip: x.ip,
            })
            .collect();
        Ok(Plan {
            world: world.to_string(),
            underlay_ns: format!("mg-{world}-ul"),
            state_dir: world_dir(world),
            clusters,
            externals,
            policies: crate::scenario::policy_text(&s.policies)
                .map_err(|e| PlanError(format!("policies: {e}")))?,
            dns: match &s.dns {
                Some(spec) => {
                    let records = crate::scenario::dns::records(spec).map_err(|e| {
                        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
                        PlanError(e.join("; "))
                    })?;
                    Some(dns::DnsPlan::new(world, spec, records))
                }
                None => None,
            },
            namespaces: s.namespaces.clone(),
        })
    }

    /// Every namespace of the world, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.underlay_ns.clone()];
        for c in &self.clusters {
            all.push(c.discovery.netns.clone());
            all.extend(c.replicas.iter().map(|d| d.netns.clone()));
            all.extend(c.etcd.iter().map(|e| e.netns.clone()));
            for n in &c.nodes {
                all.push(n.netns.clone());
                all.extend(n.pods.iter().map(|p| p.netns.clone()));
            }
        }
        all.extend(self.externals.iter().map(|x| x.netns.clone()));
        all.extend(self.dns.iter().map(|d| d.netns.clone()));
        all
    }

    /// Every pod namespace of the world.
    pub fn pod_namespaces(&self) -> impl Iterator<Item = &str> {
        self.clusters
            .iter()
            .flat_map(|c| &c.nodes)
            .flat_map(|n| &n.pods)
            .map(|p| p.netns.as_str())
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterPlan> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Whether nodes `a` and `b` (each `(cluster, node)`) hold a WireGuard
    /// session with each other: the agents' path rule. Nodes of one cluster
    /// always do; across clusters, a cluster with cluster-gateway nodes
    /// talks only through them.
    pub fn direct_peers(&self, a: (&str, &str), b: (&str, &str)) -> bool {
        if a.0 == b.0 {
            return true;
        }
        let open = |(cluster, node): (&str, &str)| {
            self.cluster(cluster).is_none_or(|c| {
                !c.behind_gateways() || c.node(node).is_some_and(NodePlan::is_cluster_gateway)
            })
        };
        open(a) && open(b)
    }

    /// The `ip` commands that build this world, in order.
    pub fn steps(&self) -> Vec<Step> {
        steps::build(self)
    }
}

impl DiscoveryPlan {
    /// `https://IP:PORT` of this discovery (the lab always runs mutual TLS).
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }
}

impl ClusterPlan {
    /// Whether the cluster has cluster-gateway nodes (its traffic to and
    /// from other clusters then goes through them).
    pub fn behind_gateways(&self) -> bool {
        self.nodes.iter().any(NodePlan::is_cluster_gateway)
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod and the node it runs on.
    pub fn pod(&self, name: &str) -> Option<(&NodePlan, &PodPlan)> {
        self.nodes
            .iter()
            .find_map(|n| n.pods.iter().find(|p| p.name == name).map(|p| (n, p)))
    }

    /// The world's certificate files.
    pub fn cert_layout(&self) -> CertLayout {
        CertLayout::new(&self.certs)
    }

    /// Where the lab writes this cluster's services for its discovery.
    pub fn services_file(&self) -> PathBuf {
        self.discovery.state_dir.join("services.yaml")
    }

    /// Every discovery replica of the cluster with its number (1, 2, ...).
    pub fn discovery_replicas(&self) -> impl Iterator<Item = (u8, &DiscoveryPlan)> {
        std::iter::once(&self.discovery)
            .chain(&self.replicas)
            .zip(1u8..)
            .map(|(d, k)| (k, d))
    }

    /// Replica `k` (1 is [`ClusterPlan::discovery`]).
    pub fn discovery_replica(&self, k: u8) -> Option<&DiscoveryPlan> {
        self.discovery_replicas()
            .find(|(i, _)| *i == k)
            .map(|(_, d)| d)
    }

    /// The world's IPsec mesh secret (see [`ipsec_secret_file`]).
    pub fn ipsec_secret(&self) -> PathBuf {
        self.certs.with_file_name("ipsec-secret")
    }

    /// `meshgate` arguments of this cluster's discovery.
    pub fn discovery_args(&self, lease_ttl: Duration) -> Vec<String> {
        self.replica_args(&self.discovery, lease_ttl)
    }

    /// `etcd` arguments of this cluster's etcd, if it has one.
    pub fn etcd_args(&self) -> Option<Vec<String>> {
        let e = self.etcd.as_ref()?;
        let client = format!("http://{}:{}", e.ip, e.client_port);
        let peer = format!("http://{}:{}", e.ip, e.peer_port);
        let name = format!("etcd-{}", self.name);
        Some(vec![
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            e.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("{name}={peer}"),
        ])
    }

    /// `meshgate` arguments of discovery replica `d` of this cluster.
    pub fn replica_args(&self, d: &DiscoveryPlan, lease_ttl: Duration) -> Vec<String> {
        let store = match &self.etcd {
            Some(e) => vec![
                "--store".to_string(),
                format!("etcd://{}:{}", e.ip, e.client_port),
            ],
            None => Vec::new(),
        };
        let services = if self.services.is_empty() {
            Vec::new()
        } else {
            vec![
                "--services".to_string(),
                self.services_file().display().to_string(),
            ]
        };
        vec![
            "discovery".into(),
            "--listen".into(),
            format!("{}:{}", d.ip, d.port),
            "--cluster".into(),
            self.name.clone(),
            "--cluster-id".into(),
            self.id.to_string(),
            "--pod-cidr".into(),
            self.pod_cidr.to_string(),
            "--state-dir".into(),
            d.state_dir.display().to_string(),
            "--lease-ttl".into(),
            lease_ttl.as_secs().max(1).to_string(),
            "--tls-cert".into(),
            self.cert_layout()
                .discovery_cert(&self.name)
                .display()
                .to_string(),
            "--tls-key".into(),
            self.cert_layout()
                .discovery_key(&self.name)
                .display()
                .to_string(),
            "--client-ca".into(),
            self.cert_layout().ca_cert().display().to_string(),
        ]
        .into_iter()
        .chain(
            self.remotes
                .iter()
                .flat_map(|r| ["--remote".to_string(), r.clone()]),
        )
        .chain(services)
        .chain(store)
        .chain(
            (self.encryption == crate::scenario::Encryption::Ipsec)
                .then(|| ["--encryption".to_string(), "ipsec".to_string()])
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    /// A node's labels as its agent gets them: the scenario's, with
    /// [`HOSTNAME_LABEL`] (the node's name) and [`CLUSTER_LABEL`] (the
    /// cluster's) added by the lab.
    pub fn node_labels(&self, node: &NodePlan) -> BTreeMap<String, String> {
        let mut labels = node.labels.clone();
        labels.insert(HOSTNAME_LABEL.to_string(), node.name.clone());
        labels.insert(CLUSTER_LABEL.to_string(), self.name.clone());
        labels
    }

    /// `meshgate` arguments of a node's agent.
    pub fn agent_args(&self, node: &NodePlan) -> Vec<String> {
        vec![
            "agent".into(),
            "--node".into(),
            node.name.clone(),
            "--cluster".into(),
            self.name.clone(),
            "--cluster-id".into(),
            self.id.to_string(),
            "--discovery".into(),
            self.discovery_replicas()
                .map(|(_, d)| d.url())
                .collect::<Vec<_>>()
                .join(","),
            "--underlay-ip".into(),
            node.underlay_ip.to_string(),
            "--pod-cidr".into(),
            node.pod_cidr.to_string(),
            "--state-dir".into(),
            node.state_dir.display().to_string(),
            "--endpoints".into(),
            node.endpoints_file().display().to_string(),
            "--pod-labels".into(),
            node.pod_labels_file().display().to_string(),
            "--tls-ca".into(),
            self.cert_layout().ca_cert().display().to_string(),
            "--tls-cert".into(),
            self.cert_layout()
                .agent_cert(&self.name, &node.name)
                .display()
                .to_string(),
            "--tls-key".into(),
            self.cert_layout()
                .agent_key(&self.name, &node.name)
                .display()
                .to_string(),
            "--metrics-addr".into(),
            METRICS_ADDR.into(),
        ]
        .into_iter()
        .chain(
            node.rotate_interval
                .map(|s| ["--rotate-interval".to_string(), s.to_string()])
                .into_iter()
                .flatten(),
        )
        .chain(
            (self.datapath == Datapath::Ebpf)
                .then(|| {
                    [
                        "--datapath".to_string(),
                        self.datapath.as_str().to_string(),
                        "--bpf-pin-dir".to_string(),
                        node.bpf_pin_dir.display().to_string(),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .chain(self.strict.then(|| "--strict".to_string()))
        .chain(
            (!self.backend.is_auto())
                .then(|| ["--backend".to_string(), self.backend.as_str().to_string()])
                .into_iter()
                .flatten(),
        )
        .chain(
            (self.encryption == crate::scenario::Encryption::Ipsec)
                .then(|| {
                    [
                        "--encryption".to_string(),
                        "ipsec".to_string(),
                        "--ipsec-secret".to_string(),
                        self.ipsec_secret().display().to_string(),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .chain(
            self.policy_file
                .iter()
                .flat_map(|f| ["--policy".to_string(), f.display().to_string()]),
        )
        .chain(self.dns_proxy.then(|| "--dns-proxy".to_string()))
        .chain(
            self.namespaces_file
                .iter()
                .flat_map(|f| ["--namespaces".to_string(), f.display().to_string()]),
        )
        .chain(
            self.kube_apiservers
                .iter()
                .flat_map(|ip| ["--kube-apiserver".to_string(), ip.to_string()]),
        )
        .chain(
            (!node.roles.is_empty())
                .then(|| {
                    let roles: Vec<String> = node.roles.iter().map(Role::to_string).collect();
                    ["--roles".to_string(), roles.join(",")]
                })
                .into_iter()
                .flatten(),
        )
        .chain(
            self.node_labels(node)
                .into_iter()
                .flat_map(|(k, v)| ["--node-label".to_string(), format!("{k}={v}")]),
        )
        .collect()
    }
}

/// Name of the endpoints file the lab writes into each node's state dir.
pub const ENDPOINTS_FILE: &str = "endpoints.yaml";

impl NodePlan {
    pub fn is_cluster_gateway(&self) -> bool {
        self.roles.contains(&Role::ClusterGateway)
    }

    pub fn is_egress_gateway(&self) -> bool {
        self.roles.contains(&Role::EgressGateway)
    }

    /// Where the lab writes this node's endpoints file.
    pub fn endpoints_file(&self) -> PathBuf {
        self.state_dir.join(ENDPOINTS_FILE)
    }

    /// The labels of pods added through `meshgate-cni` (the agent's
    /// `--pod-labels`: `namespace/name: {labels: {...}}`), empty at first.
    pub fn pod_labels_file(&self) -> PathBuf {
        self.state_dir.join("pod-labels.yaml")
    }

    /// This node's pods as the agent's `--endpoints` entries (the
    /// scenario's namespace, `default` when none, service account and
    /// labels).
    pub fn endpoint_specs(&self) -> Vec<EndpointSpec> {
        self.pods
            .iter()
            .map(|p| EndpointSpec {
                name: p.name.clone(),
                namespace: p
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
                ip: IpAddr::V4(p.ip),
                labels: p.labels.clone(),
                interface: Some(p.node_veth.clone()),
                service_account: p.service_account.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod replica_tests;

#[cfg(test)]
mod egress_tests;

#[cfg(test)]
mod dns_tests;
