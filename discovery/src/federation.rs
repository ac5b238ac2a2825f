//! Federation between the discoveries of several clusters (the pure part).
//!
//! Each discovery is told of the others (`--remote NAME=URL`), watches each
//! one's own state (`Watch` with `local_only`), and imports it read-only:
//!
//! - [`RemoteView`] mirrors what a remote sent (snapshot + events), as sent;
//! - [`check`] decides what of it may be imported and why the rest may not
//!   (another cluster's name, ID or identity range, overlapping pod CIDRs,
//!   endpoints outside their node's pod CIDRs, tunnel IPs outside the
//!   remote's block, unreadable records), including the remote's own
//!   cluster pod CIDRs (see [`crate::cidrs`]);
//! - [`Imports`] holds what was imported per remote, turns every new check
//!   result into the events that change it (unchanged records give none),
//!   counts rejections, and expires a remote's state a timeout after its
//!   connection broke (a remote's accepted cluster pod CIDRs stay while it
//!   is configured); [`Imports::apply`] judges only what one event
//!   changed, with the same outcome, and [`claims`] indexes the pod CIDRs
//!   already claimed so overlap checks are look-ups.
//!
//! No I/O here; time comes in as `now` (ms). The gRPC links are in
//! `server/federation.rs`.

mod check;
mod claims;
mod imports;
mod view;

pub use check::{check, Accepted, Checked, Local, OtherRemote, RejectReason, Rejection};
pub use claims::{CidrIndex, Claims, Overlap};
pub use imports::{Imports, RemoteStatus, Update};
pub use view::{RemoteView, Touched};

use std::str::FromStr;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::identity::cluster_of;
use crate::model::Event;

/// How long a remote's state is kept after its connection broke, by default.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// One `--remote NAME=URL[,URL...]`: the remote cluster's name and its
/// discovery, or the replicas of its discovery (tried in turn: the link
/// moves to the next one when its connection breaks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub name: String,
    /// The URLs as given (comma-separated), for status and messages.
    pub url: String,
    /// Each replica's URL, in the order given; never empty.
    pub urls: Vec<String>,
}

/// Which remotes to import from, and for how long their state outlives a
/// broken connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    pub remotes: Vec<RemoteConfig>,
    pub remote_timeout: Duration,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            remotes: Vec::new(),
            remote_timeout: DEFAULT_REMOTE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error(
        "--remote {spec:?}: {problem}; use NAME=http://IP:PORT (NAME is the remote cluster's name; \
         list the replicas of a replicated discovery as NAME=URL1,URL2)"
    )]
    BadRemote { spec: String, problem: &'static str },
    #[error("--remote {name} is given twice; name each remote cluster once")]
    DuplicateRemote { name: String },
    #[error("--remote {name} names this discovery's own cluster; list only the other clusters")]
    RemoteIsSelf { name: String },
    #[error("--remote-timeout {value:?} is out of range; use 1 ms ..= 1 day")]
    Timeout { value: Duration },
}

impl RemoteConfig {
    /// A remote with one discovery URL (not checked: parse a spec for that).
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> RemoteConfig {
        let url = url.into();
        RemoteConfig {
            name: name.into(),
            urls: vec![url.clone()],
            url,
        }
    }
}

impl FromStr for RemoteConfig {
    type Err = FederationError;

    fn from_str(spec: &str) -> Result<Self, FederationError> {
        let bad = |problem| FederationError::BadRemote {
            spec: spec.to_string(),
            problem,
        };
        let (name, url) = spec.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() {
            return Err(bad("the cluster name is empty"));
        }
        let urls: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                return Err(bad("every URL must start with http:// or https://"));
            }
        }
        let https = urls.iter().filter(|u| u.starts_with("https://")).count();
        if https != 0 && https != urls.len() {
            return Err(bad("the replicas' URLs mix http:// and https://"));
        }
        Ok(RemoteConfig {
            name: name.to_string(),
            url: urls.join(","),
            urls,
        })
    }
}

impl FederationConfig {
    /// Checks the remotes against each other and this cluster.
    pub fn validate(&self, own_cluster: &str) -> Result<(), FederationError> {
        if self.remote_timeout.is_zero() || self.remote_timeout > Duration::from_secs(86_400) {
            return Err(FederationError::Timeout {
                value: self.remote_timeout,
            });
        }
        for (i, r) in self.remotes.iter().enumerate() {
            if r.name == own_cluster {
                return Err(FederationError::RemoteIsSelf {
                    name: r.name.clone(),
                });
            }
            if self.remotes[..i].iter().any(|o| o.name == r.name) {
                return Err(FederationError::DuplicateRemote {
                    name: r.name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The same event with another revision.
pub fn with_revision(event: Event, rev: u64) -> Event {
    match event {
        Event::Upserted { node, .. } => Event::Upserted {
            revision: rev,
            node,
        },
        Event::Removed {
            name,
            cluster,
            reason,
            ..
        } => Event::Removed {
            revision: rev,
            name,
            cluster,
            reason,
        },
        Event::EndpointUpserted { endpoint, .. } => Event::EndpointUpserted {
            revision: rev,
            endpoint,
        },
        Event::EndpointRemoved {
            ip, node, cluster, ..
        } => Event::EndpointRemoved {
            revision: rev,
            ip,
            node,
            cluster,
        },
        Event::IdentityAdded { identity, .. } => Event::IdentityAdded {
            revision: rev,
            identity,
        },
        Event::ServiceUpdated { service, .. } => Event::ServiceUpdated {
            revision: rev,
            service,
        },
        Event::ServiceBackends {
            namespace,
            name,
            removed,
            added,
            ..
        } => Event::ServiceBackends {
            revision: rev,
            namespace,
            name,
            removed,
            added,
        },
        Event::MeshCidrs { clusters, .. } => Event::MeshCidrs {
            revision: rev,
            clusters,
        },
    }
}

/// Whether an event is about this cluster's own state (not an import).
pub fn is_local(event: &Event, cluster: &str, cluster_id: u8) -> bool {
    match event {
        Event::Upserted { node, .. } => node.cluster == cluster,
        Event::Removed { cluster: c, .. } | Event::EndpointRemoved { cluster: c, .. } => {
            c == cluster
        }
        Event::EndpointUpserted {
            endpoint: Endpoint { cluster: c, .. },
            ..
        } => c == cluster,
        Event::IdentityAdded { identity, .. } => cluster_of(identity.id) == u32::from(cluster_id),
        // Merged views are for this cluster's agents; remotes merge their
        // own. The mesh's CIDRs list remotes too; a local-only watcher gets
        // this cluster's in its snapshot (they change only at a restart).
        Event::ServiceUpdated { .. } | Event::ServiceBackends { .. } | Event::MeshCidrs { .. } => {
            false
        }
    }
}

#[cfg(test)]
mod tests;
