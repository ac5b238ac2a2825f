//! The services of this cluster in the server: the merged view is computed
//! again after every change set (local or imported), and only services whose
//! merged form changed are pushed, one `ServiceUpdated` event each.

use std::collections::BTreeMap;

use super::Core;
use crate::endpoint::Endpoint;
use crate::model::Event;
use crate::pb;
use crate::service::{changed, merge, GlobalService, Service};

/// This cluster's services merged with what is known now.
pub(super) fn merged(core: &Core) -> BTreeMap<String, GlobalService> {
    let cluster = &core.registry.config().cluster;
    let mut defs: Vec<Service> = core.services.clone();
    defs.extend(core.imports.services().cloned());
    let mut endpoints: Vec<&Endpoint> = core.registry.endpoints().collect();
    endpoints.extend(core.imports.endpoints());
    merge(cluster, &defs, &endpoints)
}

/// Recomputes the merged services; an event (with the next revision) for
/// each one that changed.
pub(super) fn events(core: &mut Core) -> Vec<Event> {
    if core.services.is_empty() {
        return Vec::new();
    }
    let now = merged(core);
    let updated: Vec<GlobalService> = changed(&core.merged, &now).into_iter().cloned().collect();
    core.merged = now;
    updated
        .into_iter()
        .map(|service| Event::ServiceUpdated {
            revision: core.registry.next_revision(),
            service,
        })
        .collect()
}

pub(super) fn response(core: &Core) -> pb::ServicesResponse {
    pb::ServicesResponse {
        cluster: core.registry.config().cluster.clone(),
        services: core.merged.values().map(pb::GlobalService::from).collect(),
    }
}
