//! meshgate eBPF datapath: the tc programs of `bpf/` (compiled by `build.rs`
//! with clang and embedded), and their aya loader and typed maps.
//!
//! ```no_run
//! # use meshgate_ebpf::*;
//! # fn main() -> Result<()> {
//! let mut dp = Datapath::load("/sys/fs/bpf/meshgate")?;
//! let desired = [Attachment::new("lxc-pod-a", Hook::FromPod)].into();
//! dp.reconcile(&desired)?;
//! # Ok(()) }
//! ```

pub mod attach;
pub mod bpffs;
pub mod clock;
pub mod error;
pub mod layout;
pub mod loader;
pub mod maps;
pub mod object;
pub mod reason;

pub use attach::{AttachChoice, AttachMode, Attachment, Hook};
pub use clock::monotonic_ns;
pub use error::{Error, Result};
pub use layout::{MARK_EGRESS, MARK_MAGIC, MARK_SNAT};
pub use loader::{remove_pin_dir, AttachOutcome, Datapath, ReconcileReport, ATTACH_ENV};
pub use maps::icmp_type_port;
pub use maps::{
    Affinity, Backend, Egress, EgressFlow, EgressRoute, FlowEvent, Fqdn, FqdnEntry, FqdnPorts,
    Frontend, IpcacheEntry, LbConnection, LbService, Maps, PolicyRule, Proto, EGRESS_MAX_GATEWAYS,
    FQDN_MAX_PORTS,
};
pub use reason::{identity, Direction, Point, Reason, Verdict};
