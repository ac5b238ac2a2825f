//! The lab's upstream DNS server (`meshgate lab dns-server`): the world's
//! authoritative server for the scenario's `dns.records`, in its own
//! namespace on the underlay at `dns.server`. Node DNS proxies forward to
//! it; so can pods directly (`dig @203.0.113.53`).
//!
//! What it answers ([`respond`]): A queries with the name's addresses and
//! TTL, following CNAMEs of the zone (the chain, then the A records);
//! NXDOMAIN for names it does not have; NOERROR without answers for other
//! types (AAAA) of a known name; over UDP, a response larger than the
//! client's EDNS payload size (512 bytes without EDNS) is sent truncated
//! (TC, no answers) so the client retries over TCP; a `rotate` name answers
//! one address per query, the next in turn. Garbage gets FORMERR or
//! nothing, never a panic.
//!
//! The records ([`zone`]) are checked by the scenario's validation and
//! again when the server loads its file; the lab writes that file
//! (`<world dir>/dns/records.json`, see `plan::dns`). The DNS proxy the
//! nodes run is elsewhere (`meshgate dnsproxy`, egress/src/dnsproxy).
//!
//! I/O: one blocking UDP loop, and a thread per TCP connection.

pub mod respond;
pub mod zone;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use respond::{respond, Transport};
pub use zone::{Zone, ZoneError, ZoneRecord};

/// The records file: each name's record.
pub type Records = BTreeMap<String, ZoneRecord>;

/// Most TCP connections served at once; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 512;
/// A TCP connection idle this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsServerError {
    #[error("cannot read the records file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the records file {path} is not valid: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("the records file {path} cannot be served:\n{}", lines(errors))]
    Zone {
        path: PathBuf,
        errors: Vec<ZoneError>,
    },
    #[error("cannot listen on {addr}/{proto}: {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("serving UDP on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn lines(errors: &[ZoneError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and checks a records file (JSON, [`Records`]).
pub fn load(path: &Path) -> Result<Zone, DnsServerError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsServerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let records: Records = serde_json::from_str(&text).map_err(|e| DnsServerError::Parse {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    Zone::new(&records).map_err(|errors| DnsServerError::Zone {
        path: path.to_path_buf(),
        errors,
    })
}

/// Bound sockets of a server: UDP and TCP on one address.
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

/// Binds UDP and TCP on `addr` (port 0: the TCP port follows the UDP one).
pub fn bind(addr: SocketAddr) -> Result<Sockets, DnsServerError> {
    let udp = UdpSocket::bind(addr).map_err(|source| DnsServerError::Bind {
        addr,
        proto: "udp",
        source,
    })?;
    // Room for bursts: a benchmark's queries wait here rather than being
    // dropped while the server is off the CPU.
    let v: libc::c_int = 4 << 20;
    // SAFETY: v is a c_int alive for the call; its size is given.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&udp),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let bound = udp.local_addr().unwrap_or(addr);
    let tcp = crate::external_server::bind(bound).map_err(|source| DnsServerError::Bind {
        addr: bound,
        proto: "tcp",
        source,
    })?;
    Ok(Sockets { udp, tcp })
}

/// `meshgate lab dns-server`: loads the records, binds and serves forever.
pub fn run(listen: SocketAddr, records: &Path) -> Result<(), DnsServerError> {
    let zone = Arc::new(load(records)?);
    let sockets = bind(listen)?;
    tracing::info!(%listen, names = zone.len(), "lab DNS server listening (UDP and TCP)");
    serve(zone, sockets)
}

/// Serves TCP on a thread and UDP on this one; returns only when UDP fails
/// for good.
pub fn serve(zone: Arc<Zone>, sockets: Sockets) -> Result<(), DnsServerError> {
    let Sockets { udp, tcp } = sockets;
    let tcp_zone = Arc::clone(&zone);
    std::thread::Builder::new()
        .name("dns-tcp".into())
        .spawn(move || serve_tcp(tcp_zone, &tcp))
        .map_err(|source| DnsServerError::Serve {
            addr: udp
                .local_addr()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })?;
    serve_udp(&zone, &udp)
}

fn serve_udp(zone: &Zone, udp: &UdpSocket) -> Result<(), DnsServerError> {
    let addr = udp
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => match e.raw_os_error() {
                // ICMP errors of earlier sends, interrupts, memory pressure.
                Some(
                    libc::ECONNREFUSED
                    | libc::EINTR
                    | libc::ENOBUFS
                    | libc::ENOMEM
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH,
                ) => continue,
                _ => return Err(DnsServerError::Serve { addr, source: e }),
            },
        };
        let Some(out) = respond(zone, &buf[..n], Transport::Udp) else {
            tracing::trace!(%peer, len = n, "dropped a datagram that is no query");
            continue;
        };
        if let Err(e) = udp.send_to(&out, peer) {
            tracing::trace!(%peer, error = %e, "could not send a response");
        }
    }
}

fn serve_tcp(zone: Arc<Zone>, listener: &TcpListener) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed; retrying in 10 ms");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_TCP_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(%peer, "too many TCP connections; closing a new one");
            continue;
        }
        let (zone, open) = (Arc::clone(&zone), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("dns-tcp-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(&zone, stream) {
                    tracing::trace!(%peer, error = %e, "TCP connection ended");
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread for a TCP connection");
        }
    }
}

/// Length-prefixed queries (RFC 1035 4.2.2) until the client closes or
/// idles for [`TCP_IDLE`].
fn serve_connection(zone: &Zone, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(TCP_IDLE))?;
    stream.set_write_timeout(Some(TCP_IDLE))?;
    stream.set_nodelay(true)?;
    let mut len = [0u8; 2];
    let mut buf = vec![0u8; 65_535];
    loop {
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = usize::from(u16::from_be_bytes(len));
        stream.read_exact(&mut buf[..n])?;
        let Some(out) = respond(zone, &buf[..n], Transport::Tcp) else {
            return Ok(());
        };
        let out_len = u16::try_from(out.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "response over 65535 bytes"))?;
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&out_len.to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed)?;
    }
}

#[cfg(test)]
mod tests;
