//! A one-line text of a parsed egress policy, for `meshgate policy check`.

use crate::EgressPolicy;

/// One line:
///
/// ```text
/// CiliumEgressGatewayPolicy/out: pods [app=web] or [kubernetes.io/metadata.name=shop] to 0.0.0.0/0 excluding 10.0.0.0/8 via nodes [egress=true] (egress IP 192.0.2.10)
/// CiliumEgressGatewayPolicy/api: [pods app=web] to 192.0.2.0/24 and addresses of name api.example.com or pattern *.example.com via nodes [egress=true] (default-route interface)
/// ```
pub fn summary(p: &EgressPolicy) -> String {
    let selectors: Vec<String> = p
        .selectors
        .iter()
        .map(|s| {
            let mut parts = Vec::new();
            if !s.pods.requirements.is_empty() || s.namespaces.is_none() {
                parts.push(format!("pods {}", s.pods));
            }
            if let Some(ns) = &s.namespaces {
                parts.push(format!("namespaces {ns}"));
            }
            if let Some(n) = &s.nodes {
                parts.push(format!("on nodes {n}"));
            }
            format!("[{}]", parts.join(" "))
        })
        .collect();
    let join = |v: &[ipnet::Ipv4Net]| {
        v.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut to = Vec::new();
    if !p.destinations.cidrs.is_empty() {
        to.push(join(&p.destinations.cidrs));
    }
    if !p.destinations.fqdns.is_empty() {
        let names: Vec<String> = p.destinations.fqdns.iter().map(|m| m.to_string()).collect();
        to.push(format!("addresses of {}", names.join(" or ")));
    }
    let mut out = format!(
        "CiliumEgressGatewayPolicy/{}: {} to {}",
        p.name,
        selectors.join(" or "),
        to.join(" and ")
    );
    if !p.destinations.excluded.is_empty() {
        out.push_str(&format!(" excluding {}", join(&p.destinations.excluded)));
    }
    let gateways: Vec<String> = p
        .gateways
        .iter()
        .map(|g| format!("nodes [{}] ({})", g.nodes, g.egress_ip))
        .collect();
    out.push_str(&format!(" via {}\n", gateways.join(" and ")));
    out
}
