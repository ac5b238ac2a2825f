//! Does this machine have what the lab needs?

use std::path::Path;
use std::process::Command;

use crate::error::{LabError, Result};

/// Root, network namespaces, `/dev/net/tun` and iproute2's `ip`.
pub fn check_host() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Err(LabError::HostMissing {
            missing: "network namespaces are not supported (no /proc/self/ns/net)".into(),
            fix: "use a kernel built with CONFIG_NET_NS".into(),
        });
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(LabError::HostMissing {
            missing: "/dev/net/tun is missing (the userspace WireGuard backend needs TUN)".into(),
            fix: "load the tun module (modprobe tun; kernel option CONFIG_TUN) or create the node with mknod /dev/net/tun c 10 200".into(),
        });
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Err(_) => Err(LabError::HostMissing {
            missing: "the `ip` command was not found".into(),
            fix: "install iproute2 (e.g. apt-get install iproute2)".into(),
        }),
        Ok(out) if !out.status.success() => Err(LabError::HostMissing {
            missing: format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            fix: "use an iproute2 with netns support and a kernel with CONFIG_NET_NS".into(),
        }),
        Ok(_) => Ok(()),
    }
}

/// nftables' `nft`, which isolated underlays need (bridge-family rules).
pub fn check_nft() -> Result<()> {
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(LabError::HostMissing {
            missing: "the `nft` command (nftables), needed to isolate clusters with `underlay: isolated`".into(),
            fix: "install nftables (e.g. apt-get install nftables), or make every cluster's underlay routable".into(),
        }),
    }
}
