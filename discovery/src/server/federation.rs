//! The I/O around [`crate::federation`]: one watch client per remote
//! discovery (reconnecting with backoff), the expiry of remotes whose link
//! broke, the merged snapshot agents get, and the `FederationStatus` RPC.
//!
//! Imported changes take revisions from the registry's sequence and go out on
//! the same broadcast channel as local ones, under the same lock, so watchers
//! see one ordered stream. So does `MeshCidrs`, the mesh's pod CIDRs, sent
//! whole when a remote's accepted ones change. They are not persisted: after a restart the links
//! import everything again.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::snapshots::{Imported, SnapshotSource};
use super::{Core, Shared};
use crate::cidrs::ClusterCidrs;
use crate::federation::{
    is_local, with_revision, FederationConfig, Local, RemoteConfig, RemoteView, Touched,
};
use crate::model::{Event, Node};
use crate::pb;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const EXPIRY_INTERVAL: Duration = Duration::from_millis(200);
/// How often the merged services that imports changed are pushed: changes
/// to one service from all remotes within this window go out as one
/// `ServiceBackends` (or one `ServiceUpdated`), not one per imported
/// endpoint.
const SERVICES_INTERVAL: Duration = Duration::from_millis(50);

/// Starts a link per remote and the expiry loop; abort them on shutdown.
/// With TLS, each link presents this discovery's own certificate (valid
/// as a client certificate) and checks the remote's against the mesh CA.
/// With `feed`, the remotes it gives (from the Kubernetes API's
/// MeshgateRemoteClusters) are linked beside the configured ones, at run
/// time: [`remotes_loop`].
pub(super) fn spawn(
    shared: &Arc<Shared>,
    cfg: &FederationConfig,
    tls: Option<&crate::tls::ServerTls>,
    feed: Option<super::RemotesFeed>,
) -> Vec<JoinHandle<()>> {
    if cfg.remotes.is_empty() && feed.is_none() {
        return Vec::new();
    }
    let mut tasks: Vec<JoinHandle<()>> = cfg
        .remotes
        .iter()
        .map(|r| spawn_link(shared, r, tls))
        .collect();
    let timeout_ms = u64::try_from(cfg.remote_timeout.as_millis()).unwrap_or(u64::MAX);
    tasks.push(tokio::spawn(expiry_loop(shared.clone(), timeout_ms)));
    tasks.push(tokio::spawn(services_loop(shared.clone())));
    if let Some(feed) = feed {
        let fixed: Vec<String> = cfg.remotes.iter().map(|r| r.name.clone()).collect();
        tasks.push(tokio::spawn(remotes_loop(
            shared.clone(),
            feed,
            fixed,
            tls.cloned(),
        )));
    }
    tasks
}

/// The link to `r`; over TLS with this discovery's own certificate.
fn spawn_link(
    shared: &Arc<Shared>,
    r: &RemoteConfig,
    tls: Option<&crate::tls::ServerTls>,
) -> JoinHandle<()> {
    let client_tls = tls.map(|t| t.client_for(&r.name));
    tokio::spawn(link(shared.clone(), r.clone(), client_tls))
}

/// Keeps a link to each remote of `feed`: a new one is linked, a changed
/// one linked again, a removed one unlinked (its state then expires after
/// the remote timeout, as a remote's whose link broke). Names this
/// discovery serves, or configured with `--remote` (`fixed`), are refused.
async fn remotes_loop(
    shared: Arc<Shared>,
    mut feed: super::RemotesFeed,
    fixed: Vec<String>,
    tls: Option<crate::tls::ServerTls>,
) {
    let own = shared.lock().registry.config().cluster.clone();
    let mut links: std::collections::BTreeMap<String, (RemoteConfig, JoinHandle<()>)> =
        std::collections::BTreeMap::new();
    loop {
        let wanted: Vec<RemoteConfig> = feed.borrow_and_update().clone();
        let mut keep = std::collections::BTreeSet::new();
        for r in wanted {
            if r.name == own || fixed.contains(&r.name) {
                warn!(remote = %r.name, "a MeshgateRemoteCluster names this cluster or a --remote; ignored");
                continue;
            }
            keep.insert(r.name.clone());
            if links.get(&r.name).is_some_and(|(had, _)| *had == r) {
                continue;
            }
            if let Some((_, old)) = links.remove(&r.name) {
                old.abort();
            }
            info!(remote = %r.name, url = %r.url, "linking a remote cluster from the Kubernetes API");
            shared.lock().imports.add(&r);
            let task = spawn_link(&shared, &r, tls.as_ref());
            links.insert(r.name.clone(), (r, task));
        }
        let gone: Vec<String> = links
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some((_, task)) = links.remove(&name) {
                task.abort();
            }
            info!(remote = %name, "a remote cluster's MeshgateRemoteCluster is gone; unlinked, its state expires after the remote timeout");
            let now = shared.now();
            shared.lock().imports.unlink(
                &name,
                "unlinked: its MeshgateRemoteCluster was deleted".into(),
                now,
            );
        }
        if feed.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, task)) in links {
        task.abort();
    }
}

async fn link(shared: Arc<Shared>, remote: RemoteConfig, tls: Option<crate::tls::ClientTls>) {
    let mut stop = shared.stop.clone();
    let mut backoff = BACKOFF_START;
    // Which replica of the remote's discovery to try next, and how many
    // tries in a row failed (the backoff grows only once all have).
    let mut next = 0;
    let mut failed_in_a_row = 0;
    loop {
        let url = &remote.urls[next % remote.urls.len()];
        let mut connected = false;
        let error = match session(&shared, &remote, url, tls.as_ref(), &mut connected).await {
            Ok(()) => return, // stopping
            Err(e) => e,
        };
        {
            let now = shared.now();
            shared
                .lock()
                .imports
                .disconnected(&remote.name, error.clone(), now);
        }
        if connected {
            backoff = BACKOFF_START;
            failed_in_a_row = 0;
        }
        failed_in_a_row += 1;
        next += 1;
        // Another replica is tried at once; a full round of failures waits.
        let wait = if failed_in_a_row < remote.urls.len() {
            Duration::ZERO
        } else {
            backoff
        };
        warn!(
            remote = %remote.name,
            %url,
            %error,
            next = %remote.urls[next % remote.urls.len()],
            retry_in_ms = wait.as_millis() as u64,
            "remote discovery unreachable; keeping its last state until the remote timeout"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if !wait.is_zero() {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// One connection: watches the remote's own state and imports it. Returns
/// `Ok` only when the server stops.
async fn session(
    shared: &Shared,
    remote: &RemoteConfig,
    url: &str,
    tls: Option<&crate::tls::ClientTls>,
    connected: &mut bool,
) -> Result<(), String> {
    let mut stop = shared.stop.clone();
    let mut client = crate::client::connect_with(url, tls)
        .await
        .map_err(|e| e.to_string())?;
    let req = pb::WatchRequest {
        local_only: true,
        backend_deltas: true,
        snapshot_parts: true,
    };
    let mut stream = crate::client::watch(&mut client, req)
        .await
        .map_err(|s| format!("watch refused: {}", s.message()))?;
    let mut view: Option<RemoteView> = None;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = stop.changed() => return Ok(()),
        };
        let event = msg
            .map_err(|s| format!("watch stream broke: {}", s.message()))?
            .ok_or_else(|| "the remote closed the watch stream".to_string())?;
        let Some(event) = event.event else { continue };
        let touched = match (&mut view, event) {
            (_, pb::watch_event::Event::Snapshot(s)) => {
                info!(
                    remote = %remote.name,
                    cluster = %s.cluster,
                    cluster_id = s.cluster_id,
                    nodes = s.nodes.len(),
                    endpoints = s.endpoints.len(),
                    "connected to remote discovery"
                );
                view = Some(RemoteView::from_snapshot(s));
                Touched::All
            }
            (Some(v), e) => v.apply(e),
            (None, _) => {
                debug!(remote = %remote.name, "event before the snapshot; ignored");
                continue;
            }
        };
        *connected = true;
        if let Some(v) = &mut view {
            import(shared, &remote.name, v, &touched);
        }
    }
}

/// Checks what `touched` changed in the remote's view and publishes what
/// that changed (the merged services follow within [`SERVICES_INTERVAL`]).
fn import(shared: &Shared, name: &str, view: &mut RemoteView, touched: &Touched) {
    let now = shared.now();
    let mut guard = shared.lock();
    let core = &mut *guard;
    let cfg = core.registry.config();
    let local_nodes: Vec<&Node> = core.registry.nodes().collect();
    let local = Local {
        cluster: &cfg.cluster,
        cluster_id: cfg.cluster_id,
        pod_cidrs: &cfg.pod_cidrs,
        nodes: &local_nodes,
    };
    let mut update = core.imports.apply(name, view, touched, &local, now);
    for r in &update.new_rejections {
        warn!(
            remote = %name,
            reason = r.reason.as_str(),
            record = %r.key,
            detail = %r.detail,
            "rejected what the remote may not claim"
        );
    }
    if let Some(defs) = &update.services {
        super::services::remote_changed(core, name, defs);
    }
    // What is imported and no check needs again (services, identities).
    core.imports.release(name, view);
    if update.cidrs_changed {
        // First, so agents guard the remote's range before they route into it.
        update.events.insert(
            0,
            Event::MeshCidrs {
                revision: 0,
                clusters: mesh_cidrs(core),
            },
        );
    }
    publish(shared, core, name, update.events, false);
}

/// Every cluster's pod CIDRs: this cluster's (`--pod-cidr`) first, then
/// each remote's accepted ones, by remote name.
fn mesh_cidrs(core: &Core) -> Vec<ClusterCidrs> {
    std::iter::once(core.registry.own_cidrs())
        .chain(core.imports.cluster_cidrs().cloned())
        .collect()
}

/// Stamps imported changes with the next revisions and broadcasts them;
/// feeds them to the merged services, and with `flush` pushes the merged
/// services that changed (also when only a remote's service definitions
/// changed, which gives no events of its own).
fn publish(shared: &Shared, core: &mut Core, remote: &str, events: Vec<Event>, flush: bool) {
    super::services::apply(core, &events);
    for event in events {
        let event = with_revision(event, core.registry.next_revision());
        log_import(remote, &event);
        // No receivers is fine.
        let _ = shared.events.send(event);
    }
    if !flush {
        return;
    }
    for event in super::services::flush(core) {
        log_import(remote, &event);
        let _ = shared.events.send(event);
    }
}

fn log_import(remote: &str, event: &Event) {
    match event {
        Event::Upserted { revision, node } => info!(
            remote,
            node = %node.name,
            underlay = %node.underlay_ip,
            tunnel_ip = ?node.tunnel_ip,
            revision,
            "remote node imported"
        ),
        Event::Removed {
            revision,
            name,
            reason,
            ..
        } => info!(remote, node = %name, %reason, revision, "remote node removed"),
        Event::EndpointUpserted { revision, endpoint } => debug!(
            remote,
            ip = %endpoint.ip,
            node = %endpoint.node,
            identity = endpoint.identity,
            revision,
            "remote endpoint imported"
        ),
        Event::EndpointRemoved { revision, ip, .. } => {
            debug!(remote, %ip, revision, "remote endpoint removed")
        }
        Event::IdentityAdded { revision, identity } => {
            debug!(
                remote,
                identity = identity.id,
                revision,
                "remote identity imported"
            )
        }
        Event::ServiceUpdated { revision, service } => info!(
            remote,
            service = %service.key(),
            backends = service.backends.len(),
            revision,
            "service backends changed"
        ),
        Event::ServiceBackends {
            revision,
            namespace,
            name,
            removed,
            added,
        } => debug!(
            remote,
            service = %format!("{namespace}/{name}"),
            removed = removed.len(),
            added = added.len(),
            revision,
            "service backends changed"
        ),
        Event::MeshCidrs { revision, clusters } => info!(
            remote,
            clusters = %clusters
                .iter()
                .map(|c| format!("{}=[{}]", c.cluster, crate::cidrs::join(&c.pod_cidrs)))
                .collect::<Vec<_>>()
                .join(" "),
            revision,
            "mesh pod CIDRs changed"
        ),
    }
}

/// Pushes the merged services that imports changed, every
/// [`SERVICES_INTERVAL`] (local changes push theirs at once).
async fn services_loop(shared: Arc<Shared>) {
    super::every(&shared, SERVICES_INTERVAL, || {
        let mut core = shared.lock();
        for event in super::services::flush(&mut core) {
            log_import("*", &event);
            let _ = shared.events.send(event);
        }
    })
    .await;
}

async fn expiry_loop(shared: Arc<Shared>, timeout_ms: u64) {
    super::every(&shared, EXPIRY_INTERVAL, || {
        let now = shared.now();
        let mut core = shared.lock();
        for (remote, events) in core.imports.expire(now, timeout_ms) {
            warn!(
                remote = %remote,
                timeout_ms,
                removed = events.len(),
                "remote unreachable for the remote timeout; its nodes and endpoints are removed \
                 (its pod CIDRs stay listed)"
            );
            super::services::remote_changed(&mut core, &remote, &[]);
            publish(&shared, &mut core, &remote, events, true);
        }
        let forgotten = core.imports.forget_unlinked();
        if !forgotten.is_empty() {
            info!(remotes = ?forgotten, "unlinked remotes expired: forgotten, their pod CIDRs with them");
            let cidrs = Event::MeshCidrs {
                revision: 0,
                clusters: mesh_cidrs(&core),
            };
            publish(&shared, &mut core, "*", vec![cidrs], false);
        }
    })
    .await;
}

/// The snapshot a watcher starts with: this cluster's state, plus every
/// import unless `local_only`; it names this cluster. Its `clusters` lists
/// this cluster's pod CIDRs first (alone for `local_only`: what a remote
/// imports as ours). The merged services
/// imports changed are pushed first, so none is pushed again after it.
pub(super) fn snapshot_source(
    shared: &Shared,
    core: &mut Core,
    local_only: bool,
) -> SnapshotSource {
    for event in super::services::flush(core) {
        log_import("*", &event);
        let _ = shared.events.send(event);
    }
    let cfg = core.registry.config();
    let mut header = pb::Snapshot {
        cluster: cfg.cluster.clone(),
        cluster_id: u32::from(cfg.cluster_id),
        ..Default::default()
    };
    let (merged, imported) = if local_only {
        header.clusters = vec![pb::ClusterCidrs::from(&core.registry.own_cidrs())];
        (imbl::OrdMap::new(), None)
    } else {
        header.clusters = mesh_cidrs(core)
            .iter()
            .map(pb::ClusterCidrs::from)
            .collect();
        let imported = Imported {
            nodes: core.imports.nodes().cloned().collect(),
            endpoints: core.imports.endpoints().collect(),
            identities: core.imports.identities().collect(),
        };
        (core.merged.services().clone(), Some(imported))
    };
    let services = core.services.clone();
    SnapshotSource::new(core.registry.clone(), header, services, merged, imported)
}

/// Whether a watcher gets this event.
pub(super) fn wanted(core_cluster: &(String, u8), local_only: bool, event: &Event) -> bool {
    !local_only || is_local(event, &core_cluster.0, core_cluster.1)
}

pub(super) fn status(shared: &Shared) -> pb::FederationStatusResponse {
    let now = shared.now();
    let core = shared.lock();
    let cfg = core.registry.config();
    pb::FederationStatusResponse {
        cluster: cfg.cluster.clone(),
        cluster_id: u32::from(cfg.cluster_id),
        remotes: core
            .imports
            .status(now)
            .into_iter()
            .map(|r| pb::RemoteStatus {
                name: r.name,
                url: r.url,
                cluster_id: r.cluster_id.map(u32::from).unwrap_or(0),
                connected: r.connected,
                nodes: u32::try_from(r.nodes).unwrap_or(u32::MAX),
                endpoints: u32::try_from(r.endpoints).unwrap_or(u32::MAX),
                identities: u32::try_from(r.identities).unwrap_or(u32::MAX),
                rejected: r
                    .rejected
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_string(), v))
                    .collect(),
                last_error: r.last_error,
                disconnected_ms: r.disconnected_ms.unwrap_or(0),
            })
            .collect(),
    }
}
