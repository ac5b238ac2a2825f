//! The externals' service: a TCP server that answers every connection with
//! one line, the source address it saw (`203.0.113.50\n`), then closes. It
//! shows which address a flow left the mesh with (an egress IP, a node's
//! masqueraded address, or a pod's own).
//!
//! One accept loop, no per-connection state: each accepted socket gets its
//! line written (a few bytes into an empty send buffer never block) and is
//! closed at once, so tens of thousands of concurrent clients only need a
//! deep enough listen backlog. `meshgate lab external-server` runs it in
//! each external's namespace (see `world::start_external`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 65_535;

/// The line a client whose connection came from `peer` receives.
pub fn answer_line(peer: SocketAddr) -> String {
    format!("{}\n", peer.ip())
}

/// Binds `addr` with a deep listen backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // std listens with a small backlog; listen(2) again raises it.
    // SAFETY: listen on a socket fd we own; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Writes the answer and closes. Whatever the client already sent is read
/// and dropped first (closing with unread data would reset the connection
/// and could cost the client its line).
fn answer(mut stream: TcpStream, peer: SocketAddr) {
    let line = answer_line(peer);
    if let Err(e) = stream
        .set_nonblocking(true)
        .and_then(|()| stream.write_all(line.as_bytes()))
    {
        tracing::trace!(%peer, error = %e, "could not answer");
        return;
    }
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Serves forever; returns only when accepting fails for good.
pub fn serve(listener: &TcpListener) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => answer(stream, peer),
            Err(e) => match e.raw_os_error() {
                // Out of descriptors or buffers: let connections close.
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    tracing::warn!(error = %e, "accept failed; retrying in 10 ms");
                    std::thread::sleep(Duration::from_millis(10));
                }
                // The connection went away before we took it.
                Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {}
                _ => return Err(e),
            },
        }
    }
}

/// `meshgate lab external-server`: binds every address on `port` and
/// serves forever.
pub fn run(port: u16) -> io::Result<()> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = bind(addr)?;
    tracing::info!(%addr, "external service listening");
    serve(&listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_the_source_address() {
        let peer: SocketAddr = "203.0.113.50:40000".parse().expect("addr");
        assert_eq!(answer_line(peer), "203.0.113.50\n");
    }

    #[test]
    fn answers_many_concurrent_connections_on_loopback() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        std::thread::spawn(move || serve(&listener));
        // All connected before any is read: they are open at the same time.
        let clients: Vec<TcpStream> = (0..500)
            .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}")))
            .collect();
        for (i, mut c) in clients.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            let mut got = String::new();
            c.read_to_string(&mut got)
                .unwrap_or_else(|e| panic!("client {i} read: {e}"));
            assert_eq!(got, "127.0.0.1\n", "client {i}");
        }
        // A client that talks first still gets its line.
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read after sending");
        assert_eq!(got, "127.0.0.1\n");
    }
}
