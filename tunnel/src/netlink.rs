//! Route netlink, synchronously: links, addresses, routes and rules of the
//! network namespace the calling thread is in, each change a request the
//! kernel acknowledges (or refuses with an errno, kept in [`NetlinkError`]).
//!
//! The messages come from `netlink-packet-route`; this module is the
//! request/ack loop around them on one `netlink-sys` socket ([`Netlink`]),
//! and the operations the agent needs, one file each:
//!
//! * [`link`]: index by name, add (dummy, VXLAN with collect_md), set
//!   MTU/up/ARP, delete;
//! * [`addr`]: replace an address, list a device's addresses;
//! * [`route`]: replace, delete and list routes (unicast through a device,
//!   unreachable, throw) in any table;
//! * [`rule`]: add, delete and list policy-routing rules;
//! * [`error`]: the error type, with errno tests (`is_not_found`, `is_exists`).
//!
//! IPv4 only. The callers are synchronous (the agent's mesh sync, the eBPF
//! datapath's worker thread): no runtime is needed.

pub mod addr;
pub mod error;
pub mod link;
pub mod route;
pub mod rule;

pub use error::NetlinkError;
pub use link::{LinkChange, LinkKind, LinkState};
pub use route::{Route, RouteType, MAIN_TABLE};
pub use rule::Rule;

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// Large enough for any datagram the kernel sends a dump in (it caps them
/// at 32 KiB), so nothing is truncated.
const RECV_BUF: usize = 64 * 1024;

/// How often a dump the kernel marks as interrupted (the table changed
/// while it was read) is started again.
const DUMP_ATTEMPTS: usize = 5;

/// How long the kernel may take to answer one request (it answers at once;
/// this only keeps a caller from hanging on a lost answer).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A route netlink socket in the calling thread's network namespace.
///
/// Opened once and used for many requests (a sync pass, a benchmark); each
/// request waits for its own acknowledgement before the next is sent.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket to the kernel's route netlink.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let op = || "opening a route netlink socket".to_string();
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::io(op(), e))?;
        socket.bind_auto().map_err(|e| NetlinkError::io(op(), e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::io(op(), e))?;
        // The kernel's own words for a refusal ("Nexthop device is not
        // up"), and acks without a copy of the request. Older kernels
        // without them still answer with the errno.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        set_recv_timeout(&socket, ANSWER_TIMEOUT).map_err(|e| NetlinkError::io(op(), e))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends `msg` with NLM_F_REQUEST|NLM_F_ACK and `flags`, and returns
    /// what the kernel answered before its ACK (a `Get` for one object
    /// answers with it). A refusal becomes an error for `op`.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map_err(|e| e.into_error(op()))
    }

    /// Sends `msg` as a dump request and returns every message of the
    /// answer, up to NLMSG_DONE. An interrupted dump is started again.
    fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut last = None;
        for _ in 0..DUMP_ATTEMPTS {
            match self.exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP) {
                Err(Failure::Interrupted) => last = Some(Failure::Interrupted),
                other => return other.map_err(|e| e.into_error(op())),
            }
        }
        Err(last.unwrap_or(Failure::Interrupted).into_error(op()))
    }

    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        let sent = retry_eintr(|| self.socket.send(&out, 0)).map_err(Failure::Io)?;
        if sent != out.len() {
            return Err(Failure::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the kernel took {sent} of {} bytes", out.len()),
            )));
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answer = Vec::new();
        let mut interrupted = false;
        loop {
            let (socket, buf) = (&self.socket, &mut self.buf);
            let n = retry_eintr(|| socket.recv(&mut &mut buf[..], 0)).map_err(|e| {
                Failure::Io(match e.kind() {
                    io::ErrorKind::WouldBlock => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel in {ANSWER_TIMEOUT:?}"),
                    ),
                    _ => e,
                })
            })?;
            let mut data = &self.buf[..n.min(self.buf.len())];
            while !data.is_empty() {
                let frame = NetlinkBuffer::new_checked(data).map_err(Failure::decode)?;
                let len = (frame.length() as usize).min(data.len());
                let (this, rest) = data.split_at(align(len).min(data.len()));
                data = rest;
                if frame.sequence_number() != seq {
                    continue; // the answer to an earlier request given up on
                }
                interrupted |= frame.flags() & NLM_F_DUMP_INTR != 0;
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&this[..len])
                    .map_err(Failure::decode)?;
                match parsed.payload {
                    NetlinkPayload::InnerMessage(m) => answer.push(m),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(answer),
                        None => {}
                        Some(code) => {
                            return Err(Failure::Kernel {
                                errno: code.get().abs(),
                                message: error::ext_ack_message(parsed.header.flags, &e.header),
                            })
                        }
                    },
                    NetlinkPayload::Done(d) if dump => {
                        if d.code != 0 {
                            return Err(Failure::Kernel {
                                errno: d.code.abs(),
                                message: None,
                            });
                        }
                        if interrupted {
                            return Err(Failure::Interrupted);
                        }
                        return Ok(answer);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(Failure::Io(io::Error::other(
                            "the kernel's answer overran the socket buffer",
                        )))
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `f` again while a signal interrupts it.
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// SO_RCVTIMEO on `socket`.
fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: a valid socket descriptor and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Netlink messages are padded to 4 bytes.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// What went wrong in one exchange, before it is named by its operation.
enum Failure {
    Io(io::Error),
    Kernel { errno: i32, message: Option<String> },
    Interrupted,
}

impl Failure {
    fn decode(e: netlink_packet_core::DecodeError) -> Failure {
        Failure::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reading the kernel's answer: {e}"),
        ))
    }

    fn into_error(self, op: String) -> NetlinkError {
        match self {
            Failure::Io(e) => NetlinkError::io(op, e),
            Failure::Kernel { errno, message } => NetlinkError::kernel(op, errno, message),
            Failure::Interrupted => NetlinkError::io(
                op,
                io::Error::new(
                    io::ErrorKind::Interrupted,
                    format!("the dump was interrupted {DUMP_ATTEMPTS} times in a row"),
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_to_four_bytes() {
        assert_eq!(align(16), 16);
        assert_eq!(align(17), 20);
        assert_eq!(align(19), 20);
        assert_eq!(align(0), 0);
    }
}
