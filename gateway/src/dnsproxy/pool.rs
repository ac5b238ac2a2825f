//! Upstream UDP through a few long-lived sockets: each forwarded query gets
//! a fresh random ID on one of them (its own ID is put back in the answer),
//! so no socket is made per query, and a query waits in that socket's
//! table, not in a task of its own. A reader per socket matches answers to
//! waiting queries; a sweep answers the ones past their deadline; an ICMP
//! error (the upstream's port closed) fails that socket's waiting queries
//! at once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::mmsg::Sock;

/// Sockets in the pool.
pub const SOCKETS: usize = 8;

/// One upstream socket and the queries waiting on it, by upstream ID.
pub struct Slot<P> {
    pub sock: Arc<Sock>,
    waiting: Mutex<HashMap<u16, (u64, P)>>,
}

pub struct UdpPool<P> {
    pub upstream: SocketAddr,
    pub slots: Vec<Slot<P>>,
    next: AtomicUsize,
    rng: AtomicU64,
    seq: AtomicU64,
    /// (deadline, slot, ID, sequence) in the order queries were sent: the
    /// deadline is the same span for every query, so this is also their
    /// order of expiry.
    deadlines: Mutex<VecDeque<(Instant, usize, u16, u64)>>,
}

impl<P> UdpPool<P> {
    pub async fn new(upstream: SocketAddr) -> std::io::Result<UdpPool<P>> {
        let mut slots = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
            sock.connect(upstream)?;
            let sock = Sock::new(sock)?;
            slots.push(Slot {
                sock: Arc::new(sock),
                waiting: Mutex::default(),
            });
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
            seq: AtomicU64::new(0),
            deadlines: Mutex::default(),
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

    /// The socket the next batch of queries goes out on.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// Registers a query on slot `slot`, waiting until `deadline`: the
    /// upstream ID it must be sent with. None when the slot has no free ID.
    pub fn register(&self, slot: usize, waiter: P, deadline: Instant) -> Result<u16, P> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = {
            let mut w = self.slots[slot]
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if w.len() > usize::from(u16::MAX) / 2 {
                return Err(waiter);
            }
            let mut id = self.random_id();
            while w.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            w.insert(id, (seq, waiter));
            id
        };
        self.deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((deadline, slot, id, seq));
        Ok(id)
    }

    /// The query an answer with upstream `id` on `slot` belongs to.
    pub fn take(&self, slot: usize, id: u16) -> Option<P> {
        self.slots[slot]
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .map(|(_, p)| p)
    }

    /// Every query waiting on `slot` (its socket failed).
    pub fn take_all(&self, slot: usize) -> Vec<P> {
        self.slots[slot]
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, (_, p))| p)
            .collect()
    }

    /// The queries past their deadline at `now`.
    pub fn expired(&self, now: Instant) -> Vec<P> {
        let mut out = Vec::new();
        let mut d = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(at, slot, id, seq)) = d.front() {
            if at > now {
                break;
            }
            d.pop_front();
            let mut w = self.slots[slot]
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Answered already, or the ID was handed out again since.
            if w.get(&id).is_some_and(|(s, _)| *s == seq) {
                if let Some((_, p)) = w.remove(&id) {
                    out.push(p);
                }
            }
        }
        // Entries of answered queries are dropped as they reach the front;
        // bound what they can hold meanwhile.
        if d.len() > 4 * usize::from(u16::MAX) * SOCKETS {
            d.pop_front();
        }
        out
    }

    /// Queries waiting on any socket.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.waiting.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// How often waiting queries are checked against their deadline.
pub const SWEEP: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn pool() -> UdpPool<&'static str> {
        UdpPool::new("127.0.0.1:9".parse().unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn an_answered_query_is_taken_once_and_never_expires() {
        let p = pool().await;
        let now = Instant::now();
        let id = p.register(0, "q", now).unwrap();
        assert_eq!(p.waiting(), 1);
        assert_eq!(p.take(0, id), Some("q"));
        assert_eq!(p.take(0, id), None);
        assert!(p.expired(now + Duration::from_secs(1)).is_empty());
    }

    #[tokio::test]
    async fn queries_expire_in_order_at_their_deadline() {
        let p = pool().await;
        let now = Instant::now();
        p.register(1, "a", now + Duration::from_millis(10)).unwrap();
        p.register(2, "b", now + Duration::from_millis(20)).unwrap();
        assert!(p.expired(now).is_empty());
        assert_eq!(p.expired(now + Duration::from_millis(15)), vec!["a"]);
        assert_eq!(p.expired(now + Duration::from_millis(25)), vec!["b"]);
        assert_eq!(p.waiting(), 0);
    }

    #[tokio::test]
    async fn ids_waiting_on_a_socket_are_distinct_and_a_failed_socket_gives_them_all_back() {
        let p = pool().await;
        let now = Instant::now() + Duration::from_secs(60);
        let ids: std::collections::BTreeSet<u16> = (0..1000)
            .map(|_| p.register(3, "x", now).unwrap())
            .collect();
        assert_eq!(ids.len(), 1000);
        assert_eq!(p.take_all(3).len(), 1000);
        assert_eq!(p.waiting(), 0);
    }
}
