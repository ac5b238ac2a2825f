//! A small client helper for agents and tests.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Status;

pub use crate::pb;
pub use crate::pb::discovery_client::DiscoveryClient;
pub use crate::tls::ClientTls;
mod error;
use error::ClientError as Error;
pub use error::{chain, ClientError};

mod watch;
pub use watch::{watch, PartsError, SnapshotParts, WatchStream};

/// How long [`connect`] waits for the TCP/HTTP2 connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an HTTP/2 keepalive ping may go unanswered before the
/// connection counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest message a client takes (gRPC's default is 4 MiB). A watch
/// opened with [`watch`] takes its snapshot in parts of about 64 KiB; a
/// plain `Watch` (or one to a discovery older than parts) starts with the
/// whole state in one snapshot message, about 150 bytes an endpoint: 4 MiB
/// stopped at some 25,000 endpoints; this allows about 1.5 million.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Connects to discovery at `endpoint` (e.g. `http://198.18.1.2:7100`),
/// failing after [`CONNECT_TIMEOUT`]. No per-request timeout is set, so
/// `Watch` streams stay open; put deadlines on unary calls yourself.
pub async fn connect(endpoint: &str) -> Result<DiscoveryClient<Channel>, Error> {
    connect_with(endpoint, None).await
}

/// Like [`connect`], over TLS when `tls` is given (the endpoint is then
/// `https://...`). A failed handshake is explained (whose certificate was
/// refused, and by whom).
pub async fn connect_with(
    endpoint: &str,
    tls: Option<&ClientTls>,
) -> Result<DiscoveryClient<Channel>, Error> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|source| Error::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        // A loaded server (a burst of imports) may answer pings late; 5 s
        // broke links with `http2 error` in the mesh benchmark.
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        if !endpoint.starts_with("https://") {
            return Err(Error::Config(format!(
                "discovery endpoint {endpoint} must start with https:// when TLS is configured"
            )));
        }
        ep = ep
            .tls_config(tls.config())
            .map_err(|e| Error::Config(format!("TLS settings: {}", chain(&e))))?;
    }
    let channel = ep.connect().await.map_err(|e| {
        let reason = chain(&e);
        match tls.and_then(|t| crate::tls::explain_failure(&reason, endpoint, t)) {
            Some(explanation) => Error::Tls {
                explanation,
                reason,
            },
            None => Error::Connect {
                endpoint: endpoint.to_string(),
                reason,
            },
        }
    })?;
    if let Some(tls) = tls {
        tokio::time::timeout(CONNECT_TIMEOUT, probe(channel.clone()))
            .await
            .map_err(|_| {
                let reason =
                    format!("no answer within {CONNECT_TIMEOUT:?} after the TLS handshake");
                if tls.identity.is_none() {
                    // The channel keeps reconnecting to a server that closes
                    // every connection right after the handshake: that is a
                    // server insisting on a client certificate.
                    Error::Tls {
                        explanation: format!(
                            "discovery at {endpoint} closed every connection after the TLS \
                             handshake: it requires a client certificate: pass --tls-cert and \
                             --tls-key"
                        ),
                        reason,
                    }
                } else {
                    Error::Connect {
                        endpoint: endpoint.to_string(),
                        reason,
                    }
                }
            })?
            .map_err(|status| probe_error(&status, endpoint, tls))?;
    }
    Ok(DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// With TLS 1.3 the server checks our certificate after we consider the
/// handshake done, so a refusal shows only on the first call. This call (to
/// a method no server has, answered `UNIMPLEMENTED` without side effects)
/// surfaces it at connect time.
async fn probe(channel: Channel) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(chain(&e)))?;
    let codec = tonic_prost::ProstCodec::<pb::WatchRequest, pb::RenewResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/meshgate.discovery.v1.Discovery/ConnectionProbe",
    );
    match grpc
        .unary(
            tonic::Request::new(pb::WatchRequest::default()),
            path,
            codec,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
        Err(s) => Err(s),
    }
}

/// Why the first call over a fresh TLS connection failed: the connection
/// was closed right after the handshake, so discovery refused us.
fn probe_error(status: &Status, endpoint: &str, tls: &ClientTls) -> Error {
    let reason = chain(status);
    let explanation = crate::tls::explain_failure(&reason, endpoint, tls).unwrap_or_else(|| {
        if tls.identity.is_none() {
            format!(
                "discovery at {endpoint} closed the connection after the TLS handshake: \
                 it requires a client certificate: pass --tls-cert and --tls-key"
            )
        } else {
            format!(
                "discovery at {endpoint} closed the connection after the TLS handshake: \
                 it refused our certificate (is it signed by the mesh CA that discovery trusts, \
                 and still valid?)"
            )
        }
    });
    Error::Tls {
        explanation,
        reason,
    }
}

/// The message of a failed call, explained when it is a TLS failure (with
/// TLS 1.3 a refused client certificate shows on the first call, not at
/// connect).
pub fn explain_status(status: &Status, endpoint: &str, tls: Option<&ClientTls>) -> String {
    let text = chain(status);
    tls.and_then(|t| crate::tls::explain_failure(&text, endpoint, t))
        .unwrap_or_else(|| status.message().to_string())
}
