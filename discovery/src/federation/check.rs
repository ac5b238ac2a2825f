//! What a remote may claim (pure). A remote may send only its own cluster's
//! records, under its own cluster ID, with identities in its own range
//! (`id >> 16 == cluster_id`), tunnel IPs in its own block, pod CIDRs that
//! overlap neither ours nor another remote's, and endpoints inside their
//! node's pod CIDRs. A remote that names another cluster or claims a cluster
//! ID already in use gets nothing applied at all; otherwise each bad record
//! is rejected on its own and the rest is imported.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::RemoteView;
use crate::alloc::{CLUSTER_SHIFT as TUNNEL_SHIFT, TUNNEL_BASE};
use crate::endpoint::Endpoint;
use crate::identity::{cluster_of, Labels};
use crate::model::{first_overlap, Node};
use crate::service::Service;

/// Why a remote's record (or the whole remote) was not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// The remote serves, or the record names, another cluster than the
    /// remote's configured name.
    ClusterName,
    /// The cluster ID is ours or another remote's, or not the remote's.
    ClusterId,
    /// An identity outside the remote's range.
    IdentityRange,
    /// A pod CIDR overlapping one of ours or another remote's.
    PodCidrOverlap,
    /// An endpoint outside its node's pod CIDRs (or on a node not imported).
    EndpointOutsidePodCidr,
    /// A tunnel IP outside the remote's block of 100.64.0.0/10.
    TunnelIpRange,
    /// A record that cannot be read.
    Invalid,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ClusterName => "cluster_name",
            RejectReason::ClusterId => "cluster_id",
            RejectReason::IdentityRange => "identity_range",
            RejectReason::PodCidrOverlap => "pod_cidr_overlap",
            RejectReason::EndpointOutsidePodCidr => "endpoint_outside_pod_cidr",
            RejectReason::TunnelIpRange => "tunnel_ip_range",
            RejectReason::Invalid => "invalid",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected record: `key` names it (`cluster`, `node c2/n1`,
/// `endpoint 10.2.0.10`, `identity 131328`), `detail` says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub key: String,
    pub reason: RejectReason,
    pub detail: String,
}

/// This cluster: its name, ID and registered nodes.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub cluster: &'a str,
    pub cluster_id: u8,
    pub nodes: &'a [Node],
}

/// Another remote, as far as it is imported.
#[derive(Debug, Clone)]
pub struct OtherRemote<'a> {
    pub name: &'a str,
    pub cluster_id: Option<u8>,
    pub nodes: Vec<&'a Node>,
}

/// What may be imported from a remote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub cluster_id: u8,
    pub nodes: BTreeMap<String, Node>,
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    pub identities: BTreeMap<u32, Labels>,
    /// Service definitions, by `namespace/name`.
    pub services: BTreeMap<String, Service>,
}

/// The verdict on a remote's view: `accepted` is `None` when the remote as
/// a whole is rejected (nothing of it may be applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub accepted: Option<Accepted>,
    pub rejections: Vec<Rejection>,
}

fn tunnel_ip_in_block(ip: Ipv4Addr, cluster_id: u8) -> bool {
    let base = u32::from(TUNNEL_BASE);
    let ip = u32::from(ip);
    ip >= base && ip - base < (1 << 22) && (ip - base) >> TUNNEL_SHIFT == u32::from(cluster_id)
}

/// Checks a remote's view against this cluster and the other remotes.
pub fn check(remote: &str, view: &RemoteView, local: &Local, others: &[OtherRemote]) -> Checked {
    let whole = |reason, detail| Checked {
        accepted: None,
        rejections: vec![Rejection {
            key: "cluster".to_string(),
            reason,
            detail,
        }],
    };
    if view.cluster != remote {
        return whole(
            RejectReason::ClusterName,
            format!(
                "remote {remote} says it serves cluster {:?}; fix --remote {remote}=... or the \
                 remote's --cluster",
                view.cluster
            ),
        );
    }
    let Some(cid) = u8::try_from(view.cluster_id).ok().filter(|id| *id != 0) else {
        return whole(
            RejectReason::Invalid,
            format!(
                "remote {remote} sent cluster id {} (not 1..=255; an older meshgate?)",
                view.cluster_id
            ),
        );
    };
    if cid == local.cluster_id {
        return whole(
            RejectReason::ClusterId,
            format!(
                "remote {remote} claims cluster id {cid}, which is this cluster's ({}); every \
                 cluster needs its own ID",
                local.cluster
            ),
        );
    }
    if let Some(o) = others.iter().find(|o| o.cluster_id == Some(cid)) {
        return whole(
            RejectReason::ClusterId,
            format!(
                "remote {remote} claims cluster id {cid}, which remote {} already has; every \
                 cluster needs its own ID",
                o.name
            ),
        );
    }

    let mut out = Checked::default();
    let mut acc = Accepted {
        cluster_id: cid,
        ..Accepted::default()
    };
    let mut reject = |key: String, reason, detail: String| {
        out.rejections.push(Rejection {
            key,
            reason,
            detail,
        })
    };

    for (id, i) in &view.identities {
        let key = format!("identity {id}");
        if cluster_of(*id) != u32::from(cid) || *id != i.id {
            reject(
                key,
                RejectReason::IdentityRange,
                format!(
                    "remote {remote} (cluster id {cid}) sent identity {id}, which is in cluster \
                     id {}'s range",
                    cluster_of(*id)
                ),
            );
            continue;
        }
        acc.identities.insert(*id, i.labels.clone());
    }

    'nodes: for (key, p) in &view.nodes {
        let key = format!("node {key}");
        let node = match Node::try_from(p.clone()) {
            Ok(n) => n,
            Err(e) => {
                reject(key, RejectReason::Invalid, e.to_string());
                continue;
            }
        };
        if node.cluster != remote {
            reject(
                key,
                RejectReason::ClusterName,
                format!(
                    "remote {remote} sent node {} of cluster {}; a remote may send only its own \
                     cluster's nodes",
                    node.name, node.cluster
                ),
            );
            continue;
        }
        if node.cluster_id != cid {
            reject(
                key,
                RejectReason::ClusterId,
                format!(
                    "node {remote}/{} says cluster id {}, but remote {remote} has cluster id {cid}",
                    node.name, node.cluster_id
                ),
            );
            continue;
        }
        if let Some(ip) = node.tunnel_ip.filter(|ip| !tunnel_ip_in_block(*ip, cid)) {
            reject(
                key,
                RejectReason::TunnelIpRange,
                format!(
                    "node {remote}/{} has tunnel IP {ip}, outside cluster id {cid}'s block",
                    node.name
                ),
            );
            continue;
        }
        let theirs = local.nodes.iter().map(|n| (local.cluster, n)).chain(
            others
                .iter()
                .flat_map(|o| o.nodes.iter().map(move |n| (o.name, *n))),
        );
        for (owner, other) in theirs {
            if let Some((mine, its)) = first_overlap(&node.pod_cidrs, &other.pod_cidrs) {
                reject(
                    key,
                    RejectReason::PodCidrOverlap,
                    format!(
                        "node {remote}/{} has pod CIDR {mine}, which overlaps pod CIDR {its} of \
                         node {owner}/{}",
                        node.name, other.name
                    ),
                );
                continue 'nodes;
            }
        }
        acc.nodes.insert(node.name.clone(), node);
    }

    for (ip, p) in &view.endpoints {
        let key = format!("endpoint {ip}");
        let e = match Endpoint::try_from(p.clone()) {
            Ok(e) => e,
            Err(err) => {
                reject(key, RejectReason::Invalid, err.to_string());
                continue;
            }
        };
        let what = format!(
            "endpoint {} ({}) of node {}/{}",
            e.full_name(),
            e.ip,
            e.cluster,
            e.node
        );
        if e.cluster != remote {
            reject(
                key,
                RejectReason::ClusterName,
                format!("remote {remote} sent {what}; a remote may send only its own endpoints"),
            );
            continue;
        }
        let Some(node) = acc.nodes.get(&e.node) else {
            reject(
                key,
                RejectReason::EndpointOutsidePodCidr,
                format!("{what}: its node is not imported"),
            );
            continue;
        };
        if !node.pod_cidrs.iter().any(|c| c.contains(&e.ip)) {
            let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
            reject(
                key,
                RejectReason::EndpointOutsidePodCidr,
                format!(
                    "{what} is outside the node's pod CIDRs {}",
                    cidrs.join(", ")
                ),
            );
            continue;
        }
        if cluster_of(e.identity) != u32::from(cid) {
            reject(
                key,
                RejectReason::IdentityRange,
                format!(
                    "{what} has identity {}, outside cluster id {cid}'s range",
                    e.identity
                ),
            );
            continue;
        }
        acc.endpoints.insert(e.ip, e);
    }

    for p in &view.services {
        let key = format!("service {}/{}", p.namespace, p.name);
        let s = match Service::try_from(p) {
            Ok(s) => s,
            Err(err) => {
                reject(key, RejectReason::Invalid, err);
                continue;
            }
        };
        if s.cluster != remote {
            reject(
                key,
                RejectReason::ClusterName,
                format!(
                    "remote {remote} sent service {} of cluster {:?}; a remote may send only \
                     its own services",
                    s.key(),
                    s.cluster
                ),
            );
            continue;
        }
        if let Err(err) = s.validate() {
            reject(key, RejectReason::Invalid, err.to_string());
            continue;
        }
        if acc.services.contains_key(&s.key()) {
            reject(
                key,
                RejectReason::Invalid,
                format!("remote {remote} sent service {} twice", s.key()),
            );
            continue;
        }
        acc.services.insert(s.key(), s);
    }
    out.accepted = Some(acc);
    out
}
