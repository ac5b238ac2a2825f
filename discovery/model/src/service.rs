//! Services and global services (pure; no I/O).
//!
//! A service belongs to one cluster. It is global when annotated
//! `service.cilium.io/global: "true"` or exported (an MCS-style
//! ServiceExport). `service.cilium.io/shared: "false"` means its cluster
//! consumes the global service but does not share its own backends.
//! `service.cilium.io/affinity` (`local` | `remote` | `none`, default `none`)
//! is taken from the local cluster's definition.
//!
//! The backends of a service in a cluster are that cluster's endpoints in the
//! service's namespace whose labels match its (non-empty) selector. The
//! merged view of a local service ([`merge`]): its local backends, plus, when
//! it is global, the backends of every other cluster that defines the same
//! `namespace/name` as global and shared, each tagged with its cluster.
//! [`MergedServices`] keeps that view up to date change by change.

mod convert;

pub use convert::backends_from_pb;
mod merged;

pub use merged::{MergedServices, ServiceChange};

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;

pub const GLOBAL_ANNOTATION: &str = "service.cilium.io/global";
pub const SHARED_ANNOTATION: &str = "service.cilium.io/shared";
pub const AFFINITY_ANNOTATION: &str = "service.cilium.io/affinity";

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

fn default_namespace() -> String {
    "default".to_string()
}

/// A service of one cluster, as defined there (Kubernetes/Cilium-like).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Filled by discovery (the cluster that defines the service).
    #[serde(default)]
    pub cluster: String,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// An MCS-style ServiceExport exists for it (makes it global).
    #[serde(default, rename = "export")]
    pub exported: bool,
    /// The virtual IP (ClusterIP) clients of this cluster reach it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    Local,
    Remote,
    #[default]
    None,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Local => "local",
            Affinity::Remote => "remote",
            Affinity::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("service {service}: annotation {key} is {value:?}; use one of {allowed}")]
    Annotation {
        service: String,
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("service {service}: field `{field}`: {problem}")]
    Field {
        service: String,
        field: &'static str,
        problem: String,
    },
    #[error(
        "service {service} is defined twice; give each service of a cluster its own namespace/name"
    )]
    Duplicate { service: String },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Service {
    /// `namespace/name`, the key services are merged by.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn bool_annotation(&self, key: &'static str, default: bool) -> Result<bool, ServiceError> {
        match self.annotations.get(key).map(String::as_str) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ServiceError::Annotation {
                service: self.key(),
                key,
                value: other.to_string(),
                allowed: "\"true\", \"false\"",
            }),
        }
    }

    /// Global: annotated `service.cilium.io/global: "true"` or exported.
    pub fn is_global(&self) -> Result<bool, ServiceError> {
        Ok(self.exported || self.bool_annotation(GLOBAL_ANNOTATION, false)?)
    }

    /// Whether this cluster shares its backends (default true).
    pub fn is_shared(&self) -> Result<bool, ServiceError> {
        self.bool_annotation(SHARED_ANNOTATION, true)
    }

    pub fn affinity(&self) -> Result<Affinity, ServiceError> {
        match self
            .annotations
            .get(AFFINITY_ANNOTATION)
            .map(String::as_str)
        {
            None | Some("none") => Ok(Affinity::None),
            Some("local") => Ok(Affinity::Local),
            Some("remote") => Ok(Affinity::Remote),
            Some(other) => Err(ServiceError::Annotation {
                service: self.key(),
                key: AFFINITY_ANNOTATION,
                value: other.to_string(),
                allowed: "local, remote, none",
            }),
        }
    }

    /// Checks names, ports and annotations.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let field = |field: &'static str, problem: String| ServiceError::Field {
            service: self.key(),
            field,
            problem,
        };
        if !valid_name(&self.name) {
            return Err(field(
                "name",
                format!(
                    "{:?} is not a DNS label (a-z, 0-9, -; at most 63)",
                    self.name
                ),
            ));
        }
        if !valid_name(&self.namespace) {
            return Err(field(
                "namespace",
                format!(
                    "{:?} is not a DNS label (a-z, 0-9, -; at most 63)",
                    self.namespace
                ),
            ));
        }
        if self.ports.is_empty() {
            return Err(field("ports", "no port; list at least one".into()));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(field("ports", format!("port {i} is 0; use 1..=65535")));
            }
            let dup = self.ports[..i]
                .iter()
                .any(|o| (o.port, o.protocol) == (p.port, p.protocol));
            if dup {
                return Err(field(
                    "ports",
                    format!("{}/{} is listed twice", p.port, p.protocol.as_str()),
                ));
            }
        }
        self.is_global()?;
        self.is_shared()?;
        self.affinity()?;
        Ok(())
    }

    /// Whether `e` is a backend of this service in `e`'s cluster.
    pub fn selects(&self, e: &Endpoint) -> bool {
        !self.selector.is_empty()
            && e.namespace == self.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| e.labels.get(k) == Some(v))
    }
}

/// Checks a cluster's list of services: each valid, no `namespace/name` twice.
pub fn validate_all(services: &[Service]) -> Result<(), ServiceError> {
    for (i, s) in services.iter().enumerate() {
        s.validate()?;
        if services[..i].iter().any(|o| o.key() == s.key()) {
            return Err(ServiceError::Duplicate { service: s.key() });
        }
    }
    Ok(())
}

/// One backend of a merged service: an endpoint, with its cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub cluster: String,
    pub ip: IpAddr,
    pub node: String,
    pub name: String,
}

/// A local service with its backends merged across clusters (local only
/// when it is not global). Backends are in (cluster, IP) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalService {
    pub namespace: String,
    pub name: String,
    pub global: bool,
    pub shared: bool,
    pub affinity: Affinity,
    pub ports: Vec<ServicePort>,
    pub backends: Vec<Backend>,
    /// The local definition's virtual IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
}

impl GlobalService {
    /// The merged form of this cluster's definition `def` with `backends`
    /// (already in (cluster, IP) order). Annotations that do not parse
    /// count as not global, not shared, affinity none.
    pub(crate) fn of(def: &Service, backends: Vec<Backend>) -> GlobalService {
        GlobalService {
            namespace: def.namespace.clone(),
            name: def.name.clone(),
            global: def.is_global().unwrap_or(false),
            shared: def.is_shared().unwrap_or(false),
            affinity: def.affinity().unwrap_or_default(),
            ports: def.ports.clone(),
            backends,
            vip: def.vip,
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Applies a change of backends only (`ServiceBackendsChanged`):
    /// removes `removed`, adds `added`, keeping (cluster, IP) order.
    pub fn change_backends(&mut self, removed: &[Backend], added: &[Backend]) {
        for b in removed {
            if let Ok(i) = self.backends.binary_search(b) {
                self.backends.remove(i);
            }
        }
        for b in added {
            if let Err(i) = self.backends.binary_search(b) {
                self.backends.insert(i, b.clone());
            }
        }
    }
}

fn backends_of<'a>(
    s: &Service,
    cluster: &str,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> Vec<Backend> {
    endpoints
        .into_iter()
        .filter(|e| e.cluster == cluster && s.selects(e))
        .map(|e| Backend {
            cluster: e.cluster.clone(),
            ip: e.ip,
            node: e.node.clone(),
            name: e.name.clone(),
        })
        .collect()
}

/// The merged services of `local`: one per service that `local` defines,
/// keyed `namespace/name`. `services` holds every known definition (local
/// and imported); `endpoints` every known endpoint. A definition whose
/// annotations do not parse counts as local-only and not shared.
pub fn merge(
    local: &str,
    services: &[Service],
    endpoints: &[&Endpoint],
) -> BTreeMap<String, GlobalService> {
    let mut out = BTreeMap::new();
    for s in services.iter().filter(|s| s.cluster == local) {
        let global = s.is_global().unwrap_or(false);
        let mut backends = backends_of(s, local, endpoints.iter().copied());
        if global {
            for r in services.iter().filter(|r| {
                r.cluster != local
                    && r.key() == s.key()
                    && r.is_global().unwrap_or(false)
                    && r.is_shared().unwrap_or(false)
            }) {
                backends.extend(backends_of(r, &r.cluster, endpoints.iter().copied()));
            }
        }
        backends.sort();
        out.insert(s.key(), GlobalService::of(s, backends));
    }
    out
}

/// The merged services that differ between `old` and `new` (as in `new`).
pub fn changed<'a>(
    old: &BTreeMap<String, GlobalService>,
    new: &'a BTreeMap<String, GlobalService>,
) -> Vec<&'a GlobalService> {
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
#[path = "service/tests.rs"]
mod tests;
