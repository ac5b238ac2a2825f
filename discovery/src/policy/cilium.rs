//! The L3/L4 part of `CiliumNetworkPolicy` (cilium.io/v2) → [`Policy`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::selector::{LabelSelectorYaml, Requirement, Selector};
use super::yaml::{expand_ports, port_number, Ctx};
use super::{
    Direction, Peers, Policy, PolicyError, PolicyRef, PolicySpec, PortProto, Rule, Selection,
    Verdict, NAMESPACE_LABEL, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// Prefix of Cilium's namespace-label selectors, which meshgate cannot match.
/// Cilium's prefix of namespace labels in an endpoint's labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

type Extra = BTreeMap<String, Value>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleSpec {
    endpoint_selector: Option<Value>,
    ingress: Option<Value>,
    ingress_deny: Option<Value>,
    egress: Option<Value>,
    egress_deny: Option<Value>,
    enable_default_deny: Option<Value>,
    /// Free text; read and kept out of the datapath.
    #[allow(dead_code)]
    description: Option<String>,
    /// Labels naming the rule (not a selector); not used for enforcement.
    #[allow(dead_code)]
    labels: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerRule {
    from_endpoints: Option<Value>,
    to_endpoints: Option<Value>,
    to_ports: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct PortRule {
    ports: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortYaml {
    port: Option<Value>,
    end_port: Option<u32>,
    protocol: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

pub(crate) fn translate(
    ctx: &Ctx,
    id: PolicyRef,
    spec: Option<Value>,
    specs: Option<Value>,
) -> Result<Policy, PolicyError> {
    let mut parts = Vec::new();
    if let Some(s) = spec {
        parts.push(("spec".to_string(), s));
    }
    parts.extend(ctx.list("specs", specs.as_ref())?);
    if parts.is_empty() {
        return Err(ctx.err(
            "spec",
            "is missing (a CiliumNetworkPolicy has spec or specs)",
        ));
    }
    let mut out = Vec::new();
    for (field, value) in parts {
        let rs: RuleSpec = ctx.typed(&field, value)?;
        out.push(rule_spec(ctx, &id, &field, &rs)?);
    }
    Ok(Policy { id, specs: out })
}

fn rule_spec(
    ctx: &Ctx,
    id: &PolicyRef,
    field: &str,
    rs: &RuleSpec,
) -> Result<PolicySpec, PolicyError> {
    ctx.no_extra(
        field,
        &rs.extra,
        &[
            "endpointSelector",
            "ingress",
            "ingressDeny",
            "egress",
            "egressDeny",
            "enableDefaultDeny",
            "description",
            "labels",
        ],
    )?;
    let es: LabelSelectorYaml = ctx
        .opt(
            &format!("{field}.endpointSelector"),
            rs.endpoint_selector.as_ref(),
        )?
        .ok_or_else(|| {
            ctx.err(
                &format!("{field}.endpointSelector"),
                "is required; use `endpointSelector: {}` for every endpoint of the namespace",
            )
        })?;
    let subject = selector(ctx, &format!("{field}.endpointSelector"), &es)?
        .with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));
    let lists = [
        (Direction::Ingress, Verdict::Allow, &rs.ingress, "ingress"),
        (
            Direction::Ingress,
            Verdict::Deny,
            &rs.ingress_deny,
            "ingressDeny",
        ),
        (Direction::Egress, Verdict::Allow, &rs.egress, "egress"),
        (
            Direction::Egress,
            Verdict::Deny,
            &rs.egress_deny,
            "egressDeny",
        ),
    ];
    let mut selects = Selection::default();
    let mut rules = Vec::new();
    for (dir, verdict, list, name) in lists {
        let list = ctx.list(&format!("{field}.{name}"), list.as_ref())?;
        if !list.is_empty() {
            match dir {
                Direction::Ingress => selects.ingress = true,
                Direction::Egress => selects.egress = true,
            }
        }
        for (f, r) in list {
            let r: PeerRule = ctx.typed(&f, r)?;
            rules.push(peer_rule(ctx, id, dir, verdict, &f, &r)?);
        }
    }
    let dd: Option<DefaultDeny> = ctx.opt(
        &format!("{field}.enableDefaultDeny"),
        rs.enable_default_deny.as_ref(),
    )?;
    if let Some(dd) = dd {
        selects.ingress = dd.ingress.unwrap_or(selects.ingress);
        selects.egress = dd.egress.unwrap_or(selects.egress);
    }
    Ok(PolicySpec {
        subject,
        selects,
        rules,
    })
}

fn peer_rule(
    ctx: &Ctx,
    id: &PolicyRef,
    dir: Direction,
    verdict: Verdict,
    field: &str,
    r: &PeerRule,
) -> Result<Rule, PolicyError> {
    let (peers_field, peers, wrong) = match dir {
        Direction::Ingress => (
            "fromEndpoints",
            &r.from_endpoints,
            r.to_endpoints.is_some().then_some("toEndpoints"),
        ),
        Direction::Egress => (
            "toEndpoints",
            &r.to_endpoints,
            r.from_endpoints.is_some().then_some("fromEndpoints"),
        ),
    };
    if let Some(w) = wrong {
        return Err(ctx.err(
            &format!("{field}.{w}"),
            format!("is not a field of this rule; this direction's peers are `{peers_field}`"),
        ));
    }
    ctx.no_extra(field, &r.extra, &[peers_field, "toPorts"])?;

    let mut ports = Vec::new();
    for (f, pr) in ctx.list(&format!("{field}.toPorts"), r.to_ports.as_ref())? {
        let pr: PortRule = ctx.typed(&f, pr)?;
        ctx.no_extra(&f, &pr.extra, &["ports"])?;
        let list = ctx.list(&format!("{f}.ports"), pr.ports.as_ref())?;
        if list.is_empty() {
            return Err(ctx.err(
                &format!("{f}.ports"),
                "is empty; list the ports, or leave toPorts out to allow every port",
            ));
        }
        for (pf, p) in list {
            let p: PortYaml = ctx.typed(&pf, p)?;
            ctx.no_extra(&pf, &p.extra, &["port", "endPort", "protocol"])?;
            let port = port_number(ctx, &format!("{pf}.port"), p.port.as_ref(), true)?;
            let protos: &[u8] = match p.protocol.as_deref().unwrap_or("ANY") {
                "TCP" => &[PROTO_TCP],
                "UDP" => &[PROTO_UDP],
                "SCTP" => &[PROTO_SCTP],
                "ANY" if port == 0 => &[PROTO_ANY],
                "ANY" => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
                other => {
                    return Err(ctx.err(
                        &format!("{pf}.protocol"),
                        format!("{other:?} is not supported here; use TCP, UDP, SCTP or ANY"),
                    ))
                }
            };
            ports.extend(expand_ports(ctx, &pf, protos, port, p.end_port)?);
        }
    }
    let has_ports = !ports.is_empty();
    if !has_ports {
        ports.push(PortProto::ANY);
    }

    let peer_list = ctx.list(&format!("{field}.{peers_field}"), peers.as_ref())?;
    let peers = if !peer_list.is_empty() {
        let mut sels = Vec::new();
        for (f, s) in peer_list {
            let s: LabelSelectorYaml = ctx.typed(&f, s)?;
            let mut sel = selector(ctx, &f, &s)?;
            if !sel.mentions(NAMESPACE_LABEL) {
                sel = sel.with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));
            }
            sels.push(sel);
        }
        Peers::Selected(sels)
    } else if has_ports {
        // L4-only rule: these ports with any peer.
        Peers::Any
    } else {
        // `{}`: selects the endpoint in this direction, allows nothing.
        Peers::Selected(Vec::new())
    };
    Ok(Rule {
        direction: dir,
        verdict,
        peers,
        ports,
    })
}

fn selector(ctx: &Ctx, field: &str, s: &LabelSelectorYaml) -> Result<Selector, PolicyError> {
    s.to_selector(&cilium_key)
        .map_err(|(f, m)| ctx.err(&format!("{field}.{f}"), m))
}

/// Cilium label keys may carry a source prefix: `k8s:` and `any:` are
/// dropped (identities hold Kubernetes labels); others are refused, as are
/// namespace labels. Also the egress gateway policies' pod selectors.
pub fn cilium_key(k: &str) -> Result<String, String> {
    let plain = match k.split_once(':') {
        None => k,
        Some(("k8s" | "any", rest)) => rest,
        Some((source, _)) => {
            return Err(format!(
                "label source {source:?} is not supported; select by Kubernetes labels \
                 (no prefix, or k8s:/any:)"
            ))
        }
    };
    if plain.starts_with(NAMESPACE_LABELS_PREFIX) {
        return Err(format!(
            "namespace labels ({NAMESPACE_LABELS_PREFIX}*) are not supported: meshgate knows a \
             namespace only by its name; select it with {NAMESPACE_LABEL}"
        ));
    }
    Ok(plain.to_string())
}
