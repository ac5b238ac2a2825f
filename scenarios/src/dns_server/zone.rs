//! The lab DNS server's records: the model the lab writes (the records file,
//! JSON) and the checked zone the server answers from.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

/// TTL of a record that does not give one, seconds.
pub const DEFAULT_TTL: u32 = 30;
/// Most addresses in a range (`count`).
pub const MAX_RANGE: u32 = 65_536;
/// Most addresses one answer may hold: a DNS message is at most 65,535
/// bytes and each A record takes 16 of them (compressed owner name), with
/// room left for the question and a CNAME chain. A name with more
/// addresses must `rotate` (one address per answer).
pub const MAX_ANSWER_ADDRESSES: u32 = 4_000;
/// Longest CNAME chain to an address record (keeps the largest answer
/// under 65,535 bytes, and lookups short).
pub const MAX_CNAME_CHAIN: usize = 4;
/// Largest TTL (RFC 2181: 2^31 - 1).
pub const MAX_TTL: u32 = i32::MAX as u32;

/// One name's record, as the records file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum ZoneRecord {
    /// A records: these addresses.
    A {
        addresses: Vec<Ipv4Addr>,
        ttl: u32,
        /// Each answer holds one address, the next one in turn.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rotate: bool,
    },
    /// A records: `count` consecutive addresses from `start`.
    Range {
        start: Ipv4Addr,
        count: u32,
        ttl: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rotate: bool,
    },
    /// An alias of another name of the zone.
    Cname { target: String, ttl: u32 },
}

impl ZoneRecord {
    pub fn ttl(&self) -> u32 {
        match self {
            ZoneRecord::A { ttl, .. }
            | ZoneRecord::Range { ttl, .. }
            | ZoneRecord::Cname { ttl, .. } => *ttl,
        }
    }

    /// How many addresses the record has (0 for a CNAME).
    pub fn address_count(&self) -> u32 {
        match self {
            ZoneRecord::A { addresses, .. } => u32::try_from(addresses.len()).unwrap_or(u32::MAX),
            ZoneRecord::Range { count, .. } => *count,
            ZoneRecord::Cname { .. } => 0,
        }
    }

    fn rotates(&self) -> bool {
        matches!(
            self,
            ZoneRecord::A { rotate: true, .. } | ZoneRecord::Range { rotate: true, .. }
        )
    }
}

/// A zone that cannot be served, naming the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("\"{name}\" is not a DNS name: {problem}")]
    BadName { name: String, problem: String },
    #[error(
        "\"{name}\" is given twice (names are case-insensitive, a trailing dot changes nothing)"
    )]
    Duplicate { name: String },
    #[error("{name}: cname target \"{target}\" is not a DNS name: {problem}")]
    BadTarget {
        name: String,
        target: String,
        problem: String,
    },
    #[error(
        "{name}: cname target \"{target}\" is not among the records; the lab's DNS server is \
         the world's only one, so nothing would resolve it: add a record for it"
    )]
    UnknownTarget { name: String, target: String },
    #[error("{name}: CNAME loop {}", chain.join(" -> "))]
    Loop { name: String, chain: Vec<String> },
    #[error(
        "{name}: CNAME chain {} is longer than {MAX_CNAME_CHAIN}",
        chain.join(" -> ")
    )]
    LongChain { name: String, chain: Vec<String> },
    #[error("{name}: no addresses")]
    NoAddresses { name: String },
    #[error("{name}: count {count} is not in 1..={MAX_RANGE}")]
    Count { name: String, count: u32 },
    #[error("{name}: the range from {start} with {count} addresses goes past 255.255.255.255")]
    RangeOverflow {
        name: String,
        start: Ipv4Addr,
        count: u32,
    },
    #[error(
        "{name}: {count} addresses in one answer; at most {MAX_ANSWER_ADDRESSES} fit a DNS \
         message: add `rotate: true` (one address per answer) or lower the count"
    )]
    TooManyForOneAnswer { name: String, count: u32 },
    #[error("{name}: ttl {ttl} is larger than {MAX_TTL}")]
    Ttl { name: String, ttl: u32 },
}

impl ZoneError {
    /// The record (normalised name) the error is about.
    pub fn name(&self) -> &str {
        match self {
            ZoneError::BadName { name, .. }
            | ZoneError::Duplicate { name }
            | ZoneError::BadTarget { name, .. }
            | ZoneError::UnknownTarget { name, .. }
            | ZoneError::Loop { name, .. }
            | ZoneError::LongChain { name, .. }
            | ZoneError::NoAddresses { name }
            | ZoneError::Count { name, .. }
            | ZoneError::RangeOverflow { name, .. }
            | ZoneError::TooManyForOneAnswer { name, .. }
            | ZoneError::Ttl { name, .. } => name,
        }
    }
}

/// Why `name` is not a DNS name the lab serves: labels of 1 to 63
/// characters `[a-z0-9_-]` (any case), not starting or ending with `-`,
/// at most 253 characters; a trailing dot is allowed. Wildcards are not
/// served (list the names).
pub fn name_problem(name: &str) -> Option<String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Some("empty".to_string());
    }
    if bare.len() > 253 {
        return Some(format!("{} characters; at most 253", bare.len()));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Some("an empty label (two dots in a row, or a leading dot)".to_string());
        }
        if label.len() > 63 {
            return Some(format!("label \"{label}\" is longer than 63 characters"));
        }
        if label == "*" {
            return Some("wildcard records are not served: list each name".to_string());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Some(format!(
                "label \"{label}\" contains {c:?}; only letters, digits, - and _ are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label \"{label}\" starts or ends with -"));
        }
    }
    None
}

/// A name as the zone keys it: lower case, no trailing dot.
pub fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Checks records as the server will serve them: every error found.
pub fn check(records: &BTreeMap<String, ZoneRecord>) -> Vec<ZoneError> {
    let mut errors = Vec::new();
    let mut names: BTreeMap<String, &ZoneRecord> = BTreeMap::new();
    for (name, r) in records {
        if let Some(problem) = name_problem(name) {
            errors.push(ZoneError::BadName {
                name: name.clone(),
                problem,
            });
            continue;
        }
        if names.insert(normalise(name), r).is_some() {
            errors.push(ZoneError::Duplicate { name: name.clone() });
        }
    }
    for (name, r) in &names {
        let name = name.clone();
        if r.ttl() > MAX_TTL {
            errors.push(ZoneError::Ttl {
                name: name.clone(),
                ttl: r.ttl(),
            });
        }
        match r {
            ZoneRecord::A { addresses, .. } if addresses.is_empty() => {
                errors.push(ZoneError::NoAddresses { name: name.clone() })
            }
            ZoneRecord::Range { start, count, .. } => {
                if !(1..=MAX_RANGE).contains(count) {
                    errors.push(ZoneError::Count {
                        name: name.clone(),
                        count: *count,
                    });
                } else if u64::from(u32::from(*start)) + u64::from(*count) - 1 > u64::from(u32::MAX)
                {
                    errors.push(ZoneError::RangeOverflow {
                        name: name.clone(),
                        start: *start,
                        count: *count,
                    });
                }
            }
            ZoneRecord::Cname { target, .. } => {
                if let Some(problem) = name_problem(target) {
                    errors.push(ZoneError::BadTarget {
                        name: name.clone(),
                        target: target.clone(),
                        problem,
                    });
                    continue;
                }
                if let Some(e) = chain_problem(&names, &name) {
                    errors.push(e);
                }
            }
            ZoneRecord::A { .. } => {}
        }
        if !r.rotates() && r.address_count() > MAX_ANSWER_ADDRESSES {
            errors.push(ZoneError::TooManyForOneAnswer {
                name,
                count: r.address_count(),
            });
        }
    }
    errors
}

/// Follows the CNAMEs from `name` to an address record.
fn chain_problem(names: &BTreeMap<String, &ZoneRecord>, name: &str) -> Option<ZoneError> {
    let mut chain = vec![name.to_string()];
    let mut at = name.to_string();
    loop {
        let Some(ZoneRecord::Cname { target, .. }) = names.get(&at) else {
            return None;
        };
        let next = normalise(target);
        if !names.contains_key(&next) {
            return Some(ZoneError::UnknownTarget {
                name: name.to_string(),
                target: target.clone(),
            });
        }
        if chain.contains(&next) {
            chain.push(next);
            return Some(ZoneError::Loop {
                name: name.to_string(),
                chain,
            });
        }
        chain.push(next.clone());
        if chain.len() > MAX_CNAME_CHAIN + 1 {
            return Some(ZoneError::LongChain {
                name: name.to_string(),
                chain,
            });
        }
        at = next;
    }
}

/// What a name of the zone holds, ready to answer from.
#[derive(Debug)]
pub(crate) enum Entry {
    Addresses {
        ttl: u32,
        set: AddressSet,
        /// The next address to answer, for rotating names.
        rotation: Option<AtomicU32>,
    },
    Cname {
        ttl: u32,
        target: Name,
        key: String,
    },
}

#[derive(Debug)]
pub(crate) enum AddressSet {
    List(Vec<Ipv4Addr>),
    Range { start: u32, count: u32 },
}

impl AddressSet {
    fn len(&self) -> u32 {
        match self {
            AddressSet::List(l) => u32::try_from(l.len()).unwrap_or(u32::MAX),
            AddressSet::Range { count, .. } => *count,
        }
    }

    fn get(&self, i: u32) -> Option<Ipv4Addr> {
        match self {
            AddressSet::List(l) => l.get(i as usize).copied(),
            AddressSet::Range { start, count } => {
                (i < *count).then(|| Ipv4Addr::from(start.wrapping_add(i)))
            }
        }
    }
}

impl Entry {
    /// The addresses of one answer: all of them, or the next one of a
    /// rotating name.
    pub(crate) fn answer_addresses(&self) -> Vec<Ipv4Addr> {
        let Entry::Addresses { set, rotation, .. } = self else {
            return Vec::new();
        };
        match rotation {
            Some(next) => {
                let n = set.len().max(1);
                let i = next.fetch_add(1, Ordering::Relaxed) % n;
                set.get(i).into_iter().collect()
            }
            None => (0..set.len()).filter_map(|i| set.get(i)).collect(),
        }
    }
}

/// The records the server answers from (checked with [`check`]).
#[derive(Debug)]
pub struct Zone {
    entries: HashMap<String, Entry>,
}

impl Zone {
    /// A zone from checked records; every problem otherwise.
    pub fn new(records: &BTreeMap<String, ZoneRecord>) -> Result<Zone, Vec<ZoneError>> {
        let errors = check(records);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut entries = HashMap::with_capacity(records.len());
        for (name, r) in records {
            let entry = match r {
                ZoneRecord::A {
                    addresses,
                    ttl,
                    rotate,
                } => Entry::Addresses {
                    ttl: *ttl,
                    set: AddressSet::List(addresses.clone()),
                    rotation: rotate.then(|| AtomicU32::new(0)),
                },
                ZoneRecord::Range {
                    start,
                    count,
                    ttl,
                    rotate,
                } => Entry::Addresses {
                    ttl: *ttl,
                    set: AddressSet::Range {
                        start: u32::from(*start),
                        count: *count,
                    },
                    rotation: rotate.then(|| AtomicU32::new(0)),
                },
                ZoneRecord::Cname { target, ttl } => {
                    let key = normalise(target);
                    let target = Name::from_str(&format!("{key}.")).map_err(|e| {
                        vec![ZoneError::BadTarget {
                            name: name.clone(),
                            target: target.clone(),
                            problem: e.to_string(),
                        }]
                    })?;
                    Entry::Cname {
                        ttl: *ttl,
                        target,
                        key,
                    }
                }
            };
            entries.insert(normalise(name), entry);
        }
        Ok(Zone { entries })
    }

    /// The entry of a normalised name.
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
