//! Identity policy: Kubernetes `NetworkPolicy`, and the L3/L4 part of
//! `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy` (with their
//! FQDN and DNS rules), read from YAML and compiled into the entries of the
//! datapath's policy maps (pure; no I/O, no eBPF types).
//!
//! Layout: [`selector`] (label selectors matched against identity label
//! sets), `yaml` (documents → [`Policy`], [`ParseReport`] with every error
//! and [`PolicyWarning`]; `k8s` and `cilium` hold the kinds), `peers`
//! (entities and CIDR peers as selectors, label keys that can never match),
//! `icmp` (`icmps` rules), `compile` (policies + identities → [`Compiled`]),
//! `state` ([`PolicyState`]: the same, incrementally, as [`PolicyDiff`]s),
//! `describe` ([`summary`], for `meshgate policy check`), `fqdn`
//! ([`FqdnMatch`]: `matchName` / `matchPattern`, checked). The CIDR
//! identities the agent allocates for the policies' prefixes are
//! `policy/cidr.rs`'s; the reserved identities are `crate::identity`'s.
//!
//! # What the output means
//!
//! [`PolicyEntry`] has exactly the fields and meanings of `struct
//! mg_policy_key` in `ebpf/bpf/mg_datapath.h`: `remote_identity` 0 = any
//! identity, `dport` 0 = any port of `proto`, `proto` 0 = any protocol (and
//! then `dport` is 0), `direction` 0 = ingress, 1 = egress, seen from the
//! local endpoint; for ICMP ([`PROTO_ICMP`]) `dport` is
//! [`ICMP_TYPE_BASE`]` + type` (0 = any ICMP). Its value is a [`Verdict`];
//! when an allow and a deny rule give the same key, deny wins (the datapath
//! also lets a deny found at any of its lookups win over allows found at
//! others). [`Selection`] is the value of `mg_policy_sel` (an identity not
//! selected in a direction allows all in that direction). The agent maps
//! these onto `meshgate_ebpf`'s typed maps.
//!
//! # Semantics
//!
//! - Subjects are the **local** identities (this cluster's ID) matching the
//!   subject selector, scoped to the policy's namespace (a
//!   `CiliumNetworkPolicy`'s `endpointSelector` naming another namespace is
//!   overridden, as Cilium does, with a warning). A clusterwide policy's
//!   subjects are in every namespace, unless its selector names a namespace
//!   or namespace labels.
//! - A peer selector without a namespace requirement means the policy's
//!   namespace (Kubernetes `podSelector` alone; Cilium `fromEndpoints` /
//!   `toEndpoints` without `io.kubernetes.pod.namespace`, namespace labels
//!   or not, as in Cilium), and every namespace in a clusterwide policy. A
//!   peer selector without a requirement on [`CLUSTER_LABEL`] matches only
//!   identities of the local cluster, unless [`Scope::peers_any_cluster`] is
//!   set (Cilium's older default); naming the cluster label is how a rule
//!   reaches another cluster.
//! - Namespaces are selected by name ([`NAMESPACE_LABEL`]; Kubernetes'
//!   [`NAMESPACE_NAME_LABEL`] in a `namespaceSelector`) or by label: a
//!   `namespaceSelector` key `k`, and Cilium's
//!   `k8s:io.cilium.k8s.namespace.labels.k`, are the endpoints'
//!   `io.cilium.k8s.namespace.labels.k` labels. [`SERVICE_ACCOUNT_LABEL`] is
//!   an endpoint label like any.
//! - Entities and CIDR peers are selectors on the labels of the reserved
//!   identities (`reserved:<name>`) and of the CIDR identities
//!   (`cidr:<prefix>`), never scoped to a namespace or a
//!   cluster: `world` (= `world-ipv4`), `host`, `remote-node`,
//!   `kube-apiserver`, `init`, `health`, `unmanaged` select their identity
//!   (`world` also every CIDR identity); `all` is any peer (remote identity
//!   0); `cluster` is every identity of the local cluster
//!   ([`CLUSTER_ENTITY_KEY`]) plus host, remote-node, init, health, unmanaged
//!   and kube-apiserver. `toCIDR` / `toCIDRSet` (and `ipBlock`) prefixes are
//!   canonical (10.1.2.3/8 is 10.0.0.0/8); an `except` is `DoesNotExist` on
//!   its `cidr:` label. CIDR rules select world addresses, not endpoints: a
//!   selector that names no `reserved:` / `cidr:` label never matches an
//!   identity of cluster 0.
//! - Kubernetes: `policyTypes` defaults to `Ingress`, plus `Egress` when the
//!   policy has egress rules; `ingress: [{}]` allows everything;
//!   a selected direction with no rules denies everything; a port without
//!   protocol is TCP; no `ports` means every port and protocol.
//! - Cilium: a direction is selected when the policy has allow or deny rules
//!   in it (`enableDefaultDeny` can turn that off); `ingress: [{}]` selects
//!   and allows nothing (Cilium's default-deny idiom); a rule's L3 peers
//!   (endpoints, entities, CIDRs) add up; a rule with only `toPorts` / `icmps`
//!   allows those ports from/to any peer; `toPorts` and `icmps` in one rule
//!   are alternatives; a port without protocol is `ANY`, which for a given
//!   port means TCP, UDP and SCTP, and with no port means any protocol.
//!   `ingressDeny` / `egressDeny` win over every allow (entries and
//!   selection). `fromRequires` / `toRequires` (deprecated in Cilium: a
//!   warning) are ANDed onto the endpoint selectors of every rule of the
//!   same list of the same spec.
//! - Cilium `toFQDNs` (egress allow rules, alone as the rule's peers, as
//!   Cilium requires) and `toPorts[].rules.dns` are read into
//!   [`Peers::Fqdns`] and [`Rule::dns`] for the DNS proxy (see
//!   `meshgate_egress::dns_policy`); a `toFQDNs` rule selects its subjects in
//!   egress and gives no entries here. Names and patterns are checked as
//!   [`FqdnMatch`] says. `rules.http` / `rules.kafka` are refused, or with
//!   [`L7Mode::Ignore`] left out with a warning (the L3/L4 part enforced).
//! - No silent non-match: a selector needing a label no identity source sets
//!   (an unknown `io.cilium.k8s.policy.*` or `reserved:` key, a reserved
//!   label in a subject, [`label_warning`]), an overridden namespace, the
//!   `ingress` entity, an `except` equal to its cidr: a [`PolicyWarning`],
//!   an error with [`ParseOptions::strict`].
//! - What is not supported is an error naming the policy and the field, never
//!   skipped: service, group and node peers, L7 rules other than DNS (unless
//!   ignored), L7 and `toFQDNs` in deny rules, IPv6 (prefixes, ICMP family,
//!   `world-ipv6`), CIDR groups, named ports, port ranges over 1024 ports
//!   (each port is one entry), label sources other than `k8s:`, `any:` and
//!   `reserved:`. Stricter than Kubernetes: rules of a direction that
//!   `policyTypes` leaves out are an error, not ignored.
//! - A policy without `metadata.namespace` is in `default` (as kubectl with a
//!   context on the default namespace); a clusterwide one has none
//!   ([`PolicyRef::namespace`] is empty).
//! - Replies of allowed connections pass by the datapath's connection
//!   tracking, not by entries here.

pub mod cidr;
mod compile;
mod describe;
mod fqdn;
mod icmp;
mod peers;
pub mod selector;
mod state;
mod yaml;

mod cilium;
mod k8s;

#[cfg(test)]
mod cilium_examples_tests;
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
#[cfg(test)]
mod warnings_tests;

pub use cilium::{cilium_key, NAMESPACE_LABELS_PREFIX};
pub use compile::{compile, is_subject, Compiled};
pub use describe::summary;
pub use fqdn::{FqdnError, FqdnMatch, MAX_FQDN_LENGTH, MAX_LABEL_LENGTH};
pub use icmp::{icmp_type, icmp_type_name, ICMP_TYPE_BASE};
pub use k8s::NAMESPACE_NAME_LABEL;
pub use peers::{label_warning, CLUSTER_ENTITY_KEY, RESERVED_NAMES, SERVICE_ACCOUNT_LABEL};
pub use selector::Selector;
pub use state::{PolicyDiff, PolicyState};
pub use yaml::{
    parse_label_selector, parse_policies, parse_policies_report, parse_policies_with,
    parse_policy_file, OtherDocument, SelectorFieldError, EGRESS_GATEWAY_KIND,
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
    /// Cluster-scoped: its [`PolicyRef::namespace`] is empty.
    CiliumClusterwideNetworkPolicy,
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        })
    }
}

/// Names a policy object: kind, namespace (empty for a cluster-scoped
/// kind), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyRef {
    /// `CiliumNetworkPolicy shop/web`; `CiliumClusterwideNetworkPolicy web`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What to do with the L7 part (`toPorts[].rules.http` / `.kafka`) of a
/// Cilium rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum L7Mode {
    /// Refuse the policy (the default: an L7 rule meshgate does not enforce
    /// would allow more than it says).
    #[default]
    Refuse,
    /// Keep the rule's L3/L4 part and warn that the L7 part is not enforced.
    Ignore,
}

/// How policy files are read ([`parse_policies_report`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ParseOptions {
    /// Warnings ([`PolicyWarning`]) of the kinds that
    /// [`WarningKind::strict_refuses`] are errors instead (`--strict-policy`).
    pub strict: bool,
    /// `--l7 ignore|refuse`.
    pub l7: L7Mode,
}

/// What a [`PolicyWarning`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WarningKind {
    /// A selector (or entity, or `except`) that can never match: it needs a
    /// label no identity source sets.
    NeverMatches,
    /// A `CiliumNetworkPolicy`'s `endpointSelector` names another namespace
    /// than the policy's: overridden with the policy's own, as Cilium does.
    NamespaceOverridden,
    /// A namespace-label peer of a `CiliumNetworkPolicy` without a namespace:
    /// limited to the policy's own namespace, as in Cilium.
    NamespaceScoped,
    /// `fromRequires` / `toRequires`: enforced, but deprecated in Cilium.
    Deprecated,
    /// An L7 rule left out by [`L7Mode::Ignore`].
    L7NotEnforced,
}

impl WarningKind {
    /// Every kind.
    pub const ALL: [WarningKind; 5] = [
        WarningKind::NeverMatches,
        WarningKind::NamespaceOverridden,
        WarningKind::NamespaceScoped,
        WarningKind::Deprecated,
        WarningKind::L7NotEnforced,
    ];

    /// True for the kinds [`ParseOptions::strict`] refuses: the policy does
    /// not do what it reads as. A deprecated field that is enforced, and an
    /// L7 part ignored on request, stay warnings.
    pub fn strict_refuses(self) -> bool {
        match self {
            WarningKind::NeverMatches
            | WarningKind::NamespaceOverridden
            | WarningKind::NamespaceScoped => true,
            WarningKind::Deprecated | WarningKind::L7NotEnforced => false,
        }
    }

    /// A short name (for logs and metric labels): `never-matches`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::NeverMatches => "never-matches",
            WarningKind::NamespaceOverridden => "namespace-overridden",
            WarningKind::NamespaceScoped => "namespace-scoped",
            WarningKind::Deprecated => "deprecated",
            WarningKind::L7NotEnforced => "l7-not-enforced",
        }
    }
}

/// A policy that is read, but whose meaning is probably not what its author
/// wants (a selector that can never match, an overridden namespace, a
/// deprecated field, an L7 part not enforced). With
/// [`ParseOptions::strict`] the kinds that [`WarningKind::strict_refuses`]
/// are a [`PolicyError::Invalid`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyWarning {
    pub kind: WarningKind,
    /// The file (or other source) name.
    pub source_name: String,
    /// The policy ([`PolicyRef`] as text).
    pub policy: String,
    /// The field path (`spec.ingress[0].fromEndpoints[0].matchLabels.x`).
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for PolicyWarning {
    /// `file: policy: field: message`, as [`PolicyError::Invalid`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.source_name, self.policy, self.field, self.message
        )
    }
}

/// Everything read from one source: the policies read without error, every
/// warning, and every error (a policy with an error is left out of
/// `policies`, and so is a document the `other` callback refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseReport<E> {
    pub policies: Vec<Policy>,
    pub warnings: Vec<PolicyWarning>,
    pub errors: Vec<E>,
}

impl<E> ParseReport<E> {
    /// The policies if there is no error, else the first error (warnings
    /// dropped: callers that show them read the fields).
    pub fn into_result(self) -> Result<Vec<Policy>, E> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.policies),
        }
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
