//! The interface both WireGuard backends offer, and the choice between them.

use std::fmt;
use std::str::FromStr;

use crate::keys::NodeKey;
use crate::peers::PeerChange;

/// Which backend carries the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Kernel,
    Userspace,
    /// ESP over XFRM (`--encryption ipsec`).
    Ipsec,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
            BackendKind::Ipsec => "ipsec",
        })
    }
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Kernel WireGuard when the kernel has it, userspace otherwise.
    #[default]
    Auto,
    Kernel,
    Userspace,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "kernel" => Ok(BackendChoice::Kernel),
            "userspace" => Ok(BackendChoice::Userspace),
            other => Err(format!(
                "backend {other:?} is not known: use auto, kernel or userspace"
            )),
        }
    }
}

/// Counters and handshake state of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub name: String,
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
    /// Milliseconds since the last completed handshake; `None` before the first.
    pub last_handshake_age_ms: Option<u64>,
    /// Milliseconds since anything authenticated (data, keepalive or
    /// handshake) last arrived from the peer; `None` if nothing ever did or
    /// the backend cannot tell (kernel).
    pub last_rx_age_ms: Option<u64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// What the IPsec backend reports of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecState {
    pub generation: u8,
    pub rotating: bool,
    pub offload: String,
}

/// What the userspace backend's datapath offloads, as probed at start
/// (and, for UDP GSO, as still on after the kernel's answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// The kernel hands over TCP super-packets (TUN TSO).
    pub tso: bool,
    /// The kernel hands over UDP super-packets (TUN USO, Linux 6.2+).
    pub uso: bool,
    /// Received TCP segments are coalesced into super-packets for the kernel.
    pub gro_writes: bool,
    /// Datagrams one UDP send may carry (1: no GSO).
    pub udp_gso_segments: usize,
    /// Received datagrams arrive coalesced (UDP GRO).
    pub udp_gro: bool,
}

/// Errors of the backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Tun(#[from] crate::tun::TunError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("binding the WireGuard UDP port {port}: {source} (is another agent or WireGuard listening on it?)")]
    Bind { port: u16, source: std::io::Error },
    #[error(
        "the kernel WireGuard backend is unavailable: {reason}; use --backend userspace (or auto)"
    )]
    KernelUnavailable { reason: String },
    #[error("{action}: {detail}")]
    Command { action: String, detail: String },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("restart handover: {action}: {source}")]
    Handover {
        action: &'static str,
        source: std::io::Error,
    },
    #[error("starting the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A WireGuard device the agent drives. Peers are changed one at a time.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The network interface carrying the tunnel.
    fn interface(&self) -> &str;
    /// Applies one peer change without touching the other peers.
    fn apply(&self, change: &PeerChange) -> Result<(), BackendError>;
    /// Switches to a new static key. Established sessions keep carrying
    /// traffic until sessions under the new key are up, so nothing is lost.
    fn rotate_key(&self, key: &NodeKey) -> Result<(), BackendError>;
    /// Per-peer counters and handshake ages, in name order.
    fn stats(&self) -> Vec<PeerStats>;
    /// IPsec's generation, rotation and offload state; `None` for WireGuard.
    fn ipsec(&self) -> Option<IpsecState> {
        None
    }
    /// The userspace datapath's offloads; `None` for the kernel's backends.
    fn offloads(&self) -> Option<Offloads> {
        None
    }
    /// Lossless restart, old process: steer received datagrams by session
    /// to this process or the one that takes over, and keep forwarding.
    /// `false`: the backend needs no handover (the kernel keeps the state).
    fn begin_handoff(&self) -> bool {
        false
    }
    /// Lossless restart, old process: stop taking packets from the kernel
    /// (the new process has them now); received ones are still decrypted.
    fn release_tx(&self) {}
    /// Lossless restart, new process: start taking packets from the kernel.
    fn activate(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Whether every peer has a session to send on.
    fn sessions_ready(&self) -> bool {
        true
    }
    /// Stops the backend. With `remove_device` the interface (and so its
    /// routes) goes too, as when the node leaves; without it, the interface
    /// stays so a restarted agent resumes forwarding on it.
    fn shutdown(&self, remove_device: bool) -> Result<(), BackendError>;
}

/// Starts the backend the configuration asks for.
pub fn start(
    choice: BackendChoice,
    interface: &str,
    key: &NodeKey,
    listen_port: u16,
) -> Result<(Box<dyn Backend>, Option<String>), BackendError> {
    start_with(
        choice,
        interface,
        key,
        listen_port,
        crate::userspace::UserspaceOptions::default(),
    )
}

/// As [`start`], with the userspace backend's handover options.
pub fn start_with(
    choice: BackendChoice,
    interface: &str,
    key: &NodeKey,
    listen_port: u16,
    opts: crate::userspace::UserspaceOptions,
) -> Result<(Box<dyn Backend>, Option<String>), BackendError> {
    match choice {
        BackendChoice::Userspace => Ok((
            Box::new(crate::userspace::UserspaceDevice::start_with(
                interface,
                key,
                listen_port,
                opts,
            )?),
            None,
        )),
        BackendChoice::Kernel => {
            crate::kernel::probe()?;
            Ok((
                Box::new(crate::kernel::KernelDevice::start(
                    interface,
                    key,
                    listen_port,
                )?),
                None,
            ))
        }
        BackendChoice::Auto => match crate::kernel::probe() {
            Ok(()) => Ok((
                Box::new(crate::kernel::KernelDevice::start(
                    interface,
                    key,
                    listen_port,
                )?),
                None,
            )),
            Err(BackendError::KernelUnavailable { reason }) => Ok((
                Box::new(crate::userspace::UserspaceDevice::start_with(
                    interface,
                    key,
                    listen_port,
                    opts,
                )?),
                Some(reason),
            )),
            Err(other) => Err(other),
        },
    }
}
