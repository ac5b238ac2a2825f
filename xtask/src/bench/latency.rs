//! Latency between two network namespaces: ping RTT, and TCP
//! request/response (netperf's TCP_RR: one byte each way, one transaction
//! in flight) from threads that enter the namespaces themselves.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{in_netns, output};

/// How long the TCP_RR client runs.
pub const RR_SECONDS: u64 = 5;
const RR_PORT: u16 = 5301;

/// Average ping RTT in milliseconds over 100 pings 10 ms apart.
pub fn ping_avg_ms(client_ns: &str, ip: &str) -> Result<f64> {
    let out =
        output(in_netns(client_ns, "ping").args(["-q", "-c", "100", "-i", "0.01", "-W", "2", ip]))
            .with_context(|| format!("ping from {client_ns} to {ip}"))?;
    parse_ping_avg(&out).with_context(|| format!("no rtt line in ping's output:\n{out}"))
}

/// `rtt min/avg/max/mdev = 0.040/0.052/0.090/0.010 ms` -> 0.052.
fn parse_ping_avg(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    values.split('/').nth(1)?.trim().parse().ok()
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd; it affects this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Transactions per second: a one-byte request, a one-byte answer, over
/// one TCP connection from `client_ns` to `ip` in `server_ns`.
pub fn tcp_rr(server_ns: &str, client_ns: &str, ip: Ipv4Addr) -> Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_ns = server_ns.to_string();
    let server = std::thread::spawn(move || -> Result<()> {
        enter(&server_ns)?;
        let listener = TcpListener::bind(SocketAddr::from((ip, RR_PORT)))
            .with_context(|| format!("TCP_RR server binding {ip}:{RR_PORT}"))?;
        let _ = ready_tx.send(());
        let (mut conn, _) = listener.accept().context("TCP_RR accept")?;
        conn.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while conn.read_exact(&mut b).is_ok() {
            conn.write_all(&b)?;
        }
        Ok(())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("TCP_RR server did not start")?;
    let client_ns = client_ns.to_string();
    eprintln!("TCP_RR: {client_ns} -> {ip}, {RR_SECONDS} s");
    let client = std::thread::spawn(move || -> Result<f64> {
        enter(&client_ns)?;
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((ip, RR_PORT)), Duration::from_secs(5))
                .with_context(|| format!("TCP_RR connecting to {ip}:{RR_PORT}"))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut b = [7u8; 1];
        let start = Instant::now();
        let end = start + Duration::from_secs(RR_SECONDS);
        let mut n = 0u64;
        while Instant::now() < end {
            conn.write_all(&b)?;
            conn.read_exact(&mut b).context("TCP_RR answer")?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    });
    let rate = client
        .join()
        .map_err(|_| anyhow::anyhow!("TCP_RR client panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("TCP_RR server panicked"))??;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::parse_ping_avg;

    #[test]
    fn reads_ping_average() {
        let out = "--- 10.0.0.2 ping statistics ---\n100 packets transmitted, 100 received, 0% packet loss, time 1200ms\nrtt min/avg/max/mdev = 0.040/0.052/0.090/0.010 ms\n";
        assert_eq!(parse_ping_avg(out), Some(0.052));
        assert_eq!(parse_ping_avg("nothing"), None);
    }
}
