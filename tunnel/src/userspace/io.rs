//! The userspace device's batched I/O: TUN super-packets split into
//! segments and encrypted straight into one UDP GSO send; UDP GRO batches
//! decrypted and coalesced into few TUN writes. The offload logic itself
//! (vnet header, split, coalesce) is pure, in [`crate::offload`]; UDP
//! GSO/GRO and `recvmmsg` come from `quinn-udp`, which also turns GSO off
//! at run time when the kernel rejects it.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tracing::{debug, trace, warn};

use crate::offload::{self, Coalescer, VnetHdr, MAX_PACKET, VNET_HDR_LEN};
use crate::tun::{wait_readable, wait_writable};

/// The most bytes one GSO send carries (a UDP datagram's limit, with room
/// for the headers).
const GSO_MAX_BYTES: usize = 65_000;
/// WireGuard's data overhead: type, index, counter and tag.
pub const DATA_OVERHEAD: usize = 32;
/// TUN reads per wake-up before the batch is sent.
const READ_BATCH: usize = 64;
/// UDP buffers per `recvmmsg`.
const RECV_BATCH: usize = 8;
/// How long a send waits for room in the socket buffer before dropping.
const SEND_WAIT: Duration = Duration::from_millis(200);
/// Socket buffers (forced past the sysctl limits when root).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// The UDP socket with its offload state.
pub struct Udp {
    pub sock: UdpSocket,
    pub state: UdpSocketState,
    /// GSO asked for (it may still be turned off at run time).
    pub gso: bool,
}

impl Udp {
    pub fn new(sock: UdpSocket, gso: bool, gro: bool) -> io::Result<Udp> {
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        if !gro {
            // quinn-udp turns GRO on when it can; switch it back off.
            set_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 0);
        }
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if !set_int(&sock, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
                set_int(&sock, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        Ok(Udp { sock, state, gso })
    }

    /// Segments one send may carry now (1 once the kernel refused GSO).
    pub fn max_segments(&self) -> usize {
        if self.gso {
            self.state.max_gso_segments().min(offload::MAX_SEGMENTS)
        } else {
            1
        }
    }

    /// Whether received buffers may hold several datagrams.
    pub fn gro(&self) -> bool {
        self.state.gro_segments() > 1 && get_int(&self.sock, libc::SOL_UDP, libc::UDP_GRO) == 1
    }

    /// Sends one datagram, or `contents` cut into `segment`-byte datagrams.
    /// Waits a little for room in the socket buffer; a datagram that still
    /// finds none is dropped (WireGuard's peers retransmit, as over a
    /// congested link).
    pub fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let deadline = Instant::now() + SEND_WAIT;
        loop {
            let t = Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size: segment,
                src_ip: None,
            };
            match self.state.try_send(UdpSockRef::from(&self.sock), &t) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || !wait_writable(self.sock.as_raw_fd(), left).unwrap_or(false)
                    {
                        trace!(%to, "UDP send buffer full: datagrams dropped");
                        return;
                    }
                }
                Err(e) => {
                    if let (Some(size), 1) = (segment, self.state.max_gso_segments()) {
                        // The kernel refused GSO (quinn-udp has turned it
                        // off): send this batch one datagram at a time.
                        debug!(error = %e, "UDP GSO refused: sending datagrams one by one from now on");
                        for d in contents.chunks(size) {
                            self.send(to, d, None);
                        }
                    } else {
                        trace!(%to, error = %e, "UDP send failed");
                    }
                    return;
                }
            }
        }
    }
}

/// Sets an int socket option; `false` (errno set) when refused.
pub(super) fn set_int(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: setsockopt with a pointer to one int and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn get_int(sock: &UdpSocket, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into one int with its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        value
    } else {
        -1
    }
}

/// Encrypted datagrams for one endpoint, gathered for one GSO send: all of
/// one size but the last, which may be shorter.
pub struct GsoBatch {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    size: usize,
    count: usize,
    closed: bool,
}

impl Default for GsoBatch {
    fn default() -> Self {
        GsoBatch {
            buf: Vec::with_capacity(GSO_MAX_BYTES + MAX_PACKET),
            to: None,
            size: 0,
            count: 0,
            closed: false,
        }
    }
}

impl GsoBatch {
    /// Appends a datagram for `to` of at most `max_len` bytes, which `fill`
    /// writes in place and returns the length of (`None`: nothing to send).
    pub fn push(
        &mut self,
        udp: &Udp,
        to: SocketAddr,
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        if self.count > 0
            && (self.to != Some(to)
                || self.closed
                || self.count >= udp.max_segments()
                || self.buf.len() + max_len > GSO_MAX_BYTES)
        {
            self.flush(udp);
        }
        let start = self.buf.len();
        self.buf.resize(start + max_len, 0);
        let Some(n) = fill(&mut self.buf[start..]) else {
            self.buf.truncate(start);
            return;
        };
        self.buf.truncate(start + n);
        if self.count == 0 {
            self.to = Some(to);
            self.size = n;
            self.count = 1;
        } else if n <= self.size {
            self.count += 1;
            self.closed = n < self.size;
        } else {
            // Longer than the others: it starts the next send.
            let this = self.buf.split_off(start);
            self.flush(udp);
            self.buf.extend_from_slice(&this);
            self.to = Some(to);
            self.size = n;
            self.count = 1;
        }
    }

    /// Sends what is gathered.
    pub fn flush(&mut self, udp: &Udp) {
        if let (Some(to), true) = (self.to, self.count > 0) {
            let segment = (self.count > 1).then_some(self.size);
            udp.send(to, &self.buf, segment);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
        self.to = None;
    }
}

/// Reads TUN packets until none is queued (or a batch is full), handing
/// each wire-sized IPv4 packet to `outbound`; returns how many reads.
pub fn read_tun_batch(
    tun: &crate::tun::Tun,
    rd: &mut [u8],
    scratch: &mut Vec<u8>,
    mut outbound: impl FnMut(&[u8]),
) -> usize {
    let vnet = tun.offloads().vnet_hdr;
    let mut reads = 0;
    while reads < READ_BATCH {
        let n = match tun.try_recv(rd) {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "reading the TUN device failed");
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
        };
        reads += 1;
        if !vnet {
            outbound(&rd[..n]);
            continue;
        }
        let Some(hdr) = VnetHdr::parse(&rd[..n]) else {
            continue;
        };
        let pkt = &mut rd[VNET_HDR_LEN..n];
        if let Err(e) = offload::split(&hdr, pkt, scratch, &mut outbound) {
            trace!(error = %e, "dropping a packet from the tunnel interface");
        }
    }
    reads
}

/// Receive buffers for `recvmmsg`, sized for GRO when it is on.
pub struct RecvBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl RecvBufs {
    pub fn new(gro: bool) -> RecvBufs {
        let size = if gro { MAX_PACKET } else { 2048 };
        RecvBufs {
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; size]).collect(),
            meta: vec![RecvMeta::default(); RECV_BATCH],
        }
    }

    /// Waits up to `timeout` and receives a batch, calling `each` for every
    /// datagram (a GRO buffer is cut at its stride); returns how many.
    pub fn recv(
        &mut self,
        udp: &Udp,
        timeout: Duration,
        mut each: impl FnMut(&[u8], SocketAddr),
    ) -> usize {
        if !wait_readable(udp.sock.as_raw_fd(), timeout).unwrap_or(false) {
            return 0;
        }
        let mut iov: Vec<IoSliceMut<'_>> =
            self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match udp
            .state
            .recv(UdpSockRef::from(&udp.sock), &mut iov, &mut self.meta)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return 0,
            Err(e) => {
                trace!(error = %e, "UDP receive failed");
                return 0;
            }
        };
        drop(iov);
        let mut count = 0;
        for (buf, meta) in self.bufs.iter().zip(&self.meta).take(n) {
            let from = unmap(meta.addr);
            let stride = if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            };
            for d in buf[..meta.len].chunks(stride.max(1)) {
                each(d, from);
                count += 1;
            }
        }
        count
    }
}

/// An IPv4-mapped IPv6 source back to IPv4 (the socket is IPv4, but be safe).
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::from((ip, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Writes a batch of decrypted packets to the TUN device: coalesced into
/// super-packets when the queue has a vnet header, one by one otherwise.
pub struct TunWriter {
    coalescer: Coalescer,
    plain: Vec<Vec<u8>>,
    used: usize,
}

impl TunWriter {
    /// `merge`: coalesce TCP segments (else each packet is written alone,
    /// still with its vnet header when the queue has one).
    pub fn new(merge: bool) -> TunWriter {
        TunWriter {
            coalescer: Coalescer::new(merge),
            plain: Vec::new(),
            used: 0,
        }
    }

    pub fn push(&mut self, tun: &crate::tun::Tun, pkt: &[u8]) {
        if tun.offloads().vnet_hdr {
            self.coalescer.push(pkt);
        } else {
            if self.used == self.plain.len() {
                self.plain.push(Vec::with_capacity(2048));
            }
            let b = &mut self.plain[self.used];
            b.clear();
            b.extend_from_slice(pkt);
            self.used += 1;
        }
    }

    pub fn flush(&mut self, tun: &crate::tun::Tun) {
        let write = |p: &[u8]| {
            if let Err(e) = tun.send(p) {
                trace!(error = %e, "tun write failed");
            }
        };
        if tun.offloads().vnet_hdr {
            self.coalescer.finish().for_each(write);
            self.coalescer.clear();
        } else {
            self.plain[..self.used].iter().for_each(|p| write(p));
            self.used = 0;
        }
    }
}

/// The IPv4 destination of a packet, if it is IPv4.
pub fn ipv4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() >= 20 && packet[0] >> 4 == 4 {
        Some(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ))
    } else {
        None
    }
}
