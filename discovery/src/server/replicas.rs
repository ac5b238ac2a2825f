//! Several discovery replicas on one shared store (etcd).
//!
//! - A change is applied to this replica's registry and saved with a
//!   compare-and-swap. If another replica changed the state first, the save
//!   is refused with the newer state: this replica adopts it (pushing its
//!   events to its watchers, as for any remote change), then applies the
//!   change again on top of it. Nothing half-applied: the registry is
//!   restored from its backup before the newer state is adopted.
//! - Changes written by other replicas arrive from the store's watch and are
//!   adopted the same way, under the one mutex, so each replica's watchers
//!   see every change in order, stamped from this replica's revision
//!   sequence.
//! - Lease renewals at any replica restart the node's lease here; lease
//!   deadlines this replica already had are kept when a newer state is
//!   adopted (a new state must not renew every node).
//!
//! With the embedded store none of this happens: saves never conflict and
//! there is no remote feed.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{services, Core, Shared};
use crate::federation::with_revision;
use crate::model::Event;
use crate::registry::{Registry, RegistryError};
use crate::store::{remote, RemoteChange, RemotePatch, RemoteState, StoreError};

/// Attempts of one change before it is refused (each lost to another
/// replica's concurrent change).
const ATTEMPTS: usize = 8;

pub(super) enum ChangeError {
    Registry(RegistryError),
    Store(StoreError),
}

/// Applies `op` to the registry and commits its events; after a conflict
/// adopts the newer state and tries again.
pub(super) fn with_retry<T>(
    shared: &Shared,
    core: &mut Core,
    now: u64,
    mut op: impl FnMut(&mut Registry) -> Result<(T, Vec<Event>), RegistryError>,
) -> Result<T, ChangeError> {
    for attempt in 1..=ATTEMPTS {
        let backup = core.registry.clone();
        let (out, events) = match op(&mut core.registry) {
            Ok(done) => done,
            Err(e) => {
                core.registry = backup;
                return Err(ChangeError::Registry(e));
            }
        };
        match shared.commit(core, backup, events) {
            Ok(()) => return Ok(out),
            Err(StoreError::Conflict(newer)) => {
                debug!(
                    attempt,
                    "another replica changed the state first; retrying on top of it"
                );
                adopt(shared, core, *newer, now);
            }
            Err(e) => return Err(ChangeError::Store(e)),
        }
    }
    Err(ChangeError::Store(StoreError::Etcd {
        url: core.store.describe(),
        op: "saving a change",
        reason: format!("lost to other replicas' changes {ATTEMPTS} times in a row; try again"),
    }))
}

/// Makes a state written by another replica this replica's, and pushes what
/// changed to the watchers. A state not newer than the one held is ignored.
pub(super) fn adopt(shared: &Shared, core: &mut Core, newer: RemoteState, now: u64) {
    let mark = newer.mark();
    let Some(held_version) = core.store.newer(mark) else {
        return;
    };
    let changes = remote::events_for(&core.registry.state(), held_version, &newer);
    let mut state = newer.state.clone();
    // Keep this replica's revisions increasing.
    state.revision = state.revision.max(core.registry.revision());
    let cfg = core.registry.config().clone();
    let ttl = cfg.lease_ttl_ms;
    let mut registry = match Registry::from_state(cfg, state, now) {
        Ok(r) => r,
        Err(e) => {
            // Not recorded as held: this replica's next write conflicts
            // again rather than overwriting it, and is refused.
            warn!(
                error = %e,
                etcd_revision = newer.mod_revision,
                "state written by another replica is not valid here (same cluster name, \
                 another --cluster-id or version?); keeping ours and refusing changes"
            );
            return;
        }
    };
    core.store.adopt(&newer);
    for node in core.registry.nodes() {
        if let Some(deadline) = core.registry.lease_expires_at(&node.name) {
            // Restarting at `deadline - ttl` puts the deadline back as it was.
            let _ = registry.renew(&node.name, "", deadline.saturating_sub(ttl));
        }
    }
    core.registry = registry;
    publish(shared, core, changes, newer.mod_revision);
}

/// Pushes the events of another replica's change, taken, to this
/// replica's watchers: stamped from its own revision sequence, with the
/// merged services they change.
fn publish(shared: &Shared, core: &mut Core, changes: Vec<Event>, etcd_revision: i64) {
    let mut events: Vec<Event> = changes
        .into_iter()
        .map(|e| with_revision(e, core.registry.next_revision()))
        .collect();
    let merged = services::events(core, &events);
    events.extend(merged);
    debug!(
        etcd_revision,
        events = events.len(),
        "took another replica's change"
    );
    shared.broadcast(events);
}

/// Takes another replica's change record by record when it follows the
/// state this replica holds (the watch's usual case): its cost is the
/// change's, not the cluster's. Otherwise (a change missed, or records
/// that do not fit), the whole stored state is read and adopted.
pub(super) fn adopt_patch(shared: &Shared, core: &mut Core, patch: RemotePatch, now: u64) {
    let Some(held_version) = core.store.newer(patch.mark()) else {
        return;
    };
    if patch.version == held_version + 1 {
        match core.registry.apply_records(&patch.changes, now) {
            Ok(()) => {
                core.store.adopt_patch(&patch);
                publish(shared, core, patch.events, patch.mod_revision);
                return;
            }
            Err(e) => debug!(
                error = %e,
                "another replica's change does not apply record by record; reading the whole state"
            ),
        }
    }
    match core.store.read_remote() {
        Ok(Some(state)) => adopt(shared, core, state, now),
        Ok(None) => {}
        Err(e) => warn!(
            error = %e,
            "reading the state another replica wrote failed; its next change brings it"
        ),
    }
}

/// Follows the store's feed of other replicas' changes (shared stores only).
pub(super) fn spawn(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let feed = shared.lock().store.take_remote()?;
    info!("following other discovery replicas' changes");
    Some(tokio::spawn(follow(shared.clone(), feed)))
}

async fn follow(shared: Arc<Shared>, mut feed: mpsc::UnboundedReceiver<RemoteChange>) {
    let mut stop = shared.stop.clone();
    loop {
        let change = tokio::select! {
            c = feed.recv() => c,
            _ = stop.changed() => return,
        };
        let Some(change) = change else { return };
        let now = shared.now();
        let mut core = shared.lock();
        match change {
            RemoteChange::State(newer) => adopt(&shared, &mut core, newer, now),
            RemoteChange::Patch(patch) => adopt_patch(&shared, &mut core, patch, now),
            RemoteChange::Renewed { node } => {
                // Unknown here yet (its state comes next) or already gone: fine.
                let _ = core.registry.renew(&node, "", now);
            }
        }
    }
}
