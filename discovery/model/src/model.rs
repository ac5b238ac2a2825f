//! Plain Rust model types (serde), their conversions to and from the protobuf
//! types in [`crate::pb`], and validation with errors that name the field and
//! the fix. (The agent's `status.json` types are the agent's:
//! `meshgate_agent::status`.)

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cidrs::{CidrError, ClusterCidrs};
use crate::endpoint::{Endpoint, EndpointError, Identity};
use crate::pb;

/// Longest node name accepted (a DNS name, as Kubernetes node names are).
pub const MAX_NAME_LEN: usize = 253;

/// A node as discovery knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub cluster: String,
    pub cluster_id: u8,
    pub underlay_ip: IpAddr,
    pub listen_port: u16,
    /// base64 of the 32-byte WireGuard public key (validated).
    pub wg_public_key: String,
    pub pod_cidrs: Vec<IpNet>,
    /// Allocated by discovery; `None` in a registration request.
    #[serde(default)]
    pub tunnel_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// How the node encrypts; a mesh mixes none.
    #[serde(default)]
    pub encryption: Encryption,
    /// Node labels (egress gateway policies select gateway nodes by them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// IPv4 addresses of the node's interfaces (egress IPs are checked
    /// against them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
}

/// One IPv4 address of one of a node's interfaces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddress {
    pub interface: String,
    pub ip: Ipv4Addr,
    /// The interface holds the node's IPv4 default route.
    #[serde(default)]
    pub default_route: bool,
}

/// How nodes encrypt their traffic to each other (the agent's `--encryption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    #[default]
    Wireguard,
    Ipsec,
}

impl Encryption {
    pub const fn as_str(self) -> &'static str {
        match self {
            Encryption::Wireguard => "wireguard",
            Encryption::Ipsec => "ipsec",
        }
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "wireguard" => Ok(Encryption::Wireguard),
            "ipsec" => Ok(Encryption::Ipsec),
            other => Err(format!(
                "encryption {other:?} is not known: use wireguard or ipsec"
            )),
        }
    }
}

/// Why a node left the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    Deregistered,
    LeaseExpired,
}

impl std::fmt::Display for RemoveReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoveReason::Deregistered => "deregistered",
            RemoveReason::LeaseExpired => "lease_expired",
        })
    }
}

/// One change of the registry; every change has its own revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Upserted {
        revision: u64,
        node: Node,
    },
    Removed {
        revision: u64,
        name: String,
        cluster: String,
        reason: RemoveReason,
    },
    /// An endpoint appeared or changed (an ipcache entry).
    EndpointUpserted {
        revision: u64,
        endpoint: Endpoint,
    },
    /// An endpoint is gone (its node stopped reporting it, or left).
    EndpointRemoved {
        revision: u64,
        ip: IpAddr,
        node: String,
        cluster: String,
    },
    /// A new identity was allocated (identities are never removed).
    IdentityAdded {
        revision: u64,
        identity: Identity,
    },
    /// A service of this cluster changed its merged backends (the whole
    /// service, as merged now).
    ServiceUpdated {
        revision: u64,
        service: crate::service::GlobalService,
    },
    /// Only the backends of service `namespace/name` changed since it was
    /// last sent: remove `removed`, add `added`.
    ServiceBackends {
        revision: u64,
        namespace: String,
        name: String,
        removed: Vec<crate::service::Backend>,
        added: Vec<crate::service::Backend>,
    },
    /// The pod CIDRs of the mesh's clusters changed (a remote's accepted
    /// ones): the whole list, this cluster first. Not sent to `local_only`
    /// watchers, which get only this cluster's state.
    MeshCidrs {
        revision: u64,
        clusters: Vec<ClusterCidrs>,
    },
}

impl Event {
    pub fn revision(&self) -> u64 {
        match self {
            Event::Upserted { revision, .. }
            | Event::Removed { revision, .. }
            | Event::EndpointUpserted { revision, .. }
            | Event::EndpointRemoved { revision, .. }
            | Event::IdentityAdded { revision, .. }
            | Event::ServiceUpdated { revision, .. }
            | Event::ServiceBackends { revision, .. }
            | Event::MeshCidrs { revision, .. } => *revision,
        }
    }
}

/// All nodes, endpoints and identities at one revision (the first message
/// of a watch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: u64,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub identities: Vec<Identity>,
    /// Every cluster's pod CIDRs, this cluster first (only this cluster's
    /// for a `local_only` watcher).
    #[serde(default)]
    pub clusters: Vec<ClusterCidrs>,
}

/// What a watcher receives: a snapshot or a single change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    Snapshot(Snapshot),
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("node {node}: address {value:?} is not an IPv4 address")]
    NodeAddress { node: String, value: String },
    #[error("node {node}: encryption {value:?} is not known: use wireguard or ipsec")]
    Encryption { node: String, value: String },
    #[error("node name is empty; set the node's name (e.g. its Kubernetes node name)")]
    EmptyName,
    #[error("node name {name:?} is {len} bytes long; use at most {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("node {node}: field `cluster` is empty; set the cluster name")]
    EmptyCluster { node: String },
    #[error("node {node}: field `cluster_id` is {value}; cluster IDs are 1..=255")]
    ClusterIdRange { node: String, value: u32 },
    #[error(
        "node {node} says cluster {cluster} (id {cluster_id}) but this discovery serves \
         {server_cluster} (id {server_cluster_id}); point the agent at its own cluster's discovery \
         or fix its --cluster/--cluster-id"
    )]
    WrongCluster {
        node: String,
        cluster: String,
        cluster_id: u32,
        server_cluster: String,
        server_cluster_id: u8,
    },
    #[error(
        "node {node}: field `wg_public_key` is not valid base64 ({reason}); \
         send the base64 of the 32-byte WireGuard public key"
    )]
    KeyBase64 { node: String, reason: String },
    #[error(
        "node {node}: field `wg_public_key` decodes to {len} bytes; a WireGuard public key is \
         32 bytes (44 base64 characters)"
    )]
    KeyLength { node: String, len: usize },
    #[error(
        "node {node}: field `underlay_ip` {value:?} is not an IP address; use e.g. 198.18.1.10"
    )]
    UnderlayIp { node: String, value: String },
    #[error("node {node}: field `underlay_ip` is {value}, which peers cannot send to; use the node's routable address")]
    UnderlayUnusable { node: String, value: IpAddr },
    #[error("node {node}: field `listen_port` is {value}; use the WireGuard UDP port 1..=65535 (default 51820)")]
    ListenPort { node: String, value: u32 },
    #[error("node {node}: pod CIDR {value:?} is not a CIDR; use e.g. 10.1.0.0/24")]
    PodCidr { node: String, value: String },
    #[error("node {node}: pod CIDR {value} has host bits set; use {fixed}")]
    PodCidrHostBits {
        node: String,
        value: IpNet,
        fixed: IpNet,
    },
    #[error("node {node}: its pod CIDRs {a} and {b} overlap; list each range once")]
    PodCidrSelfOverlap { node: String, a: IpNet, b: IpNet },
    #[error(
        "node {node}: pod CIDR {cidr} is outside the pod CIDRs of cluster {cluster} \
         ({cluster_cidrs}); give the node a range inside them (the agent's --pod-cidr), or add \
         its range to discovery's --pod-cidr"
    )]
    PodCidrOutsideCluster {
        node: String,
        cidr: IpNet,
        cluster: String,
        cluster_cidrs: String,
    },
    #[error("node {node}: field `tunnel_ip` {value:?} is not an IPv4 address")]
    TunnelIp { node: String, value: String },
    #[error("node {node}: a role is empty; use e.g. egress-gateway or cluster-gateway")]
    EmptyRole { node: String },
}

/// Decodes and checks a base64 WireGuard public key.
pub fn decode_public_key(node: &str, value: &str) -> Result<[u8; 32], ModelError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| ModelError::KeyBase64 {
            node: node.to_string(),
            reason: e.to_string(),
        })?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| ModelError::KeyLength {
        node: node.to_string(),
        len,
    })
}

/// The first 8 characters of a base64 key, for logs.
pub fn short_key(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first pair (mine, theirs) of overlapping CIDRs, if any.
pub fn first_overlap(mine: &[IpNet], theirs: &[IpNet]) -> Option<(IpNet, IpNet)> {
    mine.iter()
        .flat_map(|a| theirs.iter().map(move |b| (*a, *b)))
        .find(|(a, b)| overlaps(a, b))
}

impl Node {
    /// Field checks that need no context (name, key, port, CIDRs, roles).
    pub fn validate(&self) -> Result<(), ModelError> {
        check_name(&self.name)?;
        let node = || self.name.clone();
        if self.cluster.is_empty() {
            return Err(ModelError::EmptyCluster { node: node() });
        }
        if self.cluster_id == 0 {
            return Err(ModelError::ClusterIdRange {
                node: node(),
                value: 0,
            });
        }
        decode_public_key(&self.name, &self.wg_public_key)?;
        if self.underlay_ip.is_unspecified() || self.underlay_ip.is_multicast() {
            return Err(ModelError::UnderlayUnusable {
                node: node(),
                value: self.underlay_ip,
            });
        }
        if self.listen_port == 0 {
            return Err(ModelError::ListenPort {
                node: node(),
                value: 0,
            });
        }
        for (i, cidr) in self.pod_cidrs.iter().enumerate() {
            if cidr.trunc() != *cidr {
                return Err(ModelError::PodCidrHostBits {
                    node: node(),
                    value: *cidr,
                    fixed: cidr.trunc(),
                });
            }
            if let Some((a, b)) = first_overlap(&[*cidr], &self.pod_cidrs[i + 1..]) {
                return Err(ModelError::PodCidrSelfOverlap { node: node(), a, b });
            }
        }
        if self.roles.iter().any(|r| r.trim().is_empty()) {
            return Err(ModelError::EmptyRole { node: node() });
        }
        Ok(())
    }

    /// Checks that the node belongs to the cluster this discovery serves.
    pub fn check_cluster(&self, cluster: &str, cluster_id: u8) -> Result<(), ModelError> {
        if self.cluster != cluster || self.cluster_id != cluster_id {
            return Err(ModelError::WrongCluster {
                node: self.name.clone(),
                cluster: self.cluster.clone(),
                cluster_id: u32::from(self.cluster_id),
                server_cluster: cluster.to_string(),
                server_cluster_id: cluster_id,
            });
        }
        Ok(())
    }

    /// Everything but the server-filled `tunnel_ip` is equal.
    pub fn same_registration(&self, other: &Node) -> bool {
        let mut a = self.clone();
        a.tunnel_ip = other.tunnel_ip;
        a == *other
    }
}

fn check_name(name: &str) -> Result<(), ModelError> {
    if name.trim().is_empty() {
        return Err(ModelError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ModelError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    Ok(())
}

impl TryFrom<pb::Node> for Node {
    type Error = ModelError;

    /// Parses and validates a protobuf node (does not check the cluster).
    fn try_from(p: pb::Node) -> Result<Self, ModelError> {
        check_name(&p.name)?;
        let name = p.name;
        let cluster_id = u8::try_from(p.cluster_id)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| ModelError::ClusterIdRange {
                node: name.clone(),
                value: p.cluster_id,
            })?;
        let underlay_ip = p
            .underlay_ip
            .trim()
            .parse()
            .map_err(|_| ModelError::UnderlayIp {
                node: name.clone(),
                value: p.underlay_ip.clone(),
            })?;
        let listen_port = u16::try_from(p.listen_port).map_err(|_| ModelError::ListenPort {
            node: name.clone(),
            value: p.listen_port,
        })?;
        let pod_cidrs = p
            .pod_cidrs
            .iter()
            .map(|c| {
                c.trim().parse::<IpNet>().map_err(|_| ModelError::PodCidr {
                    node: name.clone(),
                    value: c.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tunnel_ip = match p.tunnel_ip.trim() {
            "" => None,
            s => Some(s.parse().map_err(|_| ModelError::TunnelIp {
                node: name.clone(),
                value: p.tunnel_ip.clone(),
            })?),
        };
        let encryption = p.encryption.parse().map_err(|_| ModelError::Encryption {
            node: name.clone(),
            value: p.encryption.clone(),
        })?;
        let addresses = p
            .addresses
            .iter()
            .map(|a| {
                Ok(NodeAddress {
                    interface: a.interface.clone(),
                    ip: a.ip.trim().parse().map_err(|_| ModelError::NodeAddress {
                        node: name.clone(),
                        value: a.ip.clone(),
                    })?,
                    default_route: a.default_route,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let node = Node {
            name,
            cluster: p.cluster,
            cluster_id,
            underlay_ip,
            listen_port,
            wg_public_key: p.wg_public_key.trim().to_string(),
            pod_cidrs,
            tunnel_ip,
            roles: p.roles,
            encryption,
            labels: p.labels,
            addresses,
        };
        node.validate()?;
        Ok(node)
    }
}

impl From<&Node> for pb::Node {
    fn from(n: &Node) -> Self {
        pb::Node {
            name: n.name.clone(),
            cluster: n.cluster.clone(),
            cluster_id: u32::from(n.cluster_id),
            underlay_ip: n.underlay_ip.to_string(),
            listen_port: u32::from(n.listen_port),
            wg_public_key: n.wg_public_key.clone(),
            pod_cidrs: n.pod_cidrs.iter().map(ToString::to_string).collect(),
            tunnel_ip: n.tunnel_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            roles: n.roles.clone(),
            // WireGuard is the empty default, as in records from before
            // the field existed.
            encryption: match n.encryption {
                Encryption::Wireguard => String::new(),
                Encryption::Ipsec => "ipsec".to_string(),
            },
            labels: n
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            addresses: n
                .addresses
                .iter()
                .map(|a| pb::NodeAddress {
                    interface: a.interface.clone(),
                    ip: a.ip.to_string(),
                    default_route: a.default_route,
                })
                .collect(),
        }
    }
}

impl From<Node> for pb::Node {
    fn from(n: Node) -> Self {
        pb::Node::from(&n)
    }
}

impl From<RemoveReason> for pb::RemoveReason {
    fn from(r: RemoveReason) -> Self {
        match r {
            RemoveReason::Deregistered => pb::RemoveReason::Deregistered,
            RemoveReason::LeaseExpired => pb::RemoveReason::LeaseExpired,
        }
    }
}

impl From<&Event> for pb::WatchEvent {
    fn from(e: &Event) -> Self {
        let event = match e {
            Event::Upserted { revision, node } => {
                pb::watch_event::Event::Upserted(pb::NodeUpserted {
                    revision: *revision,
                    node: Some(node.into()),
                })
            }
            Event::Removed {
                revision,
                name,
                cluster,
                reason,
            } => pb::watch_event::Event::Removed(pb::NodeRemoved {
                revision: *revision,
                name: name.clone(),
                cluster: cluster.clone(),
                reason: pb::RemoveReason::from(*reason).into(),
            }),
            Event::EndpointUpserted { revision, endpoint } => {
                pb::watch_event::Event::EndpointUpserted(pb::EndpointUpserted {
                    revision: *revision,
                    endpoint: Some(endpoint.into()),
                })
            }
            Event::EndpointRemoved {
                revision,
                ip,
                node,
                cluster,
            } => pb::watch_event::Event::EndpointRemoved(pb::EndpointRemoved {
                revision: *revision,
                ip: ip.to_string(),
                node: node.clone(),
                cluster: cluster.clone(),
            }),
            Event::IdentityAdded { revision, identity } => {
                pb::watch_event::Event::IdentityAdded(pb::IdentityAdded {
                    revision: *revision,
                    identity: Some(identity.into()),
                })
            }
            Event::ServiceUpdated { revision, service } => {
                pb::watch_event::Event::ServiceUpdated(pb::ServiceUpdated {
                    revision: *revision,
                    service: Some(service.into()),
                })
            }
            Event::ServiceBackends {
                revision,
                namespace,
                name,
                removed,
                added,
            } => pb::watch_event::Event::ServiceBackends(pb::ServiceBackendsChanged {
                revision: *revision,
                namespace: namespace.clone(),
                name: name.clone(),
                removed: removed.iter().map(pb::Backend::from).collect(),
                added: added.iter().map(pb::Backend::from).collect(),
            }),
            Event::MeshCidrs { revision, clusters } => {
                pb::watch_event::Event::MeshCidrs(pb::MeshCidrs {
                    revision: *revision,
                    clusters: clusters.iter().map(pb::ClusterCidrs::from).collect(),
                })
            }
        };
        pb::WatchEvent { event: Some(event) }
    }
}

impl From<&Snapshot> for pb::WatchEvent {
    fn from(s: &Snapshot) -> Self {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
                revision: s.revision,
                nodes: s.nodes.iter().map(pb::Node::from).collect(),
                endpoints: s.endpoints.iter().map(pb::Endpoint::from).collect(),
                identities: s.identities.iter().map(pb::Identity::from).collect(),
                // set by the server, which knows its cluster
                cluster: String::new(),
                cluster_id: 0,
                services: Vec::new(),
                global_services: Vec::new(),
                clusters: s.clusters.iter().map(pb::ClusterCidrs::from).collect(),
                more: false,
            })),
        }
    }
}

/// Why a watch event from the wire could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchDecodeError {
    #[error("watch event has no content (newer server? update the agent)")]
    Empty,
    #[error("watch event upsert at revision {revision} has no node")]
    MissingNode { revision: u64 },
    #[error("watch event removal of {name} has unknown reason code {code}")]
    UnknownReason { name: String, code: i32 },
    #[error("watch event carries an invalid node: {0}")]
    Node(#[from] ModelError),
    #[error("watch event at revision {revision} has no {what}")]
    Missing { revision: u64, what: &'static str },
    #[error("watch event carries an invalid endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("watch event removal of endpoint {ip:?} of node {node}: not an IP address")]
    EndpointIp { ip: String, node: String },
    #[error("watch event at revision {revision} carries an invalid service: {problem}")]
    Service { revision: u64, problem: String },
    #[error("watch event at revision {revision} carries invalid pod CIDRs: {source}")]
    Cidrs { revision: u64, source: CidrError },
}

fn clusters_from_pb(
    revision: u64,
    clusters: &[pb::ClusterCidrs],
) -> Result<Vec<ClusterCidrs>, WatchDecodeError> {
    clusters
        .iter()
        .map(|c| {
            ClusterCidrs::try_from(c).map_err(|source| WatchDecodeError::Cidrs { revision, source })
        })
        .collect()
}

impl TryFrom<pb::WatchEvent> for WatchItem {
    type Error = WatchDecodeError;

    fn try_from(e: pb::WatchEvent) -> Result<Self, WatchDecodeError> {
        match e.event.ok_or(WatchDecodeError::Empty)? {
            pb::watch_event::Event::Snapshot(s) => Ok(WatchItem::Snapshot(Snapshot {
                revision: s.revision,
                nodes: s
                    .nodes
                    .into_iter()
                    .map(Node::try_from)
                    .collect::<Result<_, _>>()?,
                endpoints: s
                    .endpoints
                    .into_iter()
                    .map(Endpoint::try_from)
                    .collect::<Result<_, _>>()?,
                identities: s.identities.into_iter().map(Identity::from).collect(),
                clusters: clusters_from_pb(s.revision, &s.clusters)?,
            })),
            pb::watch_event::Event::MeshCidrs(m) => Ok(WatchItem::Event(Event::MeshCidrs {
                revision: m.revision,
                clusters: clusters_from_pb(m.revision, &m.clusters)?,
            })),
            pb::watch_event::Event::EndpointUpserted(u) => {
                let endpoint = u.endpoint.ok_or(WatchDecodeError::Missing {
                    revision: u.revision,
                    what: "endpoint",
                })?;
                Ok(WatchItem::Event(Event::EndpointUpserted {
                    revision: u.revision,
                    endpoint: Endpoint::try_from(endpoint)?,
                }))
            }
            pb::watch_event::Event::EndpointRemoved(r) => {
                let ip = r.ip.parse().map_err(|_| WatchDecodeError::EndpointIp {
                    ip: r.ip.clone(),
                    node: r.node.clone(),
                })?;
                Ok(WatchItem::Event(Event::EndpointRemoved {
                    revision: r.revision,
                    ip,
                    node: r.node,
                    cluster: r.cluster,
                }))
            }
            pb::watch_event::Event::IdentityAdded(a) => {
                let identity = a.identity.ok_or(WatchDecodeError::Missing {
                    revision: a.revision,
                    what: "identity",
                })?;
                Ok(WatchItem::Event(Event::IdentityAdded {
                    revision: a.revision,
                    identity: identity.into(),
                }))
            }
            pb::watch_event::Event::ServiceUpdated(u) => {
                let service = u.service.ok_or(WatchDecodeError::Missing {
                    revision: u.revision,
                    what: "service",
                })?;
                let service =
                    crate::service::GlobalService::try_from(&service).map_err(|problem| {
                        WatchDecodeError::Service {
                            revision: u.revision,
                            problem,
                        }
                    })?;
                Ok(WatchItem::Event(Event::ServiceUpdated {
                    revision: u.revision,
                    service,
                }))
            }
            pb::watch_event::Event::ServiceBackends(u) => {
                let problem = |problem| WatchDecodeError::Service {
                    revision: u.revision,
                    problem,
                };
                Ok(WatchItem::Event(Event::ServiceBackends {
                    revision: u.revision,
                    removed: crate::service::backends_from_pb(&u.removed).map_err(problem)?,
                    added: crate::service::backends_from_pb(&u.added).map_err(problem)?,
                    namespace: u.namespace,
                    name: u.name,
                }))
            }
            pb::watch_event::Event::Upserted(u) => {
                let node = u.node.ok_or(WatchDecodeError::MissingNode {
                    revision: u.revision,
                })?;
                Ok(WatchItem::Event(Event::Upserted {
                    revision: u.revision,
                    node: Node::try_from(node)?,
                }))
            }
            pb::watch_event::Event::Removed(r) => {
                let reason = match pb::RemoveReason::try_from(r.reason) {
                    Ok(pb::RemoveReason::Deregistered) => RemoveReason::Deregistered,
                    Ok(pb::RemoveReason::LeaseExpired) => RemoveReason::LeaseExpired,
                    _ => {
                        return Err(WatchDecodeError::UnknownReason {
                            name: r.name,
                            code: r.reason,
                        })
                    }
                };
                Ok(WatchItem::Event(Event::Removed {
                    revision: r.revision,
                    name: r.name,
                    cluster: r.cluster,
                    reason,
                }))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn key(b: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    }

    pub(crate) fn pb_node(name: &str, cidr: &str) -> pb::Node {
        pb::Node {
            name: name.into(),
            cluster: "c1".into(),
            cluster_id: 1,
            underlay_ip: "198.18.1.10".into(),
            listen_port: 51820,
            wg_public_key: key(7),
            pod_cidrs: vec![cidr.into()],
            tunnel_ip: String::new(),
            roles: vec![],
            encryption: Default::default(),
            labels: Default::default(),
            addresses: Default::default(),
        }
    }

    #[test]
    fn roundtrip_pb() {
        let n = Node::try_from(pb_node("n1", "10.1.0.0/24")).unwrap();
        assert_eq!(n.underlay_ip.to_string(), "198.18.1.10");
        assert_eq!(n.tunnel_ip, None);
        let mut p = pb::Node::from(&n);
        assert_eq!(p, pb_node("n1", "10.1.0.0/24"));
        p.tunnel_ip = "100.64.64.1".into();
        let n2 = Node::try_from(p).unwrap();
        assert_eq!(n2.tunnel_ip, Some(Ipv4Addr::new(100, 64, 64, 1)));
        assert!(n2.same_registration(&n));
    }

    fn err_of(f: impl FnOnce(&mut pb::Node)) -> String {
        let mut p = pb_node("n1", "10.1.0.0/24");
        f(&mut p);
        Node::try_from(p).unwrap_err().to_string()
    }

    #[test]
    fn validation_errors_name_field_and_fix() {
        assert!(err_of(|p| p.name = String::new()).contains("name is empty"));
        let e = err_of(|p| p.wg_public_key = "not base64!".into());
        assert!(e.contains("wg_public_key") && e.contains("base64"), "{e}");
        let e = err_of(|p| p.wg_public_key = "AAAA".into());
        assert!(e.contains("3 bytes") && e.contains("32 bytes"), "{e}");
        let e = err_of(|p| p.underlay_ip = "198.18.1".into());
        assert!(e.contains("underlay_ip") && e.contains("198.18.1"), "{e}");
        let e = err_of(|p| p.pod_cidrs = vec!["10.1.0.0/33".into()]);
        assert!(e.contains("pod CIDR") && e.contains("10.1.0.0/33"), "{e}");
        let e = err_of(|p| p.pod_cidrs = vec!["10.1.0.5/24".into()]);
        assert!(e.contains("use 10.1.0.0/24"), "{e}");
        let e = err_of(|p| p.pod_cidrs = vec!["10.1.0.0/16".into(), "10.1.2.0/24".into()]);
        assert!(e.contains("overlap"), "{e}");
        let e = err_of(|p| p.cluster_id = 256);
        assert!(e.contains("cluster_id") && e.contains("1..=255"), "{e}");
        let e = err_of(|p| p.listen_port = 70000);
        assert!(e.contains("listen_port"), "{e}");
        let e = err_of(|p| p.underlay_ip = "0.0.0.0".into());
        assert!(e.contains("underlay_ip"), "{e}");
    }

    #[test]
    fn wrong_cluster_message() {
        let mut p = pb_node("n1", "10.1.0.0/24");
        p.cluster = "c2".into();
        p.cluster_id = 2;
        let n = Node::try_from(p).unwrap();
        let e = n.check_cluster("c1", 1).unwrap_err().to_string();
        assert!(
            e.starts_with("node n1 says cluster c2 (id 2) but this discovery serves c1 (id 1)"),
            "{e}"
        );
        assert!(n.check_cluster("c2", 2).is_ok());
    }

    #[test]
    fn watch_event_roundtrip() {
        let n = Node::try_from(pb_node("n1", "10.1.0.0/24")).unwrap();
        let events = [
            Event::Upserted {
                revision: 3,
                node: n.clone(),
            },
            Event::Removed {
                revision: 4,
                name: "n1".into(),
                cluster: "c1".into(),
                reason: RemoveReason::LeaseExpired,
            },
        ];
        for e in events {
            let back = WatchItem::try_from(pb::WatchEvent::from(&e)).unwrap();
            assert_eq!(back, WatchItem::Event(e));
        }
        let ep = crate::endpoint::Endpoint {
            ip: "10.1.0.10".parse().unwrap(),
            name: "a".into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: "n1".into(),
            cluster: "c1".into(),
            identity: 65_792,
        };
        let id = Identity {
            id: 65_792,
            labels: ep.labels.clone(),
        };
        for e in [
            Event::EndpointUpserted {
                revision: 10,
                endpoint: ep.clone(),
            },
            Event::EndpointRemoved {
                revision: 11,
                ip: ep.ip,
                node: "n1".into(),
                cluster: "c1".into(),
            },
            Event::IdentityAdded {
                revision: 12,
                identity: id.clone(),
            },
        ] {
            let back = WatchItem::try_from(pb::WatchEvent::from(&e)).unwrap();
            assert_eq!(back, WatchItem::Event(e));
        }
        let clusters = vec![
            ClusterCidrs {
                cluster: "c1".into(),
                cluster_id: 1,
                pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            },
            ClusterCidrs {
                cluster: "c2".into(),
                cluster_id: 2,
                pod_cidrs: vec![],
            },
        ];
        let e = Event::MeshCidrs {
            revision: 13,
            clusters: clusters.clone(),
        };
        let back = WatchItem::try_from(pb::WatchEvent::from(&e)).unwrap();
        assert_eq!(back, WatchItem::Event(e));
        let s = Snapshot {
            revision: 9,
            nodes: vec![n],
            endpoints: vec![ep],
            identities: vec![id],
            clusters,
        };
        let back = WatchItem::try_from(pb::WatchEvent::from(&s)).unwrap();
        assert_eq!(back, WatchItem::Snapshot(s));
    }
}
