//! One `CiliumEgressGatewayPolicy` document (cilium.io/v2) → [`EgressPolicy`].
//!
//! Read as Cilium writes it; every field that is not known or not supported
//! is refused with its path, never skipped. `metadata` is read for `name`
//! (required) and `namespace` (refused: the kind is cluster-scoped); its
//! other fields (labels, annotations, what the API server adds) do not
//! change what the policy does and are not read. A top-level `status` (as
//! `kubectl get -o yaml` prints it) is ignored likewise.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use meshgate_model::policy::{
    cilium_key, parse_label_selector, FqdnMatch, OtherDocument, Selector, NAMESPACE_LABELS_PREFIX,
    NAMESPACE_NAME_LABEL,
};
use serde_yaml::Value;

use crate::fields::{no_hint, shape, Ctx};
use crate::fqdn::NameMatch;
use crate::{
    Destinations, EgressIpSource, EgressPolicy, EndpointSelector, GatewaySpec, ParseError,
};

/// The apiVersion the kind is read in.
pub const API_VERSION: &str = "cilium.io/v2";

/// Reads one `CiliumEgressGatewayPolicy` document.
pub fn parse_document(doc: &OtherDocument<'_>) -> Result<EgressPolicy, ParseError> {
    let doc_err = |message: String| ParseError::Document {
        source_name: doc.source_name.to_string(),
        index: doc.index,
        message,
    };
    let top = doc
        .value
        .as_mapping()
        .ok_or_else(|| doc_err("is not a map of fields".into()))?;
    let meta = match doc.value.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(m)) => Some(m),
        Some(other) => {
            return Err(doc_err(format!(
                "CiliumEgressGatewayPolicy: metadata is {}, not a map",
                shape(other)
            )))
        }
    };
    let name = match meta.and_then(|m| m.get("name")) {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(doc_err(
                "CiliumEgressGatewayPolicy has no metadata.name; give it a name".into(),
            ))
        }
    };
    let ctx = Ctx {
        source_name: doc.source_name,
        index: doc.index,
        policy: &name,
    };
    if let Some(ns) = meta.and_then(|m| m.get("namespace")) {
        if !ns.is_null() {
            return Err(ctx.err(
                "metadata.namespace",
                "CiliumEgressGatewayPolicy is cluster-scoped and has no namespace; remove \
                 metadata.namespace (select the pods' namespaces with \
                 spec.selectors[].namespaceSelector)",
            ));
        }
    }
    let api = doc
        .value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api != API_VERSION {
        return Err(ctx.err(
            "apiVersion",
            format!("is {api:?}; CiliumEgressGatewayPolicy is read in version {API_VERSION}"),
        ));
    }
    ctx.only(
        "",
        top,
        &["apiVersion", "kind", "metadata", "spec", "status"],
        &no_hint,
    )?;
    let spec = ctx
        .map("spec", doc.value.get("spec"))?
        .ok_or_else(|| ctx.err("spec", "is missing"))?;
    ctx.only(
        "spec",
        spec,
        &[
            "selectors",
            "destinationCIDRs",
            "destinationFQDNs",
            "excludedCIDRs",
            "egressGateway",
            "egressGateways",
        ],
        &no_hint,
    )?;

    let mut selectors = Vec::new();
    for (f, s) in ctx.list("spec.selectors", spec.get("selectors"))? {
        selectors.push(endpoint_selector(&ctx, &f, s)?);
    }
    if selectors.is_empty() {
        return Err(ctx.err(
            "spec.selectors",
            "is missing or empty; give at least one selector (e.g. `- podSelector: \
             {matchLabels: {app: web}}`)",
        ));
    }

    let cidrs = cidr_list(&ctx, "spec.destinationCIDRs", spec.get("destinationCIDRs"))?;
    let fqdns = fqdn_list(&ctx, "spec.destinationFQDNs", spec.get("destinationFQDNs"))?;
    if cidrs.is_empty() && fqdns.is_empty() {
        return Err(ctx.err(
            "spec.destinationCIDRs",
            "is missing or empty; list the destinations to route through the gateway \
             (`0.0.0.0/0` for all), or the names in destinationFQDNs",
        ));
    }
    let excluded = cidr_list(&ctx, "spec.excludedCIDRs", spec.get("excludedCIDRs"))?;
    for (i, e) in excluded.iter().enumerate() {
        if cidrs.contains(e) {
            return Err(ctx.err(
                &format!("spec.excludedCIDRs[{i}]"),
                format!("{e} is also in destinationCIDRs; remove it from one of the lists"),
            ));
        }
    }

    let one = spec.get("egressGateway").filter(|v| !v.is_null());
    let many = spec.get("egressGateways").filter(|v| !v.is_null());
    let gateways = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                "spec",
                "gives both egressGateway and egressGateways; give one: egressGateway for one \
                 gateway group, egressGateways for several",
            ))
        }
        (None, None) => {
            return Err(ctx.err(
                "spec.egressGateway",
                "is missing; give egressGateway (with a nodeSelector) or egressGateways",
            ))
        }
        (Some(g), None) => vec![gateway(&ctx, "spec.egressGateway", g)?],
        (None, Some(list)) => {
            let items = ctx.list("spec.egressGateways", Some(list))?;
            if items.is_empty() {
                return Err(ctx.err(
                    "spec.egressGateways",
                    "is empty; list at least one gateway (each with a nodeSelector)",
                ));
            }
            items
                .into_iter()
                .map(|(f, g)| gateway(&ctx, &f, g))
                .collect::<Result<Vec<_>, _>>()?
        }
    };

    Ok(EgressPolicy {
        name,
        selectors,
        destinations: Destinations {
            cidrs,
            fqdns,
            excluded,
        },
        gateways,
    })
}

/// `destinationFQDNs`: `{matchName}` / `{matchPattern}` items, checked as
/// in `toFQDNs` ([`FqdnMatch`]); absent is none, an empty list is refused.
fn fqdn_list(ctx: &Ctx<'_>, field: &str, v: Option<&Value>) -> Result<Vec<NameMatch>, ParseError> {
    let items = ctx.list(field, v)?;
    if items.is_empty() && v.is_some_and(|v| !v.is_null()) {
        return Err(ctx.err(
            field,
            "is empty; list names (`- matchName: api.example.com`) or patterns \
             (`- matchPattern: \"*.example.com\"`), or remove it",
        ));
    }
    let mut out = Vec::new();
    for (f, item) in items {
        let m = ctx
            .map(&f, Some(item))?
            .ok_or_else(|| ctx.err(&f, "is empty; give matchName or matchPattern"))?;
        ctx.only(&f, m, &["matchName", "matchPattern"], &no_hint)?;
        let name_field = format!("{f}.matchName");
        let pattern_field = format!("{f}.matchPattern");
        let name = ctx.string(&name_field, m.get("matchName"))?;
        let pattern = ctx.string(&pattern_field, m.get("matchPattern"))?;
        let checked =
            match (name, pattern) {
                (Some(n), None) => {
                    FqdnMatch::name(&n).map_err(|e| ctx.err(&name_field, e.to_string()))?
                }
                (None, Some(p)) => {
                    FqdnMatch::pattern(&p).map_err(|e| ctx.err(&pattern_field, e.to_string()))?
                }
                (Some(_), Some(_)) => return Err(ctx.err(
                    &f,
                    "gives both matchName and matchPattern; give one per item (write two items)",
                )),
                (None, None) => {
                    return Err(ctx.err(
                        &f,
                        "gives neither matchName nor matchPattern (or an empty one); give one \
                     (`matchName: api.example.com`)",
                    ))
                }
            };
        let m = NameMatch::from(checked);
        if out.contains(&m) {
            return Err(ctx.err(&f, format!("{m} is listed twice; remove one")));
        }
        out.push(m);
    }
    Ok(out)
}

fn endpoint_selector(
    ctx: &Ctx<'_>,
    field: &str,
    v: &Value,
) -> Result<EndpointSelector, ParseError> {
    let m = ctx
        .map(field, Some(v))?
        .ok_or_else(|| ctx.err(field, "is empty; give podSelector and/or namespaceSelector"))?;
    ctx.only(
        field,
        m,
        &["podSelector", "namespaceSelector", "nodeSelector"],
        &no_hint,
    )?;
    let pods = label_selector(
        ctx,
        &format!("{field}.podSelector"),
        m.get("podSelector"),
        &pod_key,
    )?;
    let namespaces = label_selector(
        ctx,
        &format!("{field}.namespaceSelector"),
        m.get("namespaceSelector"),
        &namespace_key,
    )?;
    let nodes = label_selector(
        ctx,
        &format!("{field}.nodeSelector"),
        m.get("nodeSelector"),
        &plain_key,
    )?;
    if pods.is_none() && namespaces.is_none() {
        // As Cilium, which refuses a selector with neither.
        return Err(ctx.err(
            field,
            "has neither podSelector nor namespaceSelector; give one (`podSelector: {}` \
             selects every pod)",
        ));
    }
    Ok(EndpointSelector {
        pods: pods.unwrap_or_default(),
        namespaces,
        nodes,
    })
}

fn gateway(ctx: &Ctx<'_>, field: &str, v: &Value) -> Result<GatewaySpec, ParseError> {
    let m = ctx
        .map(field, Some(v))?
        .ok_or_else(|| ctx.err(field, "is empty; give it a nodeSelector"))?;
    ctx.only(
        field,
        m,
        &["nodeSelector", "egressIP", "interface"],
        &no_hint,
    )?;
    let nodes = label_selector(
        ctx,
        &format!("{field}.nodeSelector"),
        m.get("nodeSelector"),
        &plain_key,
    )?
    .ok_or_else(|| {
        ctx.err(
            &format!("{field}.nodeSelector"),
            "is required; select the gateway nodes by label (e.g. `matchLabels: \
                 {egress-gateway: \"true\"}`)",
        )
    })?;
    let ip_field = format!("{field}.egressIP");
    let ip = ctx.string(&ip_field, m.get("egressIP"))?;
    let interface = ctx.string(&format!("{field}.interface"), m.get("interface"))?;
    let egress_ip = match (ip, interface) {
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                field,
                "gives both egressIP and interface; give one: egressIP (an address the gateway \
                 node has) or interface (its first IPv4 address is used)",
            ))
        }
        (Some(ip), None) => match ip.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => EgressIpSource::Ip(a),
            Ok(IpAddr::V6(_)) => {
                return Err(ctx.err(
                    &ip_field,
                    format!("{ip} is IPv6; the mesh is IPv4 only: give an IPv4 address"),
                ))
            }
            Err(_) => {
                return Err(ctx.err(
                    &ip_field,
                    format!("{ip:?} is not an IP address; give an IPv4 address such as 192.0.2.10"),
                ))
            }
        },
        (None, Some(i)) => EgressIpSource::Interface(i),
        (None, None) => EgressIpSource::DefaultRoute,
    };
    Ok(GatewaySpec { nodes, egress_ip })
}

/// A label selector at `field`; `None` when absent.
fn label_selector(
    ctx: &Ctx<'_>,
    field: &str,
    v: Option<&Value>,
    key: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Option<Selector>, ParseError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    ctx.map(field, Some(v))?;
    parse_label_selector(v, key).map(Some).map_err(|e| {
        let path = if e.field.is_empty() {
            field.to_string()
        } else {
            format!("{field}.{}", e.field)
        };
        ctx.err(&path, e.message)
    })
}

fn cidr_list(ctx: &Ctx<'_>, field: &str, v: Option<&Value>) -> Result<Vec<Ipv4Net>, ParseError> {
    let mut out: Vec<Ipv4Net> = Vec::new();
    for (f, item) in ctx.list(field, v)? {
        let Value::String(s) = item else {
            return Err(ctx.err(&f, format!("is {}, not a CIDR string", shape(item))));
        };
        let net = match s.trim().parse::<IpNet>() {
            Ok(IpNet::V4(n)) => n,
            Ok(IpNet::V6(_)) => {
                return Err(ctx.err(
                    &f,
                    format!("{s} is IPv6; the mesh is IPv4 only: give IPv4 CIDRs"),
                ))
            }
            Err(_) if s.trim().parse::<IpAddr>().is_ok() => {
                return Err(ctx.err(
                    &f,
                    format!(
                        "{s:?} has no prefix length; write a CIDR ({}/32 for one address)",
                        s.trim()
                    ),
                ))
            }
            Err(_) => {
                return Err(ctx.err(
                    &f,
                    format!("{s:?} is not a CIDR; write one such as 192.0.2.0/24"),
                ))
            }
        };
        if net.trunc() != net {
            return Err(ctx.err(&f, format!("{net} has host bits set; use {}", net.trunc())));
        }
        if out.contains(&net) {
            return Err(ctx.err(&f, format!("{net} is listed twice; remove one")));
        }
        out.push(net);
    }
    Ok(out)
}

/// Pod selector keys: as in CiliumNetworkPolicy (`k8s:` / `any:` dropped,
/// other sources and namespace labels refused); the refusal of a namespace
/// label says where this kind selects namespaces.
fn pod_key(k: &str) -> Result<String, String> {
    cilium_key(k).map_err(|e| {
        if k.contains(NAMESPACE_LABELS_PREFIX) {
            format!("{e} here, or {NAMESPACE_NAME_LABEL} in namespaceSelector")
        } else {
            e
        }
    })
}

fn namespace_key(k: &str) -> Result<String, String> {
    if k == NAMESPACE_NAME_LABEL {
        Ok(k.to_string())
    } else {
        Err(format!(
            "namespace label {k:?} is not supported: meshgate knows a namespace only by its \
             name; select namespaces with {NAMESPACE_NAME_LABEL}"
        ))
    }
}

fn plain_key(k: &str) -> Result<String, String> {
    Ok(k.to_string())
}
