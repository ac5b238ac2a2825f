//! FQDN name matching with Cilium's `toFQDNs` semantics.
//!
//! - `matchName`: the name itself.
//! - `matchPattern`: `*` matches within one label (`*.cilium.io` matches
//!   `a.cilium.io`, not `cilium.io` nor `a.b.cilium.io`); a leading `**.`
//!   matches any depth of subdomain but not the apex; `*` alone matches
//!   every name.
//! - Case-insensitive, with or without a trailing dot.

use serde::{Deserialize, Serialize};

/// One `matchName` or `matchPattern`, normalised: lower case, no trailing
/// dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NameMatch {
    MatchName(String),
    MatchPattern(String),
}

/// `name` lower-cased, without its trailing dot.
pub fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl NameMatch {
    /// Whether `name` (any case, trailing dot or not) is matched.
    pub fn matches(&self, name: &str) -> bool {
        let name = normalise(name);
        match self {
            NameMatch::MatchName(n) => *n == name,
            NameMatch::MatchPattern(p) => pattern_matches(p, &name),
        }
    }
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return !name.is_empty();
    }
    if let Some(rest) = pattern.strip_prefix("**.") {
        // Any depth of subdomain of `rest` (which may hold `*`), not the apex.
        let mut labels = name.split('.');
        let mut tail = name;
        while labels.next().is_some() {
            match tail.split_once('.') {
                Some((_, t)) => tail = t,
                None => return false,
            }
            if labels_match(rest, tail) {
                return true;
            }
        }
        return false;
    }
    labels_match(pattern, name)
}

/// Label by label: the same number of labels, each matched with `*` as "any
/// run of characters within the label".
fn labels_match(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| label_matches(p, n))
}

fn label_matches(p: &str, n: &str) -> bool {
    match p.split_once('*') {
        None => p == n,
        Some((head, rest)) => {
            let Some(n) = n.strip_prefix(head) else {
                return false;
            };
            (0..=n.len()).any(|i| n.is_char_boundary(i) && label_matches(rest, &n[i..]))
        }
    }
}
