//! The snapshot a watcher starts with (and gets again after lagging).
//!
//! It is read from an O(1) copy of the registry (its maps are persistent)
//! taken under the lock, plus a copy of the imports. A watcher that takes
//! parts (`WatchRequest.snapshot_parts`, as agents and federated
//! discoveries do) gets it in parts of about [`PART_BYTES`], each built as
//! the one before leaves, with at most [`PARTS_QUEUED`] waiting for the
//! watcher, and a few dozen snapshots streamed at once (the others wait
//! their turn before they subscribe): a snapshot of 150,000 endpoints never
//! exists whole in the discovery's memory, and what is in flight stays
//! bounded however many watchers start at once or however slowly they
//! read. A watcher that does not take parts (older agents) gets
//! the parts joined into one message, built off the runtime's workers a few
//! at a time ([`super::Shared::snapshots`]).

use std::net::IpAddr;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::{WatchTx, WATCH_BUFFER};
use crate::endpoint::{Endpoint, Identity};
use crate::model::Node;
use crate::pb;
use crate::registry::Registry;
use crate::service::{GlobalService, Service};

/// About how many bytes a part carries (it ends with the record that
/// reaches this).
pub(super) const PART_BYTES: usize = 64 * 1024;
/// Parts built and queued for a watcher that has not read them yet.
const PARTS_QUEUED: usize = 2;

/// What a watcher's snapshot is made of, and how far it has been sent.
pub(super) struct SnapshotSource {
    registry: Registry,
    /// The first part's fields besides the records: the cluster and the
    /// mesh's pod CIDRs. `None` once the first part is built.
    header: Option<pb::Snapshot>,
    /// This cluster's service definitions.
    services: Vec<Service>,
    /// The merged services (none for a `local_only` watcher): an O(1)
    /// copy. A large cluster's services hold as many backends as it has
    /// endpoints, so they too go out in parts.
    merged: imbl::OrdMap<String, GlobalService>,
    imported: Option<Imported>,
    cursor: Cursor,
}

/// Imported records, copied under the lock.
pub(super) struct Imported {
    pub(super) nodes: Vec<Node>,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) identities: Vec<Identity>,
}

/// Where the next part starts: after the last record of the part before.
enum Cursor {
    /// Index into the service definitions.
    Services(usize),
    Merged(Option<String>),
    Nodes(Option<String>),
    Endpoints(Option<IpAddr>),
    Identities(Option<u32>),
    /// Index into the imported records of each kind.
    ImportedNodes(usize),
    ImportedEndpoints(usize),
    ImportedIdentities(usize),
    Done,
}

impl SnapshotSource {
    /// `header` has the fields of the first part besides the records (its
    /// revision is set here).
    pub(super) fn new(
        registry: Registry,
        mut header: pb::Snapshot,
        services: Vec<Service>,
        merged: imbl::OrdMap<String, GlobalService>,
        imported: Option<Imported>,
    ) -> Self {
        header.revision = registry.revision();
        SnapshotSource {
            registry,
            header: Some(header),
            services,
            merged,
            imported,
            cursor: Cursor::Services(0),
        }
    }

    pub(super) fn revision(&self) -> u64 {
        self.registry.revision()
    }

    /// The next part (`more` set on all but the last), `None` after the
    /// last.
    pub(super) fn next_part(&mut self) -> Option<pb::Snapshot> {
        if matches!(self.cursor, Cursor::Done) {
            return None;
        }
        let mut part = self.header.take().unwrap_or_else(|| pb::Snapshot {
            revision: self.registry.revision(),
            ..Default::default()
        });
        let mut bytes = part.encoded_len();
        while bytes < PART_BYTES {
            self.cursor = match std::mem::replace(&mut self.cursor, Cursor::Done) {
                Cursor::Services(at) => {
                    match fill_from(&self.services, at, &mut part.services, &mut bytes) {
                        Some(next) => Cursor::Services(next),
                        None => Cursor::Merged(None),
                    }
                }
                Cursor::Merged(after) => {
                    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
                    let merged = self.merged.range::<_, String>((from, Bound::Unbounded));
                    let items = merged.map(|(k, g)| (k.clone(), pb::GlobalService::from(g)));
                    match fill(items, &mut part.global_services, &mut bytes) {
                        Some(last) => Cursor::Merged(Some(last)),
                        None => Cursor::Nodes(None),
                    }
                }
                Cursor::Nodes(after) => {
                    let nodes = self.registry.nodes_after(after.as_deref());
                    let items = nodes.map(|n| (n.name.clone(), pb::Node::from(n)));
                    match fill(items, &mut part.nodes, &mut bytes) {
                        Some(last) => Cursor::Nodes(Some(last)),
                        None => Cursor::Endpoints(None),
                    }
                }
                Cursor::Endpoints(after) => {
                    let endpoints = self.registry.endpoints_after(after);
                    let items = endpoints.map(|e| (e.ip, pb::Endpoint::from(e)));
                    match fill(items, &mut part.endpoints, &mut bytes) {
                        Some(last) => Cursor::Endpoints(Some(last)),
                        None => Cursor::Identities(None),
                    }
                }
                Cursor::Identities(after) => {
                    let identities = self.registry.identities_after(after);
                    let items = identities.map(|i| (i.id, pb::Identity::from(&i)));
                    match fill(items, &mut part.identities, &mut bytes) {
                        Some(last) => Cursor::Identities(Some(last)),
                        None => Cursor::ImportedNodes(0),
                    }
                }
                Cursor::ImportedNodes(at) => match &self.imported {
                    None => Cursor::Done,
                    Some(i) => match fill_from(&i.nodes, at, &mut part.nodes, &mut bytes) {
                        Some(next) => Cursor::ImportedNodes(next),
                        None => Cursor::ImportedEndpoints(0),
                    },
                },
                Cursor::ImportedEndpoints(at) => match &self.imported {
                    None => Cursor::Done,
                    Some(i) => match fill_from(&i.endpoints, at, &mut part.endpoints, &mut bytes) {
                        Some(next) => Cursor::ImportedEndpoints(next),
                        None => Cursor::ImportedIdentities(0),
                    },
                },
                Cursor::ImportedIdentities(at) => match &self.imported {
                    None => Cursor::Done,
                    Some(i) => {
                        match fill_from(&i.identities, at, &mut part.identities, &mut bytes) {
                            Some(next) => Cursor::ImportedIdentities(next),
                            None => Cursor::Done,
                        }
                    }
                },
                Cursor::Done => break,
            };
        }
        part.more = !matches!(self.cursor, Cursor::Done);
        Some(part)
    }

    /// The snapshot whole, in one message (for a watcher that does not take
    /// parts).
    pub(super) fn whole(mut self) -> pb::Snapshot {
        let mut whole = self.next_part().unwrap_or_default();
        while let Some(part) = self.next_part() {
            whole.services.extend(part.services);
            whole.global_services.extend(part.global_services);
            whole.nodes.extend(part.nodes);
            whole.endpoints.extend(part.endpoints);
            whole.identities.extend(part.identities);
        }
        whole.more = false;
        whole
    }

    /// Sends the parts to the watcher, each built once fewer than
    /// [`PARTS_QUEUED`] wait for it. `None` if the watcher is gone.
    pub(super) async fn send_parts(mut self, tx: &WatchTx) -> Option<()> {
        while let Some(part) = self.next_part() {
            let mut room = tx
                .reserve_many(WATCH_BUFFER + 1 - PARTS_QUEUED)
                .await
                .ok()?;
            room.next()?.send(Ok(event(part)));
        }
        Some(())
    }
}

pub(super) fn event(snapshot: pb::Snapshot) -> pb::WatchEvent {
    pb::WatchEvent {
        event: Some(pb::watch_event::Event::Snapshot(snapshot)),
    }
}

/// Moves records into `out` until `bytes` reaches [`PART_BYTES`]: the key of
/// the last one moved if it did, `None` if the records ran out first.
fn fill<K, T: Message>(
    items: impl Iterator<Item = (K, T)>,
    out: &mut Vec<T>,
    bytes: &mut usize,
) -> Option<K> {
    for (key, item) in items {
        // the record, its tag and its length
        *bytes += item.encoded_len() + 4;
        out.push(item);
        if *bytes >= PART_BYTES {
            return Some(key);
        }
    }
    None
}

/// [`fill`] from `records[at..]`: the index to go on from, if any.
fn fill_from<'a, R: 'a, T: Message + From<&'a R>>(
    records: &'a [R],
    at: usize,
    out: &mut Vec<T>,
    bytes: &mut usize,
) -> Option<usize> {
    let items = records.iter().enumerate().skip(at);
    fill(items.map(|(i, r)| (i + 1, T::from(r))), out, bytes)
}

/// Snapshots being sent. A crowd of new watchers (every agent after a
/// restart of the discovery) leaves the allocator holding the memory their
/// parts took; once the last snapshot of such a burst is sent (and none
/// started for a second), that memory is handed back to the system.
#[derive(Default)]
pub(super) struct InFlight {
    sending: AtomicUsize,
    trim_planned: AtomicBool,
}

/// A snapshot being sent; see [`InFlight`].
pub(super) struct Sending(Arc<InFlight>);

impl InFlight {
    pub(super) fn start(self: &Arc<Self>) -> Sending {
        self.sending.fetch_add(1, Ordering::AcqRel);
        Sending(self.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        let f = &self.0;
        if f.sending.fetch_sub(1, Ordering::AcqRel) != 1
            || f.trim_planned.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let f = self.0.clone();
        // Dropped on the runtime (the watch tasks); a handle is there.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(TRIM_AFTER).await;
                f.trim_planned.store(false, Ordering::Release);
                if f.sending.load(Ordering::Acquire) == 0 {
                    let _ = tokio::task::spawn_blocking(give_back).await;
                }
            });
        }
    }
}

/// How long after the last snapshot of a burst memory is given back.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Hands the allocator's free memory back to the system (glibc keeps it).
fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; no memory of
    // ours is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
