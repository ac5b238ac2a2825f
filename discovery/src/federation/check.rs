//! What a remote may claim (pure). A remote may send only its own cluster's
//! records, under its own cluster ID, with identities in its own range
//! (`id >> 16 == cluster_id`), tunnel IPs in its own block, pod CIDRs that
//! overlap neither ours nor another remote's, and endpoints inside their
//! node's pod CIDRs. The cluster pod CIDRs it announces ([`cidrs`]) must
//! overlap neither this cluster's (`--pod-cidr`) nor another remote's
//! accepted ones, nor each other. A remote that names another cluster or claims a cluster
//! ID already in use gets nothing applied at all; otherwise each bad record
//! is rejected on its own and the rest is imported.
//!
//! [`check`] judges a whole view; the per-record functions ([`identity`],
//! [`node`], [`endpoint`]) judge one record the same way, so
//! [`super::Imports`] can judge only what an event changed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::claims::{Claims, Overlap};
use super::RemoteView;
use ipnet::IpNet;

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

/// This cluster: its name, ID, pod CIDRs (`--pod-cidr`) and registered
/// nodes.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub cluster: &'a str,
    pub cluster_id: u8,
    pub pod_cidrs: &'a [IpNet],
    pub nodes: &'a [&'a Node],
}

/// Another remote, as far as it is imported.
#[derive(Debug, Clone)]
pub struct OtherRemote<'a> {
    pub name: &'a str,
    pub cluster_id: Option<u8>,
    pub nodes: Vec<&'a Node>,
    /// Its accepted cluster pod CIDRs.
    pub cidrs: Vec<IpNet>,
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
    /// The cluster pod CIDRs it announced that may be listed, in its order.
    pub cidrs: Vec<IpNet>,
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

/// Checks a remote's view against this cluster and the other remotes
/// (`others` answers for every remote but this one).
pub fn check(
    remote: &str,
    view: &RemoteView,
    local: &Local,
    others: &(impl Claims + ?Sized),
) -> Checked {
    let cid = match whole(remote, view, local, others) {
        Ok(cid) => cid,
        Err(r) => {
            return Checked {
                accepted: None,
                rejections: vec![r],
            }
        }
    };
    let mut out = Checked::default();
    debug_assert!(
        view.is_whole(),
        "a view is checked whole only when it holds every record"
    );
    let (cidrs, rejected) = cidrs(remote, &view.cidrs, local, others);
    out.rejections.extend(rejected);
    let mut acc = Accepted {
        cluster_id: cid,
        cidrs,
        ..Accepted::default()
    };
    for (id, i) in &view.identities {
        match identity(remote, cid, *id, i) {
            Ok(labels) => {
                acc.identities.insert(*id, labels);
            }
            Err(r) => out.rejections.push(r),
        }
    }
    // A view checked whole holds every record (see `Imports::hold_all`).
    for (key, p) in view.nodes.iter().filter_map(held) {
        match node(remote, cid, key, p, local, others) {
            Ok(n) => {
                acc.nodes.insert(n.name.clone(), n);
            }
            Err(r) => out.rejections.push(r),
        }
    }
    for (ip, p) in view.endpoints.iter().filter_map(held) {
        match endpoint(remote, cid, ip, p, &acc.nodes) {
            Ok(e) => {
                acc.endpoints.insert(e.ip, e);
            }
            Err(r) => out.rejections.push(r),
        }
    }
    for p in &view.services {
        match service(remote, p, &acc.services) {
            Ok(s) => {
                acc.services.insert(s.key(), s);
            }
            Err(r) => out.rejections.push(r),
        }
    }
    out.accepted = Some(acc);
    out
}

/// A view's record with its key, if the view holds it (not released).
fn held<'a, T>((k, p): (&'a String, &'a Option<Box<T>>)) -> Option<(&'a String, &'a T)> {
    p.as_deref().map(|p| (k, p))
}

fn rejection(key: String, reason: RejectReason, detail: String) -> Rejection {
    Rejection {
        key,
        reason,
        detail,
    }
}

/// The checks on the remote as a whole: its cluster name and ID. Its
/// cluster ID, or the rejection (key `cluster`) of everything it sent.
pub fn whole(
    remote: &str,
    view: &RemoteView,
    local: &Local,
    others: &(impl Claims + ?Sized),
) -> Result<u8, Rejection> {
    let whole = |reason, detail| rejection("cluster".to_string(), reason, detail);
    if view.cluster != remote {
        return Err(whole(
            RejectReason::ClusterName,
            format!(
                "remote {remote} says it serves cluster {:?}; fix --remote {remote}=... or the \
                 remote's --cluster",
                view.cluster
            ),
        ));
    }
    let Some(cid) = u8::try_from(view.cluster_id).ok().filter(|id| *id != 0) else {
        return Err(whole(
            RejectReason::Invalid,
            format!(
                "remote {remote} sent cluster id {} (not 1..=255; an older meshgate?)",
                view.cluster_id
            ),
        ));
    };
    if cid == local.cluster_id {
        return Err(whole(
            RejectReason::ClusterId,
            format!(
                "remote {remote} claims cluster id {cid}, which is this cluster's ({}); every \
                 cluster needs its own ID",
                local.cluster
            ),
        ));
    }
    if let Some(holder) = others.cluster_id_holder(cid) {
        return Err(whole(
            RejectReason::ClusterId,
            format!(
                "remote {remote} claims cluster id {cid}, which remote {holder} already has; \
                 every cluster needs its own ID"
            ),
        ));
    }
    Ok(cid)
}

/// The cluster pod CIDRs remote `remote` announced (as sent): those that
/// may be listed, and a rejection (key `pod_cidr CIDR`) for each other one:
/// unreadable, not IPv4, with host bits, or overlapping this cluster's, an
/// earlier one of its own, or another remote's accepted ones.
pub fn cidrs(
    remote: &str,
    sent: &[String],
    local: &Local,
    others: &(impl Claims + ?Sized),
) -> (Vec<IpNet>, Vec<Rejection>) {
    let mut accepted: Vec<IpNet> = Vec::new();
    let mut rejected = Vec::new();
    for value in sent {
        let key = format!("pod_cidr {value}");
        let cidr = match crate::cidrs::parse_pod_cidr(value) {
            Ok(c) => c,
            Err(e) => {
                rejected.push(rejection(
                    key,
                    RejectReason::Invalid,
                    format!(
                        "remote {remote} announces a cluster pod CIDR that cannot be used: {e}"
                    ),
                ));
                continue;
            }
        };
        let clash = first_overlap(&[cidr], local.pod_cidrs)
            .map(|(_, its)| format!("this cluster's ({}) pod CIDR {its}", local.cluster))
            .or_else(|| {
                first_overlap(&[cidr], &accepted)
                    .map(|(_, its)| format!("its own pod CIDR {its} (listed before it)"))
            })
            .or_else(|| {
                others
                    .cidr_holder(&cidr)
                    .map(|(holder, its)| format!("pod CIDR {its} of remote {holder}"))
            });
        match clash {
            Some(what) => rejected.push(rejection(
                key,
                RejectReason::PodCidrOverlap,
                format!(
                    "remote {remote} announces cluster pod CIDR {cidr}, which overlaps {what};                      give every cluster its own range (the remote's or this discovery's                      --pod-cidr)"
                ),
            )),
            None => accepted.push(cidr),
        }
    }
    (accepted, rejected)
}

/// One identity of remote `remote` (cluster ID `cid`); key `identity ID`.
pub fn identity(
    remote: &str,
    cid: u8,
    id: u32,
    i: &crate::pb::Identity,
) -> Result<Labels, Rejection> {
    if cluster_of(id) != u32::from(cid) || id != i.id {
        return Err(rejection(
            format!("identity {id}"),
            RejectReason::IdentityRange,
            format!(
                "remote {remote} (cluster id {cid}) sent identity {id}, which is in cluster id \
                 {}'s range",
                cluster_of(id)
            ),
        ));
    }
    Ok(i.labels.clone())
}

/// One node (`key` is the view's, `cluster/name`): its cluster, ID, tunnel
/// IP and pod CIDRs (against ours, then the other remotes').
pub fn node(
    remote: &str,
    cid: u8,
    key: &str,
    p: &crate::pb::Node,
    local: &Local,
    others: &(impl Claims + ?Sized),
) -> Result<Node, Rejection> {
    let key = format!("node {key}");
    let node = Node::try_from(p.clone())
        .map_err(|e| rejection(key.clone(), RejectReason::Invalid, e.to_string()))?;
    if node.cluster != remote {
        return Err(rejection(
            key,
            RejectReason::ClusterName,
            format!(
                "remote {remote} sent node {} of cluster {}; a remote may send only its own \
                 cluster's nodes",
                node.name, node.cluster
            ),
        ));
    }
    if node.cluster_id != cid {
        return Err(rejection(
            key,
            RejectReason::ClusterId,
            format!(
                "node {remote}/{} says cluster id {}, but remote {remote} has cluster id {cid}",
                node.name, node.cluster_id
            ),
        ));
    }
    if let Some(ip) = node.tunnel_ip.filter(|ip| !tunnel_ip_in_block(*ip, cid)) {
        return Err(rejection(
            key,
            RejectReason::TunnelIpRange,
            format!(
                "node {remote}/{} has tunnel IP {ip}, outside cluster id {cid}'s block",
                node.name
            ),
        ));
    }
    let ours = local.nodes.iter().find_map(|other| {
        first_overlap(&node.pod_cidrs, &other.pod_cidrs).map(|(mine, its)| Overlap {
            mine,
            its,
            cluster: local.cluster.to_string(),
            node: other.name.clone(),
        })
    });
    if let Some(o) = ours.or_else(|| others.overlap(&node)) {
        return Err(rejection(
            key,
            RejectReason::PodCidrOverlap,
            format!(
                "node {remote}/{} has pod CIDR {}, which overlaps pod CIDR {} of node {}/{}",
                node.name, o.mine, o.its, o.cluster, o.node
            ),
        ));
    }
    Ok(node)
}

/// One endpoint (`ip` as sent): its cluster, its node among the `nodes`
/// imported from the remote, its IP in that node's pod CIDRs, its identity.
pub fn endpoint(
    remote: &str,
    cid: u8,
    ip: &str,
    p: &crate::pb::Endpoint,
    nodes: &BTreeMap<String, Node>,
) -> Result<Endpoint, Rejection> {
    let key = format!("endpoint {ip}");
    let e = Endpoint::try_from(p.clone())
        .map_err(|err| rejection(key.clone(), RejectReason::Invalid, err.to_string()))?;
    // One way to write each IP (as discovery publishes it), so one record
    // holds an IP and judging it alone judges everything that names it.
    if p.ip != e.ip.to_string() {
        return Err(rejection(
            key,
            RejectReason::Invalid,
            format!(
                "remote {remote} sent endpoint IP {:?}, not written as discovery writes it ({})",
                p.ip, e.ip
            ),
        ));
    }
    let what = || {
        format!(
            "endpoint {} ({}) of node {}/{}",
            e.full_name(),
            e.ip,
            e.cluster,
            e.node
        )
    };
    if e.cluster != remote {
        return Err(rejection(
            key,
            RejectReason::ClusterName,
            format!(
                "remote {remote} sent {}; a remote may send only its own endpoints",
                what()
            ),
        ));
    }
    let Some(node) = nodes.get(&e.node) else {
        return Err(rejection(
            key,
            RejectReason::EndpointOutsidePodCidr,
            format!("{}: its node is not imported", what()),
        ));
    };
    if !node.pod_cidrs.iter().any(|c| c.contains(&e.ip)) {
        let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
        return Err(rejection(
            key,
            RejectReason::EndpointOutsidePodCidr,
            format!(
                "{} is outside the node's pod CIDRs {}",
                what(),
                cidrs.join(", ")
            ),
        ));
    }
    if cluster_of(e.identity) != u32::from(cid) {
        return Err(rejection(
            key,
            RejectReason::IdentityRange,
            format!(
                "{} has identity {}, outside cluster id {cid}'s range",
                what(),
                e.identity
            ),
        ));
    }
    Ok(e)
}

/// One service definition, against those accepted before it.
fn service(
    remote: &str,
    p: &crate::pb::Service,
    accepted: &BTreeMap<String, Service>,
) -> Result<Service, Rejection> {
    let key = format!("service {}/{}", p.namespace, p.name);
    let s =
        Service::try_from(p).map_err(|err| rejection(key.clone(), RejectReason::Invalid, err))?;
    if s.cluster != remote {
        return Err(rejection(
            key,
            RejectReason::ClusterName,
            format!(
                "remote {remote} sent service {} of cluster {:?}; a remote may send only its own \
                 services",
                s.key(),
                s.cluster
            ),
        ));
    }
    if let Err(err) = s.validate() {
        return Err(rejection(key, RejectReason::Invalid, err.to_string()));
    }
    if accepted.contains_key(&s.key()) {
        return Err(rejection(
            key,
            RejectReason::Invalid,
            format!("remote {remote} sent service {} twice", s.key()),
        ));
    }
    Ok(s)
}
