//! The services of this cluster in the server: the merged view is kept up
//! to date from the change sets (local or imported) as they are published,
//! touching only the services whose backends or definitions changed; only
//! services whose merged form changed are pushed: a `ServiceUpdated` with
//! the whole service when its definition changed, else a
//! `ServiceBackends` with the backends that changed.

use super::Core;
use crate::model::Event;
use crate::pb;
use crate::service::{MergedServices, ServiceChange};

/// This cluster's services merged with what is known now (computed once,
/// at start; later kept up to date by [`events`]).
pub(super) fn merged(core: &Core) -> MergedServices {
    let cluster = &core.registry.config().cluster;
    // Nothing is imported yet when the server starts.
    let mut m = MergedServices::new(cluster, &core.services, core.registry.endpoints());
    m.flush();
    m
}

/// Feeds `changes` (published or about to be) into the merged view.
pub(super) fn apply(core: &mut Core, changes: &[Event]) {
    for event in changes {
        match event {
            Event::EndpointUpserted { endpoint, .. } => core.merged.endpoint_upserted(endpoint),
            Event::EndpointRemoved { ip, cluster, .. } => {
                core.merged.endpoint_removed(cluster, *ip);
            }
            _ => {}
        }
    }
}

/// A remote's service definitions changed (a new snapshot; none once its
/// state expired): takes them, with its endpoints.
pub(super) fn remote_changed(core: &mut Core, remote: &str, defs: &[crate::service::Service]) {
    let endpoints: Vec<crate::endpoint::Endpoint> = core.imports.endpoints_of(remote).collect();
    core.merged.set_cluster(remote, defs, &endpoints);
}

/// Feeds `changes` in and puts the touched services together again; an
/// event (with the next revision) for each one that changed.
pub(super) fn events(core: &mut Core, changes: &[Event]) -> Vec<Event> {
    apply(core, changes);
    flush(core)
}

/// The services touched since the last flush whose merged form changed,
/// as events with the next revisions.
pub(super) fn flush(core: &mut Core) -> Vec<Event> {
    core.merged
        .flush()
        .into_iter()
        .map(|change| {
            let revision = core.registry.next_revision();
            match change {
                ServiceChange::Whole(service) => Event::ServiceUpdated { revision, service },
                ServiceChange::Backends {
                    namespace,
                    name,
                    removed,
                    added,
                } => Event::ServiceBackends {
                    revision,
                    namespace,
                    name,
                    removed,
                    added,
                },
            }
        })
        .collect()
}

pub(super) fn response(core: &Core) -> pb::ServicesResponse {
    pb::ServicesResponse {
        cluster: core.registry.config().cluster.clone(),
        services: core
            .merged
            .services()
            .values()
            .map(pb::GlobalService::from)
            .collect(),
    }
}
