//! DNS flow events: the last queries kept in memory and streamed as JSON
//! lines on `dnsproxy-observe.sock`, for `meshgate observe --protocol dns`.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use meshgate_egress::dnsproxy::decide::{Question, Verdict};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::Core;

/// How many events are kept for a new observer.
const KEPT: usize = 1024;

/// One query and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsEvent {
    /// Unix time, ms.
    pub time_ms: u64,
    pub pod: Ipv4Addr,
    pub identity: Option<u32>,
    pub name: String,
    pub qtype: String,
    /// allowed, refused, unknown-identity, local, malformed,
    /// upstream-failed, map-write-failed.
    pub verdict: String,
    /// The response code the pod got (NOERROR, REFUSED, ...); empty when
    /// it got no answer.
    pub rcode: String,
    /// The answer's addresses (allowed queries).
    pub addresses: Vec<Ipv4Addr>,
    pub upstream_ms: Option<f64>,
    pub transport: String,
}

impl DnsEvent {
    pub fn new(
        pod: Ipv4Addr,
        identity: Option<u32>,
        q: Option<&Question>,
        verdict: Verdict,
        tcp: bool,
    ) -> Self {
        DnsEvent {
            time_ms: super::serve::unix_ms(),
            pod,
            identity,
            name: q.map(|q| q.name.clone()).unwrap_or_default(),
            qtype: q.map(|q| q.qtype.to_string()).unwrap_or_default(),
            verdict: verdict.as_str().into(),
            rcode: String::new(),
            addresses: Vec::new(),
            upstream_ms: None,
            transport: if tcp { "tcp" } else { "udp" }.into(),
        }
    }
}

/// The RCODE of a DNS message, by name.
pub fn rcode_name(msg: &[u8]) -> &'static str {
    match msg.get(3).map(|b| b & 0x0f) {
        Some(0) => "NOERROR",
        Some(1) => "FORMERR",
        Some(2) => "SERVFAIL",
        Some(3) => "NXDOMAIN",
        Some(4) => "NOTIMP",
        Some(5) => "REFUSED",
        Some(_) => "OTHER",
        None => "",
    }
}

pub struct Events {
    recent: Mutex<VecDeque<DnsEvent>>,
    live: broadcast::Sender<DnsEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            recent: Mutex::new(VecDeque::with_capacity(KEPT)),
            live: broadcast::channel(4096).0,
        }
    }
}

impl Events {
    pub fn push(&self, e: DnsEvent) {
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == KEPT {
            r.pop_front();
        }
        if self.live.receiver_count() == 0 {
            r.push_back(e);
            return;
        }
        r.push_back(e.clone());
        drop(r);
        let _ = self.live.send(e);
    }
}

/// The observe socket of the proxy whose `--state-dir` is `state_dir`.
pub fn observe_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("dnsproxy-observe.sock")
}

/// Serves observers: each gets the kept events, then new ones, one JSON
/// object a line. A successor takes the path over (the old listener stays
/// open until this process exits).
pub async fn serve(core: Arc<Core>, path: PathBuf) {
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "no DNS observe socket");
            return;
        }
    };
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let mut live = core.events.live.subscribe();
            let recent: Vec<DnsEvent> = core
                .events
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            for e in recent {
                if write(&mut stream, &e).await.is_err() {
                    return;
                }
            }
            let marker = format!("{}\n", crate::observe_dns::LIVE_MARKER);
            if stream.write_all(marker.as_bytes()).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(e) => {
                        if write(&mut stream, &e).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "a DNS observer fell behind")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

async fn write(stream: &mut tokio::net::UnixStream, e: &DnsEvent) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}
