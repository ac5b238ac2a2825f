//! What can go wrong loading, attaching and driving the datapath.

use std::io;
use std::path::PathBuf;

use aya::maps::MapError;

use crate::attach::{AttachMode, Attachment, BadAttachChoice};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is not on a bpf filesystem, so maps and links cannot be pinned there: \
         mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose a pin directory inside it"
    )]
    NotBpffs { path: PathBuf },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "loading the meshgate tc programs into the kernel failed (needs root or CAP_BPF + \
         CAP_NET_ADMIN; the verifier's log, if any, follows): {source}"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },

    #[error("the object has no program {name}: the build is broken")]
    MissingProgram { name: &'static str },

    #[error("the object has no map {name}: the build is broken")]
    MissingMap { name: &'static str },

    #[error("program {name}: {action}: {source}")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: BoxError,
    },

    #[error("map {name}: {action}: {source}")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: MapError,
    },

    #[error(
        "the pinned map {path} ({found}) does not match this build ({expected}): it was \
         pinned by an incompatible meshgate version. Remove it (its state is lost) or run \
         the version that pinned it"
    )]
    PinnedMapMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error("attaching to {attachment} ({mode}): {action}: {source}{}", mode_hint(*.mode))]
    Attach {
        attachment: Attachment,
        mode: AttachMode,
        action: &'static str,
        #[source]
        source: BoxError,
    },

    #[error("detaching {attachment} ({mode}): {action}: {source}")]
    Detach {
        attachment: Attachment,
        mode: AttachMode,
        action: &'static str,
        #[source]
        source: BoxError,
    },

    #[error(transparent)]
    BadAttachChoice(#[from] BadAttachChoice),

    #[error(
        "MESHGATE_TC_ATTACH=tcx, but this kernel has no TCX (it needs Linux 6.6 or later; \
         the probe got {}): leave MESHGATE_TC_ATTACH unset to attach with tc clsact instead",
        io::Error::from_raw_os_error(*.errno)
    )]
    TcxMissing { errno: i32 },

    #[error(
        "probing whether this kernel has TCX (querying the TCX programs of lo) failed: \
         {source}"
    )]
    TcxProbe {
        #[source]
        source: BoxError,
    },

    #[error("no network interface named {iface} in this network namespace")]
    NoSuchInterface { iface: String },

    #[error(
        "service {frontend} has {count} backends; the datapath holds at most 65535 per \
         service: split it"
    )]
    TooManyBackends { frontend: String, count: usize },

    #[error("service {frontend}: the datapath balances TCP and UDP only, not {proto:?}")]
    LbProto {
        frontend: String,
        proto: crate::Proto,
    },

    #[error(
        "egress route {src} -> {dst} has {count} gateways; the datapath holds at most \
         {max} per route",
        max = crate::maps::EGRESS_MAX_GATEWAYS
    )]
    TooManyEgressGateways {
        src: std::net::Ipv4Addr,
        dst: ipnet::Ipv4Net,
        count: usize,
    },

    #[error(
        "FQDN entry for identity {identity} -> {addr} lists {count} (protocol, port) pairs; \
         the datapath holds at most {max} per entry: allow any port instead, or fewer ports",
        max = crate::maps::FQDN_MAX_PORTS
    )]
    TooManyFqdnPorts {
        identity: u32,
        addr: std::net::Ipv4Addr,
        count: usize,
    },

    #[error("invalid attachment pin name {name:?} in {dir}: expected HOOK@INTERFACE")]
    BadPinName { name: String, dir: PathBuf },
}

fn mode_hint(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tcx => {
            ". TCX links need Linux 6.6 or later (MESHGATE_TC_ATTACH=tc attaches with tc \
             clsact instead)"
        }
        AttachMode::Tc => {
            ". tc attaching needs the clsact qdisc and the bpf classifier \
             (CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF)"
        }
    }
}

/// aya's program, link and pin errors, kept whole (the verifier log included).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;
