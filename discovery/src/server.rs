//! The tonic shell around the [`Registry`]: gRPC handlers (nodes and their
//! endpoints), persistence after
//! every change, the expiry sweeper, and the push stream of changes to
//! watchers (a tokio broadcast channel).
//!
//! Ordering: every change is applied, saved and broadcast while one mutex is
//! held, so the broadcast order is the revision order. Leases are measured on
//! a monotonic clock (ms since the server started), so wall-clock jumps do not
//! expire nodes; leases are not persisted and restart when the server starts.
//!
//! With a shared store (etcd) several replicas serve one cluster; see
//! [`replicas`] for how a change is retried after a conflicting one and how
//! other replicas' changes reach this one's watchers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::federation::{FederationConfig, Imports};
use crate::identity::IdentityError;
use crate::model::{short_key, Event, ModelError, Node};
use crate::pb;
use crate::pb::discovery_server::{Discovery, DiscoveryServer};
use crate::registry::{Registry, RegistryConfig, RegistryError};
use crate::store::{Store, StoreChoice, StoreError};
use crate::tls::ServerTls;
use crate::Error;

/// How often leases are checked.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// Events buffered per watcher before it counts as lagging (and gets a snapshot).
const BROADCAST_CAPACITY: usize = 1024;
const WATCH_BUFFER: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cluster: String,
    pub cluster_id: u8,
    pub state_dir: PathBuf,
    pub lease_ttl: Duration,
    /// Remote clusters to import from (none by default).
    pub federation: FederationConfig,
    /// This cluster's services (their `cluster` is set to `cluster`).
    pub services: Vec<crate::service::Service>,
    /// This cluster's pod CIDRs (`--pod-cidr`; IPv4, no host bits, none
    /// overlapping another): nodes may register pod CIDRs only inside them,
    /// and they lead the mesh's list of pod CIDRs in snapshots and
    /// `MeshCidrs`. Empty: not checked, and this cluster lists none.
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// How this mesh encrypts (`--encryption`): a node that registers with
    /// another is refused, since a mesh mixes no encryption.
    pub encryption: crate::model::Encryption,
}

mod federation;
mod replicas;
mod services;
mod snapshots;

/// Binds `cfg.listen` and serves until `shutdown` completes.
pub async fn serve(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    serve_with_tls(cfg, None, shutdown).await
}

/// Like [`serve`]; with `tls`, gRPC is served over TLS only to clients
/// whose certificate chains to the client CA, and agents may act only for
/// the node their certificate names (see [`crate::tls::authorize`]).
pub async fn serve_with_tls(
    cfg: ServerConfig,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_with_store(cfg, tls, StoreChoice::Embedded, shutdown).await
}

/// Like [`serve_with_tls`], keeping the state in `store`.
pub async fn serve_with_store(
    cfg: ServerConfig,
    tls: Option<ServerTls>,
    store: StoreChoice,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
    serve_on(cfg, tls, store, listener, shutdown).await
}

/// Serves on an already bound listener (`cfg.listen` is only used in
/// messages). Tests bind `127.0.0.1:0` and pass the listener here.
pub async fn serve_with_listener(
    cfg: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_with_listener_tls(cfg, None, listener, shutdown).await
}

/// [`serve_with_listener`] with optional mutual TLS.
pub async fn serve_with_listener_tls(
    cfg: ServerConfig,
    tls: Option<ServerTls>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_on(cfg, tls, StoreChoice::Embedded, listener, shutdown).await
}

/// This cluster's service definitions as they change at run time (from
/// the Kubernetes API): each value replaces them all.
pub type ServicesFeed = watch::Receiver<Vec<crate::service::Service>>;
/// Remote clusters to link at run time (the Kubernetes API's
/// MeshgateRemoteClusters), beside `--remote`: each value is all of them.
pub type RemotesFeed = watch::Receiver<Vec<crate::federation::RemoteConfig>>;

/// What a discovery takes at run time, beside its config.
#[derive(Debug, Default)]
pub struct Feeds {
    pub services: Option<ServicesFeed>,
    pub remotes: Option<RemotesFeed>,
}

/// Serves on `listener` with optional mutual TLS, keeping the state in `store`.
pub async fn serve_on(
    cfg: ServerConfig,
    tls: Option<ServerTls>,
    store: StoreChoice,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_on_with_feeds(cfg, tls, store, listener, Feeds::default(), shutdown).await
}

/// [`serve_on`], with `cfg.services` replaced by each value of
/// `feeds.services` (when given: every watcher then gets a fresh snapshot,
/// which drops the services no longer defined), and the remotes of
/// `feeds.remotes` linked beside `cfg.federation`'s.
pub async fn serve_on_with_feeds(
    cfg: ServerConfig,
    tls: Option<ServerTls>,
    store: StoreChoice,
    listener: TcpListener,
    feeds: Feeds,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let Feeds { services, remotes } = feeds;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::open(&cfg, &store, stop_rx)?);
    let sweeper = tokio::spawn(sweep_loop(shared.clone()));
    let definitions = services.map(|feed| tokio::spawn(services_loop(shared.clone(), feed)));
    let follower = replicas::spawn(&shared);
    let links = federation::spawn(&shared, &cfg.federation, tls.as_ref(), remotes);
    info!(
        %addr,
        cluster = %cfg.cluster,
        cluster_id = cfg.cluster_id,
        lease_ttl_ms = shared.lease_ttl_ms,
        tls = tls.is_some(),
        "discovery listening"
    );
    let signal = async move {
        shutdown.await;
        info!("discovery shutting down");
        // Ends watch streams and the sweeper, so graceful shutdown can finish.
        let _ = stop_tx.send(true);
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.config())
            .map_err(|source| Error::Serve { addr, source })?;
    }
    let result = builder
        .add_service(DiscoveryServer::new(Service {
            shared: shared.clone(),
            tls_cluster: tls.as_ref().map(|_| cfg.cluster.clone()),
            encryption: cfg.encryption,
        }))
        .serve_with_incoming_shutdown(
            // No Nagle delay on pushed watch events (a 40 ms stall otherwise).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )
        .await;
    sweeper.abort();
    definitions.iter().for_each(tokio::task::JoinHandle::abort);
    follower.iter().for_each(tokio::task::JoinHandle::abort);
    links.iter().for_each(tokio::task::JoinHandle::abort);
    result.map_err(|source| Error::Serve { addr, source })
}

struct Core {
    registry: Registry,
    store: Box<dyn Store>,
    /// State imported from remote clusters.
    imports: Imports,
    /// This cluster's service definitions (from the config, or replaced
    /// at run time: [`Shared::replace_services`]).
    services: Vec<crate::service::Service>,
    /// Their merged form as last pushed (kept up to date incrementally).
    merged: crate::service::MergedServices,
}

struct Shared {
    core: Mutex<Core>,
    events: broadcast::Sender<Event>,
    /// Only this cluster's own changes, for `local_only` watchers (remote
    /// discoveries), which need not wade through every import.
    local_events: broadcast::Sender<Event>,
    stop: watch::Receiver<bool>,
    start: Instant,
    lease_ttl_ms: u32,
    /// Whole snapshots (to watchers that do not take parts) being built
    /// and handed to their watchers at once: each holds the whole state,
    /// so a crowd of such watchers is served a few at a time.
    snapshots: tokio::sync::Semaphore,
    /// Snapshots being streamed in parts at once; see
    /// [`subscribe_and_snapshot`].
    snapshot_streams: tokio::sync::Semaphore,
    /// Snapshots being sent (memory is given back after a burst of them).
    sending: Arc<snapshots::InFlight>,
    /// Bumped when this cluster's service definitions were replaced: every
    /// watcher gets a fresh snapshot (which is how a removed service goes).
    resync: watch::Sender<u64>,
}

/// See [`Shared::snapshots`].
const SNAPSHOTS_AT_ONCE: usize = 2;
/// See [`Shared::snapshot_streams`].
const SNAPSHOT_STREAMS_AT_ONCE: usize = 32;

impl Shared {
    fn open(
        cfg: &ServerConfig,
        choice: &StoreChoice,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        if cfg.cluster.is_empty() {
            return Err(Error::Config(
                "cluster name is empty; pass --cluster".into(),
            ));
        }
        if cfg.cluster_id == 0 {
            return Err(Error::Config(
                "cluster id 0 is not valid; pass --cluster-id 1..=255".into(),
            ));
        }
        let lease_ttl_ms = u32::try_from(cfg.lease_ttl.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "lease TTL {:?} is out of range; use 1 ms ..= 49 days",
                    cfg.lease_ttl
                ))
            })?;
        cfg.federation
            .validate(&cfg.cluster)
            .map_err(|e| Error::Config(e.to_string()))?;
        crate::cidrs::validate(&cfg.pod_cidrs)
            .map_err(|e| Error::Config(format!("--pod-cidr: {e}")))?;
        let mut store: Box<dyn Store> = match choice {
            StoreChoice::Embedded => Box::new(crate::store::db::DbStore::open(&cfg.state_dir)?),
            StoreChoice::Etcd {
                endpoints,
                compaction,
            } => Box::new(crate::store::etcd::EtcdStore::connect(
                &choice.to_string(),
                endpoints,
                &cfg.cluster,
                *compaction,
            )?),
        };
        let rcfg = RegistryConfig {
            cluster: cfg.cluster.clone(),
            cluster_id: cfg.cluster_id,
            lease_ttl_ms: u64::from(lease_ttl_ms),
            pod_cidrs: cfg.pod_cidrs.clone(),
        };
        let registry = match store.load()? {
            Some(state) => Registry::from_state(rcfg, state, 0)?,
            None => Registry::new(rcfg)?,
        };
        info!(
            state = %store.describe(),
            nodes = registry.len(),
            revision = registry.revision(),
            "discovery state loaded; leases restarted"
        );
        // Stored nodes registered before --pod-cidr (or with other ones)
        // stay; only new registrations are refused.
        for node in registry.nodes() {
            if let Err(e) = crate::cidrs::check_node(node, &cfg.cluster, &cfg.pod_cidrs) {
                warn!(node = %node.name, error = %e, "stored node outside --pod-cidr; kept");
            }
        }
        let mut local_services = cfg.services.clone();
        for s in &mut local_services {
            s.cluster = cfg.cluster.clone();
        }
        crate::service::validate_all(&local_services)
            .map_err(|e| Error::Config(format!("services: {e}")))?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (local_events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let mut core = Core {
            registry,
            store,
            imports: Imports::new(&cfg.federation.remotes),
            services: local_services,
            merged: crate::service::MergedServices::new(&cfg.cluster, &[], []),
        };
        core.merged = services::merged(&core);
        Ok(Shared {
            core: Mutex::new(core),
            events,
            local_events,
            stop,
            start: Instant::now(),
            lease_ttl_ms,
            snapshots: tokio::sync::Semaphore::new(SNAPSHOTS_AT_ONCE),
            snapshot_streams: tokio::sync::Semaphore::new(SNAPSHOT_STREAMS_AT_ONCE),
            sending: Arc::default(),
            resync: watch::channel(0).0,
        })
    }

    /// Makes `services` this cluster's service definitions. Refused (logged,
    /// the old ones stay) when one is invalid. The merged services that
    /// changed are pushed, then every watcher gets a fresh snapshot.
    fn replace_services(&self, mut services: Vec<crate::service::Service>) {
        let events = {
            let mut core = self.lock();
            let cluster = core.registry.config().cluster.clone();
            for s in &mut services {
                s.cluster = cluster.clone();
            }
            if let Err(e) = crate::service::validate_all(&services) {
                warn!(error = %e, "the new service definitions are refused; the old ones stay");
                return;
            }
            if services == core.services {
                return;
            }
            let core = &mut *core;
            let endpoints: Vec<crate::endpoint::Endpoint> =
                core.registry.endpoints().cloned().collect();
            core.merged.set_local(&services, &endpoints);
            core.services = services;
            services::flush(core)
        };
        info!(changed = events.len(), "service definitions replaced");
        self.broadcast(events);
        self.resync.send_modify(|n| *n += 1);
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves the registry consistent
        // (changes are applied on a clone-backed commit), so keep going.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves and broadcasts `events`; on a failed save restores `backup`.
    fn commit(
        &self,
        core: &mut Core,
        backup: Registry,
        mut events: Vec<Event>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if let Err(e) = core.store.save_change(&core.registry, &events) {
            core.registry = backup;
            return Err(e);
        }
        // Saved: the merged services (not persisted) follow the change.
        let merged = services::events(core, &events);
        events.extend(merged);
        self.broadcast(events);
        Ok(())
    }

    /// Logs and pushes this cluster's own changes (and its merged services)
    /// to watchers: all of them on `events`, and all but the merged services
    /// and the mesh's CIDRs (which remotes do not take) on `local_events`.
    fn broadcast(&self, events: Vec<Event>) {
        for event in events {
            log_event(&event);
            // No receivers is fine.
            if !matches!(
                event,
                Event::ServiceUpdated { .. }
                    | Event::ServiceBackends { .. }
                    | Event::MeshCidrs { .. }
            ) {
                let _ = self.local_events.send(event.clone());
            }
            let _ = self.events.send(event);
        }
    }

    /// Expires leases that ran out by `now`.
    fn sweep(&self, core: &mut Core, now: u64) -> Result<(), StoreError> {
        if core.registry.next_expiry().is_none_or(|t| t > now) || !core.store.may_expire() {
            return Ok(());
        }
        replicas::with_retry(self, core, now, |registry| Ok(((), registry.expire(now)))).or_else(
            |e| match e {
                replicas::ChangeError::Store(e) => Err(e),
                replicas::ChangeError::Registry(e) => {
                    warn!(error = %e, "lease expiry refused by the registry");
                    Ok(())
                }
            },
        )
    }

    /// Sweeps, then applies `op` and commits its events, retried after a
    /// conflicting change by another replica.
    fn change<T>(
        &self,
        op: impl FnMut(&mut Registry) -> Result<(T, Vec<Event>), RegistryError>,
    ) -> Result<T, Status> {
        let now = self.now();
        let mut core = self.lock();
        self.sweep(&mut core, now).map_err(store_status)?;
        replicas::with_retry(self, &mut core, now, op).map_err(|e| match e {
            replicas::ChangeError::Store(e) => store_status(e),
            replicas::ChangeError::Registry(e) => registry_status(e),
        })
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Upserted { revision, node } => info!(
            node = %node.name,
            tunnel_ip = ?node.tunnel_ip,
            underlay = %node.underlay_ip,
            port = node.listen_port,
            key = short_key(&node.wg_public_key),
            revision,
            "node registered"
        ),
        Event::Removed {
            revision,
            name,
            reason,
            ..
        } => info!(node = %name, %reason, revision, "node removed"),
        Event::EndpointUpserted { revision, endpoint } => info!(
            endpoint = %endpoint.full_name(),
            ip = %endpoint.ip,
            node = %endpoint.node,
            identity = endpoint.identity,
            revision,
            "endpoint upserted"
        ),
        Event::EndpointRemoved {
            revision, ip, node, ..
        } => info!(%ip, node = %node, revision, "endpoint removed"),
        Event::IdentityAdded { revision, identity } => info!(
            identity = identity.id,
            labels = %crate::identity::canonical_key(&identity.labels),
            revision,
            "identity allocated"
        ),
        Event::ServiceUpdated { revision, service } => info!(
            service = %service.key(),
            global = service.global,
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
        } => info!(
            service = %format!("{namespace}/{name}"),
            removed = removed.len(),
            added = added.len(),
            revision,
            "service backends changed"
        ),
        Event::MeshCidrs { revision, clusters } => info!(
            clusters = clusters.len(),
            revision, "mesh pod CIDRs changed"
        ),
    }
}

/// Takes each new value of the services feed.
async fn services_loop(shared: Arc<Shared>, mut feed: ServicesFeed) {
    loop {
        let services = feed.borrow_and_update().clone();
        shared.replace_services(services);
        if feed.changed().await.is_err() {
            return;
        }
    }
}

async fn sweep_loop(shared: Arc<Shared>) {
    every(&shared, SWEEP_INTERVAL, || {
        let now = shared.now();
        let mut core = shared.lock();
        if let Err(e) = shared.sweep(&mut core, now) {
            warn!(error = %e, "lease expiry not saved; will retry");
        }
    })
    .await;
}

/// Runs `work` every `period` (a late tick is not made up for) until the
/// server stops.
async fn every(shared: &Shared, period: Duration, mut work: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        work();
    }
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!(
        "discovery could not save the change, so it was not applied: {e}"
    ))
}

fn registry_status(e: RegistryError) -> Status {
    let msg = e.to_string();
    match e {
        RegistryError::Invalid(ModelError::WrongCluster { .. })
        | RegistryError::WrongCluster { .. }
        | RegistryError::PodCidrOverlap { .. }
        | RegistryError::DuplicateKey { .. }
        | RegistryError::EndpointOutsidePodCidr { .. }
        | RegistryError::EndpointIpTaken { .. } => Status::failed_precondition(msg),
        RegistryError::Invalid(_) | RegistryError::Endpoint(_) => Status::invalid_argument(msg),
        RegistryError::Alloc(_) | RegistryError::Identity(IdentityError::Exhausted { .. }) => {
            Status::resource_exhausted(msg)
        }
        RegistryError::Identity(_) => Status::internal(msg),
        RegistryError::NotRegistered { .. } => Status::not_found(msg),
        RegistryError::StateOfOtherCluster { .. } | RegistryError::StateInconsistent { .. } => {
            Status::internal(msg)
        }
    }
}

struct Service {
    shared: Arc<Shared>,
    /// With mutual TLS: the cluster served, to check peer certificates against.
    tls_cluster: Option<String>,
    /// How this mesh encrypts; registrations with another are refused.
    encryption: crate::model::Encryption,
}

impl Service {
    /// With TLS, refuses (`PERMISSION_DENIED`) a client whose certificate
    /// does not name `cluster/node` of this discovery's cluster.
    fn authorize(&self, peer: Option<&[u8]>, cluster: &str, node: &str) -> Result<(), Status> {
        let Some(served) = &self.tls_cluster else {
            return Ok(());
        };
        let cn = match peer {
            Some(der) => Some(crate::tls::subject_cn(der).map_err(|e| deny(cluster, node, e))?),
            None => None,
        };
        crate::tls::authorize(cn.as_deref(), served, cluster, node)
            .map_err(|e| deny(cluster, node, e))
    }
}

/// The DER of the client's certificate (its first), if it sent one over TLS.
fn peer_cert<T>(request: &Request<T>) -> Option<Vec<u8>> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().map(|der| der.to_vec()))
}

fn deny(cluster: &str, node: &str, e: crate::tls::Denied) -> Status {
    warn!(node = %node, cluster = %cluster, reason = %e, "request refused");
    Status::permission_denied(format!("not allowed to act for node {cluster}/{node}: {e}"))
}

#[tonic::async_trait]
impl Discovery for Service {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = peer_cert(&request);
        let node = request
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("RegisterRequest.node is missing"))?;
        self.authorize(peer.as_deref(), &node.cluster, &node.name)?;
        let node = Node::try_from(node).map_err(|e| registry_status(e.into()))?;
        if node.encryption != self.encryption {
            warn!(node = %node.name, asks = %node.encryption, mesh = %self.encryption, "registration refused: other encryption");
            return Err(Status::failed_precondition(format!(
                "node {}/{} registers with encryption {} but this mesh encrypts with {} \
                 (discovery --encryption {}); a mesh mixes no encryption: start its agent \
                 with --encryption {}",
                node.cluster,
                node.name,
                node.encryption,
                self.encryption,
                self.encryption,
                self.encryption
            )));
        }
        let shared = &self.shared;
        let now = shared.now();
        let node = shared.change(|registry| {
            let out = registry.register(node.clone(), now).inspect_err(|e| {
                warn!(error = %e, "registration rejected");
            })?;
            if out.events.is_empty() {
                debug!(node = %out.node.name, "node re-registered unchanged");
            }
            Ok((out.node, out.events))
        })?;
        // Its lease starts now at every replica.
        shared
            .lock()
            .store
            .renewed(&node.name)
            .map_err(store_status)?;
        Ok(Response::new(pb::RegisterResponse {
            node: Some((&node).into()),
            lease_ttl_ms: shared.lease_ttl_ms,
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let peer = peer_cert(&request);
        let req = request.into_inner();
        self.authorize(peer.as_deref(), &req.cluster, &req.name)?;
        let shared = &self.shared;
        let now = shared.now();
        let mut core = shared.lock();
        shared.sweep(&mut core, now).map_err(store_status)?;
        core.registry
            .renew(&req.name, &req.cluster, now)
            .map_err(registry_status)?;
        core.store.renewed(&req.name).map_err(store_status)?;
        Ok(Response::new(pb::RenewResponse {
            lease_ttl_ms: shared.lease_ttl_ms,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let peer = peer_cert(&request);
        let req = request.into_inner();
        self.authorize(peer.as_deref(), &req.cluster, &req.name)?;
        self.shared.change(|registry| {
            let events = registry.deregister(&req.name, &req.cluster)?;
            if events.is_empty() {
                debug!(node = %req.name, "deregister of unknown node (already gone)");
            }
            Ok(((), events))
        })?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn report_endpoints(
        &self,
        request: Request<pb::ReportEndpointsRequest>,
    ) -> Result<Response<pb::ReportEndpointsResponse>, Status> {
        let peer = peer_cert(&request);
        let req = request.into_inner();
        self.authorize(peer.as_deref(), &req.cluster, &req.node)?;
        let endpoints = self.shared.change(|registry| {
            let out = registry
                .report_endpoints(&req.node, &req.cluster, req.endpoints.clone())
                .inspect_err(|e| {
                    warn!(node = %req.node, error = %e, "endpoint report rejected");
                })?;
            if out.events.is_empty() {
                debug!(node = %req.node, "endpoints re-reported unchanged");
            }
            Ok((out.endpoints, out.events))
        })?;
        Ok(Response::new(pb::ReportEndpointsResponse {
            endpoints: endpoints.iter().map(pb::Endpoint::from).collect(),
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watcher = Watcher {
            local_only: req.local_only,
            deltas: req.backend_deltas,
            parts: req.snapshot_parts,
        };
        tokio::spawn(watch_task(self.shared.clone(), tx, watcher));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn federation_status(
        &self,
        _request: Request<pb::FederationStatusRequest>,
    ) -> Result<Response<pb::FederationStatusResponse>, Status> {
        Ok(Response::new(federation::status(&self.shared)))
    }

    async fn services(
        &self,
        _request: Request<pb::ServicesRequest>,
    ) -> Result<Response<pb::ServicesResponse>, Status> {
        Ok(Response::new(services::response(&self.shared.lock())))
    }
}

type WatchTx = mpsc::Sender<Result<pb::WatchEvent, Status>>;

/// For a watcher that does not take `ServiceBackends`: the service whole,
/// as merged now (at least as new as the change), under the change's
/// revision.
fn whole(shared: &Shared, event: &Event) -> Option<Event> {
    let Event::ServiceBackends {
        revision,
        namespace,
        name,
        ..
    } = event
    else {
        return None;
    };
    let service = shared
        .lock()
        .merged
        .services()
        .get(&format!("{namespace}/{name}"))
        .cloned()?;
    Some(Event::ServiceUpdated {
        revision: *revision,
        service,
    })
}

/// Subscribes to the changes, then sends a snapshot (queued changes up to
/// its revision are skipped): the subscription and the snapshot's
/// revision, or `None` if the watcher is gone. With `local_only`, without
/// what was imported from remote clusters. With `parts`, streamed in
/// parts; see [`snapshots`].
async fn subscribe_and_snapshot(
    shared: &Shared,
    tx: &WatchTx,
    watcher: Watcher,
) -> Option<(broadcast::Receiver<Event>, u64)> {
    // A whole snapshot holds the whole state: a few at a time. Parts
    // hold little each, but what a snapshot has in flight (its queued
    // parts, HTTP/2's send buffer) adds up over thousands of watchers that
    // start at once and read slowly: a few dozen at a time.
    let _turn = match watcher.parts {
        true => shared.snapshot_streams.acquire().await.ok()?,
        false => shared.snapshots.acquire().await.ok()?,
    };
    let events = if watcher.local_only {
        shared.local_events.subscribe()
    } else {
        shared.events.subscribe()
    };
    let source = federation::snapshot_source(shared, &mut shared.lock(), watcher.local_only);
    let revision = source.revision();
    let _sending = shared.sending.start();
    if watcher.parts {
        source.send_parts(tx).await?;
    } else {
        // Off the runtime's workers: a snapshot of a large cluster takes
        // a while, and the workers must go on accepting and serving.
        let whole = tokio::task::spawn_blocking(move || source.whole())
            .await
            .ok()?;
        tx.send(Ok(snapshots::event(whole))).await.ok()?;
    }
    Some((events, revision))
}

/// What a watcher asked for.
#[derive(Debug, Clone, Copy)]
struct Watcher {
    local_only: bool,
    /// Takes `ServiceBackends` (else whole `ServiceUpdated`).
    deltas: bool,
    /// Takes a snapshot in parts.
    parts: bool,
}

async fn watch_task(shared: Arc<Shared>, tx: WatchTx, watcher: Watcher) {
    let mut stop = shared.stop.clone();
    if *stop.borrow() {
        return;
    }
    let Some((mut events, mut last)) = subscribe_and_snapshot(&shared, &tx, watcher).await else {
        return;
    };
    let Watcher {
        local_only, deltas, ..
    } = watcher;
    debug!(revision = last, local_only, "watcher started");
    let mut resync = shared.resync.subscribe();
    let own = {
        let cfg = shared.lock().registry.config().clone();
        (cfg.cluster, cfg.cluster_id)
    };
    loop {
        let received = tokio::select! {
            r = events.recv() => r,
            _ = tx.closed() => break,
            _ = stop.changed() => break,
            r = resync.changed() => {
                if r.is_err() {
                    break;
                }
                debug!("service definitions replaced; sending a fresh snapshot");
                match subscribe_and_snapshot(&shared, &tx, watcher).await {
                    Some((fresh, rev)) => (events, last) = (fresh, rev),
                    None => break,
                }
                continue;
            }
        };
        match received {
            Ok(event) => {
                if event.revision() <= last || !federation::wanted(&own, local_only, &event) {
                    continue;
                }
                last = event.revision();
                let event = match event {
                    Event::ServiceBackends { .. } if !deltas => match whole(&shared, &event) {
                        Some(e) => e,
                        None => continue,
                    },
                    e => e,
                };
                if tx.send(Ok((&event).into())).await.is_err() {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(missed, "watcher lagged; sending a fresh snapshot");
                match subscribe_and_snapshot(&shared, &tx, watcher).await {
                    Some((fresh, rev)) => (events, last) = (fresh, rev),
                    None => break,
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    debug!("watcher ended");
}
