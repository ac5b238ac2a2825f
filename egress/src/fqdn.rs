//! FQDN name matching with Cilium's `toFQDNs` / `rules.dns` semantics, for
//! the DNS proxy (which calls [`NameMatch::matches`] per query: it does not
//! allocate).
//!
//! - `matchName`: the name itself.
//! - `matchPattern`: `*` matches any run of the characters a name may hold
//!   (`[-a-z0-9_]`), within one label, anywhere in it (`*.cilium.io`
//!   matches `a.cilium.io`, not `cilium.io` nor `a.b.cilium.io`;
//!   `sub*.cilium.io` matches `sub.cilium.io` and `subdomain.cilium.io`); a
//!   leading `**.` matches any depth of subdomain but not the apex
//!   (`**.cilium.io` matches `a.cilium.io` and `a.b.cilium.io`); `*` alone
//!   matches every name.
//! - Case-insensitive, with or without a trailing dot. A queried name with
//!   an empty label or a character outside `[-a-zA-Z0-9_.]` matches
//!   nothing (`*` included), as in Cilium, whose patterns are regular
//!   expressions over those characters.
//!
//! Which names and patterns are valid (and their normal form) is decided
//! once, where policies are read: [`meshgate_model::policy::FqdnMatch`],
//! which [`NameMatch::name`] / [`NameMatch::pattern`] use too.

use meshgate_model::policy::{FqdnError, FqdnMatch};
use serde::{Deserialize, Serialize};

/// One `matchName` or `matchPattern`, normalised: lower case, no trailing
/// dot. Written to the DNS proxy's file as `{"matchName": "..."}` /
/// `{"matchPattern": "..."}`.
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

impl From<FqdnMatch> for NameMatch {
    fn from(m: FqdnMatch) -> NameMatch {
        match m {
            FqdnMatch::Name(n) => NameMatch::MatchName(n),
            FqdnMatch::Pattern(p) => NameMatch::MatchPattern(p),
        }
    }
}

impl From<&FqdnMatch> for NameMatch {
    fn from(m: &FqdnMatch) -> NameMatch {
        NameMatch::from(m.clone())
    }
}

impl std::fmt::Display for NameMatch {
    /// `name example.com` / `pattern *.example.com`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameMatch::MatchName(s) => write!(f, "name {s}"),
            NameMatch::MatchPattern(s) => write!(f, "pattern {s}"),
        }
    }
}

impl NameMatch {
    /// A checked, normalised `matchName`.
    pub fn name(value: &str) -> Result<NameMatch, FqdnError> {
        FqdnMatch::name(value).map(NameMatch::from)
    }

    /// A checked, normalised `matchPattern`.
    pub fn pattern(value: &str) -> Result<NameMatch, FqdnError> {
        FqdnMatch::pattern(value).map(NameMatch::from)
    }

    /// Whether `name` (any case, trailing dot or not) is matched. Does not
    /// allocate; linear in the name's length for the patterns policies
    /// hold (a label's `*`s backtrack within that label only).
    pub fn matches(&self, name: &str) -> bool {
        let name = trim_dot(name.as_bytes());
        if !valid_name(name) {
            return false;
        }
        match self {
            NameMatch::MatchName(n) => trim_dot(n.as_bytes()).eq_ignore_ascii_case(name),
            NameMatch::MatchPattern(p) => pattern_matches(trim_dot(p.as_bytes()), name),
        }
    }
}

fn trim_dot(s: &[u8]) -> &[u8] {
    s.strip_suffix(b".").unwrap_or(s)
}

/// The root (empty) or labels of `[-a-zA-Z0-9_]`, none empty.
fn valid_name(name: &[u8]) -> bool {
    name.is_empty()
        || name
            .split(|b| *b == b'.')
            .all(|l| !l.is_empty() && l.iter().all(|b| name_char(*b)))
}

fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn labels(s: &[u8]) -> usize {
    s.iter().filter(|b| **b == b'.').count() + 1
}

fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    if pattern == b"*" {
        return true;
    }
    if name.is_empty() {
        return false;
    }
    if let Some(rest) = pattern.strip_prefix(b"**.") {
        // One or more labels, then `rest` (which has no `**`, so a fixed
        // number of labels): only one tail of the name can match it.
        let (want, have) = (labels(rest), labels(name));
        if have <= want {
            return false;
        }
        let mut skip = have - want;
        let mut start = 0;
        for (i, b) in name.iter().enumerate() {
            if *b == b'.' {
                skip -= 1;
                if skip == 0 {
                    start = i + 1;
                    break;
                }
            }
        }
        return labels_match(rest, &name[start..]);
    }
    labels_match(pattern, name)
}

/// Label by label: the same number of labels, each matched by
/// [`label_matches`].
fn labels_match(pattern: &[u8], name: &[u8]) -> bool {
    let mut p = pattern.split(|b| *b == b'.');
    let mut n = name.split(|b| *b == b'.');
    loop {
        match (p.next(), n.next()) {
            (None, None) => return true,
            (Some(p), Some(n)) if label_matches(p, n) => {}
            _ => return false,
        }
    }
}

/// `*` as "any run of characters" within one label (the name's characters
/// are checked by [`valid_name`]); the rest compared without case. The
/// usual glob walk: on a mismatch, the last `*` takes one more character.
fn label_matches(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if c.eq_ignore_ascii_case(&n[ni]) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}
