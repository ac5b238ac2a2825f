//! The proxy's decisions, pure: a query's bytes and its source identity in,
//! what to do out; an upstream answer in, what to write into the datapath
//! before the client gets it. No sockets, no clock (time is passed in).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

use super::state::{FqdnEgress, FqdnReach, IdentityDns, ProxyPolicy};
use crate::fqdn::{normalise, NameMatch};

/// What a query's verdict was, for events and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Forwarded upstream.
    Allowed,
    /// The identity may not look this name up (`rules.dns`).
    Refused,
    /// The source identity is not in the policy file yet (SERVFAIL).
    UnknownIdentity,
    /// Answered by the proxy itself (`clusterset.local`).
    Local,
    /// Not a query we can read: FORMERR, or dropped when even the header
    /// is unreadable.
    Malformed,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Allowed,
        Verdict::Refused,
        Verdict::UnknownIdentity,
        Verdict::Local,
        Verdict::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Refused => "refused",
            Verdict::UnknownIdentity => "unknown-identity",
            Verdict::Local => "local",
            Verdict::Malformed => "malformed",
        }
    }
}

/// The answer a refused query gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RefuseWith {
    #[default]
    Refused,
    NxDomain,
}

/// What to do with one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the query upstream as it is.
    Forward,
    /// Answer the client with these bytes.
    Reply(Vec<u8>),
    /// Nothing can be answered (not even the header could be read).
    Drop,
}

/// One query as read, for events and for matching the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Normalised: lower case, no trailing dot.
    pub name: String,
    pub qtype: RecordType,
}

/// The decision about one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub action: Action,
    /// None when the packet held no readable question.
    pub question: Option<Question>,
}

/// TTL of the proxy's own answers (`clusterset.local`).
pub const LOCAL_TTL: u32 = 5;

/// The proxy's decisions over one policy file.
#[derive(Clone, Debug, Default)]
pub struct Decider {
    pub policy: ProxyPolicy,
    pub refuse_with: RefuseWith,
    /// Answered addresses are reachable for at least this long.
    pub min_ttl: u32,
    /// Per identity, its rules' names indexed: a `matchName` is one hash
    /// lookup, only patterns are tried one by one.
    index: BTreeMap<u32, NameIndex>,
}

/// The names of one identity's rules: which lookup entries and which
/// `toFQDNs` rules (by position) a name matches.
#[derive(Clone, Debug, Default)]
struct NameIndex {
    lookup_names: HashSet<String>,
    lookup_patterns: Vec<NameMatch>,
    reach_names: HashMap<String, Vec<usize>>,
    reach_patterns: Vec<(usize, NameMatch)>,
}

impl NameIndex {
    fn of(rules: &IdentityDns) -> NameIndex {
        let mut ix = NameIndex::default();
        for m in rules.lookups.iter().flatten() {
            match m {
                NameMatch::MatchName(n) => {
                    ix.lookup_names.insert(n.clone());
                }
                p => ix.lookup_patterns.push(p.clone()),
            }
        }
        for (i, r) in rules.reach.iter().enumerate() {
            for m in &r.names {
                match m {
                    NameMatch::MatchName(n) => ix.reach_names.entry(n.clone()).or_default().push(i),
                    p => ix.reach_patterns.push((i, p.clone())),
                }
            }
        }
        ix
    }
}

impl Decider {
    pub fn new(policy: ProxyPolicy, refuse_with: RefuseWith, min_ttl: u32) -> Self {
        let index = policy
            .identities
            .iter()
            .map(|(id, rules)| (*id, NameIndex::of(rules)))
            .collect();
        Decider {
            policy,
            refuse_with,
            min_ttl,
            index,
        }
    }

    /// [`may_look_up`] through the index.
    fn looks_up(&self, identity: u32, rules: &IdentityDns, name: &str) -> bool {
        let Some(ix) = self.index.get(&identity) else {
            return may_look_up(rules, name);
        };
        rules.lookups.is_none()
            || ix.lookup_names.contains(name)
            || ix.lookup_patterns.iter().any(|p| p.matches(name))
    }

    /// [`reach_ports`] through the index.
    fn ports_for(&self, identity: u32, rules: &IdentityDns, name: &str) -> Option<Vec<(u8, u16)>> {
        let Some(ix) = self.index.get(&identity) else {
            return reach_ports(rules, name);
        };
        let mut matched: BTreeSet<usize> = ix
            .reach_names
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        matched.extend(
            ix.reach_patterns
                .iter()
                .filter(|(_, p)| p.matches(name))
                .map(|(i, _)| *i),
        );
        union_ports(matched.into_iter().map(|i| &rules.reach[i]))
    }

    /// Decides about `packet`, a query from a pod with `identity` (`None`:
    /// the source address has no local identity in the ipcache).
    pub fn on_query(&self, identity: Option<u32>, packet: &[u8]) -> Decision {
        let msg = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return malformed(packet),
        };
        if msg.metadata.message_type != MessageType::Query
            || msg.metadata.op_code != OpCode::Query
            || msg.queries.len() != 1
        {
            return Decision {
                verdict: Verdict::Malformed,
                action: reply(&msg, ResponseCode::FormErr, Vec::new()),
                question: None,
            };
        }
        let q = &msg.queries[0];
        let question = Question {
            id: msg.metadata.id,
            name: normalise(&q.name().to_ascii()),
            qtype: q.query_type(),
        };
        let found = identity.and_then(|id| Some((id, self.policy.identities.get(&id)?)));
        let Some((id, rules)) = found else {
            return Decision {
                verdict: Verdict::UnknownIdentity,
                action: reply(&msg, ResponseCode::ServFail, Vec::new()),
                question: Some(question),
            };
        };
        if !self.looks_up(id, rules, &question.name) {
            let code = match self.refuse_with {
                RefuseWith::Refused => ResponseCode::Refused,
                RefuseWith::NxDomain => ResponseCode::NXDomain,
            };
            return Decision {
                verdict: Verdict::Refused,
                action: reply(&msg, code, Vec::new()),
                question: Some(question),
            };
        }
        if let Some(vip) = self.policy.clusterset.get(&question.name) {
            let answers = match question.qtype {
                RecordType::A | RecordType::ANY => vec![Record::from_rdata(
                    q.name().clone(),
                    LOCAL_TTL,
                    RData::A((*vip).into()),
                )],
                _ => Vec::new(),
            };
            return Decision {
                verdict: Verdict::Local,
                action: reply(&msg, ResponseCode::NoError, answers),
                question: Some(question),
            };
        }
        Decision {
            verdict: Verdict::Allowed,
            action: Action::Forward,
            question: Some(question),
        }
    }

    /// What an allowed answer to `question`, asked by the pod `source` with
    /// `identity`, makes reachable: every address of the answer (following
    /// the CNAME chain from the question's name), until `now_ns` plus its
    /// TTL (at least `min_ttl`).
    pub fn on_answer(
        &self,
        identity: u32,
        source: Ipv4Addr,
        question: &Question,
        answer: &[u8],
        now_ns: u64,
    ) -> Learned {
        let mut learned = Learned::default();
        let Ok(msg) = Message::from_vec(answer) else {
            return learned;
        };
        learned.addresses = chain_addresses(&msg, &question.name);
        if learned.addresses.is_empty() {
            return learned;
        }
        let ttl_ns = |ttl: u32| u64::from(ttl.max(self.min_ttl)) * 1_000_000_000;
        if let Some(rules) = self.policy.identities.get(&identity) {
            if let Some(ports) = self.ports_for(identity, rules, &question.name) {
                learned.reach_ports = Some(ports);
                learned.reach = learned
                    .addresses
                    .iter()
                    .map(|(a, ttl)| (*a, now_ns.saturating_add(ttl_ns(*ttl))))
                    .collect();
            }
        }
        for e in &self.policy.egress {
            if e.sources.contains(&source) && e.names.iter().any(|n| n.matches(&question.name)) {
                for (addr, _) in &learned.addresses {
                    if !e.excluded.iter().any(|net| net.contains(addr)) {
                        learned.egress.push((e.clone(), *addr));
                    }
                }
            }
        }
        learned
    }
}

/// What an answer makes reachable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Every address of the answer with its TTL (seconds).
    pub addresses: Vec<(Ipv4Addr, u32)>,
    /// For the asking identity: address and expiry (ns), on `reach_ports`.
    pub reach: Vec<(Ipv4Addr, u64)>,
    /// The ports of the matching `toFQDNs` rules: empty = any port. None
    /// when no rule matches (then `reach` is empty).
    pub reach_ports: Option<Vec<(u8, u16)>>,
    /// FQDN egress gateway routes to write: (policy, destination).
    pub egress: Vec<(FqdnEgress, Ipv4Addr)>,
}

/// Whether `rules` let their identity look `name` up.
pub fn may_look_up(rules: &IdentityDns, name: &str) -> bool {
    match &rules.lookups {
        None => true,
        Some(list) => list.iter().any(|m| m.matches(name)),
    }
}

/// The ports on which the addresses of `name` are reachable for `rules`'
/// identity: the union of the matching `toFQDNs` rules' ports (empty = any
/// port), or None when no rule matches.
pub fn reach_ports(rules: &IdentityDns, name: &str) -> Option<Vec<(u8, u16)>> {
    union_ports(
        rules
            .reach
            .iter()
            .filter(|r| r.names.iter().any(|n| n.matches(name))),
    )
}

/// The union of the ports of `matched` rules (empty = any port, which one
/// rule without ports gives), or None when no rule matched.
fn union_ports<'a>(matched: impl Iterator<Item = &'a FqdnReach>) -> Option<Vec<(u8, u16)>> {
    let mut ports = BTreeSet::new();
    let mut matched = matched.peekable();
    matched.peek()?;
    for r in matched {
        if r.ports.is_empty() {
            return Some(Vec::new());
        }
        ports.extend(r.ports.iter().copied());
    }
    Some(ports.into_iter().collect())
}

/// The A records of `msg`'s answer section reached from `qname` through
/// CNAMEs (in any order), with their TTLs; each address once.
fn chain_addresses(msg: &Message, qname: &str) -> Vec<(Ipv4Addr, u32)> {
    let mut names = BTreeSet::from([qname.to_string()]);
    // Each pass adds at least one name or stops: bounded by the answers.
    for _ in 0..=msg.answers.len() {
        let before = names.len();
        for r in &msg.answers {
            if let RData::CNAME(target) = &r.data {
                if names.contains(&normalise(&r.name.to_ascii())) {
                    names.insert(normalise(&target.0.to_ascii()));
                }
            }
        }
        if names.len() == before {
            break;
        }
    }
    let mut seen = BTreeSet::new();
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) if names.contains(&normalise(&r.name.to_ascii())) => Some((a.0, r.ttl)),
            _ => None,
        })
        .filter(|(a, _)| seen.insert(*a))
        .collect()
}

/// A response to `query` with `code` and `answers`.
fn reply(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Action {
    let mut m = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = !answers.is_empty();
    m.queries = query.queries.clone();
    m.answers = answers;
    match m.to_vec() {
        Ok(bytes) => Action::Reply(bytes),
        Err(_) => Action::Drop,
    }
}

/// SERVFAIL for `query` (the upstream failed): its ID and question kept.
/// None when the query cannot be read at all.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    match reply(&q, ResponseCode::ServFail, Vec::new()) {
        Action::Reply(b) => Some(b),
        _ => None,
    }
}

/// A packet hickory cannot read: FORMERR with its ID when the header is
/// there, else nothing.
fn malformed(packet: &[u8]) -> Decision {
    let action = if packet.len() >= 12 {
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
        m.to_vec().map(Action::Reply).unwrap_or(Action::Drop)
    } else {
        Action::Drop
    };
    Decision {
        verdict: Verdict::Malformed,
        action,
        question: None,
    }
}
