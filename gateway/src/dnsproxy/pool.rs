//! Upstream UDP through a few long-lived sockets: each query gets a fresh
//! random ID on one of them (its own ID is put back in the answer), so no
//! socket is made per query. A reader task per socket hands answers to the
//! waiting queries; an ICMP error (the upstream's port closed) fails that
//! socket's waiting queries at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::debug;

/// Sockets in the pool.
const SOCKETS: usize = 8;

type Waiting = Mutex<HashMap<u16, oneshot::Sender<std::io::Result<Vec<u8>>>>>;

struct Slot {
    sock: Arc<UdpSocket>,
    waiting: Arc<Waiting>,
}

pub struct UdpPool {
    upstream: SocketAddr,
    slots: Vec<Slot>,
    next: AtomicUsize,
    rng: AtomicU64,
}

impl UdpPool {
    pub async fn new(upstream: SocketAddr) -> std::io::Result<UdpPool> {
        let mut slots = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).await?;
            sock.connect(upstream).await?;
            let sock = Arc::new(sock);
            let waiting: Arc<Waiting> = Arc::default();
            tokio::spawn(read_answers(sock.clone(), waiting.clone()));
            slots.push(Slot { sock, waiting });
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Ok(UdpPool {
            upstream,
            slots,
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(seed),
        })
    }

    fn random_id(&self) -> u16 {
        // xorshift64*, shared: good enough to make IDs unpredictable to an
        // observer who cannot read the pool's traffic.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as u16
    }

    /// Sends `query` and returns the answer, with the query's own ID.
    pub async fn ask(&self, query: &[u8], deadline: Duration) -> std::io::Result<Vec<u8>> {
        if query.len() < 12 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a DNS message",
            ));
        }
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = slot.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let mut id = self.random_id();
            while w.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            w.insert(id, tx);
            id
        };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        let result = async {
            slot.sock.send(&out).await?;
            match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(std::io::Error::other("the pool's reader stopped")),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "upstream {} did not answer within {deadline:?}",
                        self.upstream
                    ),
                )),
            }
        }
        .await;
        slot.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result.map(|mut a| {
            a[..2].copy_from_slice(&query[..2]);
            a
        })
    }
}

async fn read_answers(sock: Arc<UdpSocket>, waiting: Arc<Waiting>) {
    let mut buf = vec![0u8; 65535];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) if n >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let tx = waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(Ok(buf[..n].to_vec()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                // ICMP unreachable on a connected socket: every query
                // waiting on it fails now, not at its deadline.
                debug!(error = %e, "upstream socket error");
                let all: Vec<_> = waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain()
                    .collect();
                for (_, tx) in all {
                    let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
}
