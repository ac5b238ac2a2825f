//! meshgate discovery: the server of the gRPC Discovery API, the node and endpoint registry
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
mod error;
pub mod federation;
pub mod registry;
pub mod server;
pub mod store;
#[cfg(test)]
mod test_support;

// The shared model, its API and client live in `meshgate-model`; they are
// re-exported so paths inside this crate read as before.
pub use meshgate_model::{certs, tls};
pub use meshgate_model::{cidrs, client, endpoint, identity, model, pb, policy, service};

pub use error::Error;
