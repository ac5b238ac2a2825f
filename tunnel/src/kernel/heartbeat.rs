//! Sub-second heartbeats for the kernel backend. Cluster-gateway liveness
//! wants something from each gateway peer every 200 ms (see the agent's
//! `liveness`), but the kernel's persistent keepalive counts whole seconds.
//! So for peers that ask for a keepalive under a second, a thread sends a
//! small UDP datagram to the peer's tunnel address, through the tunnel,
//! that often: it arrives encrypted, and the peer's receive count grows.
//! Each node binds the heartbeat port and never reads it, so heartbeats
//! end in a full socket buffer, with no ICMP reply and no other effect.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{trace, warn};

/// The UDP port heartbeats go to, on the peer's tunnel address.
pub const HEARTBEAT_PORT: u16 = 51_871;
/// How often the thread wakes to send what is due.
const TICK: Duration = Duration::from_millis(20);

struct Target {
    ip: Ipv4Addr,
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
        let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, HEARTBEAT_PORT)) {
            Ok(s) => s,
            Err(e) => {
                // Still send; the peer's kernel may answer with ICMP.
                warn!(port = HEARTBEAT_PORT, error = %e, "heartbeat port taken; sending from any port");
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?
            }
        };
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mg-heartbeat".into())
            .spawn(move || run(&socket, &s))?;
        Ok(Heartbeat { shared })
    }

    /// Sends to `name` at `ip` every `every`, or stops with `None`.
    pub fn set(&self, name: &str, target: Option<(Ipv4Addr, Duration)>) {
        let mut t = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match target {
            Some((ip, every)) => {
                t.insert(
                    name.to_string(),
                    Target {
                        ip,
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
        let due: Vec<(String, Ipv4Addr)> = {
            let mut t = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
            t.iter_mut()
                .filter(|(_, t)| t.due <= now)
                .map(|(name, t)| {
                    t.due = now + t.every;
                    (name.clone(), t.ip)
                })
                .collect()
        };
        for (name, ip) in due {
            // A peer with no route yet fails here; it is retried next time.
            if let Err(e) = socket.send_to(b"mg-hb", SocketAddrV4::new(ip, HEARTBEAT_PORT)) {
                trace!(peer = %name, error = %e, "heartbeat not sent");
            }
        }
        std::thread::sleep(TICK);
    }
}
