//! `matchName` / `matchPattern` as policy files write them (`toFQDNs`,
//! `toPorts[].rules.dns`, and `destinationFQDNs` of egress gateway
//! policies), checked as Cilium checks them and normalised (lower case, no
//! trailing dot).
//!
//! Only the checking is here: matching names against them is
//! `meshgate_egress::fqdn` (the DNS proxy's side), which takes
//! [`FqdnMatch`] as it is.
//!
//! # What is accepted
//!
//! - Characters `[-a-zA-Z0-9_.]`, plus `*` in a `matchPattern`; no empty
//!   label (`a..b`, a leading `.`); one trailing `.` is allowed and dropped.
//! - At most [`MAX_FQDN_LENGTH`] characters as written (Cilium's limit); a
//!   label of at most [`MAX_LABEL_LENGTH`] characters besides its `*`s (a
//!   longer one could never match a DNS name).
//! - In a pattern, `*` matches within one label and may stand anywhere in
//!   it (`sub*.cilium.io`); `*` alone matches every name; `**` only as a
//!   leading `**.` (any depth of subdomain, not the apex). Cilium also reads
//!   `**` or `***.` alone as "every name" and `**` inside a pattern as `*`;
//!   those are refused here with the pattern to write instead.

/// Cilium's `MaxFQDNLength`: the longest `matchName` / `matchPattern`.
pub const MAX_FQDN_LENGTH: usize = 255;
/// The longest DNS label (RFC 1035).
pub const MAX_LABEL_LENGTH: usize = 63;

/// One `matchName` or `matchPattern`, checked and normalised: lower case,
/// no trailing dot (`*` stays `*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FqdnMatch {
    /// `matchName`: exactly this name.
    Name(String),
    /// `matchPattern`: see the module docs.
    Pattern(String),
}

/// Why a `matchName` / `matchPattern` is refused (the caller names the
/// field).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FqdnError {
    #[error("is empty; give a DNS name such as api.example.com")]
    Empty,
    #[error("has {len} characters; at most {MAX_FQDN_LENGTH} are allowed")]
    TooLong { len: usize },
    #[error(
        "{value:?} has {c:?} at position {pos}; only letters, digits, `-`, `_` and `.`{star} are \
         allowed"
    )]
    Character {
        value: String,
        c: char,
        pos: usize,
        star: &'static str,
    },
    #[error("{value:?} has an empty label (a leading `.` or `..`); remove the extra dot")]
    EmptyLabel { value: String },
    #[error(
        "{value:?} has a label of {len} characters; a DNS label has at most {MAX_LABEL_LENGTH}"
    )]
    LabelTooLong { value: String, len: usize },
    #[error("{value:?} has a `*`, which matchName does not take; write it as a matchPattern")]
    WildcardInName { value: String },
    #[error(
        "{value:?}: `**` is only allowed as a leading `**.` (any depth of subdomain); write `*` \
         to match within one label{alone}"
    )]
    DoubleStar { value: String, alone: &'static str },
}

impl FqdnMatch {
    /// Checks and normalises a `matchName`.
    pub fn name(value: &str) -> Result<FqdnMatch, FqdnError> {
        check(value, false).map(FqdnMatch::Name)
    }

    /// Checks and normalises a `matchPattern`.
    pub fn pattern(value: &str) -> Result<FqdnMatch, FqdnError> {
        check(value, true).map(FqdnMatch::Pattern)
    }

    /// The normalised name or pattern.
    pub fn as_str(&self) -> &str {
        match self {
            FqdnMatch::Name(s) | FqdnMatch::Pattern(s) => s,
        }
    }
}

impl std::fmt::Display for FqdnMatch {
    /// `name example.com` / `pattern *.example.com`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FqdnMatch::Name(s) => write!(f, "name {s}"),
            FqdnMatch::Pattern(s) => write!(f, "pattern {s}"),
        }
    }
}

fn check(value: &str, pattern: bool) -> Result<String, FqdnError> {
    if value.is_empty() {
        return Err(FqdnError::Empty);
    }
    if value.len() > MAX_FQDN_LENGTH {
        return Err(FqdnError::TooLong { len: value.len() });
    }
    let star = if pattern { " (and `*`)" } else { "" };
    for (pos, c) in value.char_indices() {
        let ok = c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (pattern && c == '*');
        if !ok {
            if c == '*' {
                return Err(FqdnError::WildcardInName {
                    value: value.to_string(),
                });
            }
            return Err(FqdnError::Character {
                value: value.to_string(),
                c,
                pos,
                star,
            });
        }
    }
    let body = value.strip_suffix('.').unwrap_or(value);
    if body == "*" {
        return Ok(body.to_string());
    }
    let owned = || value.to_string();
    let rest = body.strip_prefix("**.").unwrap_or(body);
    if rest.contains("**") {
        let alone = if body.bytes().all(|b| b == b'*') {
            " (`*` alone matches every name)"
        } else {
            ""
        };
        return Err(FqdnError::DoubleStar {
            value: owned(),
            alone,
        });
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(FqdnError::EmptyLabel { value: owned() });
        }
        let len = label.bytes().filter(|b| *b != b'*').count();
        if len > MAX_LABEL_LENGTH {
            return Err(FqdnError::LabelTooLong {
                value: owned(),
                len,
            });
        }
    }
    Ok(body.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns_are_normalised() {
        let ok = [
            (FqdnMatch::name("API.Example.COM."), "api.example.com"),
            (
                FqdnMatch::name("_foobar._tcp.cilium.io"),
                "_foobar._tcp.cilium.io",
            ),
            (FqdnMatch::pattern("*"), "*"),
            (FqdnMatch::pattern("*."), "*"),
            (FqdnMatch::pattern("*.Cilium.io."), "*.cilium.io"),
            (FqdnMatch::pattern("**.cilium.io"), "**.cilium.io"),
            (FqdnMatch::pattern("**.*.cilium.io"), "**.*.cilium.io"),
            (FqdnMatch::pattern("sub*.cilium.io"), "sub*.cilium.io"),
            (FqdnMatch::pattern("cilium.io"), "cilium.io"),
        ];
        for (got, want) in ok {
            assert_eq!(got.as_ref().map(FqdnMatch::as_str), Ok(want), "{got:?}");
        }
    }

    #[test]
    fn bad_names_and_patterns_are_refused_with_the_fix() {
        let long = format!("{}.io", "a".repeat(300));
        let label = format!("{}.io", "a".repeat(64));
        let cases: [(Result<FqdnMatch, FqdnError>, &str); 13] = [
            (FqdnMatch::name(""), "is empty"),
            (FqdnMatch::pattern(""), "is empty"),
            (FqdnMatch::name(&long), "at most 255"),
            (FqdnMatch::name(&label), "at most 63"),
            (
                FqdnMatch::name("*.example.com"),
                "write it as a matchPattern",
            ),
            (FqdnMatch::name("exa mple.com"), "' ' at position 3"),
            (FqdnMatch::pattern("a/b.com"), "(and `*`)"),
            (FqdnMatch::pattern("a[0-9].com"), "'['"),
            (FqdnMatch::name("a..com"), "empty label"),
            (FqdnMatch::pattern(".cilium.io"), "empty label"),
            (FqdnMatch::pattern("a.**.io"), "leading `**.`"),
            (FqdnMatch::pattern("**"), "`*` alone matches every name"),
            (FqdnMatch::pattern("***.cilium.io"), "leading `**.`"),
        ];
        for (got, words) in cases {
            let e = got.expect_err("refused");
            assert!(e.to_string().contains(words), "{e} should say {words:?}");
        }
    }
}
