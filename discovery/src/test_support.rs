//! Helpers the unit tests of this crate share (the model crate has its own).

use base64::Engine as _;

use crate::pb;

/// A WireGuard public key of 32 bytes `b`.
pub(crate) fn key(b: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([b; 32])
}

/// A node of cluster c1 with pod CIDR `cidr`.
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
