//! The pod CIDRs of the mesh's clusters (pure).
//!
//! This cluster's come from discovery's `--pod-cidr` (checked here:
//! IPv4, no host bits, no two overlapping); a node may then register only
//! pod CIDRs inside them ([`check_node`], called by the registry). A
//! remote's come from the first entry of its snapshot's `clusters` and are
//! checked on import (`federation/check.rs`, `cidrs` there), kept while the
//! remote is configured (`federation/imports.rs`). The whole list, this
//! cluster first, is in every watch snapshot and in a `MeshCidrs` event
//! when it changes (`server/federation.rs`). Agents keep an unreachable
//! route for each listed CIDR; strict mode drops pod traffic into one that
//! would leave other than through the mesh.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{first_overlap, ModelError, Node};
use crate::pb;

/// The pod CIDRs of one cluster of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCidrs {
    pub cluster: String,
    pub cluster_id: u8,
    pub pod_cidrs: Vec<IpNet>,
}

/// A pod CIDR that cannot be one of a cluster's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{value:?} is not a CIDR; use e.g. 10.1.0.0/16")]
    Parse { value: String },
    #[error("pod CIDR {cidr} is not IPv4; meshgate's pod networks are IPv4")]
    NotIpv4 { cidr: IpNet },
    #[error("pod CIDR {cidr} has host bits set; use {fixed}")]
    HostBits { cidr: IpNet, fixed: IpNet },
    #[error("pod CIDRs {a} and {b} overlap; list each range once")]
    Overlap { a: IpNet, b: IpNet },
    #[error("cluster {cluster}: cluster id {value} is not 1..=255")]
    ClusterId { cluster: String, value: u32 },
}

/// Parses one pod CIDR of a cluster: IPv4, host bits zero.
pub fn parse_pod_cidr(value: &str) -> Result<IpNet, CidrError> {
    let cidr: IpNet = value.trim().parse().map_err(|_| CidrError::Parse {
        value: value.to_string(),
    })?;
    check_one(cidr)?;
    Ok(cidr)
}

fn check_one(cidr: IpNet) -> Result<(), CidrError> {
    if !matches!(cidr, IpNet::V4(_)) {
        return Err(CidrError::NotIpv4 { cidr });
    }
    if cidr.trunc() != cidr {
        return Err(CidrError::HostBits {
            cidr,
            fixed: cidr.trunc(),
        });
    }
    Ok(())
}

/// Checks one cluster's pod CIDRs: each as [`parse_pod_cidr`] does, and
/// no two overlapping.
pub fn validate(cidrs: &[IpNet]) -> Result<(), CidrError> {
    for (i, cidr) in cidrs.iter().enumerate() {
        check_one(*cidr)?;
        if let Some((a, b)) = first_overlap(&[*cidr], &cidrs[i + 1..]) {
            return Err(CidrError::Overlap { a, b });
        }
    }
    Ok(())
}

/// `cidrs` joined with ", " (for messages).
pub fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that every pod CIDR of `node` lies inside one of its cluster's
/// `cidrs` (this cluster `cluster`'s `--pod-cidr`). None configured: any.
pub fn check_node(node: &Node, cluster: &str, cidrs: &[IpNet]) -> Result<(), ModelError> {
    if cidrs.is_empty() {
        return Ok(());
    }
    match node
        .pod_cidrs
        .iter()
        .find(|c| !cidrs.iter().any(|cc| cc.contains(*c)))
    {
        None => Ok(()),
        Some(cidr) => Err(ModelError::PodCidrOutsideCluster {
            node: node.name.clone(),
            cidr: *cidr,
            cluster: cluster.to_string(),
            cluster_cidrs: join(cidrs),
        }),
    }
}

impl From<&ClusterCidrs> for pb::ClusterCidrs {
    fn from(c: &ClusterCidrs) -> Self {
        pb::ClusterCidrs {
            cluster: c.cluster.clone(),
            cluster_id: u32::from(c.cluster_id),
            pod_cidrs: c.pod_cidrs.iter().map(ToString::to_string).collect(),
        }
    }
}

impl TryFrom<&pb::ClusterCidrs> for ClusterCidrs {
    type Error = CidrError;

    /// Reads an entry as sent (parsed, not judged: see `federation/check.rs`).
    fn try_from(p: &pb::ClusterCidrs) -> Result<Self, CidrError> {
        let cluster_id = u8::try_from(p.cluster_id)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| CidrError::ClusterId {
                cluster: p.cluster.clone(),
                value: p.cluster_id,
            })?;
        let pod_cidrs = p
            .pod_cidrs
            .iter()
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map_err(|_| CidrError::Parse { value: c.clone() })
            })
            .collect::<Result<_, _>>()?;
        Ok(ClusterCidrs {
            cluster: p.cluster.clone(),
            cluster_id,
            pod_cidrs,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn a_cluster_cidr_is_ipv4_without_host_bits() {
        assert_eq!(
            parse_pod_cidr(" 10.1.0.0/16").unwrap(),
            "10.1.0.0/16".parse::<IpNet>().unwrap()
        );
        let e = parse_pod_cidr("10.1.0.5/16").unwrap_err().to_string();
        assert_eq!(e, "pod CIDR 10.1.0.5/16 has host bits set; use 10.1.0.0/16");
        let e = parse_pod_cidr("fd00::/64").unwrap_err().to_string();
        assert!(e.contains("not IPv4"), "{e}");
        let e = parse_pod_cidr("10.1.0.0").unwrap_err().to_string();
        assert!(e.contains("\"10.1.0.0\" is not a CIDR"), "{e}");
    }

    #[test]
    fn the_cidrs_of_a_cluster_do_not_overlap() {
        assert!(validate(&nets(&["10.1.0.0/16", "10.2.0.0/16"])).is_ok());
        assert!(validate(&[]).is_ok());
        let e = validate(&nets(&["10.1.0.0/16", "10.3.0.0/16", "10.1.2.0/24"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "pod CIDRs 10.1.0.0/16 and 10.1.2.0/24 overlap; list each range once"
        );
    }

    #[test]
    fn entries_roundtrip_through_protobuf() {
        let c = ClusterCidrs {
            cluster: "c2".into(),
            cluster_id: 2,
            pod_cidrs: nets(&["10.2.0.0/16", "10.20.0.0/16"]),
        };
        let p = pb::ClusterCidrs::from(&c);
        assert_eq!(p.pod_cidrs, ["10.2.0.0/16", "10.20.0.0/16"]);
        assert_eq!(ClusterCidrs::try_from(&p).unwrap(), c);
        let mut bad = p.clone();
        bad.cluster_id = 256;
        assert!(ClusterCidrs::try_from(&bad).is_err());
        let mut bad = p;
        bad.pod_cidrs.push("nope".into());
        assert!(ClusterCidrs::try_from(&bad).is_err());
    }
}
