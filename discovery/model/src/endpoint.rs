//! Endpoints and identities as plain Rust types (serde), their protobuf
//! conversions and field validation. An endpoint is one ipcache entry:
//! pod IP → identity, node, cluster.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{Labels, CLUSTER_LABEL, NAMESPACE_LABEL};
use crate::model::MAX_NAME_LEN;
use crate::pb;

/// The namespace of an endpoint that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// An endpoint as discovery stores and publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: Labels,
    pub node: String,
    pub cluster: String,
    /// Filled by discovery.
    pub identity: u32,
}

impl Endpoint {
    /// `namespace/name`, for messages.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Equal but for the identity, which discovery fills in.
    pub fn same_report(&self, other: &Endpoint) -> bool {
        Endpoint {
            identity: other.identity,
            ..self.clone()
        } == *other
    }
}

/// An allocated identity and its label set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub labels: Labels,
}

/// One entry of an agent's `--endpoints` file (YAML list of these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub labels: Labels,
    /// The pod's interface on the node side (its host-side veth), where the
    /// eBPF datapath attaches `from_pod`. Not sent to discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The pod's Kubernetes service account (`default` when not given, as
    /// in Kubernetes): its identity carries it as
    /// [`SERVICE_ACCOUNT_LABEL`], which policies select by.
    #[serde(
        default,
        rename = "serviceAccount",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account: Option<String>,
}

/// The label holding an endpoint's Kubernetes service account (Cilium's).
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The service account of a pod that names none (Kubernetes').
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

impl EndpointSpec {
    /// The report entry for this endpoint (node, cluster and identity are
    /// filled by discovery): its labels with its service account's.
    pub fn to_pb(&self) -> pb::Endpoint {
        let mut labels = self.labels.clone();
        labels
            .entry(SERVICE_ACCOUNT_LABEL.to_string())
            .or_insert_with(|| {
                self.service_account
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string())
            });
        pb::Endpoint {
            ip: self.ip.to_string(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            labels,
            node: String::new(),
            cluster: String::new(),
            identity: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint with IP {ip:?}: field `name` is empty; set the pod's name")]
    EmptyName { ip: String },
    #[error("endpoint {name:?} is {len} bytes long; use at most {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("endpoint {name}: field `ip` {value:?} is not an IP address; use e.g. 10.1.0.10")]
    Ip { name: String, value: String },
    #[error("endpoint {name}: IP {ip} cannot be a pod address; use the pod's unicast IP")]
    IpUnusable { name: String, ip: IpAddr },
    #[error("endpoint {name}: a label key is empty; every label needs a key")]
    EmptyLabelKey { name: String },
    #[error(
        "endpoint {name}: label {key}={value} says another {what} than {expected}; \
         leave it out (discovery sets it)"
    )]
    ReservedLabel {
        name: String,
        key: String,
        value: String,
        what: &'static str,
        expected: String,
    },
}

/// Parses and checks a reported endpoint; `node`, `cluster` and `identity`
/// of the result come from the caller (the report), not the wire.
pub fn endpoint_from_report(
    p: pb::Endpoint,
    node: &str,
    cluster: &str,
) -> Result<Endpoint, EndpointError> {
    let namespace = match p.namespace.trim() {
        "" => DEFAULT_NAMESPACE.to_string(),
        ns => ns.to_string(),
    };
    let name = format!("{namespace}/{}", p.name);
    if p.name.trim().is_empty() {
        return Err(EndpointError::EmptyName { ip: p.ip });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(EndpointError::NameTooLong {
            len: name.len(),
            name,
        });
    }
    let ip: IpAddr = p.ip.trim().parse().map_err(|_| EndpointError::Ip {
        name: name.clone(),
        value: p.ip.clone(),
    })?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(EndpointError::IpUnusable { name, ip });
    }
    for (key, value) in &p.labels {
        if key.trim().is_empty() {
            return Err(EndpointError::EmptyLabelKey { name });
        }
        let reserved = match key.as_str() {
            NAMESPACE_LABEL if *value != namespace => Some(("namespace", namespace.clone())),
            CLUSTER_LABEL if value != cluster => Some(("cluster", cluster.to_string())),
            _ => None,
        };
        if let Some((what, expected)) = reserved {
            return Err(EndpointError::ReservedLabel {
                name,
                key: key.clone(),
                value: value.clone(),
                what,
                expected,
            });
        }
    }
    Ok(Endpoint {
        ip,
        name: p.name,
        namespace,
        labels: p.labels,
        node: node.to_string(),
        cluster: cluster.to_string(),
        identity: 0,
    })
}

impl From<&Endpoint> for pb::Endpoint {
    fn from(e: &Endpoint) -> Self {
        pb::Endpoint {
            ip: e.ip.to_string(),
            name: e.name.clone(),
            namespace: e.namespace.clone(),
            labels: e.labels.clone(),
            node: e.node.clone(),
            cluster: e.cluster.clone(),
            identity: e.identity,
        }
    }
}

impl TryFrom<pb::Endpoint> for Endpoint {
    type Error = EndpointError;

    /// Parses a published endpoint (node, cluster and identity as sent).
    fn try_from(p: pb::Endpoint) -> Result<Self, EndpointError> {
        let (node, cluster, identity) = (p.node.clone(), p.cluster.clone(), p.identity);
        let mut e = endpoint_from_report(p, &node, &cluster)?;
        e.identity = identity;
        Ok(e)
    }
}

impl From<&Identity> for pb::Identity {
    fn from(i: &Identity) -> Self {
        pb::Identity {
            id: i.id,
            labels: i.labels.clone(),
        }
    }
}

impl From<pb::Identity> for Identity {
    fn from(p: pb::Identity) -> Self {
        Identity {
            id: p.id,
            labels: p.labels,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn pb_ep(name: &str, ip: &str, app: &str) -> pb::Endpoint {
        pb::Endpoint {
            ip: ip.into(),
            name: name.into(),
            namespace: String::new(),
            labels: [("app".to_string(), app.to_string())].into(),
            node: String::new(),
            cluster: String::new(),
            identity: 0,
        }
    }

    #[test]
    fn report_fills_defaults_and_roundtrips() {
        let e = endpoint_from_report(pb_ep("a", "10.1.0.10", "web"), "n1", "c1").unwrap();
        assert_eq!(e.namespace, "default");
        assert_eq!(e.full_name(), "default/a");
        assert_eq!((e.node.as_str(), e.cluster.as_str()), ("n1", "c1"));
        let mut with_id = e.clone();
        with_id.identity = 65_792;
        assert!(e.same_report(&with_id));
        let back = Endpoint::try_from(pb::Endpoint::from(&with_id)).unwrap();
        assert_eq!(back, with_id);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = endpoint_from_report(pb_ep("", "10.1.0.10", "web"), "n1", "c1").unwrap_err();
        assert!(e.to_string().contains("`name` is empty"), "{e}");
        let e = endpoint_from_report(pb_ep("a", "10.1.0", "web"), "n1", "c1").unwrap_err();
        assert!(
            e.to_string().contains("default/a") && e.to_string().contains("10.1.0"),
            "{e}"
        );
        let mut p = pb_ep("a", "10.1.0.10", "web");
        p.labels
            .insert(CLUSTER_LABEL.to_string(), "other".to_string());
        let e = endpoint_from_report(p, "n1", "c1").unwrap_err();
        assert!(e.to_string().contains("another cluster than c1"), "{e}");
        let mut p = pb_ep("a", "10.1.0.10", "web");
        p.labels
            .insert(NAMESPACE_LABEL.to_string(), "default".to_string());
        assert!(endpoint_from_report(p, "n1", "c1").is_ok());
    }

    #[test]
    fn spec_yaml_defaults_namespace() {
        let spec: EndpointSpec =
            serde_json::from_str(r#"{"name":"a","ip":"10.1.0.10","labels":{"app":"web"}}"#)
                .unwrap();
        assert_eq!(spec.namespace, "default");
        assert_eq!(spec.to_pb().labels["app"], "web");
        // Every pod has a service account, `default` unless it names one.
        assert_eq!(spec.to_pb().labels[SERVICE_ACCOUNT_LABEL], "default");
        let spec: EndpointSpec =
            serde_json::from_str(r#"{"name":"a","ip":"10.1.0.10","serviceAccount":"payments"}"#)
                .unwrap();
        assert_eq!(spec.to_pb().labels[SERVICE_ACCOUNT_LABEL], "payments");
    }
}
