//! Helpers shared by the discovery integration tests.

use base64::Engine as _;
use meshgate_discovery::pb;

/// A node record of cluster c1 (id 1) with pod CIDR `cidr`; `key_byte`
/// makes its WireGuard key and underlay address distinct.
pub fn pb_node(name: &str, cidr: &str, key_byte: u8) -> pb::Node {
    pb::Node {
        name: name.into(),
        cluster: "c1".into(),
        cluster_id: 1,
        underlay_ip: format!("198.18.1.{}", 10 + u32::from(key_byte)),
        listen_port: 51820,
        wg_public_key: base64::engine::general_purpose::STANDARD.encode([key_byte; 32]),
        pod_cidrs: vec![cidr.into()],
        tunnel_ip: String::new(),
        roles: vec![],
    }
}
