//! Kubernetes `NetworkPolicy` (networking.k8s.io/v1) → [`Policy`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::selector::{LabelSelectorYaml, Requirement, Selector};
use super::yaml::{expand_ports, port_number, Ctx};
use super::{
    Direction, Peers, Policy, PolicyError, PolicyRef, PolicySpec, PortProto, Rule, Selection,
    Verdict, NAMESPACE_LABEL, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// The namespace label Kubernetes sets on every namespace: the only one
/// meshgate knows (identities carry the namespace name, not its labels).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

type Extra = BTreeMap<String, serde_yaml::Value>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    pod_selector: Option<LabelSelectorYaml>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RuleYaml>>,
    egress: Option<Vec<RuleYaml>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct RuleYaml {
    from: Option<Vec<PeerYaml>>,
    to: Option<Vec<PeerYaml>>,
    ports: Option<Vec<PortYaml>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerYaml {
    pod_selector: Option<LabelSelectorYaml>,
    namespace_selector: Option<LabelSelectorYaml>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortYaml {
    protocol: Option<String>,
    port: Option<serde_yaml::Value>,
    end_port: Option<u32>,
    #[serde(flatten)]
    extra: Extra,
}

pub(crate) fn translate(
    ctx: &Ctx,
    id: PolicyRef,
    spec: Option<serde_yaml::Value>,
) -> Result<Policy, PolicyError> {
    let spec = spec.ok_or_else(|| ctx.err("spec", "is missing"))?;
    let spec: Spec = ctx.typed("spec", spec)?;
    ctx.no_extra(
        "spec",
        &spec.extra,
        &["podSelector", "policyTypes", "ingress", "egress"],
    )?;
    let pod_selector = spec.pod_selector.as_ref().ok_or_else(|| {
        ctx.err(
            "spec.podSelector",
            "is required; use `podSelector: {}` to select every pod of the namespace",
        )
    })?;
    let subject = selector(ctx, "spec.podSelector", pod_selector, &plain_key)?
        .with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));

    let mut selects = Selection {
        ingress: true,
        egress: spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
    };
    if let Some(types) = &spec.policy_types {
        selects = Selection::default();
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => selects.ingress = true,
                "Egress" => selects.egress = true,
                other => {
                    return Err(ctx.err(
                        &format!("spec.policyTypes[{i}]"),
                        format!("{other:?} is not a policy type; use Ingress or Egress"),
                    ))
                }
            }
        }
    }

    let mut rules = Vec::new();
    for (dir, list, name) in [
        (Direction::Ingress, &spec.ingress, "ingress"),
        (Direction::Egress, &spec.egress, "egress"),
    ] {
        let list = list.as_deref().unwrap_or_default();
        if !list.is_empty() && !selects.get(dir) {
            return Err(ctx.err(
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
        for (i, r) in list.iter().enumerate() {
            rules.push(rule(ctx, &id, dir, &format!("spec.{name}[{i}]"), r)?);
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
    ctx.no_extra(field, &r.extra, &[peers_field, "ports"])?;
    let peers = match peers.as_deref() {
        None | Some([]) => Peers::Any,
        Some(list) => {
            let mut sels = Vec::new();
            for (i, p) in list.iter().enumerate() {
                sels.push(peer(ctx, id, &format!("{field}.{peers_field}[{i}]"), p)?);
            }
            Peers::Selected(sels)
        }
    };
    let mut ports = Vec::new();
    for (i, p) in r.ports.iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}]");
        ctx.no_extra(&f, &p.extra, &["protocol", "port", "endPort"])?;
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
    })
}

fn peer(ctx: &Ctx, id: &PolicyRef, field: &str, p: &PeerYaml) -> Result<Selector, PolicyError> {
    ctx.no_extra(field, &p.extra, &["podSelector", "namespaceSelector"])?;
    let mut sel = match &p.pod_selector {
        Some(s) => selector(ctx, &format!("{field}.podSelector"), s, &plain_key)?,
        None => Selector::all(),
    };
    match &p.namespace_selector {
        Some(ns) => {
            let nsel = selector(
                ctx,
                &format!("{field}.namespaceSelector"),
                ns,
                &namespace_key,
            )?;
            sel.requirements.extend(nsel.requirements);
        }
        None if p.pod_selector.is_some() => {
            sel = sel.with(Requirement::is_in(NAMESPACE_LABEL, &id.namespace));
        }
        None => {
            return Err(ctx.err(
                field,
                "a peer needs podSelector and/or namespaceSelector (`podSelector: {}` is every \
                 pod of the policy's namespace)",
            ))
        }
    }
    Ok(sel)
}

fn selector(
    ctx: &Ctx,
    field: &str,
    s: &LabelSelectorYaml,
    key: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Selector, PolicyError> {
    s.to_selector(key)
        .map_err(|(f, m)| ctx.err(&format!("{field}.{f}"), m))
}

fn plain_key(k: &str) -> Result<String, String> {
    Ok(k.to_string())
}

fn namespace_key(k: &str) -> Result<String, String> {
    if k == NAMESPACE_NAME_LABEL {
        Ok(NAMESPACE_LABEL.to_string())
    } else {
        Err(format!(
            "namespace label {k:?} is not supported: meshgate knows a namespace only by its \
             name; select namespaces with {NAMESPACE_NAME_LABEL}"
        ))
    }
}
