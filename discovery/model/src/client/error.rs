//! What [`super::connect`] and [`super::connect_with`] fail with.

/// A failed connection to discovery, with the facts and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid discovery client config: {0}")]
    Config(String),
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
    #[error("{explanation} ({reason})")]
    Tls { explanation: String, reason: String },
}

/// `err` and its sources, joined with ": " (transport errors hide the cause otherwise).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}
