//! A small client helper for agents and tests.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub use crate::pb;
pub use crate::pb::discovery_client::DiscoveryClient;
use crate::Error;

/// How long [`connect`] waits for the TCP/HTTP2 connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to discovery at `endpoint` (e.g. `http://198.18.1.2:7100`),
/// failing after [`CONNECT_TIMEOUT`]. No per-request timeout is set, so
/// `Watch` streams stay open; put deadlines on unary calls yourself.
pub async fn connect(endpoint: &str) -> Result<DiscoveryClient<Channel>, Error> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|source| Error::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = ep.connect().await.map_err(|e| Error::Connect {
        endpoint: endpoint.to_string(),
        reason: crate::error::chain(&e),
    })?;
    Ok(DiscoveryClient::new(channel))
}
