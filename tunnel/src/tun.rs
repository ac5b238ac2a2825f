//! A persistent Linux TUN device.
//!
//! The device is made persistent (`TUNSETPERSIST`), so it and its routes
//! outlive the agent process: a restarted agent attaches to the same device
//! and forwarding resumes without the kernel ever forgetting the routes.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Errors opening the TUN device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("/dev/net/tun is missing: the kernel needs TUN support (CONFIG_TUN, `modprobe tun`)")]
    NoTunDevice,
    #[error("opening /dev/net/tun: {0}")]
    Open(io::Error),
    #[error("interface name {0:?} is not valid: 1 to 15 characters, no '/' or spaces")]
    BadName(String),
    #[error(
        "attaching TUN device {name}: {source} (if {name} exists and is not a TUN device, \
         delete it with `ip link del {name}` or pick another --interface)"
    )]
    Attach { name: String, source: io::Error },
    #[error(
        "TUN device {name} is held by another process (is another agent still running on this node?): \
         stop it first"
    )]
    Busy { name: String },
    #[error("making TUN device {name} persistent: {source}")]
    Persist { name: String, source: io::Error },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An attached queue of a persistent TUN device (layer 3, no packet info).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(|c: char| c == '/' || c.is_whitespace())
}

impl Tun {
    /// Creates the device `name`, or attaches to it if it already exists
    /// (as after an agent restart), and marks it persistent.
    pub fn attach(name: &str) -> Result<Tun, TunError> {
        if !valid_name(name) {
            return Err(TunError::BadName(name.to_string()));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTunDevice);
        }
        let path = CString::new("/dev/net/tun").map_err(|_| TunError::NoTunDevice)?;
        // SAFETY: plain open(2) of a constant path; the fd is owned right away.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(TunError::Open(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EBUSY) {
                return Err(TunError::Busy {
                    name: name.to_string(),
                });
            }
            return Err(TunError::Attach {
                name: name.to_string(),
                source,
            });
        }
        // SAFETY: TUNSETPERSIST takes an integer argument.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(TunError::Persist {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tun {
            fd,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Clears the persistent flag: the device goes away when the last
    /// queue closes (used when the node leaves the mesh).
    pub fn unpersist(&self) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes an integer argument.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETPERSIST, 0 as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for a packet; `Ok(None)` on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(err)
            };
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(n as usize))
    }

    /// Writes one IP packet to the kernel.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is valid for reads of packet.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}
