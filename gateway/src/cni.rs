//! The CNI plugin, `meshgate-cni` (CNI spec 1.0.0: ADD, DEL, CHECK,
//! VERSION), run by the container runtime with the network config on stdin
//! and `CNI_*` in the environment:
//!
//! - [`config`]: the config and the environment, read and checked, and the
//!   CNI error codes;
//! - [`ipam`]: the IPAM plugin it delegates to (`host-local`, as the spec
//!   describes delegation);
//! - [`pod_net`]: the pod's veth, addresses and routes (netlink, the pod's
//!   side from a thread inside its network namespace);
//! - [`proto`]: what it says to the agent over the agent's CNI socket
//!   (the agent's side is `agent/pods.rs`).
//!
//! ADD: IPAM, the veth (host side down), the pod side configured, then the
//! agent, which answers once the endpoint has its identity and the
//! datapath holds it; only then the host side comes up with the pod's
//! route, so the pod's first packet is already identified and encrypted.
//! Any failure undoes what was made, in reverse. DEL asks the agent first
//! (with the agent down it fails, and the runtime retries), then removes
//! the veth and releases the IP; what is already gone is no error.

pub mod config;
pub mod ipam;
pub mod plugin;
pub mod pod_net;
// Shared with the agent (`agent/pods.rs`), which uses all of it.
#[allow(dead_code)]
pub mod proto;

pub use plugin::main;
