//! A short text of a parsed policy, for `meshgate policy check`.

use super::{
    icmp_type_name, Direction, FqdnMatch, Peers, Policy, PortProto, Verdict, ICMP_TYPE_BASE,
    PROTO_ANY, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// One line per subject and per rule:
///
/// ```text
/// CiliumNetworkPolicy shop/web
///   subject app=web,io.kubernetes.pod.namespace=shop; default deny: ingress, egress
///   ingress allow from [app=client,io.kubernetes.pod.namespace=shop] on 80/tcp
///   egress allow to [k8s-app=kube-dns,io.kubernetes.pod.namespace=kube-system] on 53/udp
///     DNS lookups limited to pattern *.example.com
///   egress allow to addresses of name api.example.com or pattern *.example.com on 443/tcp
/// ```
pub fn summary(p: &Policy) -> String {
    let mut out = format!("{}\n", p.id);
    for spec in &p.specs {
        let dirs: Vec<&str> = [
            (spec.selects.ingress, "ingress"),
            (spec.selects.egress, "egress"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        out.push_str(&format!(
            "  subject {}; default deny: {}\n",
            spec.subject,
            if dirs.is_empty() {
                "none".to_string()
            } else {
                dirs.join(", ")
            }
        ));
        for r in &spec.rules {
            let (dir, prep) = match r.direction {
                Direction::Ingress => ("ingress", "from"),
                Direction::Egress => ("egress", "to"),
            };
            let verdict = match r.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
            };
            let peers = match &r.peers {
                Peers::Any => "any peer".to_string(),
                Peers::Selected(s) if s.is_empty() => "no peer".to_string(),
                Peers::Selected(s) => s
                    .iter()
                    .map(|s| format!("[{s}]"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                Peers::Fqdns(names) => format!("addresses of {}", fqdns(names)),
            };
            out.push_str(&format!(
                "  {dir} {verdict} {prep} {peers} on {}\n",
                ports(&r.ports)
            ));
            if !r.dns.is_empty() {
                out.push_str(&format!("    DNS lookups limited to {}\n", fqdns(&r.dns)));
            }
        }
    }
    out
}

/// `name a.example.com or pattern *.example.com`.
fn fqdns(list: &[FqdnMatch]) -> String {
    list.iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_SCTP => "sctp".into(),
        PROTO_ICMP => "icmp".into(),
        n => format!("proto {n}"),
    }
}

/// Ports as text, consecutive ports of one protocol as a range.
pub fn ports(list: &[PortProto]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let pp = list[i];
        let mut j = i;
        while pp.port != 0
            && pp.proto != PROTO_ICMP
            && j + 1 < list.len()
            && list[j + 1].proto == pp.proto
            && u32::from(list[j + 1].port) == u32::from(list[j].port) + 1
        {
            j += 1;
        }
        parts.push(match (pp.proto, pp.port) {
            (PROTO_ANY, _) => "any port and protocol".into(),
            (PROTO_ICMP, 0) => "any icmp type".into(),
            (PROTO_ICMP, p) if p >= ICMP_TYPE_BASE => {
                let t = u8::try_from(p - ICMP_TYPE_BASE).unwrap_or(u8::MAX);
                match icmp_type_name(t) {
                    Some(name) => format!("icmp type {t} ({name})"),
                    None => format!("icmp type {t}"),
                }
            }
            (proto, 0) => format!("any {} port", proto_name(proto)),
            (proto, p) if j > i => format!("{p}-{}/{}", list[j].port, proto_name(proto)),
            (proto, p) => format!("{p}/{}", proto_name(proto)),
        });
        i = j + 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_subject_rules_and_ranges() {
        let p = super::super::testutil::parse(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 8000, endPort: 8002}, {protocol: UDP, port: 53}]
  - {}
"#,
        );
        let s = summary(&p[0]);
        assert_eq!(
            s,
            "NetworkPolicy shop/web\n  \
             subject app=web,io.kubernetes.pod.namespace=shop; default deny: ingress, egress\n  \
             egress allow to [app=db,io.kubernetes.pod.namespace=shop] on 8000-8002/tcp, 53/udp\n  \
             egress allow to any peer on any port and protocol\n"
        );
    }
}
