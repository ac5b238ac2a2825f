//! The benchmark's watchers. Each stands in for an agent: its own
//! connection, a `Watch` with backend deltas and (unless told otherwise)
//! snapshots in parts, as agents ask. Unlike an agent, it decodes only what
//! the benchmark measures: how many endpoints its snapshot has, when the
//! snapshot is complete, and the marked endpoint changes. The watchers
//! share the discovery's CPUs here; decoding thousands of snapshots whole
//! would measure the watchers rather than the discovery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use meshgate_discovery::client::{pb, MAX_MESSAGE_BYTES};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

/// A watch event, as far as the benchmark reads it (the other fields and
/// events are skipped by the decoder).
#[derive(Clone, PartialEq, prost::Message)]
struct LightEvent {
    #[prost(oneof = "Light", tags = "1, 4")]
    event: Option<Light>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Light {
    #[prost(message, tag = "1")]
    Snapshot(LightSnapshot),
    #[prost(message, tag = "4")]
    EndpointUpserted(LightUpserted),
}

/// `Snapshot`: its endpoints counted, not decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct LightSnapshot {
    #[prost(message, repeated, tag = "3")]
    endpoints: Vec<Skipped>,
    #[prost(bool, tag = "10")]
    more: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {}

/// `EndpointUpserted`: the endpoint's name only.
#[derive(Clone, PartialEq, prost::Message)]
struct LightUpserted {
    #[prost(message, optional, tag = "2")]
    endpoint: Option<LightEndpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LightEndpoint {
    #[prost(string, tag = "2")]
    name: String,
}

/// What a watcher saw, once stopped.
#[derive(Default)]
pub struct Seen {
    /// (mark, when) of each marked change.
    pub marks: Vec<(u64, Instant)>,
    /// Snapshots after the first (sent again when the watcher lagged).
    pub snapshots_again: u64,
    /// Why the stream ended before the stop, if it did.
    pub broken: Option<String>,
}

/// The watchers, open and past their first snapshot.
pub struct Watchers {
    tasks: Vec<JoinHandle<Seen>>,
    stop: watch::Sender<bool>,
    /// Marked changes seen, by all watchers together.
    pub marks_seen: Arc<AtomicU64>,
}

/// Opens `count` watchers (64 connecting at once) and waits until each has
/// a whole snapshot of `endpoints` endpoints.
pub async fn open(
    addr: SocketAddr,
    count: u32,
    parts: bool,
    endpoints: u64,
) -> Result<Watchers, String> {
    let (stop, stopped) = watch::channel(false);
    let marks_seen = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(64));
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (tx, rx) = oneshot::channel();
        ready.push(rx);
        let (stopped, seen, connecting) = (stopped.clone(), marks_seen.clone(), connecting.clone());
        tasks.push(tokio::spawn(async move {
            run(addr, parts, endpoints, tx, stopped, seen, connecting).await
        }));
    }
    for rx in ready {
        rx.await
            .map_err(|_| "a watcher ended before its snapshot".to_string())??;
    }
    Ok(Watchers {
        tasks,
        stop,
        marks_seen,
    })
}

impl Watchers {
    /// Stops the watchers: what each saw.
    pub async fn stop(self) -> Vec<Seen> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for t in self.tasks {
            all.push(t.await.unwrap_or_default());
        }
        all
    }
}

async fn run(
    addr: SocketAddr,
    parts: bool,
    endpoints: u64,
    ready: oneshot::Sender<Result<(), String>>,
    mut stopped: watch::Receiver<bool>,
    marks_seen: Arc<AtomicU64>,
    connecting: Arc<Semaphore>,
) -> Seen {
    let mut seen = Seen::default();
    let mut ready = Some(ready);
    let stream = {
        let _turn = connecting.acquire().await;
        open_stream(addr, parts).await
    };
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err(e));
            }
            return seen;
        }
    };
    let mut snapshot_endpoints = 0u64;
    let mut snapshots = 0u64;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = stopped.changed() => break,
        };
        let event = match msg {
            Ok(Some(LightEvent { event: Some(e) })) => e,
            Ok(Some(_)) => continue,
            Ok(None) => {
                seen.broken = Some("the discovery closed the stream".into());
                break;
            }
            Err(e) => {
                seen.broken = Some(format!("watch broken: {e}"));
                break;
            }
        };
        match event {
            Light::Snapshot(s) => {
                snapshot_endpoints += s.endpoints.len() as u64;
                if s.more {
                    continue;
                }
                snapshots += 1;
                if let Some(tx) = ready.take() {
                    let outcome = (snapshot_endpoints == endpoints)
                        .then_some(())
                        .ok_or(format!(
                            "a snapshot had {snapshot_endpoints} endpoints, {endpoints} registered"
                        ));
                    let _ = tx.send(outcome);
                }
                snapshot_endpoints = 0;
            }
            Light::EndpointUpserted(u) => {
                let mark = u
                    .endpoint
                    .and_then(|e| e.name.strip_prefix('c').and_then(|m| m.parse().ok()));
                if let Some(mark) = mark {
                    seen.marks.push((mark, Instant::now()));
                    marks_seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some(tx) = ready.take() {
        let why = seen.broken.clone().unwrap_or_else(|| "stopped".into());
        let _ = tx.send(Err(format!("a watcher ended before its snapshot: {why}")));
    }
    seen.snapshots_again = snapshots.saturating_sub(1);
    seen
}

async fn open_stream(
    addr: SocketAddr,
    parts: bool,
) -> Result<tonic::Streaming<LightEvent>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connecting a watcher: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let req = pb::WatchRequest {
        local_only: false,
        backend_deltas: true,
        snapshot_parts: parts,
    };
    let codec = tonic_prost::ProstCodec::<pb::WatchRequest, LightEvent>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/meshgate.discovery.v1.Discovery/Watch",
    );
    grpc.server_streaming(tonic::Request::new(req), path, codec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("watch refused: {s}"))
}
