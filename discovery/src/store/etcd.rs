//! The etcd store: the registry state of one cluster shared by several
//! discovery replicas, one key per record under `/meshgate/<cluster>/`
//! (the layout is in [`records`]).
//!
//! - A change writes only the records it changed, with `meta`, in one
//!   transaction that first compares `meta`'s `mod_revision` with the one
//!   this replica last saw: a replica that missed another's change gets a
//!   conflict (and the newer state) instead of overwriting it. New tunnel
//!   IP allocations and identities are also written only if their keys do
//!   not exist yet, so no value is handed out twice. A change over etcd's
//!   limits for one transaction (128 operations, [`MAX_TXN_BYTES`]) is
//!   written in several, `meta` last; such a change is atomic for other
//!   replicas (they take the state when `meta` changes) but not against a
//!   concurrent change at another replica, which may then see part of it.
//! - `lease/<node>`: written when a node registers or renews at any
//!   replica; every replica restarts that node's lease when it sees the
//!   write, so a node renewing at replica B is not expired by replica A.
//!   Deleted with the change that removes the node. A renewal writes this
//!   one small key.
//! - Replicas read the records in pages at one revision, and follow them
//!   with a watch from the next; after a broken watch (or one cancelled
//!   because etcd compacted the history it needed) they read everything
//!   again and take it as one change, so watchers see only what changed.
//! - An existing single-key `state` (discoveries before this layout) is
//!   migrated on first start and kept as `state.migrated`.
//!
//! Every write keeps a revision in etcd's history; every `every` writes
//! ([`Compaction`], 1000 by default) a replica compacts the history older
//! than the last `keep` revisions (1000), so etcd does not fill up.
//!
//! etcd's client is async; the [`Store`] seam is synchronous (it runs
//! under the server's mutex, like the embedded store's commit). Calls are
//! sent to a small runtime of the store's own and waited for, with a
//! timeout; a watch on that runtime forwards other replicas' changes.

mod records;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::records::{Meta, Mirror, OldStateDoc, Op, Records};
use super::remote::{RemoteChange, RemotePatch, RemoteState, StoreMark};
use super::{Compaction, Store, StoreError, STATE_FORMAT};
use crate::model::Event;
use crate::registry::{Registry, RegistryState};

/// Time allowed for one etcd request.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest transaction written, in key and value bytes (etcd refuses
/// requests over 1.5 MiB by default); one record over it is refused.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Most operations in one transaction (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// Keys read per request when reading everything.
const PAGE: i64 = 64;
const WATCH_RETRY: Duration = Duration::from_millis(500);

pub struct EtcdStore {
    /// As the user wrote it, for messages.
    url: String,
    /// `/meshgate/<cluster>/`.
    prefix: String,
    client: Client,
    runtime: Option<tokio::runtime::Runtime>,
    /// Where the state this replica's registry reflects stands (`meta`).
    seen: StoreMark,
    /// The allocation and identity keys of that state (a new one is
    /// written only where nobody created it meanwhile).
    guarded: BTreeSet<String>,
    remote: Option<mpsc::UnboundedReceiver<RemoteChange>>,
    remote_tx: mpsc::UnboundedSender<RemoteChange>,
    watching: Arc<AtomicBool>,
    /// Writes since this replica last compacted etcd's history.
    writes: u32,
    compaction: Compaction,
    /// This replica's ID in the `meta` it writes.
    writer: String,
}

/// Everything under a prefix at one revision.
struct Snapshot {
    kvs: Vec<KeyValue>,
    revision: i64,
}

/// The end of the key range of `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Reads every key under `prefix`, in pages, all at the revision of the
/// first page.
async fn read_all(mut client: Client, prefix: String) -> Result<Snapshot, etcd_client::Error> {
    let end = prefix_end(&prefix);
    let mut from = prefix.into_bytes();
    let mut revision = 0;
    let mut kvs = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let page = resp.kvs();
        if let Some(last) = page.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        kvs.extend(page.iter().cloned());
        if !resp.more() || page.is_empty() {
            return Ok(Snapshot { kvs, revision });
        }
    }
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
        Ok(EtcdStore {
            url: url.to_string(),
            prefix: format!("/meshgate/{cluster}/"),
            client,
            runtime: Some(runtime),
            seen: StoreMark::default(),
            guarded: BTreeSet::new(),
            remote: Some(remote),
            remote_tx,
            watching: Arc::new(AtomicBool::new(false)),
            writes: 0,
            compaction,
            writer: replica_id(),
        })
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
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

    fn read(&self, op: &'static str) -> Result<Snapshot, StoreError> {
        self.call(op, read_all(self.client.clone(), self.prefix.clone()))
    }

    /// The records of a snapshot, decoded.
    fn mirror(&self, snap: &Snapshot) -> Result<Mirror, StoreError> {
        let mut m = Mirror::default();
        for kv in &snap.kvs {
            take(&self.prefix, &mut m, kv).map_err(|e| StoreError::EtcdCorrupt {
                url: self.url.clone(),
                key: self.key(&e.key),
                reason: e.reason,
            })?;
        }
        Ok(m)
    }

    fn encode_err(&self) -> impl Fn(serde_json::Error) -> StoreError + '_ {
        |source| StoreError::EtcdEncode {
            url: self.url.clone(),
            source,
        }
    }

    /// Writes `ops`, then `meta` (with `extra` beside it), each transaction
    /// comparing `meta`'s revision with `meta_revision` (and new
    /// allocations' and identities' keys with nothing); the revision of
    /// the last write, or `None` if a compare failed.
    fn write(
        &self,
        op: &'static str,
        ops: Vec<Op>,
        meta: &Meta,
        extra: Vec<TxnOp>,
        meta_revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let meta_bytes = serde_json::to_vec(meta).map_err(self.encode_err())?;
        let reserve = 1 + extra.len();
        let txns = records::chunks(ops, MAX_TXN_OPS, MAX_TXN_BYTES, reserve);
        let last = txns.len() - 1;
        let mut revision = 0;
        for (i, chunk) in txns.into_iter().enumerate() {
            let mut when = vec![Compare::mod_revision(
                self.key(records::META),
                CompareOp::Equal,
                meta_revision,
            )];
            let mut then = Vec::with_capacity(chunk.len() + reserve);
            for o in chunk {
                if o.must_be_new() {
                    when.push(Compare::create_revision(
                        self.key(o.key()),
                        CompareOp::Equal,
                        0,
                    ));
                }
                then.push(match o {
                    Op::Put { key, value, .. } => TxnOp::put(self.key(&key), value, None),
                    Op::Delete(key) => TxnOp::delete(self.key(&key), None),
                });
            }
            if i == last {
                then.push(TxnOp::put(
                    self.key(records::META),
                    meta_bytes.clone(),
                    None,
                ));
                then.extend(extra.iter().cloned());
            }
            let txn = Txn::new().when(when).and_then(then);
            let mut client = self.client.clone();
            let resp = self.call(op, async move { client.txn(txn).await })?;
            if !resp.succeeded() {
                return Ok(None);
            }
            revision = resp.header().map_or(0, |h| h.revision());
        }
        Ok(Some(revision))
    }

    /// Rewrites a single-key state of an older discovery as records and
    /// keeps it as `state.migrated`. Another replica migrating at the same
    /// time makes this one's compare fail; the caller reads again.
    fn migrate(&mut self, old: &KeyValue) -> Result<(), StoreError> {
        let key = self.key(records::OLD_STATE);
        let doc: OldStateDoc =
            serde_json::from_slice(old.value()).map_err(|e| StoreError::EtcdCorrupt {
                url: self.url.clone(),
                key: key.clone(),
                reason: e.to_string(),
            })?;
        if doc.format != STATE_FORMAT {
            return Err(StoreError::EtcdCorrupt {
                url: self.url.clone(),
                key,
                reason: format!(
                    "format {} (this discovery reads format {STATE_FORMAT})",
                    doc.format
                ),
            });
        }
        let recs = records::records(&doc.state).map_err(self.encode_err())?;
        let ops = records::diff(&Records::new(), &recs);
        let meta = Meta {
            format: STATE_FORMAT,
            cluster: doc.state.cluster.clone(),
            cluster_id: doc.state.cluster_id,
            revision: doc.state.revision,
            events: Vec::new(),
            writer: self.writer.clone(),
        };
        let keep = vec![
            TxnOp::put(self.key(records::MIGRATED), old.value().to_vec(), None),
            TxnOp::delete(key.clone(), None),
        ];
        match self.write("migrating the single-key state", ops, &meta, keep, 0)? {
            Some(_) => info!(
                etcd = %self.url,
                from = %key,
                nodes = doc.state.nodes.len(),
                endpoints = doc.state.endpoints.len(),
                "single-key etcd state migrated to one key per record (kept as state.migrated)"
            ),
            None => debug!(etcd = %self.url, "another replica migrated the state first"),
        }
        Ok(())
    }

    /// Writes a change's `ops` with `meta` (compare-and-swap); a conflict
    /// comes back with the newer state.
    fn commit(
        &mut self,
        ops: Vec<Op>,
        (cluster, cluster_id, revision): (&str, u8, u64),
        events: &[Event],
    ) -> Result<(), StoreError> {
        if let Some(op) = ops.iter().find(|o| o.size() > MAX_TXN_BYTES) {
            return Err(StoreError::EtcdTooLarge {
                url: self.url.clone(),
                bytes: op.size(),
            });
        }
        let mut guarded = self.guarded.clone();
        for o in &ops {
            match o {
                Op::Put { key, .. } if records::is_guarded(key) => {
                    guarded.insert(key.clone());
                }
                Op::Delete(key) => {
                    guarded.remove(key);
                }
                _ => {}
            }
        }
        let meta = Meta {
            format: STATE_FORMAT,
            cluster: cluster.to_string(),
            cluster_id,
            revision,
            events: events.to_vec(),
            writer: self.writer.clone(),
        };
        // A removed node's lease key goes with it.
        let leases: Vec<TxnOp> = events
            .iter()
            .filter_map(|e| match e {
                Event::Removed { name, .. } => Some(TxnOp::delete(
                    self.key(&format!("{}{name}", records::LEASES)),
                    None,
                )),
                _ => None,
            })
            .collect();
        match self.write(
            "saving a change",
            ops,
            &meta,
            leases,
            self.seen.mod_revision,
        )? {
            Some(revision) => {
                self.seen = StoreMark {
                    version: self.seen.version + 1,
                    mod_revision: revision,
                };
                self.guarded = guarded;
                self.wrote(revision);
                Ok(())
            }
            None => {
                let snap = self.read("reading the newer state")?;
                match self.mirror(&snap)?.remote() {
                    Some(remote) => Err(StoreError::Conflict(Box::new(remote))),
                    None => Err(StoreError::Etcd {
                        url: self.url.clone(),
                        op: "saving a change",
                        reason: format!(
                            "key {} was deleted behind discovery's back",
                            self.key(records::META)
                        ),
                    }),
                }
            }
        }
    }

    fn start_watch(&self, from_revision: i64, mirror: Mirror) {
        let Some(runtime) = &self.runtime else { return };
        let watch = WatchLoop {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            url: self.url.clone(),
            tx: self.remote_tx.clone(),
            watching: self.watching.clone(),
            mirror,
            writer: self.writer.clone(),
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
        let unreachable = |e| match e {
            StoreError::Etcd { url, reason, .. } => StoreError::EtcdUnreachable { url, reason },
            e => e,
        };
        let mut snap = self.read("reading the state").map_err(unreachable)?;
        let mut mirror = self.mirror(&snap)?;
        let old_key = self.key(records::OLD_STATE);
        if !mirror.has_state() {
            if let Some(old) = snap.kvs.iter().find(|kv| kv.key() == old_key.as_bytes()) {
                let old = old.clone();
                self.migrate(&old)?;
                snap = self.read("reading the migrated state")?;
                mirror = self.mirror(&snap)?;
            }
        }
        let loaded = match mirror.remote() {
            Some(remote) => {
                self.seen = remote.mark();
                self.guarded = guarded_keys(&remote.state);
                Some(remote.state)
            }
            None => None,
        };
        self.start_watch(snap.revision + 1, mirror);
        Ok(loaded)
    }

    fn save(&mut self, state: &RegistryState, events: &[Event]) -> Result<(), StoreError> {
        // The whole state, diffed against what etcd holds (read whole):
        // the server saves its changes with `save_change` instead.
        let new = records::records(state).map_err(self.encode_err())?;
        let snap = self.read("reading the state to diff against")?;
        let stored: Records = snap
            .kvs
            .iter()
            .filter_map(|kv| {
                let key =
                    std::str::from_utf8(kv.key().strip_prefix(self.prefix.as_bytes())?).ok()?;
                records::is_record(key).then(|| (key.to_string(), kv.value().to_vec()))
            })
            .collect();
        let ops = records::diff(&stored, &new);
        self.commit(
            ops,
            (&state.cluster, state.cluster_id, state.revision),
            events,
        )
    }

    fn save_change(&mut self, registry: &Registry, events: &[Event]) -> Result<(), StoreError> {
        let ops = records::change_ops(registry, events, |k| self.guarded.contains(k))
            .map_err(self.encode_err())?;
        let cfg = registry.config();
        self.commit(
            ops,
            (&cfg.cluster, cfg.cluster_id, registry.revision()),
            events,
        )
    }

    fn renewed(&mut self, node: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let key = self.key(&format!("{}{node}", records::LEASES));
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

    fn adopt(&mut self, remote: &RemoteState) {
        self.seen = remote.mark();
        self.guarded = guarded_keys(&remote.state);
    }

    fn adopt_patch(&mut self, patch: &RemotePatch) {
        self.seen = patch.mark();
        let c = &patch.changes;
        let allocations = c
            .allocations
            .iter()
            .map(|(n, ip)| (records::allocation_key(n), ip.is_some()));
        let identities = c
            .identities
            .iter()
            .map(|(id, i)| (records::identity_key(*id), i.is_some()));
        for (key, stored) in allocations.chain(identities) {
            if stored {
                self.guarded.insert(key);
            } else {
                self.guarded.remove(&key);
            }
        }
    }

    fn read_remote(&mut self) -> Result<Option<RemoteState>, StoreError> {
        let snap = self.read("reading the state another replica wrote")?;
        Ok(self.mirror(&snap)?.remote())
    }

    fn may_expire(&self) -> bool {
        // Without a working watch, renewals at other replicas go unseen.
        self.watching.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("{} (keys under {})", self.url, self.prefix)
    }
}

/// Follows the cluster's keys and forwards what changed; after a broken
/// watch it reads everything again (changes may have been missed) and
/// watches from there.
struct WatchLoop {
    client: Client,
    prefix: String,
    url: String,
    tx: mpsc::UnboundedSender<RemoteChange>,
    watching: Arc<AtomicBool>,
    /// The records as of the last event seen.
    mirror: Mirror,
    /// This replica's ID: its own changes are not forwarded (the registry
    /// has them). Other replicas' go as the records they wrote
    /// ([`RemoteChange::Patch`]): taking a change costs its size, not the
    /// cluster's.
    writer: String,
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

    /// Reads everything as it is now and forwards it as one change (the
    /// server ignores it if it holds it already, and otherwise pushes only
    /// the difference); the revision to watch from.
    async fn resync(&mut self) -> Result<i64, etcd_client::Error> {
        let snap = read_all(self.client.clone(), self.prefix.clone()).await?;
        let mut mirror = Mirror::default();
        for kv in &snap.kvs {
            take_or_warn(&self.url, &self.prefix, &mut mirror, kv);
        }
        self.mirror = mirror;
        self.forward_state();
        Ok(snap.revision + 1)
    }

    fn forward_state(&mut self) {
        self.mirror.untouch();
        if let Some(remote) = self.mirror.remote() {
            let _ = self.tx.send(RemoteChange::State(remote));
        }
    }

    async fn follow(&mut self, from: &mut i64) -> Result<(), etcd_client::Error> {
        let options = WatchOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_start_revision(*from);
        let mut stream = self
            .client
            .watch(self.prefix.clone(), Some(options))
            .await?;
        self.watching.store(true, Ordering::Relaxed);
        info!(etcd = %self.url, from = *from, "watching etcd for other replicas' changes");
        let lease_prefix = format!("{}{}", self.prefix, records::LEASES);
        let meta_key = format!("{}{}", self.prefix, records::META);
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                warn!(etcd = %self.url, reason = resp.cancel_reason(), compacted = resp.compact_revision(), "etcd cancelled the watch");
                return Ok(());
            }
            // A response holds whole revisions: the state is forwarded once
            // its `meta` changed, with every record of the change in.
            let mut changed = false;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                *from = kv.mod_revision() + 1;
                let key = kv.key();
                if let Some(node) = key
                    .strip_prefix(lease_prefix.as_bytes())
                    .and_then(|n| std::str::from_utf8(n).ok())
                {
                    if event.event_type() == EventType::Put {
                        let _ = self.tx.send(RemoteChange::Renewed {
                            node: node.to_string(),
                        });
                    }
                    continue;
                }
                match event.event_type() {
                    EventType::Put => {
                        take_or_warn(&self.url, &self.prefix, &mut self.mirror, kv);
                        changed |= key == meta_key.as_bytes();
                    }
                    EventType::Delete => {
                        if let Some(k) = key.strip_prefix(self.prefix.as_bytes()) {
                            self.mirror.delete(&String::from_utf8_lossy(k));
                        }
                    }
                }
            }
            if changed {
                if self.mirror.written_by() == Some(self.writer.as_str()) {
                    self.mirror.untouch();
                } else if let Some(patch) = self.mirror.take_patch() {
                    let _ = self.tx.send(RemoteChange::Patch(patch));
                }
            }
            if self.tx.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Puts `kv` (a key under `prefix`) into `mirror`.
fn take(prefix: &str, mirror: &mut Mirror, kv: &KeyValue) -> Result<(), records::RecordError> {
    match kv.key().strip_prefix(prefix.as_bytes()) {
        Some(key) => mirror.put(
            &String::from_utf8_lossy(key),
            kv.value(),
            kv.version(),
            kv.mod_revision(),
        ),
        None => Ok(()),
    }
}

/// [`take`], for the watch: an unreadable record is logged and skipped.
fn take_or_warn(url: &str, prefix: &str, mirror: &mut Mirror, kv: &KeyValue) {
    if let Err(e) = take(prefix, mirror, kv) {
        warn!(etcd = %url, error = %e, "record in etcd is not readable; ignored");
    }
}

/// The allocation and identity keys of `state`.
fn guarded_keys(state: &RegistryState) -> BTreeSet<String> {
    state
        .allocations
        .keys()
        .map(|n| records::allocation_key(n))
        .chain(state.identities.iter().map(|i| records::identity_key(i.id)))
        .collect()
}

/// An ID for this replica's writes: the time, the process and a counter,
/// hashed; distinct across replicas and restarts.
fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.write_u64(STORES.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}
