//! meshgate-tunnel: node keys and the WireGuard backends.
//!
//! * [`keys`]: the node's X25519 key, persisted with mode 0600 and never logged.
//! * [`peers`]: pure reconciliation of desired peers against the current ones.
//! * [`lpm`]: longest-prefix match used for cryptokey routing.
//! * [`userspace`]: WireGuard on boringtun over a persistent TUN device.
//! * [`kernel`]: kernel WireGuard over netlink.
//! * [`ipsec`]: ESP between nodes over XFRM netlink (`--encryption ipsec`).
//! * [`backend`]: the interface both backends share and the start-time choice.
//! * [`routes`]: the interface address and the routes through the tunnel.

pub mod backend;
pub mod ipsec;
pub mod kernel;
pub mod keys;
pub mod lpm;
pub mod netlink;
mod nlsock;
pub mod offload;
pub mod peers;
pub mod routes;
mod rx_ages;
pub mod tun;
pub mod userspace;

pub use backend::{Backend, BackendChoice, BackendKind, PeerStats};
pub use keys::{KeyError, NodeKey, PublicKey};
pub use peers::{PeerChange, PeerConfig};
