//! Peers as selectors on identity labels, and which label keys a selector
//! may name.
//!
//! - Entities (`fromEntities` / `toEntities`) select reserved identities by
//!   their `reserved:<name>` label ([`entity`]); `all` is any peer, and
//!   `cluster` is every identity of the local cluster ([`CLUSTER_ENTITY_KEY`],
//!   resolved against the [`super::Scope`] in `compile::is_peer`) plus the
//!   reserved identities inside the cluster.
//! - CIDR peers (`fromCIDR`, `toCIDRSet` with `except`, Kubernetes
//!   `ipBlock`) select the CIDR identities the agent allocates for the
//!   prefixes of the loaded policies, by their `cidr:<prefix>` labels
//!   ([`cidr_selector`]; `policy/cidr.rs` scans these keys). They select
//!   world addresses, never endpoints.
//! - Label keys: [`label_warning`] says when a selector names a key no
//!   identity source sets (a silent non-match); `cilium_key_any` maps
//!   Cilium's `k8s:` / `any:` / `reserved:` keys.
//!
//! Selectors naming neither `reserved:` nor `cidr:` keys never match the
//! identities of cluster 0 (reserved and CIDR identities), whatever their
//! requirements (`compile::is_peer`): an endpoint selector selects
//! endpoints, as in Cilium.

use ipnet::{IpNet, Ipv4Net};

use super::selector::{LabelSelectorYaml, Requirement, Selector};
use super::yaml::Ctx;
use super::{PolicyError, WarningKind, NAMESPACE_LABEL};

/// Source prefix of the reserved identities' labels (`reserved:host`; the
/// same as `cidr.rs`'s `RESERVED_LABEL_PREFIX`).
pub(crate) const RESERVED_PREFIX: &str = "reserved:";
/// Source prefix of the CIDR identities' labels (`cidr:10.0.0.0/8`; the same
/// as `cidr.rs`'s `CIDR_LABEL_PREFIX`).
pub(crate) const CIDR_PREFIX: &str = "cidr:";
/// The requirement key of the `cluster` entity: a requirement `Exists` on it
/// matches every identity of the local cluster (no identity carries it as a
/// label; `compile::is_peer` resolves it against the scope).
pub const CLUSTER_ENTITY_KEY: &str = "reserved:cluster";
pub use crate::endpoint::SERVICE_ACCOUNT_LABEL;
/// Prefix of Cilium's own endpoint labels.
const POLICY_LABELS_PREFIX: &str = "io.cilium.k8s.policy.";
/// Names of the reserved identities meshgate has (`reserved:<name>`), as in
/// `crate::identity`.
pub const RESERVED_NAMES: [&str; 7] = [
    "host",
    "world",
    "unmanaged",
    "health",
    "init",
    "remote-node",
    "kube-apiserver",
];

/// Why no packet ever carries the reserved identity `name`, for the
/// reserved identities meshgate never gives out (`init`, `health`,
/// `unmanaged`): a rule naming one selects that identity, as in Cilium, but
/// matches no traffic here.
pub(crate) fn never_given(name: &str) -> Option<&'static str> {
    Some(match name {
        "init" => {
            "meshgate gives no packet the reserved:init identity: an endpoint has its identity \
             before the datapath lets its first packet through (fail-closed), so a rule for \
             endpoints still starting up matches nothing; remove it"
        }
        "health" => {
            "meshgate runs no health endpoints (reserved:health), so a rule for them matches \
             nothing: agents check each other with heartbeats from the node itself, which are \
             host or remote-node; remove it, or write host / remote-node"
        }
        "unmanaged" => {
            "meshgate gives no packet the reserved:unmanaged identity: every pod on a meshgate \
             node is one of its endpoints, and an address it does not know is world, so a rule \
             for unmanaged pods matches nothing; remove it, or write world"
        }
        _ => return None,
    })
}

/// What an entity selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entity {
    /// Any peer (`all`).
    All,
    /// The identities matching any of these.
    Selectors(Vec<Selector>),
    /// Nothing meshgate has; the message says why (a warning).
    Nothing(String),
}

fn reserved(name: &str) -> Selector {
    Selector::all().with(Requirement::exists(&format!("{RESERVED_PREFIX}{name}")))
}

/// The selectors of one entity name, with Cilium's meanings.
pub(crate) fn entity(name: &str) -> Result<Entity, String> {
    Ok(match name {
        "all" => Entity::All,
        // IPv4-only mesh: world is world-ipv4.
        "world" | "world-ipv4" => Entity::Selectors(vec![reserved("world")]),
        "world-ipv6" => {
            return Err(
                "world-ipv6 is the IPv6 part of the world, and the mesh is IPv4-only: use world \
                 (or world-ipv4)"
                    .into(),
            )
        }
        "cluster" => {
            let mut s = vec![Selector::all().with(Requirement::exists(CLUSTER_ENTITY_KEY))];
            for n in [
                "host",
                "remote-node",
                "init",
                "health",
                "unmanaged",
                "kube-apiserver",
            ] {
                s.push(reserved(n));
            }
            Entity::Selectors(s)
        }
        n if RESERVED_NAMES.contains(&n) => Entity::Selectors(vec![reserved(n)]),
        "ingress" => Entity::Nothing(
            "meshgate has no ingress proxy (Cilium's reserved:ingress identity), so this \
             entity matches nothing; remove it"
                .into(),
        ),
        other => {
            return Err(format!(
                "{other:?} is not an entity; entities are all, world, world-ipv4, cluster, host, \
                 remote-node, kube-apiserver, init, health, unmanaged"
            ))
        }
    })
}

/// `cidr:<prefix>`, the label CIDR identities carry for `net`.
pub(crate) fn cidr_label(net: &Ipv4Net) -> String {
    format!("{CIDR_PREFIX}{net}")
}

/// A prefix (or one address, as /32) in canonical form (host bits cleared,
/// as Cilium reads it); IPv6 refused.
pub(crate) fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let net = match text.trim().parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match text.trim().parse::<std::net::IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(format!(
                    "{text:?} is not a CIDR; write a prefix such as 10.0.0.0/8, or one address \
                     such as 192.0.2.1"
                ))
            }
        },
    };
    match net {
        IpNet::V4(n) => Ok(n.trunc()),
        IpNet::V6(_) => Err(format!(
            "{text} is an IPv6 prefix, and the mesh is IPv4-only: remove it (IPv6 peers \
             cannot be reached)"
        )),
    }
}

/// The addresses of `net` but those of `excepts` (each inside `net`).
pub(crate) fn cidr_selector(net: &Ipv4Net, excepts: &[Ipv4Net]) -> Selector {
    let mut s = Selector::all().with(Requirement::exists(&cidr_label(net)));
    for e in excepts {
        s = s.with(Requirement::does_not_exist(&cidr_label(e)));
    }
    s
}

/// Why a requirement that needs `key` can never match, if it cannot: a
/// label no identity source sets. `subject`: the selector picks subjects
/// (endpoints only).
pub fn label_warning(key: &str, subject: bool) -> Option<String> {
    if let Some(name) = key.strip_prefix(RESERVED_PREFIX) {
        if subject {
            return Some(format!(
                "endpoints never carry {key:?} (reserved labels name the host, the world and \
                 other identities that are not endpoints, and host policies are not \
                 supported), so this subject selector selects nothing"
            ));
        }
        if let Some(why) = never_given(name) {
            return Some(format!("{key:?}: {why}"));
        }
        if key == CLUSTER_ENTITY_KEY || RESERVED_NAMES.contains(&name) {
            return None;
        }
        return Some(format!(
            "no identity carries {key:?} (the reserved identities are {}), so this selector \
             matches nothing",
            RESERVED_NAMES
                .iter()
                .map(|n| format!("{RESERVED_PREFIX}{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(rest) = key.strip_prefix(POLICY_LABELS_PREFIX) {
        if rest == "cluster" || rest == "serviceaccount" {
            return None;
        }
        return Some(format!(
            "no endpoint carries {key:?}: of Cilium's {POLICY_LABELS_PREFIX}* labels, endpoints \
             carry {POLICY_LABELS_PREFIX}cluster and {SERVICE_ACCOUNT_LABEL} only, so this \
             selector matches nothing"
        ));
    }
    None
}

/// Label keys of Cilium selectors: `k8s:` and `any:` are dropped
/// (identities hold Kubernetes labels), `reserved:` kept (`world-ipv4` is
/// `world`: the mesh is IPv4-only), namespace labels kept
/// (`io.cilium.k8s.namespace.labels.<key>`); `cidr:` and other sources
/// refused.
pub(crate) fn cilium_key_any(k: &str) -> Result<String, String> {
    match k.split_once(':') {
        None => Ok(k.to_string()),
        Some(("k8s" | "any", rest)) => Ok(rest.to_string()),
        Some(("reserved", "world-ipv4")) => Ok(format!("{RESERVED_PREFIX}world")),
        Some(("reserved", _)) => Ok(k.to_string()),
        Some(("cidr", _)) => Err(
            "`cidr:` labels are not selected directly: write the prefix in toCIDR / toCIDRSet \
             (fromCIDR / fromCIDRSet on ingress)"
                .into(),
        ),
        Some((source, _)) => Err(format!(
            "label source {source:?} is not supported; select by Kubernetes labels (no \
             prefix, or k8s:/any:) or reserved: labels"
        )),
    }
}

/// Reads a selector at `field`, mapping keys through `key`, and warns for
/// each requirement that can never match ([`label_warning`]).
pub(crate) fn read_selector(
    ctx: &Ctx,
    field: &str,
    s: &LabelSelectorYaml,
    key: &dyn Fn(&str) -> Result<String, String>,
    subject: bool,
) -> Result<Selector, PolicyError> {
    let reqs = s
        .to_requirements(key)
        .map_err(|(f, m)| ctx.err(&format!("{field}.{f}"), m))?;
    for (f, r) in &reqs {
        if r.needs_label() {
            if let Some(m) = label_warning(&r.key, subject) {
                ctx.warn(WarningKind::NeverMatches, &format!("{field}.{f}"), m);
            }
        }
    }
    Ok(Selector {
        requirements: reqs.into_iter().map(|(_, r)| r).collect(),
    })
}

/// True if `sel` names a reserved or CIDR label it needs: a selector that
/// may match the identities of cluster 0.
pub(crate) fn selects_non_endpoints(sel: &Selector) -> bool {
    sel.requirements.iter().any(|r| {
        r.needs_label() && (r.key.starts_with(RESERVED_PREFIX) || r.key.starts_with(CIDR_PREFIX))
    })
}

/// True if `sel` has a requirement on the namespace name.
pub(crate) fn names_namespace(sel: &Selector) -> bool {
    sel.mentions(NAMESPACE_LABEL)
}
