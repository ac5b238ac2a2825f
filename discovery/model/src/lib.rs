//! meshgate's shared model: what the agent, discovery, the egress crate and
//! the lab have in common (nodes, endpoints, identities, services,
//! policies and their parsing), the discovery API (`pb`, protobuf over
//! tonic) and its client. Discovery's server, stores, registry and
//! federation are in `meshgate-discovery`, which the agent does not need.

pub mod certs;
pub mod cidrs;
pub mod client;
pub mod endpoint;
pub mod identity;
pub mod model;
pub mod policy;
pub mod service;
pub mod tls;

pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("meshgate.discovery.v1");
}
