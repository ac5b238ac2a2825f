//! Identity policy: Kubernetes `NetworkPolicy` and the L3/L4 part of
//! `CiliumNetworkPolicy` (with its FQDN and DNS rules), read from YAML and
//! compiled into the entries of the datapath's policy maps (pure; no I/O, no
//! eBPF types).
//!
//! Layout: [`selector`] (label selectors matched against identity label
//! sets), `yaml` (documents → [`Policy`]; `k8s` and `cilium` hold the
//! two kinds), `compile` (policies + identities → [`Compiled`]),
//! `state` ([`PolicyState`]: the same, incrementally, as [`PolicyDiff`]s),
//! `describe` ([`summary`], for `meshgate policy check`), `fqdn`
//! ([`FqdnMatch`]: `matchName` / `matchPattern`, checked).
//!
//! # What the output means
//!
//! [`PolicyEntry`] has exactly the fields and meanings of `struct
//! mg_policy_key` in `ebpf/bpf/mg_datapath.h`: `remote_identity` 0 = any
//! identity, `dport` 0 = any port of `proto`, `proto` 0 = any protocol (and
//! then `dport` is 0), `direction` 0 = ingress, 1 = egress, seen from the
//! local endpoint. Its value is a [`Verdict`]; when an allow and a deny rule
//! give the same key, deny wins (the datapath also lets a deny found at any of
//! its lookups win over allows found at others). [`Selection`] is the value of
//! `mg_policy_sel` (an identity not selected in a direction allows all in that
//! direction). The agent maps these onto `meshgate_ebpf`'s typed maps.
//!
//! # Semantics
//!
//! - Subjects are the **local** identities (this cluster's ID) matching the
//!   subject selector, scoped to the policy's namespace.
//! - A peer selector without a namespace requirement means the policy's
//!   namespace (Kubernetes `podSelector` alone; Cilium `fromEndpoints` /
//!   `toEndpoints` without `io.kubernetes.pod.namespace`). A peer selector
//!   without a requirement on [`CLUSTER_LABEL`] matches only identities of the
//!   local cluster, unless [`Scope::peers_any_cluster`] is set (Cilium's older
//!   default); naming the cluster label is how a rule reaches another cluster.
//! - Kubernetes: `policyTypes` defaults to `Ingress`, plus `Egress` when the
//!   policy has egress rules; `ingress: [{}]` allows everything;
//!   a selected direction with no rules denies everything; a port without
//!   protocol is TCP; no `ports` means every port and protocol.
//! - Cilium: a direction is selected when the policy has allow or deny rules
//!   in it (`enableDefaultDeny` can turn that off); `ingress: [{}]` selects
//!   and allows nothing (Cilium's default-deny idiom); a rule with only
//!   `toPorts` allows those ports from/to any peer; a port without protocol is
//!   `ANY`, which for a given port means TCP, UDP and SCTP, and with no port
//!   means any protocol.
//! - Cilium `toFQDNs` (egress allow rules, alone as the rule's peers, as
//!   Cilium requires) and `toPorts[].rules.dns` are read into
//!   [`Peers::Fqdns`] and [`Rule::dns`] for the DNS proxy (see
//!   `meshgate_egress::dns_policy`); a `toFQDNs` rule selects its subjects in
//!   egress and gives no entries here. Names and patterns are checked as
//!   [`FqdnMatch`] says.
//! - What is not supported is an error naming the policy and the field, never
//!   skipped: `ipBlock`, CIDR, entity, service and L7 rules other than DNS,
//!   `toFQDNs` in deny rules, ICMP
//!   rules, named ports, namespace labels other than the namespace's name,
//!   `CiliumClusterwideNetworkPolicy`, port ranges over
//!   1024 ports (each port is one entry). Stricter than Kubernetes: rules of a
//!   direction that `policyTypes` leaves out are an error, not ignored.
//! - A policy without `metadata.namespace` is in `default` (as kubectl with a
//!   context on the default namespace).
//! - Replies of allowed connections pass by the datapath's connection
//!   tracking, not by entries here.

mod compile;
mod describe;
mod fqdn;
pub mod selector;
mod state;
mod yaml;

mod cilium;
mod k8s;

#[cfg(test)]
mod cilium_fqdn_tests;
#[cfg(test)]
mod cilium_tests;
#[cfg(test)]
mod k8s_tests;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod testutil;

pub use cilium::{cilium_key, NAMESPACE_LABELS_PREFIX};
pub use compile::{compile, is_subject, Compiled};
pub use describe::summary;
pub use fqdn::{FqdnError, FqdnMatch, MAX_FQDN_LENGTH, MAX_LABEL_LENGTH};
pub use k8s::NAMESPACE_NAME_LABEL;
pub use selector::Selector;
pub use state::{PolicyDiff, PolicyState};
pub use yaml::{
    parse_label_selector, parse_policies, parse_policies_with, parse_policy_file, OtherDocument,
    SelectorFieldError, EGRESS_GATEWAY_KIND,
};

pub use crate::identity::{CLUSTER_LABEL, NAMESPACE_LABEL};

/// Protocol numbers used in entries.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Direction seen from the local endpoint; numbers as `enum mg_direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

/// Value of an entry; deny wins over allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Allow,
    Deny,
}

/// One `mg_policy` key (see the module docs for the field meanings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntry {
    pub local_identity: u32,
    /// 0 = any identity.
    pub remote_identity: u32,
    /// 0 = any port of `proto`.
    pub dport: u16,
    /// IP protocol number; 0 = any protocol (then `dport` is 0).
    pub proto: u8,
    pub direction: Direction,
}

/// `mg_policy_sel` value of one identity: in which directions policy selects it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selection {
    pub ingress: bool,
    pub egress: bool,
}

impl Selection {
    pub fn is_none(&self) -> bool {
        !self.ingress && !self.egress
    }

    pub fn get(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

/// Which identities count as local (subjects) and which peers a selector
/// without a cluster requirement reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// This cluster's ID: subjects are identities `cluster_id << 16 | n`.
    pub cluster_id: u8,
    /// When false (the default of [`Scope::new`]), a peer selector that does
    /// not mention [`CLUSTER_LABEL`] matches only local identities.
    pub peers_any_cluster: bool,
}

impl Scope {
    pub fn new(cluster_id: u8) -> Self {
        Scope {
            cluster_id,
            peers_any_cluster: false,
        }
    }
}

/// The kind of a policy object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    NetworkPolicy,
    CiliumNetworkPolicy,
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
        })
    }
}

/// Names a policy object: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A port match: `port` 0 = any port of `proto`; `proto` 0 = anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortProto {
    pub proto: u8,
    pub port: u16,
}

impl PortProto {
    pub const ANY: PortProto = PortProto {
        proto: PROTO_ANY,
        port: 0,
    };
}

/// The peers of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Any identity (entries with remote identity 0).
    Any,
    /// Identities matching any of these selectors (none: the rule allows nothing).
    Selected(Vec<Selector>),
    /// `toFQDNs` (egress allow rules only; never empty): the addresses the
    /// DNS proxy answered for a matching name, which are world addresses,
    /// not identities. The rule gives no `mg_policy` entries (the DNS
    /// proxy's map allows those addresses in the datapath) but selects its
    /// subjects in egress like any egress rule.
    Fqdns(Vec<FqdnMatch>),
}

/// One rule, normalised from either kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub direction: Direction,
    pub verdict: Verdict,
    pub peers: Peers,
    /// Never empty: "any port" is `[PortProto::ANY]`.
    pub ports: Vec<PortProto>,
    /// `toPorts[].rules.dns` of an egress rule, all its port rules together:
    /// the names its subjects may look up at all (the DNS proxy's rule; the
    /// ports above are compiled as usual). Empty: the rule has no DNS rule.
    pub dns: Vec<FqdnMatch>,
}

/// A subject selector with the directions it selects and its rules. A
/// `NetworkPolicy` has one; a `CiliumNetworkPolicy` one per `spec`/`specs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// Matches the subjects; already scoped to the policy's namespace.
    pub subject: Selector,
    pub selects: Selection,
    pub rules: Vec<Rule>,
}

/// A parsed policy object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: PolicyRef,
    pub specs: Vec<PolicySpec>,
}

/// A policy that cannot be read. Each names the policy (or document), the
/// field, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {message}")]
    Read { path: String, message: String },
    #[error("{source_name}: document {index}: {message}")]
    Document {
        source_name: String,
        index: usize,
        message: String,
    },
    #[error("{source_name}: {policy}: {field}: {message}")]
    Invalid {
        source_name: String,
        policy: String,
        field: String,
        message: String,
    },
}

impl PolicyError {
    /// The field path the error is about, if it is about a field.
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { field, .. } => Some(field),
            PolicyError::Document { .. } | PolicyError::Read { .. } => None,
        }
    }
}
