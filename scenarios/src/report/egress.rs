//! The egress gateway lines of `lab status`: per node, each egress policy
//! with its gateways (health, usable, egress IP, flows) and the egress IPs
//! the node serves as a gateway. Only what the agent reports.

use meshgate_agent_status::{EgressGatewayStatus, EgressStatus};

fn gateway_text(g: &EgressGatewayStatus) -> String {
    let ip = g.egress_ip.as_deref().unwrap_or("no egress IP");
    let usable = match (&g.usable, &g.problem) {
        (true, _) => "usable".to_string(),
        (false, Some(p)) => format!("UNUSABLE: {p}"),
        (false, None) => "UNUSABLE".to_string(),
    };
    format!("{} {ip} {} {usable} {} flows", g.node, g.health, g.flows)
}

/// The node's egress lines (indented for a node block); none without an
/// egress section.
pub(crate) fn egress_lines(e: Option<&EgressStatus>) -> Vec<String> {
    let Some(e) = e else { return Vec::new() };
    let mut out: Vec<String> = e
        .policies
        .iter()
        .map(|p| {
            let gateways = if p.gateways.is_empty() {
                "no gateways".to_string()
            } else {
                p.gateways
                    .iter()
                    .map(gateway_text)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            format!(
                "    egress {} ({} endpoints here): {gateways}",
                p.name, p.endpoints
            )
        })
        .collect();
    if !e.serving.is_empty() {
        let serving: Vec<String> = e
            .serving
            .iter()
            .map(|(ip, iface)| format!("{ip} on {iface}"))
            .collect();
        out.push(format!("    egress gateway for: {}", serving.join(", ")));
    }
    out.extend(
        e.problems
            .iter()
            .map(|p| format!("    egress PROBLEM: {p}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_agent_status::EgressPolicyStatus;

    #[test]
    fn policies_gateways_and_serving_compactly() {
        assert!(egress_lines(None).is_empty());
        let gw = |node: &str, ip: Option<&str>, health: &str, usable: bool, flows: u64| {
            EgressGatewayStatus {
                node: node.into(),
                egress_ip: ip.map(str::to_string),
                health: health.into(),
                usable,
                problem: (!usable).then(|| "tunnel down".to_string()),
                flows,
            }
        };
        let e = EgressStatus {
            policies: vec![
                EgressPolicyStatus {
                    name: "egress-client".into(),
                    endpoints: 2,
                    gateways: vec![
                        gw("c1/g1", Some("203.0.113.50"), "up", true, 3),
                        gw("c1/g2", None, "down", false, 0),
                    ],
                },
                EgressPolicyStatus {
                    name: "empty".into(),
                    endpoints: 0,
                    gateways: vec![],
                },
            ],
            serving: [("203.0.113.50".to_string(), "eg0".to_string())].into(),
            problems: vec!["policy x: no gateway node matches".into()],
        };
        assert_eq!(
            egress_lines(Some(&e)),
            [
                "    egress egress-client (2 endpoints here): c1/g1 203.0.113.50 up usable 3 flows; \
                 c1/g2 no egress IP down UNUSABLE: tunnel down 0 flows",
                "    egress empty (0 endpoints here): no gateways",
                "    egress gateway for: 203.0.113.50 on eg0",
                "    egress PROBLEM: policy x: no gateway node matches",
            ]
        );
        assert!(egress_lines(Some(&EgressStatus::default())).is_empty());
    }
}
