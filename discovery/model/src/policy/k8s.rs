//! Kubernetes `NetworkPolicy` (networking.k8s.io/v1) → [`Policy`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::peers::{cidr_selector, parse_cidr, read_selector};
use super::selector::{LabelSelectorYaml, Requirement, Selector};
use super::yaml::{expand_ports, port_number, Ctx};
use super::{
    Direction, Peers, Policy, PolicyError, PolicyRef, PolicySpec, PortProto, Rule, Selection,
    Verdict, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// The namespace label Kubernetes sets on every namespace: selecting it is
/// selecting the namespace's name ([`NAMESPACE_LABEL`]); other namespace
/// labels are the endpoints' `io.cilium.k8s.namespace.labels.<key>`.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

type Extra = BTreeMap<String, Value>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    pod_selector: Option<Value>,
    policy_types: Option<Value>,
    ingress: Option<Value>,
    egress: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct RuleYaml {
    from: Option<Value>,
    to: Option<Value>,
    ports: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerYaml {
    pod_selector: Option<Value>,
    namespace_selector: Option<Value>,
    ip_block: Option<Value>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortYaml {
    protocol: Option<String>,
    port: Option<Value>,
    end_port: Option<u32>,
    #[serde(flatten)]
    extra: Extra,
}

pub(crate) fn translate(
    ctx: &Ctx,
    id: PolicyRef,
    spec: Option<Value>,
) -> Result<Policy, PolicyError> {
    let spec = spec.ok_or_else(|| ctx.err("spec", "is missing"))?;
    let spec: Spec = ctx.typed("spec", spec)?;
    ctx.no_extra(
        "spec",
        &spec.extra,
        &["podSelector", "policyTypes", "ingress", "egress"],
    );
    let pod_selector: LabelSelectorYaml = ctx
        .opt("spec.podSelector", spec.pod_selector.as_ref())?
        .ok_or_else(|| {
            ctx.err(
                "spec.podSelector",
                "is required; use `podSelector: {}` to select every pod of the namespace",
            )
        })?;
    let subject = read_selector(ctx, "spec.podSelector", &pod_selector, &plain_key, true)?
        .with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));
    let ingress = ctx.list("spec.ingress", spec.ingress.as_ref())?;
    let egress = ctx.list("spec.egress", spec.egress.as_ref())?;

    let mut selects = Selection {
        ingress: true,
        egress: !egress.is_empty(),
    };
    if spec.policy_types.is_some() {
        selects = Selection::default();
        for (f, t) in ctx.list("spec.policyTypes", spec.policy_types.as_ref())? {
            match t.as_str() {
                Some("Ingress") => selects.ingress = true,
                Some("Egress") => selects.egress = true,
                _ => {
                    return Err(ctx.err(
                        &f,
                        format!(
                            "{} is not a policy type; use Ingress or Egress",
                            serde_yaml::to_string(&t).unwrap_or_default().trim()
                        ),
                    ))
                }
            }
        }
    }

    let mut rules = Vec::new();
    for (dir, list, name) in [
        (Direction::Ingress, ingress, "ingress"),
        (Direction::Egress, egress, "egress"),
    ] {
        if !list.is_empty() && !selects.get(dir) {
            ctx.report(ctx.err(
                &format!("spec.{name}"),
                format!(
                    "has rules but policyTypes does not list {}; add it, or remove the rules",
                    if dir == Direction::Ingress {
                        "Ingress"
                    } else {
                        "Egress"
                    }
                ),
            ));
        }
        for (f, r) in list {
            let r = ctx
                .typed::<RuleYaml>(&f, r)
                .and_then(|r| rule(ctx, &id, dir, &f, &r));
            if let Some(r) = ctx.attempt(r) {
                rules.push(r);
            }
        }
    }
    Ok(Policy {
        id,
        specs: vec![PolicySpec {
            subject,
            selects,
            rules,
        }],
    })
}

fn rule(
    ctx: &Ctx,
    id: &PolicyRef,
    dir: Direction,
    field: &str,
    r: &RuleYaml,
) -> Result<Rule, PolicyError> {
    let (peers_field, peers, wrong) = match dir {
        Direction::Ingress => ("from", &r.from, r.to.is_some().then_some("to")),
        Direction::Egress => ("to", &r.to, r.from.is_some().then_some("from")),
    };
    if let Some(w) = wrong {
        return Err(ctx.err(
            &format!("{field}.{w}"),
            format!("is not a field of this rule; this direction's peers are `{peers_field}`"),
        ));
    }
    ctx.no_extra(field, &r.extra, &[peers_field, "ports"]);
    let peers = ctx.list(&format!("{field}.{peers_field}"), peers.as_ref())?;
    let peers = if peers.is_empty() {
        Peers::Any
    } else {
        let mut sels = Vec::new();
        for (f, p) in peers {
            let p = ctx
                .typed::<PeerYaml>(&f, p)
                .and_then(|p| peer(ctx, id, &f, &p));
            if let Some(p) = ctx.attempt(p) {
                sels.push(p);
            }
        }
        Peers::Selected(sels)
    };
    let mut ports = Vec::new();
    for (f, p) in ctx.list(&format!("{field}.ports"), r.ports.as_ref())? {
        let p: PortYaml = ctx.typed(&f, p)?;
        ctx.no_extra(&f, &p.extra, &["protocol", "port", "endPort"]);
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => PROTO_TCP,
            "UDP" => PROTO_UDP,
            "SCTP" => PROTO_SCTP,
            other => {
                return Err(ctx.err(
                    &format!("{f}.protocol"),
                    format!("{other:?} is not a protocol here; use TCP, UDP or SCTP"),
                ))
            }
        };
        let port = port_number(ctx, &format!("{f}.port"), p.port.as_ref(), false)?;
        ports.extend(expand_ports(ctx, &f, &[proto], port, p.end_port)?);
    }
    if ports.is_empty() {
        ports.push(PortProto::ANY);
    }
    Ok(Rule {
        direction: dir,
        verdict: Verdict::Allow,
        peers,
        ports,
        dns: Vec::new(),
    })
}

fn peer(ctx: &Ctx, id: &PolicyRef, field: &str, p: &PeerYaml) -> Result<Selector, PolicyError> {
    ctx.no_extra(
        field,
        &p.extra,
        &["podSelector", "namespaceSelector", "ipBlock"],
    );
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(ctx.err(
                &format!("{field}.ipBlock"),
                "cannot be combined with podSelector or namespaceSelector in one peer (as in \
                 Kubernetes): write it as its own peer (`- ipBlock: ...`)",
            ));
        }
        return ip_block(ctx, &format!("{field}.ipBlock"), b);
    }
    let pod: Option<LabelSelectorYaml> =
        ctx.opt(&format!("{field}.podSelector"), p.pod_selector.as_ref())?;
    let ns: Option<LabelSelectorYaml> = ctx.opt(
        &format!("{field}.namespaceSelector"),
        p.namespace_selector.as_ref(),
    )?;
    let mut sel = match &pod {
        Some(s) => read_selector(ctx, &format!("{field}.podSelector"), s, &plain_key, false)?,
        None => Selector::all(),
    };
    match &ns {
        Some(ns) => {
            let nsel = read_selector(
                ctx,
                &format!("{field}.namespaceSelector"),
                ns,
                &namespace_key,
                false,
            )?;
            sel.requirements.extend(nsel.requirements);
        }
        None if pod.is_some() => {
            sel = sel.with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));
        }
        None => {
            return Err(ctx.err(
                field,
                "a peer needs podSelector and/or namespaceSelector (`podSelector: {}` is every \
                 pod of the policy's namespace), or ipBlock",
            ))
        }
    }
    Ok(sel)
}

#[derive(Debug, Deserialize)]
struct IpBlockYaml {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Extra,
}

/// `ipBlock`: the CIDR identities of `cidr` but its `except`s, as Cilium
/// reads it (world addresses, not pods).
fn ip_block(ctx: &Ctx, field: &str, v: &Value) -> Result<Selector, PolicyError> {
    let b: IpBlockYaml = ctx.typed(field, v.clone())?;
    ctx.no_extra(field, &b.extra, &["cidr", "except"]);
    let cidr = b.cidr.as_deref().ok_or_else(|| {
        ctx.err(
            &format!("{field}.cidr"),
            "is missing; give the prefix (`cidr: 10.0.0.0/8`)",
        )
    })?;
    let net = parse_cidr(cidr).map_err(|m| ctx.err(&format!("{field}.cidr"), m))?;
    let mut excepts = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let e = parse_cidr(e).map_err(|m| ctx.err(&f, m))?;
        if !net.contains(&e) {
            return Err(ctx.err(
                &f,
                format!(
                    "{e} is not inside cidr {net}: an except removes part of its cidr; fix the \
                     prefix, or write {e} as its own ipBlock"
                ),
            ));
        }
        excepts.push(e);
    }
    Ok(cidr_selector(&net, &excepts))
}

fn plain_key(k: &str) -> Result<String, String> {
    Ok(k.to_string())
}

/// Namespace label keys: the name label is the namespace's name; any other
/// is the endpoints' `io.cilium.k8s.namespace.labels.<key>`.
fn namespace_key(k: &str) -> Result<String, String> {
    if k == NAMESPACE_NAME_LABEL {
        Ok(NAMESPACE_LABEL.to_string())
    } else {
        Ok(format!("{NAMESPACE_LABELS_PREFIX}{k}"))
    }
}
