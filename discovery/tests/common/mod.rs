//! Helpers shared by the discovery integration tests.

use std::time::Duration;

use base64::Engine as _;
use meshgate_discovery::client::DiscoveryClient;
use meshgate_discovery::model::WatchItem;
use meshgate_discovery::pb;
use tonic::transport::Channel;
use tonic::Streaming;

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
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    }
}

/// Opens a watch (every event, whole services).
pub async fn watch(c: &mut DiscoveryClient<Channel>) -> Streaming<pb::WatchEvent> {
    c.watch(pb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner()
}

/// The next watch event, decoded; panics if none comes `within`.
pub async fn next(stream: &mut Streaming<pb::WatchEvent>, within: Duration) -> WatchItem {
    let msg = tokio::time::timeout(within, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {within:?}"))
        .expect("watch stream error")
        .expect("watch stream ended");
    WatchItem::try_from(msg).expect("decode watch event")
}
