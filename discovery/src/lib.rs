//! meshgate discovery: the gRPC Discovery API, the node and endpoint registry
//! (a pure state machine), tunnel IP and security identity allocation, the
//! embedded on-disk store, the server and a small client helper.
//!
//! Layout: [`model`] (plain types + proto conversions + validation),
//! [`endpoint`] (endpoints and identities as plain types),
//! [`alloc`] (tunnel IPs), [`identity`] (security identities),
//! [`registry`] (state machine, time passed in),
//! [`store`] (persistence), [`server`] (tonic shell), [`client`],
//! [`certs`] (mesh CA and certificates), [`tls`] (mutual TLS),
//! [`service`] (services and their merge across clusters),
//! [`policy`] (NetworkPolicy / CiliumNetworkPolicy → policy map entries),
//! [`cidrs`] (every cluster's pod CIDRs, checked and announced).

pub mod alloc;
pub mod certs;
pub mod cidrs;
pub mod client;
pub mod endpoint;
mod error;
pub mod federation;
pub mod identity;
pub mod model;
pub mod policy;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;

pub use error::Error;

/// Generated protobuf/gRPC types for `meshgate.discovery.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("meshgate.discovery.v1");
}
