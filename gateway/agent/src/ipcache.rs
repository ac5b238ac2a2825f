//! The agent's copy of the mesh-wide ipcache (IP → identity, node, cluster)
//! and the identities' labels, kept from the watch stream. Applying events is
//! pure; [`save`] writes `<state-dir>/ipcache.json` atomically.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use ipnet::Ipv4Net;
use meshgate_model::endpoint::{Endpoint, Identity};
use meshgate_model::identity::Labels;
use meshgate_model::pb;
use meshgate_model::pb::watch_event::Event;
use serde::{Deserialize, Serialize};

pub const IPCACHE_FILE: &str = "ipcache.json";

/// One ipcache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCacheEntry {
    pub identity: u32,
    pub node: String,
    pub cluster: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

/// `ipcache.json` (docs/contracts.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCache {
    pub entries: BTreeMap<IpAddr, IpCacheEntry>,
    #[serde(default)]
    pub identities: BTreeMap<u32, Labels>,
    /// Every cluster's pod CIDRs with its cluster ID, as discovery lists
    /// them (its own cluster's and each remote's).
    #[serde(default)]
    pub mesh_cidrs: BTreeMap<Ipv4Net, u8>,
}

/// The CIDRs of discovery's cluster list; an unreadable one is an error.
fn cluster_cidrs(clusters: &[pb::ClusterCidrs]) -> Result<BTreeMap<Ipv4Net, u8>, String> {
    let mut out = BTreeMap::new();
    for c in clusters {
        let id = u8::try_from(c.cluster_id)
            .map_err(|_| format!("cluster {} has ID {} (1..=255)", c.cluster, c.cluster_id))?;
        for cidr in &c.pod_cidrs {
            let net: Ipv4Net = cidr.parse().map_err(|_| {
                format!(
                    "cluster {}: pod CIDR {cidr:?} is not an IPv4 CIDR",
                    c.cluster
                )
            })?;
            out.insert(net.trunc(), id);
        }
    }
    Ok(out)
}

fn entry(e: Endpoint) -> (IpAddr, IpCacheEntry) {
    (
        e.ip,
        IpCacheEntry {
            identity: e.identity,
            node: e.node,
            cluster: e.cluster,
            namespace: e.namespace,
            name: e.name,
        },
    )
}

impl IpCache {
    /// Applies one watch event. Returns whether the cache changed; an
    /// unreadable record is an error and changes nothing. Node events are
    /// not about the ipcache and change nothing.
    pub fn apply(&mut self, event: &Event) -> Result<bool, String> {
        match event {
            Event::Snapshot(s) => {
                let mut next = IpCache::default();
                for e in &s.endpoints {
                    let (ip, en) = entry(Endpoint::try_from(e.clone()).map_err(|e| e.to_string())?);
                    next.entries.insert(ip, en);
                }
                for i in &s.identities {
                    let i = Identity::from(i.clone());
                    next.identities.insert(i.id, i.labels);
                }
                next.mesh_cidrs = cluster_cidrs(&s.clusters)?;
                let changed = next != *self;
                *self = next;
                Ok(changed)
            }
            Event::EndpointUpserted(u) => {
                let e = u.endpoint.clone().ok_or_else(|| {
                    format!("endpoint upsert at revision {} is empty", u.revision)
                })?;
                let (ip, en) = entry(Endpoint::try_from(e).map_err(|e| e.to_string())?);
                Ok(self.entries.insert(ip, en.clone()) != Some(en))
            }
            Event::EndpointRemoved(r) => {
                let ip: IpAddr =
                    r.ip.parse()
                        .map_err(|_| format!("endpoint removal names {:?}, not an IP", r.ip))?;
                // Only the node that holds the IP can give it up.
                let held = self
                    .entries
                    .get(&ip)
                    .is_some_and(|e| e.node == r.node && e.cluster == r.cluster);
                Ok(held && self.entries.remove(&ip).is_some())
            }
            Event::IdentityAdded(a) => {
                let i: pb::Identity = a
                    .identity
                    .clone()
                    .ok_or_else(|| format!("identity event at revision {} is empty", a.revision))?;
                Ok(self.identities.insert(i.id, i.labels.clone()) != Some(i.labels))
            }
            Event::MeshCidrs(m) => {
                let next = cluster_cidrs(&m.clusters)?;
                let changed = next != self.mesh_cidrs;
                self.mesh_cidrs = next;
                Ok(changed)
            }
            Event::Upserted(_)
            | Event::Removed(_)
            | Event::ServiceUpdated(_)
            | Event::ServiceBackends(_) => Ok(false),
        }
    }
}

/// Writes the ipcache atomically (temp file + rename).
pub fn save(dir: &Path, cache: &IpCache) -> anyhow::Result<()> {
    let path = dir.join(IPCACHE_FILE);
    let bytes = serde_json::to_vec_pretty(cache).context("encoding the ipcache")?;
    super::persist::write_atomic(&path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `ipcache.json`; `None` if there is none.
pub fn load(dir: &Path) -> anyhow::Result<Option<IpCache>> {
    let path = dir.join(IPCACHE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not a valid ipcache file", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(ip: &str, node: &str, id: u32) -> pb::Endpoint {
        pb::Endpoint {
            ip: ip.into(),
            name: format!("pod-{ip}"),
            namespace: "default".into(),
            labels: Default::default(),
            node: node.into(),
            cluster: "c1".into(),
            identity: id,
        }
    }

    fn upsert(e: pb::Endpoint) -> Event {
        Event::EndpointUpserted(pb::EndpointUpserted {
            revision: 1,
            endpoint: Some(e),
        })
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut c = IpCache::default();
        let snap = Event::Snapshot(pb::Snapshot {
            revision: 5,
            nodes: vec![],
            endpoints: vec![ep("10.1.0.10", "n1", 65_792), ep("10.1.1.10", "n2", 65_792)],
            identities: vec![pb::Identity {
                id: 65_792,
                labels: [("app".to_string(), "web".to_string())].into(),
            }],
            ..Default::default()
        });
        assert_eq!(c.apply(&snap), Ok(true));
        assert_eq!(c.apply(&snap), Ok(false));
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.identities[&65_792]["app"], "web");
        assert_eq!(c.apply(&upsert(ep("10.1.0.10", "n1", 65_792))), Ok(false));
        assert_eq!(c.apply(&upsert(ep("10.1.0.10", "n1", 65_793))), Ok(true));
        // a removal from a node that does not hold the IP is ignored
        let rm = |node: &str| {
            Event::EndpointRemoved(pb::EndpointRemoved {
                revision: 7,
                ip: "10.1.1.10".into(),
                node: node.into(),
                cluster: "c1".into(),
            })
        };
        assert_eq!(c.apply(&rm("n1")), Ok(false));
        assert_eq!(c.apply(&rm("n2")), Ok(true));
        assert_eq!(c.entries.len(), 1);
        assert!(c.apply(&upsert(ep("nope", "n1", 1))).is_err());
    }

    #[test]
    fn file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut c = IpCache::default();
        c.apply(&upsert(ep("10.1.0.10", "n1", 65_792))).unwrap();
        c.identities.insert(65_792, Default::default());
        save(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c));
        let text = std::fs::read_to_string(dir.path().join(IPCACHE_FILE)).unwrap();
        assert!(text.contains("\"10.1.0.10\""), "{text}");
    }
}
