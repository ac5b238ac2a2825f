//! `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy` (cilium.io/v2)
//! → [`Policy`]: endpoint, entity and CIDR peers (`peers.rs`), `toPorts`
//! and `icmps` (`icmp.rs`), `fromRequires` / `toRequires`, deny rules,
//! `toFQDNs` peers and `toPorts[].rules.dns` (see `fqdn_list`); the L7
//! `http` / `kafka` rules as [`super::L7Mode`] says.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::peers::{
    cidr_selector, cilium_key_any, entity, names_namespace, never_given, parse_cidr, read_selector,
    Entity,
};
use super::selector::{LabelSelectorYaml, Requirement, Selector};
use super::yaml::{expand_ports, port_number, Ctx};
use super::{
    Direction, FqdnMatch, L7Mode, Peers, Policy, PolicyError, PolicyKind, PolicyRef, PolicySpec,
    PortProto, Rule, Selection, Verdict, WarningKind, NAMESPACE_LABEL, PROTO_ANY, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP,
};

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

#[derive(Debug, Deserialize)]
struct CidrRuleYaml {
    cidr: Option<String>,
    except: Option<Value>,
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
            format!("is missing (a {} has spec or specs)", id.kind),
        ));
    }
    let mut out = Vec::new();
    for (field, value) in parts {
        let spec = ctx
            .typed::<RuleSpec>(&field, value)
            .and_then(|rs| rule_spec(ctx, &id, &field, &rs));
        if let Some(s) = ctx.attempt(spec) {
            out.push(s);
        }
    }
    Ok(Policy { id, specs: out })
}

/// True for a cluster-scoped policy.
fn clusterwide(id: &PolicyRef) -> bool {
    id.kind == PolicyKind::CiliumClusterwideNetworkPolicy
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
    );
    let es_field = format!("{field}.endpointSelector");
    let es: LabelSelectorYaml = ctx
        .opt(&es_field, rs.endpoint_selector.as_ref())?
        .ok_or_else(|| {
            ctx.err(
                &es_field,
                if clusterwide(id) {
                    "is required; use `endpointSelector: {}` for every endpoint of every namespace"
                } else {
                    "is required; use `endpointSelector: {}` for every endpoint of the namespace"
                },
            )
        })?;
    let subject = subject(ctx, id, &es_field, &es)?;
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
        let Some(list) = ctx.attempt(ctx.list(&format!("{field}.{name}"), list.as_ref())) else {
            continue;
        };
        if !list.is_empty() {
            match dir {
                Direction::Ingress => selects.ingress = true,
                Direction::Egress => selects.egress = true,
            }
        }
        let mut parsed = Vec::new();
        for (f, r) in list {
            let r = ctx
                .typed::<Extra>(&f, r)
                .and_then(|r| peer_rule(ctx, id, dir, verdict, &f, r));
            if let Some(r) = ctx.attempt(r) {
                parsed.push(r);
            }
        }
        // `fromRequires` / `toRequires`: ANDed onto the endpoint selectors
        // of every rule of this list (as Cilium does).
        let requires: Vec<Requirement> = parsed
            .iter()
            .flat_map(|p| p.requires.iter().cloned())
            .collect();
        for p in parsed {
            rules.push(p.finish(&requires));
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

/// The subject selector: a `CiliumNetworkPolicy`'s is scoped to its
/// namespace (a namespace named in it that is not the policy's is
/// overridden, as Cilium does, with a warning); a clusterwide one's is
/// taken as written.
fn subject(
    ctx: &Ctx,
    id: &PolicyRef,
    field: &str,
    es: &LabelSelectorYaml,
) -> Result<Selector, PolicyError> {
    let sel = read_selector(ctx, field, es, &cilium_key_any, true)?;
    if clusterwide(id) {
        return Ok(sel);
    }
    let own = BTreeMap::from([(NAMESPACE_LABEL.to_string(), id.namespace.clone())]);
    let mut out = Selector::all();
    for r in sel.requirements {
        if r.key == NAMESPACE_LABEL && !r.matches(&own) {
            ctx.warn(
                WarningKind::NamespaceOverridden,
                field,
                format!(
                    "selects on {NAMESPACE_LABEL} ({}), which the policy's own namespace {:?} \
                     does not match: a CiliumNetworkPolicy selects endpoints of its own \
                     namespace only, so this requirement is overridden (as Cilium does); put \
                     the policy in that namespace, or use a CiliumClusterwideNetworkPolicy",
                    Selector {
                        requirements: vec![r.clone()]
                    },
                    id.namespace
                ),
            );
            continue;
        }
        out.requirements.push(r);
    }
    if !out.mentions(NAMESPACE_LABEL) {
        out = out.with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));
    }
    Ok(out)
}

/// The names of one direction's fields.
struct Names {
    endpoints: &'static str,
    entities: &'static str,
    cidr: &'static str,
    cidr_set: &'static str,
    requires: &'static str,
}

const FROM: Names = Names {
    endpoints: "fromEndpoints",
    entities: "fromEntities",
    cidr: "fromCIDR",
    cidr_set: "fromCIDRSet",
    requires: "fromRequires",
};
const TO: Names = Names {
    endpoints: "toEndpoints",
    entities: "toEntities",
    cidr: "toCIDR",
    cidr_set: "toCIDRSet",
    requires: "toRequires",
};

/// A rule read, before the list's requirements are added.
struct ParsedRule {
    direction: Direction,
    verdict: Verdict,
    /// Endpoint selectors (`fromRequires` applies to these).
    endpoints: Vec<Selector>,
    /// Entity and CIDR selectors.
    others: Vec<Selector>,
    /// `all` entity.
    all: bool,
    /// Some L3 peer field was given.
    has_l3: bool,
    fqdns: Option<Vec<FqdnMatch>>,
    ports: Vec<PortProto>,
    has_ports: bool,
    dns: Vec<FqdnMatch>,
    requires: Vec<Requirement>,
}

impl ParsedRule {
    fn finish(self, requires: &[Requirement]) -> Rule {
        let peers = if let Some(names) = self.fqdns {
            Peers::Fqdns(names)
        } else if self.all {
            Peers::Any
        } else if self.has_l3 {
            let mut sels: Vec<Selector> = self
                .endpoints
                .into_iter()
                .map(|mut s| {
                    s.requirements.extend(requires.iter().cloned());
                    s
                })
                .collect();
            sels.extend(self.others);
            Peers::Selected(sels)
        } else if self.has_ports {
            // L4-only rule: these ports with any peer.
            Peers::Any
        } else {
            // `{}`: selects the endpoint in this direction, allows nothing.
            Peers::Selected(Vec::new())
        };
        Rule {
            direction: self.direction,
            verdict: self.verdict,
            peers,
            ports: self.ports,
            dns: self.dns,
        }
    }
}

fn peer_rule(
    ctx: &Ctx,
    id: &PolicyRef,
    dir: Direction,
    verdict: Verdict,
    field: &str,
    mut r: Extra,
) -> Result<ParsedRule, PolicyError> {
    let (mine, theirs) = match dir {
        Direction::Ingress => (&FROM, &TO),
        Direction::Egress => (&TO, &FROM),
    };
    for (wrong, right) in [
        (theirs.endpoints, mine.endpoints),
        (theirs.entities, mine.entities),
        (theirs.cidr, mine.cidr),
        (theirs.cidr_set, mine.cidr_set),
        (theirs.requires, mine.requires),
    ] {
        if r.remove(wrong).is_some() {
            ctx.report(ctx.err(
                &format!("{field}.{wrong}"),
                format!("is not a field of this rule; this direction's field is `{right}`"),
            ));
        }
    }
    let take = |r: &mut Extra, k: &str| r.remove(k).filter(|v| !v.is_null());
    let endpoints_v = take(&mut r, mine.endpoints);
    let entities_v = take(&mut r, mine.entities);
    let cidr_v = take(&mut r, mine.cidr);
    let cidr_set_v = take(&mut r, mine.cidr_set);
    let requires_v = take(&mut r, mine.requires);
    let fqdns_v = take(&mut r, "toFQDNs");
    let ports_v = take(&mut r, "toPorts");
    let icmps_v = take(&mut r, "icmps");
    let known: &[&str] = match dir {
        Direction::Ingress => &[
            "fromEndpoints",
            "fromEntities",
            "fromCIDR",
            "fromCIDRSet",
            "fromRequires",
            "toPorts",
            "icmps",
        ],
        Direction::Egress => &[
            "toEndpoints",
            "toEntities",
            "toCIDR",
            "toCIDRSet",
            "toRequires",
            "toFQDNs",
            "toPorts",
            "icmps",
        ],
    };
    ctx.no_extra(field, &r, known);

    let mut out = ParsedRule {
        direction: dir,
        verdict,
        endpoints: Vec::new(),
        others: Vec::new(),
        all: false,
        has_l3: false,
        fqdns: None,
        ports: Vec::new(),
        has_ports: false,
        dns: Vec::new(),
        requires: Vec::new(),
    };

    // An empty list is no peer field (as in Cilium).
    let nonempty = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|v| v.as_sequence())
            .is_some_and(|s| !s.is_empty())
    };
    out.has_l3 = nonempty(&endpoints_v)
        || nonempty(&entities_v)
        || nonempty(&cidr_v)
        || nonempty(&cidr_set_v);
    if let Some(v) = fqdns_v {
        let f = format!("{field}.toFQDNs");
        match (dir, verdict) {
            (Direction::Ingress, _) => ctx.report(ctx.err(
                &f,
                "is not a field of an ingress rule: FQDN peers are egress destinations \
                 (toFQDNs in `egress`)",
            )),
            (Direction::Egress, Verdict::Deny) => ctx.report(ctx.err(
                &f,
                "is not supported in deny rules (Cilium does not support toFQDNs in \
                 egressDeny either): allow the names you want in `egress` instead, and the \
                 rest stays denied",
            )),
            (Direction::Egress, Verdict::Allow) if out.has_l3 => ctx.report(ctx.err(
                &f,
                "cannot be combined with toEndpoints, toEntities or toCIDR/toCIDRSet in one \
                 rule (as in Cilium, toFQDNs is the rule's only L3 peer): write them as two \
                 egress rules",
            )),
            (Direction::Egress, Verdict::Allow) => {
                out.fqdns = ctx.attempt(fqdn_list(ctx, &f, &v));
            }
        }
    }

    // Endpoints.
    for (f, s) in ctx
        .attempt(ctx.list(&format!("{field}.{}", mine.endpoints), endpoints_v.as_ref()))
        .unwrap_or_default()
    {
        let sel = ctx
            .typed::<LabelSelectorYaml>(&f, s)
            .and_then(|s| peer_selector(ctx, id, &f, &s));
        if let Some(sel) = ctx.attempt(sel) {
            out.endpoints.push(sel);
        }
    }

    // Entities.
    for (f, e) in ctx
        .attempt(ctx.list(&format!("{field}.{}", mine.entities), entities_v.as_ref()))
        .unwrap_or_default()
    {
        let Some(name) = e.as_str() else {
            ctx.report(ctx.err(&f, "is not an entity name; write e.g. `world`"));
            continue;
        };
        match entity(name) {
            Ok(Entity::All) => out.all = true,
            Ok(Entity::Selectors(s)) => {
                if let Some(why) = never_given(name) {
                    ctx.warn(WarningKind::NeverMatches, &f, why);
                }
                out.others.extend(s)
            }
            Ok(Entity::Nothing(m)) => ctx.warn(WarningKind::NeverMatches, &f, m),
            Err(m) => ctx.report(ctx.err(&f, m)),
        }
    }

    // CIDRs.
    for (f, c) in ctx
        .attempt(ctx.list(&format!("{field}.{}", mine.cidr), cidr_v.as_ref()))
        .unwrap_or_default()
    {
        match c.as_str().map(parse_cidr) {
            Some(Ok(net)) => out.others.push(cidr_selector(&net, &[])),
            Some(Err(m)) => ctx.report(ctx.err(&f, m)),
            None => ctx.report(ctx.err(&f, "is not a CIDR; write e.g. `10.0.0.0/8`")),
        }
    }
    for (f, c) in ctx
        .attempt(ctx.list(&format!("{field}.{}", mine.cidr_set), cidr_set_v.as_ref()))
        .unwrap_or_default()
    {
        let sel = ctx
            .typed::<CidrRuleYaml>(&f, c)
            .and_then(|c| cidr_rule(ctx, &f, &c));
        if let Some(sel) = ctx.attempt(sel) {
            out.others.push(sel);
        }
    }

    // Requirements.
    if let Some(v) = requires_v {
        let f = format!("{field}.{}", mine.requires);
        ctx.warn(
            WarningKind::Deprecated,
            &f,
            format!(
                "is deprecated in Cilium; it is enforced here (its requirements are added to \
                 every {} selector of this spec's {} rules), but prefer writing the \
                 requirements into those selectors",
                mine.endpoints,
                match (dir, verdict) {
                    (Direction::Ingress, Verdict::Allow) => "ingress",
                    (Direction::Ingress, Verdict::Deny) => "ingressDeny",
                    (Direction::Egress, Verdict::Allow) => "egress",
                    (Direction::Egress, Verdict::Deny) => "egressDeny",
                }
            ),
        );
        for (sf, s) in ctx.attempt(ctx.list(&f, Some(&v))).unwrap_or_default() {
            let sel = ctx
                .typed::<LabelSelectorYaml>(&sf, s)
                .and_then(|s| read_selector(ctx, &sf, &s, &cilium_key_any, false));
            if let Some(sel) = ctx.attempt(sel) {
                out.requires.extend(sel.requirements);
            }
        }
    }

    // Ports and ICMP types: alternatives (a packet matching either passes).
    for (f, pr) in ctx
        .attempt(ctx.list(&format!("{field}.toPorts"), ports_v.as_ref()))
        .unwrap_or_default()
    {
        let r = ctx
            .typed::<PortRule>(&f, pr)
            .and_then(|pr| port_rule(ctx, dir, verdict, &f, &pr, &mut out));
        ctx.attempt(r);
    }
    if let Some(v) = icmps_v {
        if let Some(list) = ctx.attempt(super::icmp::icmps(ctx, &format!("{field}.icmps"), &v)) {
            out.has_ports |= !list.is_empty();
            out.ports.extend(list);
        }
    }
    if out.ports.is_empty() {
        out.ports.push(PortProto::ANY);
    }
    Ok(out)
}

/// One `toPorts` item into `out`.
fn port_rule(
    ctx: &Ctx,
    dir: Direction,
    verdict: Verdict,
    f: &str,
    pr: &PortRule,
    out: &mut ParsedRule,
) -> Result<(), PolicyError> {
    ctx.no_extra(f, &pr.extra, &["ports", "rules"]);
    if let Some(rules) = &pr.rules {
        if let Some(dns) = ctx.attempt(l7_rules(ctx, dir, verdict, &format!("{f}.rules"), rules)) {
            out.dns.extend(dns);
        }
    }
    let list = ctx.list(&format!("{f}.ports"), pr.ports.as_ref())?;
    if list.is_empty() {
        return Err(ctx.err(
            &format!("{f}.ports"),
            "is empty; list the ports, or leave toPorts out to allow every port",
        ));
    }
    for (pf, p) in list {
        let r = ctx.typed::<PortYaml>(&pf, p).and_then(|p| {
            ctx.no_extra(&pf, &p.extra, &["port", "endPort", "protocol"]);
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
                        format!(
                            "{other:?} is not supported here; use TCP, UDP, SCTP or ANY (ICMP \
                             types go in the rule's `icmps`)"
                        ),
                    ))
                }
            };
            expand_ports(ctx, &pf, protos, port, p.end_port)
        });
        if let Some(list) = ctx.attempt(r) {
            out.has_ports = true;
            out.ports.extend(list);
        }
    }
    Ok(())
}

/// A `fromEndpoints` / `toEndpoints` selector: without a namespace
/// requirement (and naming no reserved label), a `CiliumNetworkPolicy`'s
/// is limited to the policy's namespace, as in Cilium; a clusterwide
/// policy's reaches every namespace.
fn peer_selector(
    ctx: &Ctx,
    id: &PolicyRef,
    field: &str,
    s: &LabelSelectorYaml,
) -> Result<Selector, PolicyError> {
    let sel = read_selector(ctx, field, s, &cilium_key_any, false)?;
    if clusterwide(id) || names_namespace(&sel) || super::peers::selects_non_endpoints(&sel) {
        return Ok(sel);
    }
    if let Some(r) = sel
        .requirements
        .iter()
        .find(|r| r.key.starts_with(NAMESPACE_LABELS_PREFIX))
    {
        ctx.warn(
            WarningKind::NamespaceScoped,
            field,
            format!(
                "selects namespaces by label ({}) but names no namespace, so, as in Cilium, it \
                 only matches endpoints of the policy's own namespace {:?}; to match every \
                 namespace with that label, add `matchExpressions: [{{key: \
                 k8s:{NAMESPACE_LABEL}, operator: Exists}}]`, or use a \
                 CiliumClusterwideNetworkPolicy",
                r.key, id.namespace
            ),
        );
    }
    Ok(sel.with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace)))
}

/// One `toCIDRSet` item: `cidr` but its `except`s (each inside it).
fn cidr_rule(ctx: &Ctx, field: &str, c: &CidrRuleYaml) -> Result<Selector, PolicyError> {
    ctx.no_extra(field, &c.extra, &["cidr", "except"]);
    let text = c.cidr.as_deref().ok_or_else(|| {
        ctx.err(
            &format!("{field}.cidr"),
            "is missing; give the prefix (`cidr: 10.0.0.0/8`)",
        )
    })?;
    let net = parse_cidr(text).map_err(|m| ctx.err(&format!("{field}.cidr"), m))?;
    let mut excepts = Vec::new();
    for (f, e) in ctx.list(&format!("{field}.except"), c.except.as_ref())? {
        let Some(e) = e.as_str() else {
            ctx.report(ctx.err(&f, "is not a CIDR; write e.g. `10.1.0.0/16`"));
            continue;
        };
        let e = match parse_cidr(e) {
            Ok(e) => e,
            Err(m) => {
                ctx.report(ctx.err(&f, m));
                continue;
            }
        };
        if !net.contains(&e) {
            ctx.report(ctx.err(
                &f,
                format!(
                    "{e} is not inside cidr {net}: an except removes part of its cidr; fix the \
                     prefix, or write {e} as its own entry"
                ),
            ));
            continue;
        }
        if e == net {
            ctx.warn(
                WarningKind::NeverMatches,
                &f,
                format!("excludes the whole of {net}, so this entry matches nothing"),
            );
        }
        if !excepts.contains(&e) {
            excepts.push(e);
        }
    }
    Ok(cidr_selector(&net, &excepts))
}

/// `toPorts[].rules` at `field`: DNS rules (`dns`) on egress allow rules;
/// `http` / `kafka` (L7) as [`L7Mode`] says; anything else refused.
fn l7_rules(
    ctx: &Ctx,
    dir: Direction,
    verdict: Verdict,
    field: &str,
    rules: &Value,
) -> Result<Vec<FqdnMatch>, PolicyError> {
    let m: Extra = ctx.typed(field, rules.clone())?;
    if verdict == Verdict::Deny {
        let f = match m.keys().next() {
            Some(k) => format!("{field}.{k}"),
            None => field.to_string(),
        };
        return Err(ctx.err(
            &f,
            "is not supported in deny rules (Cilium has no L7 deny rules): deny the ports, or \
             allow the requests you want in an allow rule",
        ));
    }
    let mut dns = None;
    for (k, v) in &m {
        let kf = format!("{field}.{k}");
        match k.as_str() {
            "dns" => dns = Some(v),
            "http" | "kafka" | "l7proto" | "l7" => match ctx.opts.l7 {
                L7Mode::Refuse => ctx.report(ctx.err(
                    &kf,
                    "is not supported: L7 rules other than DNS are not enforced by meshgate; \
                     remove them, or read the policy with `--l7 ignore` to enforce its L3/L4 \
                     part only",
                )),
                L7Mode::Ignore => ctx.warn(
                    WarningKind::L7NotEnforced,
                    &kf,
                    "is not enforced (--l7 ignore): the rule's L3/L4 part is, so every \
                     request on these ports from these peers is allowed",
                ),
            },
            _ => ctx.report(ctx.err(
                &kf,
                "is not a rule meshgate knows; rules are dns (enforced), http and kafka (L7: \
                 refused, or ignored with `--l7 ignore`)",
            )),
        }
    }
    let Some(v) = dns else {
        if m.is_empty() {
            return Err(ctx.err(
                field,
                "is empty; give `dns:` with the names the subjects may look up, or remove `rules`",
            ));
        }
        return Ok(Vec::new());
    };
    let dns_field = format!("{field}.dns");
    if v.is_null() {
        return Err(ctx.err(
            &dns_field,
            "is empty; list the names the subjects may look up, or remove `rules`",
        ));
    }
    match dir {
        Direction::Ingress => Err(ctx.err(
            &dns_field,
            "is not supported on ingress: DNS rules say which names the subjects may look up, \
             so they go on egress rules (towards the DNS server)",
        )),
        Direction::Egress => fqdn_list(ctx, &dns_field, v),
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
        ctx.no_extra(&f, &y.extra, &["matchName", "matchPattern"]);
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

/// Cilium label keys may carry a source prefix: `k8s:` and `any:` are
/// dropped (identities hold Kubernetes labels); others are refused, as are
/// namespace labels. The egress gateway policies' pod selectors use it
/// (identity policies read more: `peers::cilium_key_any`).
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
