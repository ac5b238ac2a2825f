//! The etcd store: the registry state of one cluster shared by several
//! discovery replicas.
//!
//! Keys under `/meshgate/<cluster>/`:
//! - `state`: the whole [`RegistryState`] as JSON, with the events of the
//!   change that wrote it. Written only by a transaction that compares the
//!   key's `mod_revision` with the one this replica last saw, so a replica
//!   that missed another's change gets a conflict (and the newer state)
//!   instead of overwriting it. One key keeps every change atomic (a node,
//!   its tunnel IP allocation, its endpoints and any new identity together)
//!   and identities and tunnel IPs unique across replicas, at the cost of
//!   rewriting the whole state per change and etcd's request size limit
//!   (1.5 MiB by default; [`MAX_STATE_BYTES`] refuses a state near it,
//!   roughly 5,000 endpoints).
//! - `lease/<node>`: written when a node registers or renews at any replica;
//!   every replica restarts that node's lease when it sees the write, so a
//!   node renewing at replica B is not expired by replica A. Deleted with
//!   the change that removes the node.
//!
//! Every write keeps a revision in etcd's history; every `every` writes
//! ([`Compaction`], 1000 by default) a replica compacts the history older
//! than the last `keep` revisions (1000; a replica whose watch falls
//! further behind reads the state again), so etcd does not fill up with
//! old states.
//!
//! etcd's client is async; the [`Store`] seam is synchronous (it runs
//! under the server's mutex, like the embedded store's fsync). Calls are
//! sent to a small runtime of the store's own and waited for, with a
//! timeout; a watch on that runtime forwards other replicas' changes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::remote::{RemoteChange, RemoteState, StoreMark};
use super::{Compaction, Store, StoreError, STATE_FORMAT};
use crate::model::Event;
use crate::registry::RegistryState;

/// Time allowed for one etcd request.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest state written (etcd refuses requests over 1.5 MiB by default).
pub const MAX_STATE_BYTES: usize = 1024 * 1024;
const WATCH_RETRY: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize)]
struct StateDoc {
    format: u32,
    state: RegistryState,
    #[serde(default)]
    events: Vec<Event>,
}

pub struct EtcdStore {
    /// As the user wrote it, for messages.
    url: String,
    state_key: String,
    lease_prefix: String,
    client: Client,
    runtime: Option<tokio::runtime::Runtime>,
    /// What this replica's registry reflects of the `state` key.
    seen: StoreMark,
    remote: Option<mpsc::UnboundedReceiver<RemoteChange>>,
    remote_tx: mpsc::UnboundedSender<RemoteChange>,
    watching: Arc<AtomicBool>,
    /// Writes since this replica last compacted etcd's history.
    writes: u32,
    compaction: Compaction,
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`HOST:PORT`) for `cluster`'s state.
    pub fn connect(
        url: &str,
        endpoints: &[String],
        cluster: &str,
        compaction: Compaction,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::EtcdUnreachable {
                url: url.to_string(),
                reason: format!("cannot start its client runtime: {e}"),
            })?;
        let http: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        let client = wait(&runtime, async move {
            Client::connect(http, Some(options)).await
        })
        .map_err(|reason| StoreError::EtcdUnreachable {
            url: url.to_string(),
            reason,
        })?;
        let (remote_tx, remote) = mpsc::unbounded_channel();
        let prefix = format!("/meshgate/{cluster}/");
        Ok(EtcdStore {
            url: url.to_string(),
            state_key: format!("{prefix}state"),
            lease_prefix: format!("{prefix}lease/"),
            client,
            runtime: Some(runtime),
            seen: StoreMark::default(),
            remote: Some(remote),
            remote_tx,
            watching: Arc::new(AtomicBool::new(false)),
            writes: 0,
            compaction,
        })
    }

    /// Counts a write at etcd `revision`; now and then compacts the history
    /// behind it, in the background (a failure only delays it).
    fn wrote(&mut self, revision: i64) {
        self.writes += 1;
        let upto = revision - self.compaction.keep;
        if self.writes < self.compaction.every || upto <= 0 {
            return;
        }
        self.writes = 0;
        let (Some(runtime), mut client) = (&self.runtime, self.client.clone()) else {
            return;
        };
        let url = self.url.clone();
        runtime.spawn(async move {
            match client.compact(upto, None).await {
                Ok(_) => debug!(etcd = %url, revision = upto, "etcd history compacted"),
                Err(e) => debug!(etcd = %url, error = %e, "etcd compaction failed; retried later"),
            }
        });
    }

    fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| StoreError::Etcd {
            url: self.url.clone(),
            op,
            reason: "the store is shut down".into(),
        })?;
        wait(runtime, fut).map_err(|reason| StoreError::Etcd {
            url: self.url.clone(),
            op,
            reason,
        })
    }

    fn decode(&self, kv: &etcd_client::KeyValue) -> Result<RemoteState, StoreError> {
        let doc: StateDoc =
            serde_json::from_slice(kv.value()).map_err(|e| StoreError::EtcdCorrupt {
                url: self.url.clone(),
                key: self.state_key.clone(),
                reason: e.to_string(),
            })?;
        if doc.format != STATE_FORMAT {
            return Err(StoreError::EtcdCorrupt {
                url: self.url.clone(),
                key: self.state_key.clone(),
                reason: format!(
                    "format {} (this discovery reads format {STATE_FORMAT})",
                    doc.format
                ),
            });
        }
        Ok(RemoteState {
            state: doc.state,
            events: doc.events,
            version: kv.version(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn start_watch(&self, from_revision: i64) {
        let Some(runtime) = &self.runtime else { return };
        let watch = WatchLoop {
            client: self.client.clone(),
            prefix: self.state_key.trim_end_matches("state").to_string(),
            state_key: self.state_key.clone(),
            lease_prefix: self.lease_prefix.clone(),
            url: self.url.clone(),
            tx: self.remote_tx.clone(),
            watching: self.watching.clone(),
        };
        runtime.spawn(watch.run(from_revision));
    }
}

/// Runs `fut` on `runtime` and waits for it from any thread, inside or
/// outside another runtime.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT, fut).await);
    });
    // On a multi-threaded runtime, hand this worker's other tasks to another
    // worker while waiting (a current-thread runtime just waits).
    let received = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| rx.recv()),
        _ => rx.recv(),
    };
    match received {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(_)) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        Err(_) => Err("the etcd client stopped".into()),
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one would panic; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn load(&mut self) -> Result<Option<RegistryState>, StoreError> {
        let mut client = self.client.clone();
        let key = self.state_key.clone();
        let resp = self
            .call(
                "reading the state",
                async move { client.get(key, None).await },
            )
            .map_err(|e| match e {
                StoreError::Etcd { url, reason, .. } => StoreError::EtcdUnreachable { url, reason },
                e => e,
            })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let loaded = match resp.kvs().first() {
            Some(kv) => {
                let remote = self.decode(kv)?;
                self.seen = remote.mark();
                Some(remote.state)
            }
            None => None,
        };
        self.start_watch(revision + 1);
        Ok(loaded)
    }

    fn save(&mut self, state: &RegistryState, events: &[Event]) -> Result<(), StoreError> {
        let doc = StateDoc {
            format: STATE_FORMAT,
            state: state.clone(),
            events: events.to_vec(),
        };
        let bytes = serde_json::to_vec(&doc).map_err(|source| StoreError::EtcdEncode {
            url: self.url.clone(),
            source,
        })?;
        if bytes.len() > MAX_STATE_BYTES {
            return Err(StoreError::EtcdTooLarge {
                url: self.url.clone(),
                bytes: bytes.len(),
            });
        }
        let key = self.state_key.clone();
        let mut writes = vec![TxnOp::put(key.clone(), bytes, None)];
        // A removed node's lease key goes with it.
        writes.extend(events.iter().filter_map(|e| match e {
            Event::Removed { name, .. } => {
                Some(TxnOp::delete(format!("{}{name}", self.lease_prefix), None))
            }
            _ => None,
        }));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                self.seen.mod_revision,
            )])
            .and_then(writes)
            .or_else([TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let resp = self.call("saving the state", async move { client.txn(txn).await })?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            self.seen = StoreMark {
                version: self.seen.version + 1,
                mod_revision: revision,
            };
            self.wrote(revision);
            return Ok(());
        }
        let latest = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        match latest {
            Some(kv) => Err(StoreError::Conflict(Box::new(self.decode(&kv)?))),
            None => Err(StoreError::Etcd {
                url: self.url.clone(),
                op: "saving the state",
                reason: format!("key {} was deleted behind discovery's back", self.state_key),
            }),
        }
    }

    fn renewed(&mut self, node: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let key = format!("{}{node}", self.lease_prefix);
        let resp = self.call("recording a lease renewal", async move {
            client.put(key, Vec::<u8>::new(), None).await
        })?;
        self.wrote(resp.header().map_or(0, |h| h.revision()));
        Ok(())
    }

    fn take_remote(&mut self) -> Option<mpsc::UnboundedReceiver<RemoteChange>> {
        self.remote.take()
    }

    fn newer(&self, mark: StoreMark) -> Option<i64> {
        (mark.mod_revision > self.seen.mod_revision).then_some(self.seen.version)
    }

    fn adopt(&mut self, mark: StoreMark) {
        self.seen = mark;
    }

    fn may_expire(&self) -> bool {
        // Without a working watch, renewals at other replicas go unseen.
        self.watching.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("{} (key {})", self.url, self.state_key)
    }
}

/// Follows the cluster's keys and forwards what changed; after a broken
/// watch it reads the state again (changes may have been missed) and
/// watches from there.
struct WatchLoop {
    client: Client,
    prefix: String,
    state_key: String,
    lease_prefix: String,
    url: String,
    tx: mpsc::UnboundedSender<RemoteChange>,
    watching: Arc<AtomicBool>,
}

impl WatchLoop {
    async fn run(mut self, mut from: i64) {
        loop {
            if let Err(e) = self.follow(&mut from).await {
                warn!(etcd = %self.url, error = %e, "etcd watch broken; retrying");
            }
            self.watching.store(false, Ordering::Relaxed);
            if self.tx.is_closed() {
                return;
            }
            tokio::time::sleep(WATCH_RETRY).await;
            match self.resync().await {
                Ok(next) => from = next,
                Err(e) => debug!(etcd = %self.url, error = %e, "etcd still unreachable"),
            }
        }
    }

    /// Reads the state as it is now (forwarded; the server ignores it if it
    /// holds it already); the revision to watch from.
    async fn resync(&mut self) -> Result<i64, etcd_client::Error> {
        let resp = self.client.get(self.state_key.clone(), None).await?;
        if let Some(kv) = resp.kvs().first() {
            self.forward(kv);
        }
        Ok(resp.header().map_or(0, |h| h.revision()) + 1)
    }

    async fn follow(&mut self, from: &mut i64) -> Result<(), etcd_client::Error> {
        let options = WatchOptions::new().with_prefix().with_start_revision(*from);
        let mut stream = self
            .client
            .watch(self.prefix.clone(), Some(options))
            .await?;
        self.watching.store(true, Ordering::Relaxed);
        info!(etcd = %self.url, from = *from, "watching etcd for other replicas' changes");
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                warn!(etcd = %self.url, reason = resp.cancel_reason(), compacted = resp.compact_revision(), "etcd cancelled the watch");
                return Ok(());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                *from = kv.mod_revision() + 1;
                if event.event_type() == EventType::Put {
                    self.forward(kv);
                }
            }
            if self.tx.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn forward(&self, kv: &etcd_client::KeyValue) {
        let change = if kv.key() == self.state_key.as_bytes() {
            match serde_json::from_slice::<StateDoc>(kv.value()) {
                Ok(doc) if doc.format == STATE_FORMAT => RemoteChange::State(RemoteState {
                    state: doc.state,
                    events: doc.events,
                    version: kv.version(),
                    mod_revision: kv.mod_revision(),
                }),
                Ok(doc) => {
                    warn!(etcd = %self.url, format = doc.format, "state in etcd has another format; ignored");
                    return;
                }
                Err(e) => {
                    warn!(etcd = %self.url, error = %e, "state in etcd is not readable; ignored");
                    return;
                }
            }
        } else if let Some(node) = kv
            .key()
            .strip_prefix(self.lease_prefix.as_bytes())
            .and_then(|n| std::str::from_utf8(n).ok())
        {
            RemoteChange::Renewed {
                node: node.to_string(),
            }
        } else {
            return;
        };
        let _ = self.tx.send(change);
    }
}
