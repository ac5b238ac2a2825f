//! Forwarding a query to the upstream server over TCP (UDP: `pool.rs`), with a
//! deadline: an unreachable upstream is an error at once (ICMP) or at the
//! deadline, never a hang.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `query` over a new TCP connection and returns the answer.
pub async fn tcp(
    upstream: SocketAddr,
    query: &[u8],
    deadline: Duration,
) -> std::io::Result<Vec<u8>> {
    let work = async {
        let mut s = TcpStream::connect(upstream).await?;
        s.set_nodelay(true)?;
        let len = u16::try_from(query.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        s.write_all(&out).await?;
        read_framed(&mut s).await
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(timed_out(upstream, deadline)))
}

/// One length-prefixed DNS message from a TCP stream.
pub async fn read_framed<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

pub fn timed_out(upstream: SocketAddr, deadline: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("upstream {upstream} did not answer within {deadline:?}"),
    )
}
