//! Keeping a remote's view small: a node or endpoint imported exactly as
//! sent is released from the view ([`Imports::release_nodes`],
//! [`Imports::release_endpoints`]) and given back from the imported record
//! when it must be judged again ([`Imports::hold_node`],
//! [`Imports::hold_endpoint`], [`Imports::hold_all`]).
//!
//! A record is released only when converting the imported record back to
//! its wire form gives the wire record exactly, so judging the record given
//! back is judging what the remote sent. While the remote's session lasts,
//! an imported record changes only when its key is judged (a node by its
//! `cluster/name`, an endpoint by its IP, which `check::endpoint` accepts
//! only as discovery writes it), and a key is held again before it is
//! judged, so what is given back is what was released. Expiry removes the
//! imports only after the session (and its view) ended.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Imports;
use crate::federation::RemoteView;
use crate::pb;

impl Imports {
    /// The wire form of `remote`'s imported node `key` (`cluster/name`).
    fn wire_node(&self, remote: &str, key: &str) -> Option<pb::Node> {
        let name = key.strip_prefix(remote)?.strip_prefix('/')?;
        self.remotes
            .get(remote)?
            .nodes
            .get(name)
            .map(pb::Node::from)
    }

    /// The wire form of `remote`'s imported endpoint `key` (its IP).
    fn wire_endpoint(&self, remote: &str, key: &str) -> Option<pb::Endpoint> {
        let ip = key.parse::<IpAddr>().ok()?;
        let e = self.remotes.get(remote)?.endpoints.get(&ip)?;
        Some(pb::Endpoint::from(&e.unpack(ip, remote)))
    }

    /// Holds node `key` (`cluster/name`) of `remote`'s view again if it was
    /// released. A released key whose import is gone (never, while the
    /// remote's session lasts) is dropped from the view.
    pub(super) fn hold_node(&self, remote: &str, view: &mut RemoteView, key: &str) {
        let Some(None) = view.nodes.get(key) else {
            return;
        };
        match self.wire_node(remote, key) {
            Some(w) => {
                view.nodes.insert(key.to_string(), Some(Box::new(w)));
            }
            None => {
                view.nodes.remove(key);
            }
        }
    }

    /// Holds endpoint `key` (its IP as sent) of `remote`'s view again if it
    /// was released.
    pub(super) fn hold_endpoint(&self, remote: &str, view: &mut RemoteView, key: &str) {
        let Some(None) = view.endpoints.get(key) else {
            return;
        };
        match self.wire_endpoint(remote, key) {
            Some(w) => {
                view.endpoints.insert(key.to_string(), Some(Box::new(w)));
            }
            None => view.forget_endpoint(key),
        }
    }

    /// Holds every released record of `remote`'s view again (before a whole
    /// check).
    pub(super) fn hold_all(&self, remote: &str, view: &mut RemoteView) {
        if view.is_whole() {
            return;
        }
        let nodes: Vec<String> = released(view.nodes.iter());
        for k in nodes {
            self.hold_node(remote, view, &k);
        }
        let endpoints: Vec<String> = released(view.endpoints.iter());
        for k in endpoints {
            self.hold_endpoint(remote, view, &k);
        }
    }

    /// Releases the nodes `keys` of `remote`'s view that are imported
    /// exactly as sent.
    pub(super) fn release_nodes<'a>(
        &self,
        remote: &str,
        view: &mut RemoteView,
        keys: impl IntoIterator<Item = &'a String>,
    ) {
        release(&mut view.nodes, keys, |k| self.wire_node(remote, k));
    }

    /// Releases the endpoints `keys` of `remote`'s view that are imported
    /// exactly as sent.
    pub(super) fn release_endpoints<'a>(
        &self,
        remote: &str,
        view: &mut RemoteView,
        keys: impl IntoIterator<Item = &'a String>,
    ) {
        release(&mut view.endpoints, keys, |k| self.wire_endpoint(remote, k));
    }
}

/// Drops the held records `keys` whose imported record, in wire form
/// (`imported`), is the record itself.
fn release<'a, T: PartialEq>(
    records: &mut BTreeMap<String, Option<Box<T>>>,
    keys: impl IntoIterator<Item = &'a String>,
    imported: impl Fn(&str) -> Option<T>,
) {
    for key in keys {
        let Some(slot) = records.get_mut(key) else {
            continue;
        };
        if slot
            .as_deref()
            .is_some_and(|wire| imported(key).as_ref() == Some(wire))
        {
            *slot = None;
        }
    }
}

fn released<'a, T: 'a>(records: impl Iterator<Item = (&'a String, &'a Option<T>)>) -> Vec<String> {
    records
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| k.clone())
        .collect()
}
