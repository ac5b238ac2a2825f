//! Flow events: the agent is the one reader of the datapath's ring buffer
//! (`mg_events`). A thread waits on it, resolves each event to pods and
//! identities with the ipcache, keeps the last [`RECENT`] in memory and
//! hands them to any number of `meshgate observe` clients on the unix socket
//! `<state-dir>/observe.sock` (newline-delimited JSON, docs/contracts.md).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context;
use meshgate_ebpf::{FlowEvent, Maps};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use super::Agent;
use crate::flow::{self, Flow};

/// The socket's file name in the state dir.
pub const SOCKET_FILE: &str = "observe.sock";
/// Events kept for clients that connect later.
pub const RECENT: usize = 2048;
/// Raw events waiting to be resolved, at most (48 bytes each).
const QUEUE: usize = 262_144;
/// Events a slow client may fall behind before it is told it missed some.
const CLIENT_QUEUE: usize = 4096;

/// What a client asks for (its first line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    /// Keep the connection and send live events after the recent ones.
    #[serde(default)]
    pub follow: bool,
}

/// What the agent sends, one JSON object a line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Flow(Box<Flow>),
    /// Every recent event has been sent; live ones follow (if asked).
    RecentEnd,
    /// This client fell behind and missed `missed` events.
    Lagged {
        missed: u64,
    },
}

/// A flow as the line sent to clients (`{"type":"flow",...}` and a
/// newline), encoded once however many clients there are.
type Line = Arc<[u8]>;

/// Shared between the reader thread, the socket server and the metrics.
pub struct Observer {
    state: Mutex<(VecDeque<Line>, broadcast::Sender<Line>)>,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    /// Events read from the ring buffer but discarded: the queue to the
    /// resolver was full.
    pub overflow: AtomicU64,
    pub clients: AtomicUsize,
}

impl Observer {
    fn new() -> Observer {
        let (tx, _) = broadcast::channel(CLIENT_QUEUE);
        Observer {
            state: Mutex::new((VecDeque::with_capacity(RECENT), tx)),
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            clients: AtomicUsize::new(0),
        }
    }

    fn push(&self, f: Flow) {
        let counter = if f.verdict == flow::ALLOWED {
            &self.allowed
        } else {
            &self.denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let line: Line = match encode(&Message::Flow(Box::new(f))) {
            Ok(l) => l.into(),
            Err(e) => {
                warn!(error = %e, "encoding a flow failed");
                return;
            }
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.len() == RECENT {
            st.0.pop_front();
        }
        st.0.push_back(line.clone());
        // No receiver is not an error.
        let _ = st.1.send(line);
    }

    /// The recent events and a receiver for the next ones, with no event
    /// missed or sent twice in between.
    fn subscribe(&self) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.0.iter().cloned().collect(), st.1.subscribe())
    }
}

/// A clock in nanoseconds (`CLOCK_MONOTONIC` is the clock of `bpf_ktime_get_ns`).
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits up to `ms` for the ring buffer to become readable.
fn wait_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Raw events between the thread that drains the ring buffer and the one
/// that resolves them: draining is only a copy, so the ring buffer (about
/// 5,400 events) empties fast even when resolving is slower than a burst.
struct Queue {
    events: Mutex<VecDeque<FlowEvent>>,
    ready: Condvar,
}

fn drain_loop(maps_dir: PathBuf, queue: Arc<Queue>, observer: Arc<Observer>) {
    use std::os::fd::AsRawFd;
    let mut maps = loop {
        match Maps::open_pinned(&maps_dir) {
            Ok(m) => break m,
            Err(e) => {
                warn!(dir = %maps_dir.display(), error = %e, "opening the flow event ring buffer failed; retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    info!(dir = %maps_dir.display(), "reading flow events");
    loop {
        wait_readable(maps.events.as_raw_fd(), 250);
        let mut batch = Vec::new();
        while let Some(ev) = maps.events.next_event() {
            batch.push(ev);
            if batch.len() == 1024 {
                queue_batch(&queue, &observer, &mut batch);
            }
        }
        queue_batch(&queue, &observer, &mut batch);
    }
}

fn queue_batch(queue: &Queue, observer: &Observer, batch: &mut Vec<FlowEvent>) {
    if batch.is_empty() {
        return;
    }
    let mut q = queue.events.lock().unwrap_or_else(|p| p.into_inner());
    let room = QUEUE.saturating_sub(q.len());
    let over = batch.len().saturating_sub(room);
    q.extend(batch.drain(..batch.len() - over));
    drop(q);
    if over > 0 {
        observer.overflow.fetch_add(over as u64, Ordering::Relaxed);
        batch.clear();
    }
    queue.ready.notify_one();
}

fn resolve_loop(agent: Arc<Agent>, queue: Arc<Queue>, observer: Arc<Observer>) {
    // Behind the drain thread for the CPU: in a burst, emptying the ring
    // buffer (or events are lost) matters more than resolving at once.
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
    let node = agent.cfg.mesh_name();
    loop {
        let events: Vec<FlowEvent> = {
            let mut q = queue.events.lock().unwrap_or_else(|p| p.into_inner());
            while q.is_empty() {
                q = queue.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.drain(..).collect()
        };
        // The events carry CLOCK_MONOTONIC; the wall clock is offset by this.
        let offset = clock_ns(libc::CLOCK_REALTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
        for chunk in events.chunks(256) {
            // The ipcache lock is held for a chunk at a time only.
            let flows: Vec<Flow> = {
                let cache = agent.ipcache();
                chunk
                    .iter()
                    .map(|ev| flow::resolve(ev, &node, (ev.ts_ns + offset) / 1_000_000, &cache))
                    .collect()
            };
            for f in flows {
                tracing::trace!(flow = %flow::line(&f), "flow event");
                observer.push(f);
            }
        }
    }
}

/// The observe socket of the agent whose state dir is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Starts reading flow events (with the eBPF datapath only) and serving
/// them; `None` without the eBPF datapath.
pub fn start(agent: &Arc<Agent>) -> anyhow::Result<Option<Arc<Observer>>> {
    if agent.datapath.get().is_none() {
        return Ok(None);
    }
    let observer = Arc::new(Observer::new());
    let maps_dir = agent.cfg.bpf_pin_dir.join("maps");
    let queue = Arc::new(Queue {
        events: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    });
    let (q, o) = (queue.clone(), observer.clone());
    std::thread::Builder::new()
        .name("flow-drain".into())
        .spawn(move || drain_loop(maps_dir, q, o))
        .context("starting the flow event reader")?;
    let (a, o) = (agent.clone(), observer.clone());
    std::thread::Builder::new()
        .name("flow-resolve".into())
        .spawn(move || resolve_loop(a, queue, o))
        .context("starting the flow event resolver")?;
    let path = socket_path(&agent.cfg.state_dir);
    // A socket left by an earlier run is stale: nobody else binds here.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("listening for `meshgate observe` on {}", path.display()))?;
    info!(socket = %path.display(), "serving flow events");
    tokio::spawn(serve(listener, observer.clone()));
    Ok(Some(observer))
}

async fn serve(listener: UnixListener, observer: Arc<Observer>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let o = observer.clone();
                tokio::spawn(async move {
                    o.clients.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = client(stream, &o).await {
                        debug!(error = %e, "observe client gone");
                    }
                    o.clients.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting an observe client failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn encode(m: &Message) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, m: &Message) -> std::io::Result<()> {
    w.write_all(&encode(m)?).await
}

async fn client(stream: UnixStream, observer: &Observer) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .map_err(|_| std::io::Error::other("no request within 5 s"))??;
    let req: Request = match first.as_deref().map(serde_json::from_str) {
        Some(Ok(r)) => r,
        _ => Request::default(),
    };
    let (recent, mut rx) = observer.subscribe();
    for line in recent {
        w.write_all(&line).await?;
    }
    send(&mut w, &Message::RecentEnd).await?;
    if !req.follow {
        return w.shutdown().await;
    }
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Ok(line) => w.write_all(&line).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    send(&mut w, &Message::Lagged { missed }).await?
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // The client closed its side.
            line = lines.next_line() => if matches!(line, Ok(None) | Err(_)) {
                return Ok(());
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipcache::IpCache;
    use meshgate_ebpf::{FlowEvent, Point, Reason, Verdict};
    use tokio::io::AsyncBufReadExt;

    fn flow(n: u16, verdict: Verdict) -> Flow {
        let ev = FlowEvent {
            ts_ns: 0,
            src: "10.1.0.10".parse().unwrap(),
            dst: "10.1.1.10".parse().unwrap(),
            src_identity: 65_792,
            dst_identity: 65_793,
            sport: n,
            dport: 80,
            proto: 6,
            verdict: Some(verdict),
            reason: Some(match verdict {
                Verdict::Allow => Reason::None,
                Verdict::Deny => Reason::PolicyIngress,
            }),
            point: Some(Point::FromPod),
            ifindex: 1,
        };
        flow::resolve(&ev, "c1/n1", u64::from(n), &IpCache::default())
    }

    async fn connect(
        path: &Path,
        follow: bool,
    ) -> tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>> {
        let s = UnixStream::connect(path).await.unwrap();
        let (r, mut w) = s.into_split();
        let req = serde_json::to_string(&Request { follow }).unwrap();
        w.write_all(format!("{req}\n").as_bytes()).await.unwrap();
        // Keep the write half open: closing it ends a follow stream.
        std::mem::forget(w);
        BufReader::new(r).lines()
    }

    async fn next(
        lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    ) -> Message {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn port(m: &Message) -> u16 {
        match m {
            Message::Flow(f) => f.src.port,
            other => panic!("expected a flow, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn clients_get_the_recent_flows_then_live_ones_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let observer = Arc::new(Observer::new());
        for n in 0..(RECENT as u16 + 3) {
            observer.push(flow(n, Verdict::Allow));
        }
        observer.push(flow(9999, Verdict::Deny));
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(serve(listener, observer.clone()));

        // Without follow: the last RECENT flows, oldest first, then the end.
        let mut once = connect(&path, false).await;
        let first = next(&mut once).await;
        assert_eq!(port(&first), 4, "the oldest kept flow");
        for _ in 1..RECENT - 1 {
            next(&mut once).await;
        }
        assert_eq!(port(&next(&mut once).await), 9999);
        assert!(matches!(next(&mut once).await, Message::RecentEnd));
        assert_eq!(
            once.next_line().await.unwrap(),
            None,
            "closed after the recent flows"
        );

        // Two followers at once both get a live flow, after the recent ones.
        let mut a = connect(&path, true).await;
        let mut b = connect(&path, true).await;
        for lines in [&mut a, &mut b] {
            for _ in 0..RECENT {
                next(lines).await;
            }
            assert!(matches!(next(lines).await, Message::RecentEnd));
        }
        assert!(
            wait(|| observer.clients.load(Ordering::Relaxed) == 2).await,
            "two clients connected"
        );
        observer.push(flow(7, Verdict::Deny));
        assert_eq!(port(&next(&mut a).await), 7);
        assert_eq!(port(&next(&mut b).await), 7);
        assert_eq!(observer.allowed.load(Ordering::Relaxed), RECENT as u64 + 3);
        assert_eq!(observer.denied.load(Ordering::Relaxed), 2);
    }

    async fn wait(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..250 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
