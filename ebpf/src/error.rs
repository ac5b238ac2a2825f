//! What can go wrong loading, attaching and driving the datapath.

use std::io;
use std::path::PathBuf;

use aya::maps::MapError;

use crate::attach::Attachment;

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

    #[error(
        "attaching to {attachment}: {action}: {source}. tc programs are attached as TCX \
         links, which need Linux 6.6 or later"
    )]
    Attach {
        attachment: Attachment,
        action: &'static str,
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

    #[error("invalid attachment pin name {name:?} in {dir}: expected HOOK@INTERFACE")]
    BadPinName { name: String, dir: PathBuf },
}

/// aya's program, link and pin errors, kept whole (the verifier log included).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;
