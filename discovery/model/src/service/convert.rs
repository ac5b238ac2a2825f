//! Services to and from their protobuf form.

use std::net::IpAddr;

use super::{Affinity, Backend, GlobalService, Protocol, Service, ServiceChange, ServicePort};
use crate::pb;

fn protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "TCP" | "" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        other => Err(format!("protocol {other:?} is not TCP or UDP")),
    }
}

impl From<&ServicePort> for pb::ServicePort {
    fn from(p: &ServicePort) -> Self {
        pb::ServicePort {
            name: p.name.clone(),
            port: u32::from(p.port),
            protocol: p.protocol.as_str().to_string(),
        }
    }
}

impl TryFrom<&pb::ServicePort> for ServicePort {
    type Error = String;
    fn try_from(p: &pb::ServicePort) -> Result<Self, String> {
        Ok(ServicePort {
            name: p.name.clone(),
            port: u16::try_from(p.port).map_err(|_| format!("port {} is out of range", p.port))?,
            protocol: protocol(&p.protocol)?,
        })
    }
}

fn vip(s: &str) -> Result<Option<std::net::Ipv4Addr>, String> {
    match s {
        "" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| format!("service VIP {v:?} is not an IPv4 address")),
    }
}

fn ports(ps: &[pb::ServicePort]) -> Result<Vec<ServicePort>, String> {
    ps.iter().map(ServicePort::try_from).collect()
}

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> Self {
        pb::Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            cluster: s.cluster.clone(),
            ports: s.ports.iter().map(pb::ServicePort::from).collect(),
            selector: s.selector.clone().into_iter().collect(),
            annotations: s.annotations.clone().into_iter().collect(),
            exported: s.exported,
            vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

impl TryFrom<&pb::Service> for Service {
    type Error = String;
    fn try_from(p: &pb::Service) -> Result<Self, String> {
        Ok(Service {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            cluster: p.cluster.clone(),
            ports: ports(&p.ports)?,
            selector: p.selector.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
            exported: p.exported,
            vip: vip(&p.vip)?,
        })
    }
}

impl From<&Backend> for pb::Backend {
    fn from(b: &Backend) -> Self {
        pb::Backend {
            ip: b.ip.to_string(),
            cluster: b.cluster.clone(),
            node: b.node.clone(),
            name: b.name.clone(),
        }
    }
}

impl TryFrom<&pb::Backend> for Backend {
    type Error = String;
    fn try_from(b: &pb::Backend) -> Result<Self, String> {
        let ip: IpAddr =
            b.ip.parse()
                .map_err(|_| format!("backend IP {:?} does not parse", b.ip))?;
        Ok(Backend {
            cluster: b.cluster.clone(),
            ip,
            node: b.node.clone(),
            name: b.name.clone(),
        })
    }
}

/// Backends from their protobuf form (the first unreadable one is the error).
pub fn backends_from_pb(bs: &[pb::Backend]) -> Result<Vec<Backend>, String> {
    bs.iter().map(Backend::try_from).collect()
}

impl From<&GlobalService> for pb::GlobalService {
    fn from(g: &GlobalService) -> Self {
        pb::GlobalService {
            name: g.name.clone(),
            namespace: g.namespace.clone(),
            global: g.global,
            shared: g.shared,
            affinity: g.affinity.as_str().to_string(),
            ports: g.ports.iter().map(pb::ServicePort::from).collect(),
            backends: g.backends.iter().map(pb::Backend::from).collect(),
            vip: g.vip.map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

impl TryFrom<&pb::GlobalService> for GlobalService {
    type Error = String;
    fn try_from(p: &pb::GlobalService) -> Result<Self, String> {
        let affinity = match p.affinity.as_str() {
            "local" => Affinity::Local,
            "remote" => Affinity::Remote,
            "none" | "" => Affinity::None,
            other => return Err(format!("affinity {other:?} is not local, remote or none")),
        };
        let backends = backends_from_pb(&p.backends)?;
        Ok(GlobalService {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            global: p.global,
            shared: p.shared,
            affinity,
            ports: ports(&p.ports)?,
            backends,
            vip: vip(&p.vip)?,
        })
    }
}

impl TryFrom<&pb::ServiceBackendsChanged> for ServiceChange {
    type Error = String;
    fn try_from(p: &pb::ServiceBackendsChanged) -> Result<Self, String> {
        Ok(ServiceChange::Backends {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            removed: backends_from_pb(&p.removed)?,
            added: backends_from_pb(&p.added)?,
        })
    }
}
