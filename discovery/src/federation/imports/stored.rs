//! An imported endpoint kept compactly. A discovery of a 255-cluster mesh
//! holds every other cluster's endpoints (~15 000 in the mesh benchmark);
//! as an [`Endpoint`] each cost ~0.9 KB (five `String`s and a `BTreeMap`
//! leaf for one or two labels), this ~0.3 KB. Its IP is the imports' key
//! and its cluster is the remote's name (a remote may send only its own),
//! so neither is kept.

use std::net::IpAddr;

use super::PackedLabels;
use crate::endpoint::Endpoint;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredEndpoint {
    name: Box<str>,
    namespace: Box<str>,
    labels: PackedLabels,
    node: Box<str>,
    identity: u32,
}

impl StoredEndpoint {
    pub(super) fn of(e: &Endpoint) -> StoredEndpoint {
        StoredEndpoint {
            name: e.name.as_str().into(),
            namespace: e.namespace.as_str().into(),
            labels: PackedLabels::of(&e.labels),
            node: e.node.as_str().into(),
            identity: e.identity,
        }
    }

    /// The endpoint with IP `ip` of cluster `cluster`.
    pub(super) fn unpack(&self, ip: IpAddr, cluster: &str) -> Endpoint {
        Endpoint {
            ip,
            name: self.name.to_string(),
            namespace: self.namespace.to_string(),
            labels: self.labels.unpack(),
            node: self.node.to_string(),
            cluster: cluster.to_string(),
            identity: self.identity,
        }
    }

    /// Whether this is `e` but for its IP and cluster (without unpacking).
    pub(super) fn is(&self, e: &Endpoint) -> bool {
        *self.name == *e.name
            && *self.namespace == *e.namespace
            && self.labels.is(&e.labels)
            && *self.node == *e.node
            && self.identity == e.identity
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_compares_as_the_endpoint() {
        let e = Endpoint {
            ip: "10.2.0.10".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            name: "web-1".into(),
            namespace: "shop".into(),
            labels: [
                ("app".to_string(), "web".to_string()),
                ("tier".to_string(), "front".to_string()),
            ]
            .into(),
            node: "n1".into(),
            cluster: "c2".into(),
            identity: 2 << 16 | 256,
        };
        let s = StoredEndpoint::of(&e);
        assert_eq!(s.unpack(e.ip, "c2"), e);
        assert!(s.is(&e));
        for other in [
            Endpoint {
                name: "web-2".into(),
                ..e.clone()
            },
            Endpoint {
                namespace: "default".into(),
                ..e.clone()
            },
            Endpoint {
                labels: [("app".to_string(), "web".to_string())].into(),
                ..e.clone()
            },
            Endpoint {
                node: "n2".into(),
                ..e.clone()
            },
            Endpoint {
                identity: 2 << 16 | 257,
                ..e.clone()
            },
        ] {
            assert!(!s.is(&other), "{other:?}");
        }
    }
}
