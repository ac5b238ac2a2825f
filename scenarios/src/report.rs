//! What the lab tells its user: the `up` summary and the `status` text
//! (egress gateway lines in [`egress`]).

mod egress;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use meshgate_model::service::GlobalService;

use crate::error::Result;
use crate::plan::ClusterPlan;
use crate::procs;
use crate::status::{self, short_key, AgentStatus};
use crate::world::record::{Component, WorldRecord};

/// One node in the `up` summary.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub cluster: String,
    pub node: String,
    pub backend: String,
    pub tunnel_ip: String,
    pub peers: usize,
    /// `cluster/node` of each peer and its handshake age.
    pub handshakes: Vec<(String, Option<u64>)>,
}

impl NodeRow {
    pub fn from_status(s: &AgentStatus) -> NodeRow {
        NodeRow {
            cluster: s.cluster.clone(),
            node: s.node.clone(),
            backend: s.backend.clone(),
            tunnel_ip: s.tunnel_ip.clone(),
            peers: s.peers.len(),
            handshakes: s
                .peers
                .iter()
                .map(|p| (format!("{}/{}", p.cluster, p.node), p.last_handshake_age_ms))
                .collect(),
        }
    }
}

/// The result of `up`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub world: String,
    pub nodes: Vec<NodeRow>,
    pub took: Duration,
}

pub(crate) fn age(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
        None => "never".to_string(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1}MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1}KiB", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "world {} is up: {} nodes, all handshakes done in {:.1} s",
            self.world,
            self.nodes.len(),
            self.took.as_secs_f64()
        )?;
        let mut rows = vec![[
            "CLUSTER",
            "NODE",
            "BACKEND",
            "TUNNEL IP",
            "PEERS",
            "HANDSHAKES",
        ]
        .map(String::from)
        .to_vec()];
        for n in &self.nodes {
            let hs: Vec<String> = n
                .handshakes
                .iter()
                .map(|(peer, ms)| format!("{peer} {}", age(*ms)))
                .collect();
            rows.push(vec![
                n.cluster.clone(),
                n.node.clone(),
                n.backend.clone(),
                n.tunnel_ip.clone(),
                n.peers.to_string(),
                hs.join(", "),
            ]);
        }
        f.write_str(&table(&rows))
    }
}

fn process_state(rec: &WorldRecord, component: &Component) -> String {
    match rec.process(component).and_then(|p| p.pid) {
        Some(pid) if procs::alive(pid) => format!("pid {pid} alive"),
        Some(pid) => format!("pid {pid} DEAD"),
        None => "stopped".to_string(),
    }
}

/// One line per service: global or local, affinity, backends per cluster.
pub fn service_lines(services: &BTreeMap<String, GlobalService>) -> Vec<String> {
    services
        .values()
        .map(|s| {
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for b in &s.backends {
                *per.entry(b.cluster.as_str()).or_default() += 1;
            }
            let per: Vec<String> = per.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let vip = s.vip.map(|v| format!(", vip {v}")).unwrap_or_default();
            format!(
                "  service {}: {}{}, affinity {}, {} backends ({}){vip}",
                s.key(),
                if s.global { "global" } else { "local" },
                if s.shared { "" } else { " (not shared)" },
                s.affinity.as_str(),
                s.backends.len(),
                per.join(", ")
            )
        })
        .collect()
}

/// The services as the first node of `c` that wrote `services.json` sees them.
fn cluster_services(c: &ClusterPlan, out: &mut Vec<String>) {
    if c.services.is_empty() {
        return;
    }
    #[derive(serde::Deserialize)]
    struct File {
        services: BTreeMap<String, GlobalService>,
    }
    let seen = c.nodes.iter().find_map(|n| {
        let text = std::fs::read_to_string(n.state_dir.join("services.json")).ok()?;
        let f: File = serde_json::from_str(&text).ok()?;
        Some((n.name.clone(), f.services))
    });
    match seen {
        Some((node, services)) => {
            out.push(format!("  services (as agent {node} has them):"));
            out.extend(
                service_lines(&services)
                    .into_iter()
                    .map(|l| format!("  {l}")),
            );
        }
        None => out.push("  services: no agent has written services.json yet".to_string()),
    }
}

fn cluster_text(rec: &WorldRecord, c: &ClusterPlan, out: &mut Vec<String>) {
    let d = Component::Discovery {
        cluster: c.name.clone(),
    };
    out.push(format!(
        "cluster {} (id {}, podCIDR {}, underlay {}): discovery {}:{} {}",
        c.name,
        c.id,
        c.pod_cidr,
        c.underlay,
        c.discovery.ip,
        c.discovery.port,
        process_state(rec, &d)
    ));
    for (k, r) in c.discovery_replicas().skip(1) {
        let d = Component::discovery(&c.name, k);
        out.push(format!(
            "  discovery-{k} {}:{} {}",
            r.ip,
            r.port,
            process_state(rec, &d)
        ));
    }
    if let Some(e) = &c.etcd {
        let d = Component::Etcd {
            cluster: c.name.clone(),
        };
        out.push(format!(
            "  etcd {}:{} {} (store of every replica)",
            e.ip,
            e.client_port,
            process_state(rec, &d)
        ));
    }
    cluster_services(c, out);
    for n in &c.nodes {
        let a = Component::Agent {
            cluster: c.name.clone(),
            node: n.name.clone(),
        };
        let state = process_state(rec, &a);
        match status::read(&n.state_dir.join("status.json")) {
            Ok(s) => {
                out.push(format!(
                    "  node {} ({}): agent {state}, backend {}, key {}, tunnel {}, discovery {}, \
                     ipcache {} entries",
                    n.name,
                    n.underlay_ip,
                    s.backend,
                    short_key(&s.public_key),
                    s.tunnel_ip,
                    if s.discovery_connected {
                        "connected"
                    } else {
                        "DISCONNECTED"
                    },
                    s.ipcache_entries,
                ));
                if let Some(d) = &s.datapath {
                    out.push(format!("    {}", datapath_line(d)));
                }
                out.extend(egress::egress_lines(s.egress.as_ref()));
                for g in &s.gateways {
                    let health: Vec<String> =
                        g.health.iter().map(|(n, h)| format!("{n} {h}")).collect();
                    out.push(format!(
                        "    cluster-gateway of {}: active {} ({})",
                        g.cluster,
                        g.active,
                        health.join(", ")
                    ));
                }
                for p in &s.peers {
                    out.push(format!(
                        "    peer {}/{} {}: handshake {}, tx {} rx {}",
                        p.cluster,
                        p.node,
                        p.endpoint,
                        if p.last_handshake_age_ms.is_some() {
                            format!("{} ago", age(p.last_handshake_age_ms))
                        } else {
                            "never".to_string()
                        },
                        bytes(p.tx_bytes),
                        bytes(p.rx_bytes)
                    ));
                }
            }
            Err(e) => out.push(format!(
                "  node {} ({}): agent {state}, no status: {e}",
                n.name, n.underlay_ip
            )),
        }
        if rec.plan.dns.is_some() {
            let proxy = Component::DnsProxy {
                cluster: c.name.clone(),
                node: n.name.clone(),
            };
            out.push(format!(
                "    dns proxy {}:{}: {}",
                crate::plan::dns::PROXY_ADDR,
                crate::plan::dns::DNS_PORT,
                process_state(rec, &proxy)
            ));
        }
    }
}

/// One line on a node's eBPF datapath: map size, attachments, drops per reason.
pub(crate) fn datapath_line(d: &meshgate_agent_status::DatapathStatus) -> String {
    let drops = if d.drops.is_empty() {
        "none".to_string()
    } else {
        d.drops
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let strict = if d.strict {
        format!(
            ", strict (strict-unencrypted drops {})",
            d.drops.get("strict-unencrypted").copied().unwrap_or(0)
        )
    } else {
        String::new()
    };
    let lb = if d.lb_frontends > 0 {
        format!(", {} service frontends", d.lb_frontends)
    } else {
        String::new()
    };
    let policy = match &d.policy {
        None => String::new(),
        Some(p) => format!(
            ", policy {} entries / {} identities selected{}{}",
            p.entries,
            p.selected,
            if p.applied { "" } else { " (not applied yet)" },
            p.last_error
                .as_ref()
                .map(|e| format!(" (last reload FAILED: {e})"))
                .unwrap_or_default()
        ),
    };
    let attach = if d.attach.is_empty() {
        String::new()
    } else {
        format!(" ({})", d.attach)
    };
    format!(
        "datapath ebpf{strict}: ipcache {} entries, {} attachments{attach}{lb}{policy}, drops: {drops}",
        d.ipcache_entries,
        d.attachments.len()
    )
}

/// The `status` text of a world.
pub fn status_text(rec: &WorldRecord) -> Result<String> {
    let mut out = vec![format!(
        "world {} (from {})",
        rec.plan.world,
        rec.scenario.display()
    )];
    for c in &rec.plan.clusters {
        cluster_text(rec, c, &mut out);
    }
    for x in &rec.plan.externals {
        let service = Component::External {
            name: x.name.clone(),
        };
        out.push(format!(
            "external {}: {}, service :{} {}",
            x.name,
            x.ip,
            crate::plan::EXTERNAL_PORT,
            process_state(rec, &service)
        ));
    }
    if let Some(d) = &rec.plan.dns {
        out.push(format!(
            "dns server {}:{} ({} names; pods' nameserver {}{}): {}",
            d.server,
            crate::plan::dns::DNS_PORT,
            d.records.len(),
            d.cluster_ip,
            d.min_ttl
                .map(|t| format!(", proxies' min TTL {t} s"))
                .unwrap_or_default(),
            process_state(rec, &Component::DnsServer)
        ));
    }
    Ok(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_table_lines_up() {
        let s = Summary {
            world: "one".into(),
            took: Duration::from_millis(2100),
            nodes: vec![NodeRow {
                cluster: "c1".into(),
                node: "n1".into(),
                backend: "userspace".into(),
                tunnel_ip: "100.64.4.1".into(),
                peers: 2,
                handshakes: vec![("c1/n2".into(), Some(400)), ("c1/n3".into(), None)],
            }],
        };
        let text = s.to_string();
        assert!(text.starts_with("world one is up: 1 nodes"), "{text}");
        assert!(
            text.contains("c1       n1    userspace  100.64.4.1  2      c1/n2 0.4s, c1/n3 never"),
            "{text}"
        );
    }

    #[test]
    fn service_lines_count_backends_per_cluster() {
        use meshgate_model::service::{Affinity, Backend};
        let b = |cluster: &str, ip: &str| Backend {
            cluster: cluster.into(),
            ip: ip.parse().expect("ip"),
            node: "n1".into(),
            name: "p".into(),
        };
        let web = GlobalService {
            vip: None,
            namespace: "default".into(),
            name: "web".into(),
            global: true,
            shared: true,
            affinity: Affinity::Local,
            ports: vec![],
            backends: vec![
                b("c1", "10.1.0.10"),
                b("c2", "10.2.0.10"),
                b("c2", "10.2.1.10"),
            ],
        };
        let web_again = web.clone();
        let lines = service_lines(&BTreeMap::from([(web.key(), web)]));
        assert_eq!(
            lines,
            vec!["  service default/web: global, affinity local, 3 backends (c1 1, c2 2)"]
        );
        let mut web = web_again;
        web.vip = Some("10.96.1.10".parse().expect("ip"));
        assert_eq!(
            service_lines(&BTreeMap::from([(web.key(), web)])),
            vec!["  service default/web: global, affinity local, 3 backends (c1 1, c2 2), vip 10.96.1.10"]
        );
    }

    #[test]
    fn datapath_line_names_drop_reasons() {
        let mut d = meshgate_agent_status::DatapathStatus {
            ipcache_entries: 4,
            attachments: vec!["from_pod@pod0".into()],
            ..Default::default()
        };
        assert_eq!(
            datapath_line(&d),
            "datapath ebpf: ipcache 4 entries, 1 attachments, drops: none"
        );
        d.attach = "tc".into();
        assert_eq!(
            datapath_line(&d),
            "datapath ebpf: ipcache 4 entries, 1 attachments (tc), drops: none"
        );
        d.policy = Some(meshgate_agent_status::PolicyStatus {
            entries: 12,
            selected: 3,
            applied: true,
            ..Default::default()
        });
        assert!(datapath_line(&d).contains("policy 12 entries / 3 identities selected, drops"));
        d.drops.insert("policy-ingress".into(), 3);
        d.drops.insert("unknown-source".into(), 1);
        assert!(
            datapath_line(&d).ends_with("drops: policy-ingress 3, unknown-source 1"),
            "{}",
            datapath_line(&d)
        );
        d.strict = true;
        d.drops.insert("strict-unencrypted".into(), 7);
        assert!(
            datapath_line(&d)
                .starts_with("datapath ebpf, strict (strict-unencrypted drops 7): ipcache 4"),
            "{}",
            datapath_line(&d)
        );
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(10), "10B");
        assert_eq!(bytes(2048), "2.0KiB");
        assert_eq!(bytes(3 << 20), "3.0MiB");
    }
}
