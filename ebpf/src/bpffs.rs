//! The bpf filesystem that pins live in.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use crate::error::{Error, Result};

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` (which must exist) is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::NotBpffs {
        path: path.to_owned(),
    })?;
    // SAFETY: statfs fills the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(Error::Io {
            action: "statfs",
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem on `path` (usually `/sys/fs/bpf`) unless one is
/// already there, as agents do on hosts whose init system did not.
pub fn ensure_mounted(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        action: "creating",
        path: path.to_owned(),
        source,
    })?;
    if is_bpffs(path)? {
        return Ok(());
    }
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::NotBpffs {
        path: path.to_owned(),
    })?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            action: "mounting a bpf filesystem on",
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `BPF_OBJ_GET` and `BPF_LINK_DETACH` from `<linux/bpf.h>`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the bpf link pinned at `path` now, before its pin is removed.
///
/// Removing a link's last pin only drops a reference: the kernel releases
/// the link later from a work queue, so the program can stay attached for a
/// moment after the unlink returns. `BPF_LINK_DETACH` detaches it at once
/// (the link object lives on, empty, until its last reference goes). Links
/// whose type cannot be detached this way (`EOPNOTSUPP`, `EINVAL`) are left
/// to the release.
pub fn detach_pinned_link(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::NotBpffs {
        path: path.to_owned(),
    })?;
    let io_err = |action: &'static str| Error::Io {
        action,
        path: path.to_owned(),
        source: std::io::Error::last_os_error(),
    };
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: the attr is a valid, fully initialised struct of the size given,
    // and `c` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(io_err("opening the pinned link"));
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // union bpf_attr for BPF_LINK_DETACH: link_fd.
    let detach: u32 = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
    // SAFETY: as above; the attr is one u32.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const u32,
            std::mem::size_of::<u32>(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) {
            return Err(Error::Io {
                action: "detaching the pinned link",
                path: path.to_owned(),
                source: e,
            });
        }
    }
    Ok(())
}
