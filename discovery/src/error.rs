//! The crate-level error returned by [`crate::server::serve`] and [`crate::client::connect`].

use std::net::SocketAddr;

use crate::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid discovery config: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot restore discovery state: {0}")]
    Registry(#[from] RegistryError),
    #[error(
        "cannot listen on {addr}: {source} (is another discovery running, or the port in use?)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("discovery gRPC server on {addr} failed: {}", chain(.source))]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("discovery endpoint {endpoint:?} is not a valid URI ({source}); use http://IP:PORT")]
    InvalidEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error(
        "cannot connect to discovery at {endpoint}: {reason} (is discovery running and reachable?)"
    )]
    Connect {
        endpoint: String,
        /// The error and its causes, joined with ": ".
        reason: String,
    },
    #[error(transparent)]
    TlsFiles(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Client(#[from] meshgate_model::client::ClientError),
    #[error("{explanation} ({reason})")]
    Tls { explanation: String, reason: String },
}

/// `err` and its sources, joined with ": " (transport errors hide the cause otherwise).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    meshgate_model::client::chain(err)
}
