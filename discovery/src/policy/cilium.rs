//! The L3/L4 part of `CiliumNetworkPolicy` (cilium.io/v2) → [`Policy`],
//! with its `toFQDNs` peers and `toPorts[].rules.dns` (see `fqdn_rules`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::selector::{LabelSelectorYaml, Requirement, Selector};
use super::yaml::{expand_ports, port_number, Ctx};
use super::{
    Direction, FqdnMatch, Peers, Policy, PolicyError, PolicyRef, PolicySpec, PortProto, Rule,
    Selection, Verdict, NAMESPACE_LABEL, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
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
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Value>,
    to_ports: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct PortRule {
    ports: Option<Value>,
    rules: Option<Value>,
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
    let fqdns = match (dir, verdict, &r.to_fqdns) {
        (_, _, None) => None,
        (Direction::Ingress, _, Some(_)) => {
            return Err(ctx.err(
                &format!("{field}.toFQDNs"),
                "is not a field of an ingress rule: FQDN peers are egress destinations \
                 (toFQDNs in `egress`)",
            ))
        }
        (Direction::Egress, Verdict::Deny, Some(_)) => {
            return Err(ctx.err(
                &format!("{field}.toFQDNs"),
                "is not supported in deny rules (Cilium does not support toFQDNs in \
                 egressDeny either): allow the names you want in `egress` instead, and the \
                 rest stays denied",
            ))
        }
        (Direction::Egress, Verdict::Allow, Some(v)) => {
            if r.to_endpoints.is_some() {
                return Err(ctx.err(
                    &format!("{field}.toFQDNs"),
                    "cannot be combined with toEndpoints in one rule (as in Cilium, toFQDNs \
                     is the rule's only L3 peer): write them as two egress rules",
                ));
            }
            let list = fqdn_list(ctx, &format!("{field}.toFQDNs"), v)?;
            Some(list)
        }
    };
    let known: &[&str] = match dir {
        Direction::Ingress => &[peers_field, "toPorts"],
        Direction::Egress => &[peers_field, "toFQDNs", "toPorts"],
    };
    ctx.no_extra(field, &r.extra, known)?;

    let mut ports = Vec::new();
    let mut dns = Vec::new();
    for (f, pr) in ctx.list(&format!("{field}.toPorts"), r.to_ports.as_ref())? {
        let pr: PortRule = ctx.typed(&f, pr)?;
        ctx.no_extra(&f, &pr.extra, &["ports", "rules"])?;
        if let Some(rules) = &pr.rules {
            dns.extend(dns_rules(ctx, dir, verdict, &format!("{f}.rules"), rules)?);
        }
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
    let peers = if let Some(names) = fqdns {
        Peers::Fqdns(names)
    } else if !peer_list.is_empty() {
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
        dns,
    })
}

/// `toPorts[].rules` at `field`: DNS rules (`dns`) on egress allow rules;
/// other L7 rules are refused with their field.
fn dns_rules(
    ctx: &Ctx,
    dir: Direction,
    verdict: Verdict,
    field: &str,
    rules: &Value,
) -> Result<Vec<FqdnMatch>, PolicyError> {
    let m: Extra = ctx.typed(field, rules.clone())?;
    if let Some(k) = m.keys().find(|k| k.as_str() != "dns") {
        return Err(ctx.err(
            &format!("{field}.{k}"),
            "is not supported: L7 rules other than DNS are not enforced by meshgate; remove \
             them (L3/L4 toPorts.ports and rules.dns are supported)",
        ));
    }
    let Some(v) = m.get("dns").filter(|v| !v.is_null()) else {
        return Err(ctx.err(
            field,
            "is empty; give `dns:` with the names the subjects may look up, or remove `rules`",
        ));
    };
    let dns_field = format!("{field}.dns");
    match (dir, verdict) {
        (Direction::Ingress, _) => Err(ctx.err(
            &dns_field,
            "is not supported on ingress: DNS rules say which names the subjects may look up, \
             so they go on egress rules (towards the DNS server)",
        )),
        (Direction::Egress, Verdict::Deny) => Err(ctx.err(
            &dns_field,
            "is not supported in deny rules (Cilium has no L7 deny rules): list the names \
             allowed in an `egress` rule instead",
        )),
        (Direction::Egress, Verdict::Allow) => fqdn_list(ctx, &dns_field, v),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FqdnYaml {
    match_name: Option<String>,
    match_pattern: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

/// A non-empty list of `{matchName}` / `{matchPattern}` at `field`, each
/// checked ([`FqdnMatch`]).
fn fqdn_list(ctx: &Ctx, field: &str, v: &Value) -> Result<Vec<FqdnMatch>, PolicyError> {
    let items = ctx.list(field, Some(v))?;
    if items.is_empty() {
        return Err(ctx.err(
            field,
            "is empty; list names (`- matchName: api.example.com`) or patterns \
             (`- matchPattern: \"*.example.com\"`)",
        ));
    }
    let mut out = Vec::new();
    for (f, item) in items {
        let y: FqdnYaml = ctx.typed(&f, item)?;
        ctx.no_extra(&f, &y.extra, &["matchName", "matchPattern"])?;
        let m =
            match (y.match_name, y.match_pattern) {
                (Some(n), None) => FqdnMatch::name(&n)
                    .map_err(|e| ctx.err(&format!("{f}.matchName"), e.to_string()))?,
                (None, Some(p)) => FqdnMatch::pattern(&p)
                    .map_err(|e| ctx.err(&format!("{f}.matchPattern"), e.to_string()))?,
                (Some(_), Some(_)) => return Err(ctx.err(
                    &f,
                    "gives both matchName and matchPattern; give one per item (write two items)",
                )),
                (None, None) => {
                    return Err(ctx.err(
                        &f,
                        "gives neither matchName nor matchPattern; give one (`matchName: \
                     api.example.com`)",
                    ))
                }
            };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
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
