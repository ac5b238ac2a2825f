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
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Which offloads a TUN queue uses, probed when it is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunOffloads {
    /// Packets carry a `virtio_net_hdr` (`IFF_VNET_HDR`): needed for the rest.
    pub vnet_hdr: bool,
    /// The kernel hands over TCP super-packets (`TUN_F_TSO4`) and leaves
    /// checksums to us (`TUN_F_CSUM`); we also write coalesced TCP.
    pub tso: bool,
    /// The kernel hands over UDP super-packets (`TUN_F_USO4`, Linux 6.2+).
    pub uso: bool,
}

/// Which offloads to ask for (all of them unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantOffloads {
    pub tso: bool,
    pub uso: bool,
    /// Coalesced writes (GRO): needs the vnet header even without TSO/USO.
    pub gro: bool,
}

impl WantOffloads {
    fn vnet_hdr(&self) -> bool {
        self.tso || self.uso || self.gro
    }
}

impl Default for WantOffloads {
    fn default() -> Self {
        WantOffloads {
            tso: true,
            uso: true,
            gro: true,
        }
    }
}

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

/// An attached queue of a persistent TUN device (layer 3, no packet info,
/// with a `virtio_net_hdr` on each packet when offloads are on).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    offloads: TunOffloads,
    /// The device takes more than one queue (`IFF_MULTI_QUEUE`): a new
    /// agent attaches beside the old one for a lossless handover.
    multi_queue: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(|c: char| c == '/' || c.is_whitespace())
}

impl Tun {
    /// Creates the device `name`, or attaches to it if it already exists
    /// (as after an agent restart), and marks it persistent; asks for the
    /// offloads in `want`: each is probed, and what the kernel refuses is
    /// left off ([`Tun::offloads`] says what is on). With none, packets
    /// carry no vnet header.
    pub fn attach_with(name: &str, want: WantOffloads) -> Result<Tun, TunError> {
        if !valid_name(name) {
            return Err(TunError::BadName(name.to_string()));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTunDevice);
        }
        // Multi-queue first; a device made single-queue (by an agent from
        // before multi-queue) answers EINVAL and is attached as it is.
        let flags = IFF_TUN | IFF_NO_PI | if want.vnet_hdr() { IFF_VNET_HDR } else { 0 };
        let (fd, multi_queue) = match open_queue(name, flags | IFF_MULTI_QUEUE) {
            Ok(fd) => (fd, true),
            Err(TunError::Attach { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                (open_queue(name, flags)?, false)
            }
            Err(e) => return Err(e),
        };
        // SAFETY: TUNSETPERSIST takes an integer argument.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(TunError::Persist {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // Non-blocking: the loops wait in poll(2) and drain in batches.
        // SAFETY: fcntl on a valid fd.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let offloads = probe_offloads(&fd, want);
        Ok(Tun {
            fd,
            name: name.to_string(),
            offloads,
            multi_queue,
        })
    }

    /// Whether the device is multi-queue.
    pub fn multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// Sends every packet the kernel routes into the device to queue
    /// `index` (an eBPF steering program of two instructions; an index past
    /// the last queue wraps, so it falls back to the queues there are).
    /// A restart's new process points the kernel at itself with it, so the
    /// old process's queue only empties and nothing is dropped when it goes.
    pub fn steer_to_queue(&self, index: u32) -> io::Result<()> {
        let prog = load_return_program(index)?;
        let raw: libc::c_int = prog.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads an int (the program's fd); the
        // device keeps its own reference to the program.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETSTEERINGEBPF, &raw) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes this queue out of (`false`) or back into (`true`) the kernel's
    /// choice of queues for outgoing packets. A detached queue still writes
    /// to the kernel; it is read nothing. Multi-queue devices only.
    pub fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: if enabled {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
            _pad: [0; 22],
        };
        // SAFETY: TUNSETQUEUE reads an ifreq's flags.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETQUEUE, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The offloads this queue uses.
    pub fn offloads(&self) -> TunOffloads {
        self.offloads
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
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

    /// Reads one packet if one is queued; `Ok(None)` if none is.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
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

/// Loads a socket-filter eBPF program that returns `value`: `r0 = value;
/// exit`, through bpf(2) directly (two instructions need no loader).
fn load_return_program(value: u32) -> io::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    // struct bpf_insn: code, regs (dst | src << 4), off, imm.
    let insns: [[u8; 8]; 2] = {
        let mut mov = [0u8; 8];
        mov[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        mov[4..8].copy_from_slice(&(value as i32).to_le_bytes());
        let mut exit = [0u8; 8];
        exit[0] = 0x95; // BPF_JMP | BPF_EXIT
        [mov, exit]
    };
    let license = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD's leading fields: prog_type, insn_cnt,
    // insns, license (the rest zero).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SOCKET_FILTER.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(BPF_PROG_LOAD) with an attr buffer of the kernel's size
    // whose pointers (insns, license) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh program fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Opens /dev/net/tun and attaches it to device `name` with `flags`.
fn open_queue(name: &str, flags: libc::c_short) -> Result<OwnedFd, TunError> {
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
        flags,
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
    Ok(fd)
}

/// Waits until `fd` is readable, up to `timeout`; `Ok(false)` on timeout
/// or a signal.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) -> io::Result<bool> {
    wait_for(fd, libc::POLLIN, timeout)
}

/// Waits until `fd` takes writes, up to `timeout`.
pub fn wait_writable(fd: std::os::fd::RawFd, timeout: Duration) -> io::Result<bool> {
    wait_for(fd, libc::POLLOUT, timeout)
}

fn wait_for(fd: std::os::fd::RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(ready > 0)
}

/// Sets the queue's offloads to what `want` asks and the kernel takes:
/// UDP segmentation needs Linux 6.2, so a refusal there retries without it.
/// Always called, so a device re-attached by a newer or older agent never
/// keeps offloads its reader does not expect.
fn probe_offloads(fd: &OwnedFd, want: WantOffloads) -> TunOffloads {
    let set = |flags: libc::c_uint| {
        // SAFETY: TUNSETOFFLOAD takes an unsigned int argument.
        unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) == 0 }
    };
    if !want.vnet_hdr() {
        set(0);
        return TunOffloads::default();
    }
    let hdr_len: libc::c_int = crate::offload::VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        // The header stays on, at the kernel's default size (ours).
        set(0);
        return TunOffloads {
            vnet_hdr: true,
            ..TunOffloads::default()
        };
    }
    let tso = if want.tso { TUN_F_TSO4 } else { 0 };
    if want.uso && set(TUN_F_CSUM | tso | TUN_F_USO4 | TUN_F_USO6) {
        return TunOffloads {
            vnet_hdr: true,
            tso: want.tso,
            uso: true,
        };
    }
    if want.tso && set(TUN_F_CSUM | tso) {
        return TunOffloads {
            vnet_hdr: true,
            tso: true,
            uso: false,
        };
    }
    set(0);
    TunOffloads {
        vnet_hdr: true,
        tso: false,
        uso: false,
    }
}
