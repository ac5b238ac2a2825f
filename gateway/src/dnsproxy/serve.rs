//! The serving loops: UDP datagrams and TCP connections from pods, each
//! query decided, forwarded if allowed, its answer's addresses written into
//! the maps, then answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshgate_egress::dnsproxy::datapath;
use meshgate_egress::dnsproxy::decide::{servfail, Action, Decider, Learned, Question, Verdict};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::mmsg::Sock;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::events::DnsEvent;
use super::handoff::Sockets;
use super::{mmsg, pool, upstream, Core};

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
    if let Err(e) = mmsg::set_receive_buffer(&udp, RECEIVE_BUFFER) {
        warn!(error = %e, "could not enlarge the UDP receive buffer: bursts may be dropped");
    }
    for slot in &core.pool.slots {
        let _ = mmsg::set_receive_buffer(&*slot.sock, RECEIVE_BUFFER);
    }
    let udp = Arc::new(Sock::new(udp)?);
    let tcp = sockets.tcp.try_clone()?;
    tcp.set_nonblocking(true)?;
    let tcp = TcpListener::from_std(tcp)?;
    // The upstream readers and the deadline sweep are not stopped: the
    // queries already forwarded are answered before the process exits.
    for slot in 0..core.pool.slots.len() {
        tokio::spawn(upstream_answers(core.clone(), udp.clone(), slot));
    }
    tokio::spawn(sweep_deadlines(core.clone(), udp.clone()));
    Ok(Serving {
        tasks: vec![
            tokio::spawn(udp_loop(core.clone(), udp)),
            tokio::spawn(tcp_loop(core, tcp)),
        ],
    })
}

/// Queries waiting datagrams are read in batches of at most this many.
const BATCH: usize = 64;
/// Receive buffer of the pods' socket and of each upstream socket.
const RECEIVE_BUFFER: usize = 4 << 20;
/// A query longer than this is not one a pod sends: FORMERR.
const MAX_QUERY: usize = 4096;

/// A forwarded UDP query waiting for its upstream answer.
pub(crate) struct Waiting {
    client: SocketAddrV4,
    /// As the pod sent it (its ID goes back into the answer).
    query: Vec<u8>,
    forward: Forward,
}

/// Reads queries in batches; answers what is decided at once and forwards
/// the rest upstream in one batch on one pool socket.
async fn udp_loop(core: Arc<Core>, sock: Arc<Sock>) {
    let mut batch = mmsg::RecvBatch::new(BATCH, MAX_QUERY);
    let mut replies: Vec<(SocketAddrV4, Vec<u8>)> = Vec::with_capacity(BATCH);
    let mut forwards: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    loop {
        let n = match batch.recv(&sock).await {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "UDP receive");
                continue;
            }
        };
        let slot = core.pool.pick();
        let deadline = Instant::now() + core.upstream_timeout;
        for i in 0..n {
            let Some(d) = batch.get(i) else { break };
            let Some(client) = d.from else { continue };
            if d.truncated {
                if let Some(r) = formerr(d.data) {
                    replies.push((client, r));
                }
                continue;
            }
            match decide(&core, *client.ip(), d.data, false) {
                Step::Done(Some(r)) => replies.push((client, r)),
                Step::Done(None) => {}
                Step::Forward(forward) => {
                    let mut out = d.data.to_vec();
                    let w = Waiting {
                        client,
                        query: d.data.to_vec(),
                        forward,
                    };
                    match core.pool.register(slot, w, deadline) {
                        Ok(id) => {
                            out[..2].copy_from_slice(&id.to_be_bytes());
                            core.inflight.fetch_add(1, Ordering::SeqCst);
                            forwards.push(out);
                        }
                        Err(w) => {
                            let e = std::io::Error::other("too many queries waiting upstream");
                            if let Some(r) = finish(&core, &w.query, w.forward, Err(e)) {
                                replies.push((w.client, r));
                            }
                        }
                    }
                }
            }
        }
        if !forwards.is_empty() {
            let msgs: Vec<(Option<SocketAddrV4>, &[u8])> =
                forwards.iter().map(|q| (None, q.as_slice())).collect();
            let sent = mmsg::send_all(&core.pool.slots[slot].sock, &msgs)
                .await
                .unwrap_or(0);
            // What the kernel refused waits for the sweep (or an ICMP
            // error), as a lost datagram would: it gets its SERVFAIL then.
            if sent < msgs.len() {
                debug!(sent, of = msgs.len(), "upstream send incomplete");
            }
            forwards.clear();
        }
        send_replies(&sock, &mut replies).await;
    }
}

async fn send_replies(sock: &Sock, replies: &mut Vec<(SocketAddrV4, Vec<u8>)>) {
    if replies.is_empty() {
        return;
    }
    let msgs: Vec<(Option<SocketAddrV4>, &[u8])> = replies
        .iter()
        .map(|(to, r)| (Some(*to), r.as_slice()))
        .collect();
    match mmsg::send_all(sock, &msgs).await {
        Ok(n) if n < msgs.len() => debug!(sent = n, of = msgs.len(), "UDP send incomplete"),
        Ok(_) => {}
        Err(e) => debug!(error = %e, "UDP send"),
    }
    replies.clear();
}

/// Answers from the upstream on pool socket `slot`, in batches.
async fn upstream_answers(core: Arc<Core>, client: Arc<Sock>, slot: usize) {
    let sock = core.pool.slots[slot].sock.clone();
    let mut batch = mmsg::RecvBatch::new(BATCH / 4, 65535);
    let mut replies = Vec::with_capacity(BATCH / 4);
    loop {
        match batch.recv(&sock).await {
            Ok(n) => {
                for i in 0..n {
                    let Some(d) = batch.get(i) else { break };
                    if d.data.len() < 12 || d.truncated {
                        continue;
                    }
                    let id = u16::from_be_bytes([d.data[0], d.data[1]]);
                    let Some(w) = core.pool.take(slot, id) else {
                        continue;
                    };
                    let mut answer = d.data.to_vec();
                    answer[..2].copy_from_slice(&w.query[..2]);
                    if let Some(r) = finish(&core, &w.query, w.forward, Ok(answer)) {
                        replies.push((w.client, r));
                    }
                    core.inflight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                // ICMP unreachable on a connected socket: every query
                // waiting on it fails now, not at its deadline.
                debug!(error = %e, "upstream socket error");
                for w in core.pool.take_all(slot) {
                    let err = std::io::Error::new(e.kind(), e.to_string());
                    if let Some(r) = finish(&core, &w.query, w.forward, Err(err)) {
                        replies.push((w.client, r));
                    }
                    core.inflight.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        send_replies(&client, &mut replies).await;
    }
}

/// SERVFAIL for the queries the upstream did not answer in time.
async fn sweep_deadlines(core: Arc<Core>, client: Arc<Sock>) {
    let mut replies = Vec::new();
    loop {
        tokio::time::sleep(pool::SWEEP).await;
        for w in core.pool.expired(Instant::now()) {
            let e = upstream::timed_out(core.pool.upstream, core.upstream_timeout);
            if let Some(r) = finish(&core, &w.query, w.forward, Err(e)) {
                replies.push((w.client, r));
            }
            core.inflight.fetch_sub(1, Ordering::SeqCst);
        }
        send_replies(&client, &mut replies).await;
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
    let IpAddr::V4(pod) = peer.ip() else {
        return;
    };
    loop {
        let query =
            match tokio::time::timeout(Duration::from_secs(10), upstream::read_framed(&mut stream))
                .await
            {
                Ok(Ok(q)) => q,
                _ => return,
            };
        core.inflight.fetch_add(1, Ordering::SeqCst);
        let out = match decide(&core, pod, &query, true) {
            Step::Done(out) => out,
            Step::Forward(forward) => {
                let r = upstream::tcp(core.upstream, &query, core.upstream_timeout).await;
                finish(&core, &query, forward, r)
            }
        };
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

/// What becomes of a query once decided.
// Returned and matched at once, never stored: boxing the large variant
// would only add an allocation per forwarded query.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Answered (or dropped) by the proxy itself.
    Done(Option<Vec<u8>>),
    /// Allowed: it goes upstream, then to [`finish`].
    Forward(Forward),
}

/// What the answer of a forwarded query needs.
pub(crate) struct Forward {
    pod: Ipv4Addr,
    identity: Option<u32>,
    question: Option<Question>,
    decider: Arc<Decider>,
    started: Instant,
    event: DnsEvent,
}

/// Decides about one query of `pod`.
fn decide(core: &Core, pod: Ipv4Addr, packet: &[u8], tcp: bool) -> Step {
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
            return Step::Forward(Forward {
                pod,
                identity,
                question: d.question,
                decider,
                started: Instant::now(),
                event,
            })
        }
    };
    if let Some(a) = &out {
        event.rcode = super::events::rcode_name(a).into();
    }
    core.events.push(event);
    Step::Done(out)
}

/// The answer the pod gets for a forwarded `query`, from the upstream's
/// `result`: the answer itself once its addresses are written into the
/// datapath, or SERVFAIL.
fn finish(
    core: &Core,
    query: &[u8],
    f: Forward,
    result: std::io::Result<Vec<u8>>,
) -> Option<Vec<u8>> {
    let took = f.started.elapsed();
    let mut event = f.event;
    event.upstream_ms = Some(took.as_secs_f64() * 1000.0);
    let out = match result {
        Ok(answer) => {
            core.metrics.upstream(took);
            let mut out = Some(answer);
            if let (Some(id), Some(q), Some(answer)) = (f.identity, f.question.as_ref(), &out) {
                let learned = f.decider.on_answer(id, f.pod, q, answer, now_ns());
                event.addresses = learned.addresses.iter().map(|(a, _)| *a).collect();
                if let Err(e) = core.write_learned(id, f.pod, &learned) {
                    // Without the map entries the pod could not use the
                    // answer: better it retries than meets a drop.
                    warn!(pod = %f.pod, error = %e, "writing answered addresses into the datapath failed");
                    core.metrics.map_write_failed();
                    event.verdict = "map-write-failed".into();
                    out = servfail(query);
                }
            }
            out
        }
        Err(e) => {
            core.metrics.upstream_failed();
            debug!(pod = %f.pod, error = %e, "upstream failed: SERVFAIL");
            event.verdict = "upstream-failed".into();
            servfail(query)
        }
    };
    if let Some(a) = &out {
        event.rcode = super::events::rcode_name(a).into();
    }
    core.events.push(event);
    out
}

/// FORMERR for a datagram too long to be a query, if its header is there.
fn formerr(packet: &[u8]) -> Option<Vec<u8>> {
    let mut r = packet.get(..12)?.to_vec();
    r[2] = 0x80 | (r[2] & 0x79); // a response, opcode kept, no AA/TC
    r[3] = 0x01; // FORMERR
    r[4..12].fill(0); // no sections
    Some(r)
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
