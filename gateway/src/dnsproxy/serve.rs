//! The serving loops: UDP datagrams and TCP connections from pods, each
//! query decided, forwarded if allowed, its answer's addresses written into
//! the maps, then answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshgate_egress::dnsproxy::datapath;
use meshgate_egress::dnsproxy::decide::{servfail, Action, Learned, Verdict};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::events::DnsEvent;
use super::handoff::Sockets;
use super::{upstream, Core};

/// How long a pod's identity read from the ipcache is used without
/// reading it again: an identity change (new labels, a pod address
/// reused) reaches the proxy at most this late.
pub const IDENTITY_FRESH: Duration = Duration::from_millis(250);
/// Identities kept at most (a node's pods; expired ones go first).
const IDENTITY_CACHE_MAX: usize = 4096;

/// The running loops; [`Serving::stop`] stops reading new queries.
pub struct Serving {
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn start(core: Arc<Core>, sockets: &Sockets) -> anyhow::Result<Serving> {
    let udp = sockets.udp.try_clone()?;
    udp.set_nonblocking(true)?;
    let udp = Arc::new(UdpSocket::from_std(udp)?);
    let tcp = sockets.tcp.try_clone()?;
    tcp.set_nonblocking(true)?;
    let tcp = TcpListener::from_std(tcp)?;
    Ok(Serving {
        tasks: vec![
            tokio::spawn(udp_loop(core.clone(), udp)),
            tokio::spawn(tcp_loop(core, tcp)),
        ],
    })
}

async fn udp_loop(core: Arc<Core>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "UDP receive");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let core = core.clone();
        let sock = sock.clone();
        core.inflight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if let Some(answer) = answer(&core, peer, &packet, false).await {
                if let Err(e) = sock.send_to(&answer, peer).await {
                    debug!(%peer, error = %e, "UDP send");
                }
            }
            core.inflight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn tcp_loop(core: Arc<Core>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(tcp_connection(core.clone(), stream, peer));
            }
            Err(e) => {
                debug!(error = %e, "TCP accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Queries on one TCP connection, answered in order; an idle connection is
/// closed after 10 s.
async fn tcp_connection(core: Arc<Core>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    loop {
        let query =
            match tokio::time::timeout(Duration::from_secs(10), upstream::read_framed(&mut stream))
                .await
            {
                Ok(Ok(q)) => q,
                _ => return,
            };
        core.inflight.fetch_add(1, Ordering::SeqCst);
        let out = answer(&core, peer, &query, true).await;
        let sent = match out {
            Some(a) => match u16::try_from(a.len()) {
                Ok(len) => {
                    let mut framed = Vec::with_capacity(a.len() + 2);
                    framed.extend_from_slice(&len.to_be_bytes());
                    framed.extend_from_slice(&a);
                    stream.write_all(&framed).await.is_ok()
                }
                Err(_) => false,
            },
            None => false,
        };
        core.inflight.fetch_sub(1, Ordering::SeqCst);
        if !sent {
            return;
        }
    }
}

/// The answer to one query from `peer`, if it gets one.
async fn answer(core: &Core, peer: SocketAddr, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let IpAddr::V4(pod) = peer.ip() else {
        return None;
    };
    let identity = core.identity_of(pod);
    let decider = core
        .decider
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let d = decider.on_query(identity, packet);
    core.metrics.query(d.verdict);
    if d.verdict == Verdict::UnknownIdentity {
        core.metrics.unknown_identity(pod, identity);
    }
    let mut event = DnsEvent::new(pod, identity, d.question.as_ref(), d.verdict, tcp);
    let out = match d.action {
        Action::Reply(bytes) => Some(bytes),
        Action::Drop => None,
        Action::Forward => {
            let started = Instant::now();
            let r = if tcp {
                upstream::tcp(core.upstream, packet, core.upstream_timeout).await
            } else {
                core.pool.ask(packet, core.upstream_timeout).await
            };
            let took = started.elapsed();
            event.upstream_ms = Some(took.as_secs_f64() * 1000.0);
            match r {
                Ok(answer) => {
                    core.metrics.upstream(took);
                    if let (Some(id), Some(q)) = (identity, d.question.as_ref()) {
                        let learned = decider.on_answer(id, pod, q, &answer, now_ns());
                        event.addresses = learned.addresses.iter().map(|(a, _)| *a).collect();
                        if let Err(e) = core.write_learned(id, pod, &learned) {
                            // Without the map entries the pod could not use the
                            // answer: better it retries than meets a drop.
                            warn!(%pod, error = %e, "writing answered addresses into the datapath failed");
                            core.metrics.map_write_failed();
                            event.verdict = "map-write-failed".into();
                            event.rcode = "SERVFAIL".into();
                            return servfail(packet);
                        }
                    }
                    Some(answer)
                }
                Err(e) => {
                    core.metrics.upstream_failed();
                    debug!(%pod, error = %e, "upstream failed: SERVFAIL");
                    event.verdict = "upstream-failed".into();
                    servfail(packet)
                }
            }
        }
    };
    if let Some(a) = &out {
        event.rcode = super::events::rcode_name(a).into();
    }
    core.events.push(event);
    out
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, which the
/// datapath compares the expiry with.
pub fn now_ns() -> u64 {
    meshgate_ebpf::monotonic_ns()
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Removes expired `mg_fqdn` entries every 2 s (the datapath already
/// ignores them; this frees the space) and counts what is held.
pub async fn collect_expired(core: Arc<Core>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match core.collect_expired(now_ns()) {
            Ok((held, removed)) => core.metrics.held(held, removed),
            Err(e) => debug!(error = %e, "collecting expired entries"),
        }
    }
}

impl Core {
    /// The identity of a pod of this node, from the pinned ipcache. A
    /// known identity is kept [`IDENTITY_FRESH`], so a burst of queries
    /// costs one map lookup; an unknown one is looked up each time (a new
    /// pod is served as soon as the agent has written it).
    pub fn identity_of(&self, pod: Ipv4Addr) -> Option<u32> {
        let now = Instant::now();
        {
            let ids = self.identities.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((id, at)) = ids.get(&pod) {
                if now.duration_since(*at) < IDENTITY_FRESH {
                    return Some(*id);
                }
            }
        }
        let found = {
            let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            match maps.ipcache.lookup(pod) {
                Ok(Some(e)) if e.local => Some(e.identity),
                _ => None,
            }
        };
        let mut ids = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        match found {
            Some(id) => {
                if ids.len() >= IDENTITY_CACHE_MAX {
                    ids.retain(|_, (_, at)| now.duration_since(*at) < IDENTITY_FRESH);
                }
                ids.insert(pod, (id, now));
            }
            None => {
                ids.remove(&pod);
            }
        }
        found
    }

    /// Writes an answer's addresses (before the pod gets it).
    pub fn write_learned(
        &self,
        identity: u32,
        pod: Ipv4Addr,
        learned: &Learned,
    ) -> meshgate_ebpf::Result<()> {
        let now = now_ns();
        // An entry this process wrote that already lasts about as long (a
        // tenth of the TTL, at most 2 s, earlier) is not written again.
        let ports: &[(u8, u16)] = learned.reach_ports.as_deref().unwrap_or_default();
        let fresh: Vec<(Ipv4Addr, u64)> = {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            learned
                .reach
                .iter()
                .filter(|(addr, expires)| {
                    let slack = ((expires.saturating_sub(now)) / 10).min(2_000_000_000);
                    !written.get(&(identity, *addr)).is_some_and(|(e, p)| {
                        p.as_slice() == ports && *e >= expires.saturating_sub(slack)
                    })
                })
                .copied()
                .collect()
        };
        if fresh.is_empty() && learned.egress.is_empty() {
            return Ok(());
        }
        let todo = Learned {
            addresses: Vec::new(),
            reach: fresh,
            reach_ports: learned.reach_ports.clone(),
            egress: learned.egress.clone(),
        };
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let w = datapath::write_learned(&mut maps, identity, pod, &todo, now)?;
        drop(maps);
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            for (addr, expires) in &todo.reach {
                written.insert((identity, *addr), (*expires, ports.to_vec()));
            }
        }
        self.metrics
            .addresses_written
            .fetch_add(w.addresses as u64, Ordering::Relaxed);
        self.metrics
            .egress_routes_written
            .fetch_add(w.egress_routes as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn collect_expired(&self, now_ns: u64) -> meshgate_ebpf::Result<(usize, usize)> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (expires, _)| *expires > now_ns);
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        datapath::collect_expired(&mut maps, now_ns)
    }
}
