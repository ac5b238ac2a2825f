//! Restarts that lose no query: the new proxy takes the old one's sockets.
//!
//! The old process listens on a unix control socket. A successor connects,
//! writes `takeover`, and receives the UDP socket and the TCP listener as
//! file descriptors (SCM_RIGHTS): the very sockets the pods' queries are
//! queued on, so nothing queued is lost and no packet meets a closed port.
//! It starts serving on them, then writes `ready`; only then does the old
//! process stop reading, finish its queries in flight and exit.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// The sockets pods' DNS arrives on.
#[derive(Debug)]
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

const TAKEOVER: &str = "takeover";
const READY: &str = "ready";

/// Asks a running proxy listening on `control` for its sockets. `None`:
/// no proxy answers there (none runs, or it died).
pub fn request(control: &Path) -> anyhow::Result<Option<(Sockets, UnixStream)>> {
    let mut stream = match UnixStream::connect(control) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", control.display())),
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(stream, "{TAKEOVER}").context("asking the running proxy for its sockets")?;
    let fds = recv_fds(&stream).context("receiving the running proxy's sockets")?;
    let [udp, tcp]: [OwnedFd; 2] = fds.try_into().map_err(|v: Vec<OwnedFd>| {
        anyhow::anyhow!("the running proxy sent {} sockets, not 2", v.len())
    })?;
    Ok(Some((
        Sockets {
            udp: UdpSocket::from(udp),
            tcp: TcpListener::from(tcp),
        },
        stream,
    )))
}

/// Tells the old proxy that this one serves: it may stop.
pub fn confirm(mut stream: UnixStream) -> anyhow::Result<()> {
    writeln!(stream, "{READY}").context("telling the old proxy to stop")?;
    Ok(())
}

/// Serves successors on `control` (blocking: run it on its own thread).
/// For each that asks, sends `sockets` and calls `on_ready` once it says it
/// serves. Returns after the first successful handoff.
pub fn serve(control: &Path, sockets: &Sockets) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(control);
    let listener = UnixListener::bind(control)
        .with_context(|| format!("listening for successors on {}", control.display()))?;
    loop {
        let (stream, _) = listener.accept().context("accepting a successor")?;
        match hand_over(&stream, sockets) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "a successor's takeover failed; still serving")
            }
        }
    }
}

fn hand_over(stream: &UnixStream, sockets: &Sockets) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != TAKEOVER {
        bail!("unexpected request {line:?}");
    }
    send_fds(stream, &[sockets.udp.as_raw_fd(), sockets.tcp.as_raw_fd()])?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != READY {
        bail!("the successor did not say it serves (got {line:?})");
    }
    Ok(())
}

fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    let payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds CMSG_SPACE(fd_bytes) bytes, so the
    // first header and its data fit; the fds are copied into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr() as *const u8,
            libc::CMSG_DATA(cmsg),
            fd_bytes as usize,
        );
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let rc = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn recv_fds(stream: &UnixStream) -> std::io::Result<Vec<OwnedFd>> {
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // Room for up to 8 descriptors.
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((8 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC marks received fds close-on-exec.
    let rc = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if rc == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the running proxy closed the control connection",
        ));
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`;
    // each SCM_RIGHTS payload is an array of fds now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let n = len / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(fds)
}
