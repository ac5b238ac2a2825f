//! Sub-second heartbeats for the kernel backend. Cluster-gateway liveness
//! wants something from each gateway peer every 200 ms (see the agent's
//! `liveness`), but the kernel's persistent keepalive counts whole seconds.
//! So for peers that ask for a keepalive under a second, a thread sends a
//! small UDP datagram that often to the peer's tunnel address, through the
//! tunnel: it arrives encrypted, and the peer's receive count grows.
//!
//! It goes to the peer's WireGuard listen port, which the peer's kernel
//! holds for as long as its WireGuard device exists, agent or not: the
//! device drops the datagram (not a WireGuard message) without a word. A
//! port nobody binds would not do: while the peer's agent is down (a
//! crash, a restart), its kernel would answer each heartbeat with an ICMP
//! port unreachable through the tunnel, and those replies, rate-limited to
//! about one a second, would make a gateway with no agent look alive now
//! and then.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::trace;

/// How often the thread wakes to send what is due.
const TICK: Duration = Duration::from_millis(20);

struct Target {
    to: SocketAddrV4,
    every: Duration,
    due: Instant,
}

#[derive(Default)]
struct Shared {
    /// Peer name -> where and how often.
    targets: Mutex<BTreeMap<String, Target>>,
    stop: AtomicBool,
}

/// The heartbeat thread; it stops when this is dropped.
pub struct Heartbeat {
    shared: Arc<Shared>,
}

impl Heartbeat {
    pub fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mg-heartbeat".into())
            .spawn(move || run(&socket, &s))?;
        Ok(Heartbeat { shared })
    }

    /// Sends to `name` at `to` (its tunnel address and WireGuard listen
    /// port) every `every`, or stops with `None`.
    pub fn set(&self, name: &str, target: Option<(SocketAddrV4, Duration)>) {
        let mut t = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match target {
            Some((to, every)) => {
                t.insert(
                    name.to_string(),
                    Target {
                        to,
                        every,
                        due: Instant::now(),
                    },
                );
            }
            None => {
                t.remove(name);
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn run(socket: &UdpSocket, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due: Vec<(String, SocketAddrV4)> = {
            let mut t = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
            t.iter_mut()
                .filter(|(_, t)| t.due <= now)
                .map(|(name, t)| {
                    t.due = now + t.every;
                    (name.clone(), t.to)
                })
                .collect()
        };
        for (name, to) in due {
            // A peer with no route yet fails here; it is retried next time.
            if let Err(e) = socket.send_to(b"mg-hb", to) {
                trace!(peer = %name, error = %e, "heartbeat not sent");
            }
        }
        std::thread::sleep(TICK);
    }
}
