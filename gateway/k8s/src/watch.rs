//! One task per watched resource: kube's watcher (a list, then watches
//! from its resourceVersion; a relist after 410 Gone; backoff while the
//! API server is away) into a [`Mirror`], whose objects are published on a
//! `tokio::sync::watch` channel each time they change.
//!
//! The API server being down changes nothing: the last objects stay
//! published, the failure is logged once, and the watcher tries again.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::mirror::{Mirror, Objects};
use super::resources::Watched;

/// The objects of a watched resource: `None` until its first list is
/// complete, then every change.
pub type Feed = watch::Receiver<Option<Arc<Objects>>>;

/// Starts watching `what` (every namespace) with `cfg`'s selectors; the
/// task ends when every receiver is gone.
pub fn spawn(client: kube::Client, what: Watched, cfg: watcher::Config) -> Feed {
    let api: Api<DynamicObject> = Api::all_with(client, &what.api_resource());
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut mirror = Mirror::default();
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        info!(resource = what.plural, "watch is back");
                        failing = false;
                    }
                    if mirror.apply(event) && tx.send(Some(mirror.objects())).is_err() {
                        return;
                    }
                }
                Err(e) if !failing => {
                    warn!(resource = what.plural, error = %e,
                        "watching the Kubernetes API failed; what was read stays applied; retrying");
                    failing = true;
                }
                Err(e) => debug!(resource = what.plural, error = %e, "watch still failing"),
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// The names of the feeds whose first list is not complete yet.
pub fn unlisted<'a>(feeds: impl IntoIterator<Item = (&'a str, &'a Feed)>) -> Vec<&'a str> {
    feeds
        .into_iter()
        .filter(|(_, f)| f.borrow().is_none())
        .map(|(name, _)| name)
        .collect()
}
