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

/// nftables' `nft`, which the plan's steps need: isolated underlays
/// (bridge-family rules) and, in worlds with externals, the nodes' pod
/// masquerade.
pub fn check_nft(plan: &crate::plan::Plan) -> Result<()> {
    let isolated = plan
        .clusters
        .iter()
        .any(|c| c.underlay == crate::scenario::Underlay::Isolated);
    let masquerade = !plan.externals.is_empty();
    if !isolated && !masquerade {
        return Ok(());
    }
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => {
            let why = match (isolated, masquerade) {
                (true, _) => "to isolate clusters with `underlay: isolated`",
                _ => "to masquerade pod traffic to the world's externals",
            };
            Err(LabError::HostMissing {
                missing: format!("the `nft` command (nftables), needed {why}"),
                fix: "install nftables (e.g. apt-get install nftables), or make every \
                      cluster's underlay routable and leave `externals` out"
                    .into(),
            })
        }
    }
}

/// Makes the host's bpf filesystem visible to agents at
/// [`crate::plan::BPFFS_ROOT`]: `ip netns exec` mounts a fresh sysfs over
/// `/sys`, which hides `/sys/fs/bpf`, so the lab bind-mounts it there (the
/// same filesystem: pins outlive agents and are seen from the host). Mounts
/// `/sys/fs/bpf` first if the host has not. Idempotent.
pub fn ensure_bpffs() -> Result<()> {
    use meshgate_ebpf::bpffs;
    let host = Path::new("/sys/fs/bpf");
    let target = Path::new(crate::plan::BPFFS_ROOT);
    let failed = |what: String, e: meshgate_ebpf::Error| LabError::HostMissing {
        missing: format!("{what}: {e}"),
        fix: "the eBPF datapath needs a bpf filesystem (kernel option CONFIG_BPF_SYSCALL; \
              `mount -t bpf bpf /sys/fs/bpf`), or use `datapath: plain`"
            .into(),
    };
    bpffs::ensure_mounted(host).map_err(|e| failed("mounting /sys/fs/bpf".into(), e))?;
    std::fs::create_dir_all(target).map_err(|source| LabError::Io {
        what: format!("creating {}", target.display()),
        source,
    })?;
    if bpffs::is_bpffs(target).map_err(|e| failed(format!("checking {}", target.display()), e))? {
        return Ok(());
    }
    let src = std::ffi::CString::new("/sys/fs/bpf").unwrap_or_default();
    let dst = std::ffi::CString::new(crate::plan::BPFFS_ROOT).unwrap_or_default();
    // SAFETY: valid NUL-terminated paths; a bind mount takes no fstype or data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LabError::Io {
            what: format!("bind-mounting /sys/fs/bpf on {}", target.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
