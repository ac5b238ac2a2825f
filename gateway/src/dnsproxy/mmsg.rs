//! Datagrams in batches: `recvmmsg` reads every query (or answer) waiting
//! on a socket in one system call, `sendmmsg` sends a batch of answers (or
//! forwarded queries) in one. Under load this is most of the difference
//! between a system call per datagram and a few per hundred.
//!
//! [`Sock`] is the UDP socket they run on, registered with the runtime as
//! an `AsyncFd`: a read that returns fewer datagrams than the batch holds
//! emptied the queue, so the socket's readiness is cleared then, and the
//! next wait goes to the runtime without a read that would only say
//! `EAGAIN` (one system call less per wake-up; under load most wake-ups
//! bring a datagram or two).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A non-blocking UDP socket driven by the runtime's reactor.
pub struct Sock(AsyncFd<std::net::UdpSocket>);

impl Sock {
    /// Takes `sock` over (it is made non-blocking).
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Sock> {
        sock.set_nonblocking(true)?;
        // SAFETY: the descriptor is the socket's own, which the AsyncFd
        // owns and keeps open until it is dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Sock(fd))
    }

    #[cfg(test)]
    pub fn get_ref(&self) -> &std::net::UdpSocket {
        self.0.get_ref()
    }
}

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Asks for a receive buffer of `bytes` on `sock` (beyond the system's
/// limit too, as root): a burst of queries after the proxy was kept off the
/// CPU waits there instead of being dropped by the kernel.
pub fn set_receive_buffer(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: v is a c_int that lives for the call; its size is given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) == 0 || set(libc::SO_RCVBUF) == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers for up to `n` datagrams of up to `size` bytes.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_in>,
    /// Per datagram read: (length, flags, address length).
    meta: Vec<(usize, libc::c_int, libc::socklen_t)>,
    size: usize,
}

/// One datagram of a batch.
pub struct Datagram<'a> {
    pub data: &'a [u8],
    /// The sender (None on a connected socket that reports none).
    pub from: Option<SocketAddrV4>,
    /// It was longer than the buffer: `data` is cut.
    pub truncated: bool,
}

fn zero_addr() -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    unsafe { std::mem::zeroed() }
}

fn zero_hdr() -> libc::mmsghdr {
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

impl RecvBatch {
    pub fn new(n: usize, size: usize) -> Self {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            addrs: vec![zero_addr(); n],
            meta: Vec::with_capacity(n),
            size,
        }
    }

    /// Reads what is waiting on `fd` without blocking: the number of
    /// datagrams, or `WouldBlock` when none is.
    fn recv_now(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs = vec![zero_hdr(); n];
        for (i, (h, iov)) in hdrs.iter_mut().zip(iovs.iter_mut()).enumerate() {
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer, an address and an iovec
        // alive and unmoved for the call; n is their count.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.meta.clear();
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.meta.extend(hdrs[..r as usize].iter().map(|h| {
            (
                h.msg_len as usize,
                h.msg_hdr.msg_flags,
                h.msg_hdr.msg_namelen,
            )
        }));
        Ok(self.meta.len())
    }

    /// Waits until `sock` is readable and reads what is waiting.
    pub async fn recv(&mut self, sock: &Sock) -> io::Result<usize> {
        let fd = sock.as_raw_fd();
        loop {
            let mut ready = sock.0.readable().await?;
            match self.recv_now(fd) {
                // Fewer than asked for: the queue is empty now. A datagram
                // that comes later is a new event for the reactor (it
                // clears only the readiness of the event it handed out).
                Ok(n) if n < self.bufs.len() => {
                    ready.clear_ready();
                    return Ok(n);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }

    /// The `i`th datagram of the last read.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        let &(len, flags, namelen) = self.meta.get(i)?;
        let a = &self.addrs[i];
        let from = (namelen as usize >= std::mem::size_of::<libc::sockaddr_in>()
            && a.sin_family == libc::AF_INET as libc::sa_family_t)
            .then(|| {
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )
            });
        Some(Datagram {
            data: &self.bufs[i][..len.min(self.size)],
            from,
            truncated: flags & libc::MSG_TRUNC != 0,
        })
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    let mut s = zero_addr();
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

/// One `sendmmsg` of `msgs` without blocking: how many the kernel took.
fn send_now(fd: RawFd, msgs: &[(Option<SocketAddrV4>, &[u8])]) -> io::Result<usize> {
    let mut addrs: Vec<libc::sockaddr_in> = msgs
        .iter()
        .map(|(a, _)| a.map(sockaddr).unwrap_or_else(zero_addr))
        .collect();
    let mut iovs: Vec<libc::iovec> = msgs
        .iter()
        .map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut hdrs = vec![zero_hdr(); msgs.len()];
    for (i, h) in hdrs.iter_mut().enumerate() {
        if msgs[i].0.is_some() {
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        h.msg_hdr.msg_iov = &mut iovs[i];
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at addresses, iovecs and the callers'
    // buffers, all alive for the call; len is their count. The kernel only
    // reads through the iovecs of a send.
    let r = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Sends `msgs` (to their address, or on a connected socket with None)
/// with as few `sendmmsg` calls as the kernel takes them in. Returns how
/// many were sent; stops at the first datagram the kernel refuses.
pub async fn send_all(sock: &Sock, msgs: &[(Option<SocketAddrV4>, &[u8])]) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    let mut sent = 0;
    while sent < msgs.len() {
        let mut ready = sock.0.writable().await?;
        match ready.try_io(|_| send_now(fd, &msgs[sent..])) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) if sent == 0 => return Err(e),
            Ok(Err(_)) => break,
            // Full: readiness cleared, wait for room.
            Err(_would_block) => continue,
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_batch_goes_out_in_order_and_is_read_with_its_senders() {
        let a = sock();
        let b = sock();
        let SocketAddr::V4(to) = b.get_ref().local_addr().unwrap() else {
            panic!("v4")
        };
        let SocketAddr::V4(from) = a.get_ref().local_addr().unwrap() else {
            panic!("v4")
        };
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let msgs: Vec<(Option<SocketAddrV4>, &[u8])> =
            payloads.iter().map(|p| (Some(to), p.as_slice())).collect();
        assert_eq!(send_all(&a, &msgs).await.unwrap(), 40);
        let mut batch = RecvBatch::new(16, 64);
        let mut seen = Vec::new();
        while seen.len() < 40 {
            let n = batch.recv(&b).await.unwrap();
            assert!(n <= 16);
            for i in 0..n {
                let d = batch.get(i).unwrap();
                assert_eq!(d.from, Some(from));
                assert!(!d.truncated);
                seen.push(d.data.to_vec());
            }
            assert!(batch.get(n).is_none());
        }
        assert_eq!(seen, payloads);
    }

    #[tokio::test]
    async fn a_datagram_longer_than_the_buffer_is_marked_truncated() {
        let a = sock();
        let b = sock();
        a.get_ref()
            .send_to(&[7u8; 100], b.get_ref().local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::new(4, 10);
        assert_eq!(batch.recv(&b).await.unwrap(), 1);
        let d = batch.get(0).unwrap();
        assert!(d.truncated);
        assert_eq!(d.data, &[7u8; 10]);
    }

    use std::net::SocketAddr;

    fn sock() -> Sock {
        Sock::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap()
    }

    /// Readiness cleared after a short read must not lose a datagram that
    /// comes afterwards: each is read, one wake-up at a time.
    #[tokio::test]
    async fn datagrams_after_a_short_read_still_wake_the_reader() {
        let a = sock();
        let b = sock();
        let to = b.get_ref().local_addr().unwrap();
        let mut batch = RecvBatch::new(8, 64);
        for i in 0..50u8 {
            a.get_ref().send_to(&[i], to).unwrap();
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), batch.recv(&b))
                .await
                .expect("a datagram sent after the last read wakes the reader")
                .unwrap();
            assert_eq!(n, 1, "datagram {i}");
            assert_eq!(batch.get(0).unwrap().data, &[i]);
        }
    }
}
