//! A watch from the watcher's side: it asks for snapshots in parts
//! (`WatchRequest.snapshot_parts`) and joins them, so the discovery never
//! builds a snapshot whole, and each message stays small.

use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::DiscoveryClient;
use crate::pb;

/// Opens a watch that takes snapshots in parts (whatever `req` says about
/// parts) and yields each snapshot joined.
pub async fn watch(
    client: &mut DiscoveryClient<Channel>,
    mut req: pb::WatchRequest,
) -> Result<WatchStream, Status> {
    req.snapshot_parts = true;
    let inner = client.watch(req).await?.into_inner();
    Ok(WatchStream {
        inner,
        parts: SnapshotParts::default(),
    })
}

/// A watch stream whose snapshots come joined (see [`watch`]).
pub struct WatchStream {
    inner: Streaming<pb::WatchEvent>,
    parts: SnapshotParts,
}

impl WatchStream {
    /// The next event, a snapshot only once all its parts are in; `None`
    /// when the stream ends. Parts that do not fit together end the
    /// stream with an error (reconnect).
    pub async fn message(&mut self) -> Result<Option<pb::WatchEvent>, Status> {
        loop {
            let Some(event) = self.inner.message().await? else {
                if self.parts.pending() {
                    return Err(Status::data_loss(
                        "the watch stream ended inside a snapshot; reconnect",
                    ));
                }
                return Ok(None);
            };
            match self.parts.push(event) {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => continue,
                Err(e) => return Err(Status::data_loss(e.to_string())),
            }
        }
    }
}

/// Joins a snapshot's parts, as they come off a watch stream.
#[derive(Debug, Default)]
pub struct SnapshotParts {
    pending: Option<pb::Snapshot>,
}

/// Parts that do not make one snapshot (a discovery bug, or a stream mixed
/// up on the way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    #[error(
        "a snapshot part at revision {got} follows parts at revision {want}: \
         they are not of one snapshot; reconnect"
    )]
    Revision { want: u64, got: u64 },
    #[error("a change arrived between a snapshot's parts (at revision {revision}); reconnect")]
    Interleaved { revision: u64 },
}

impl SnapshotParts {
    /// Takes the next event off the stream: `Some` with the event to apply
    /// (a snapshot joined, or a change), `None` while a snapshot's parts
    /// are still coming.
    pub fn push(&mut self, event: pb::WatchEvent) -> Result<Option<pb::WatchEvent>, PartsError> {
        let part = match event.event {
            Some(pb::watch_event::Event::Snapshot(s)) => s,
            other => {
                if let Some(p) = &self.pending {
                    return Err(PartsError::Interleaved {
                        revision: p.revision,
                    });
                }
                return Ok(Some(pb::WatchEvent { event: other }));
            }
        };
        let joined = match self.pending.take() {
            None => part,
            Some(mut p) => {
                if p.revision != part.revision {
                    return Err(PartsError::Revision {
                        want: p.revision,
                        got: part.revision,
                    });
                }
                p.services.extend(part.services);
                p.global_services.extend(part.global_services);
                p.nodes.extend(part.nodes);
                p.endpoints.extend(part.endpoints);
                p.identities.extend(part.identities);
                p.more = part.more;
                p
            }
        };
        if joined.more {
            self.pending = Some(joined);
            return Ok(None);
        }
        Ok(Some(pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(joined)),
        }))
    }

    /// Whether a snapshot's parts are still coming.
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn part(revision: u64, nodes: &[&str], more: bool) -> pb::WatchEvent {
        pb::WatchEvent {
            event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
                revision,
                cluster: "c1".into(),
                nodes: nodes
                    .iter()
                    .map(|n| pb::Node {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                more,
                ..Default::default()
            })),
        }
    }

    fn names(e: &pb::WatchEvent) -> Vec<String> {
        match &e.event {
            Some(pb::watch_event::Event::Snapshot(s)) => {
                s.nodes.iter().map(|n| n.name.clone()).collect()
            }
            _ => panic!("not a snapshot: {e:?}"),
        }
    }

    #[test]
    fn parts_join_in_order_and_a_whole_snapshot_passes() {
        let mut p = SnapshotParts::default();
        assert_eq!(p.push(part(7, &["a", "b"], true)), Ok(None));
        assert!(p.pending());
        assert_eq!(p.push(part(7, &["c"], true)), Ok(None));
        let joined = p.push(part(7, &["d"], false)).unwrap().unwrap();
        assert_eq!(names(&joined), ["a", "b", "c", "d"]);
        assert!(!p.pending());
        // an older server's snapshot: one message, no `more`
        let whole = p.push(part(9, &["x"], false)).unwrap().unwrap();
        assert_eq!(names(&whole), ["x"]);
        let change = pb::WatchEvent {
            event: Some(pb::watch_event::Event::Removed(pb::NodeRemoved::default())),
        };
        assert_eq!(p.push(change.clone()), Ok(Some(change)));
    }

    #[test]
    fn parts_of_two_snapshots_or_a_change_between_parts_are_refused() {
        let mut p = SnapshotParts::default();
        p.push(part(7, &["a"], true)).unwrap();
        assert_eq!(
            p.push(part(8, &["b"], false)),
            Err(PartsError::Revision { want: 7, got: 8 })
        );
        let mut p = SnapshotParts::default();
        p.push(part(7, &["a"], true)).unwrap();
        let change = pb::WatchEvent {
            event: Some(pb::watch_event::Event::Removed(pb::NodeRemoved::default())),
        };
        assert_eq!(p.push(change), Err(PartsError::Interleaved { revision: 7 }));
    }
}
