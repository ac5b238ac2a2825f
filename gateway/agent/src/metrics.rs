//! Prometheus metrics on `--metrics-addr` (off unless given): a small
//! hand-written text exposition (format 0.0.4) over a minimal HTTP/1.1
//! server, `GET /metrics` only. The figures come from the agent's status
//! (peers, ipcache, discovery), the pinned drop counters of the eBPF
//! datapath and the flow event reader.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::status::AgentStatus;
use anyhow::Context;
use meshgate_ebpf::layout::Counter;
use meshgate_ebpf::{Maps, Reason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use super::observe::Observer;
use super::Agent;

/// The figures of the eBPF datapath, when it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathFigures {
    /// Every drop reason (zero ones too), packets and bytes.
    pub drops: BTreeMap<Reason, Counter>,
    pub events_lost: u64,
    /// Entries in the pinned `mg_policy` map.
    pub policy_entries: usize,
    /// Events read from the ring buffer by this agent, by verdict.
    pub events_allowed: u64,
    pub events_denied: u64,
    /// Events read but discarded by the agent (its resolve queue was full).
    pub events_overflow: u64,
    pub observe_clients: usize,
}

/// `meshgate_policy_warnings{kind}`: the policy files' warnings by kind
/// (every kind, zero ones too, so an alert can watch for any).
fn policy_warnings(o: &mut Out, p: &crate::status::PolicyStatus) {
    let name = "meshgate_policy_warnings";
    o.family(
        name,
        "gauge",
        "Warnings of the policy files as last read, by kind (see `meshgate policy check`).",
    );
    for kind in meshgate_model::policy::WarningKind::ALL.map(|k| k.as_str()) {
        let n = p.warnings.iter().filter(|w| w.kind == kind).count();
        o.sample(name, &[("kind", kind)], n);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The exposition text. Pure: the status and figures are read by the caller.
pub fn render(status: &AgentStatus, dp: Option<&DatapathFigures>) -> String {
    let mut o = Out(String::new());
    o.family(
        "meshgate_agent_info",
        "gauge",
        "The agent's node, cluster, WireGuard backend and datapath (always 1).",
    );
    o.sample(
        "meshgate_agent_info",
        &[
            ("cluster", &status.cluster),
            ("node", &status.node),
            ("backend", &status.backend),
            ("datapath", if dp.is_some() { "ebpf" } else { "plain" }),
        ],
        1,
    );
    o.one(
        "meshgate_discovery_connected",
        "gauge",
        "1 while the agent's watch stream to discovery is up.",
        u8::from(status.discovery_connected),
    );
    o.one(
        "meshgate_ipcache_entries",
        "gauge",
        "Endpoints (IP -> identity) in the agent's ipcache.",
        status.ipcache_entries,
    );
    o.one(
        "meshgate_identities",
        "gauge",
        "Identities whose labels the agent knows.",
        status.identities,
    );
    o.one(
        "meshgate_key_rotations_total",
        "counter",
        "WireGuard key rotations since the agent started.",
        status.key_rotations,
    );
    if let Some(off) = &status.offloads {
        o.family(
            "meshgate_userspace_offload",
            "gauge",
            "1 for each offload the userspace WireGuard datapath uses, 0 for one it does not.",
        );
        for (kind, on) in [
            ("tun_tso", off.tun_tso),
            ("tun_uso", off.tun_uso),
            ("tun_gro", off.tun_gro),
            ("udp_gso", off.udp_gso_segments > 1),
            ("udp_gro", off.udp_gro),
        ] {
            o.sample(
                "meshgate_userspace_offload",
                &[("kind", kind)],
                u8::from(on),
            );
        }
        o.one(
            "meshgate_userspace_udp_gso_segments",
            "gauge",
            "Datagrams one UDP send carries at most (1: no GSO).",
            off.udp_gso_segments,
        );
    }
    o.one(
        "meshgate_wireguard_peers",
        "gauge",
        "WireGuard peers configured.",
        status.peers.len(),
    );
    let peer = |p: &crate::status::PeerStatus| format!("{}/{}", p.cluster, p.node);
    o.family(
        "meshgate_wireguard_peer_last_handshake_seconds",
        "gauge",
        "Seconds since the last completed handshake with a peer (absent: none yet).",
    );
    for p in &status.peers {
        if let Some(ms) = p.last_handshake_age_ms {
            o.sample(
                "meshgate_wireguard_peer_last_handshake_seconds",
                &[("peer", &peer(p))],
                ms as f64 / 1000.0,
            );
        }
    }
    for (name, help, get) in [
        (
            "meshgate_wireguard_peer_tx_bytes_total",
            "Bytes sent to a peer through the tunnel.",
            (|p| p.tx_bytes) as fn(&crate::status::PeerStatus) -> u64,
        ),
        (
            "meshgate_wireguard_peer_rx_bytes_total",
            "Bytes received from a peer through the tunnel.",
            |p| p.rx_bytes,
        ),
    ] {
        o.family(name, "counter", help);
        for p in &status.peers {
            o.sample(name, &[("peer", &peer(p))], get(p));
        }
    }
    if let Some(e) = &status.egress {
        egress(&mut o, e);
    }
    let Some(dp) = dp else {
        return o.0;
    };
    if let Some(d) = &status.datapath {
        o.one(
            "meshgate_datapath_ipcache_entries",
            "gauge",
            "Endpoint entries in the eBPF datapath's mg_ipcache map.",
            d.ipcache_entries,
        );
        o.one(
            "meshgate_datapath_node_entries",
            "gauge",
            "Node address entries (host, remote-node) in the eBPF datapath's mg_ipcache map.",
            d.node_entries,
        );
        if let Some(p) = &d.policy {
            policy_warnings(&mut o, p);
        }
    }
    o.one(
        "meshgate_policy_entries",
        "gauge",
        "Entries in the eBPF datapath's mg_policy map.",
        dp.policy_entries,
    );
    o.family(
        "meshgate_drops_total",
        "counter",
        "Packets dropped by the eBPF datapath, per reason (pinned: survives agent restarts).",
    );
    for (r, c) in &dp.drops {
        o.sample(
            "meshgate_drops_total",
            &[("reason", &r.to_string())],
            c.packets,
        );
    }
    o.family(
        "meshgate_drop_bytes_total",
        "counter",
        "Bytes of the packets dropped by the eBPF datapath, per reason.",
    );
    for (r, c) in &dp.drops {
        o.sample(
            "meshgate_drop_bytes_total",
            &[("reason", &r.to_string())],
            c.bytes,
        );
    }
    o.one(
        "meshgate_flow_events_lost_total",
        "counter",
        "Flow events the datapath could not put in the full ring buffer.",
        dp.events_lost,
    );
    o.one(
        "meshgate_flow_events_overflow_total",
        "counter",
        "Flow events read from the ring buffer but discarded because the agent's queue was full.",
        dp.events_overflow,
    );
    o.family(
        "meshgate_flow_events_total",
        "counter",
        "Flow events this agent read from the ring buffer, per verdict.",
    );
    o.sample(
        "meshgate_flow_events_total",
        &[("verdict", crate::flow::ALLOWED)],
        dp.events_allowed,
    );
    o.sample(
        "meshgate_flow_events_total",
        &[("verdict", crate::flow::DENIED)],
        dp.events_denied,
    );
    o.one(
        "meshgate_observe_clients",
        "gauge",
        "`meshgate observe` clients connected.",
        dp.observe_clients,
    );
    o.0
}

/// Egress gateway policies: each gateway's usability and flows.
fn egress(o: &mut Out, e: &crate::status::EgressStatus) {
    type Gateway = crate::status::EgressGatewayStatus;
    for (name, help, get) in [
        (
            "meshgate_egress_gateway_up",
            "1 while an egress gateway of a policy is usable for new flows (has its egress IP, is up).",
            (|g| u64::from(g.usable)) as fn(&Gateway) -> u64,
        ),
        (
            "meshgate_egress_gateway_flows",
            "Flows of this node's pods through an egress gateway (seen within a minute).",
            |g| g.flows,
        ),
    ] {
        o.family(name, "gauge", help);
        for p in &e.policies {
            for g in &p.gateways {
                o.sample(name, &[("policy", &p.name), ("gateway", &g.node)], get(g));
            }
        }
    }
    o.family(
        "meshgate_egress_policy_endpoints",
        "gauge",
        "This node's endpoints an egress gateway policy selects.",
    );
    for p in &e.policies {
        o.sample(
            "meshgate_egress_policy_endpoints",
            &[("policy", &p.name)],
            p.endpoints,
        );
    }
}

/// Reads the pinned drop counters (opened once, on first use).
struct Counters {
    maps_dir: PathBuf,
    maps: Mutex<Option<Maps>>,
}

impl Counters {
    fn read(&self) -> anyhow::Result<(BTreeMap<Reason, Counter>, u64, usize)> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if maps.is_none() {
            *maps = Some(Maps::open_pinned(&self.maps_dir).with_context(|| {
                format!("opening the pinned maps in {}", self.maps_dir.display())
            })?);
        }
        let Some(m) = maps.as_ref() else {
            anyhow::bail!("no maps");
        };
        let mut drops = BTreeMap::new();
        for r in Reason::ALL.iter().copied().filter(|r| *r != Reason::None) {
            drops.insert(r, m.drops.get(r)?);
        }
        Ok((drops, m.drops.events_lost()?, m.policy.len()))
    }
}

fn gather(agent: &Agent, counters: Option<&Counters>, observer: Option<&Observer>) -> String {
    let status = super::persist::status(agent);
    let dp = counters.map(|c| {
        let (drops, events_lost, policy_entries) = c.read().unwrap_or_else(|e| {
            debug!(error = %format!("{e:#}"), "reading drop counters failed");
            Default::default()
        });
        DatapathFigures {
            drops,
            events_lost,
            policy_entries,
            events_allowed: observer.map_or(0, |o| o.allowed.load(Ordering::Relaxed)),
            events_denied: observer.map_or(0, |o| o.denied.load(Ordering::Relaxed)),
            events_overflow: observer.map_or(0, |o| o.overflow.load(Ordering::Relaxed)),
            observe_clients: observer.map_or(0, |o| o.clients.load(Ordering::Relaxed)),
        }
    });
    render(&status, dp.as_ref())
}

/// Serves the metrics on `addr` (when the agent has `--metrics-addr`).
pub async fn start(agent: Arc<Agent>, observer: Option<Arc<Observer>>) -> anyhow::Result<()> {
    let Some(addr) = agent.cfg.metrics_addr else {
        return Ok(());
    };
    let counters = agent.datapath.get().map(|_| {
        Arc::new(Counters {
            maps_dir: agent.cfg.bpf_pin_dir.join("maps"),
            maps: Mutex::new(None),
        })
    });
    let render = move || gather(&agent, counters.as_deref(), observer.as_deref());
    let listener = bind(addr).await?;
    tokio::spawn(serve(listener, Arc::new(render)));
    Ok(())
}

/// Serves `render`'s text on `addr` (for the DNS proxy's metrics too).
pub async fn spawn_server(addr: SocketAddr, render: Render) -> anyhow::Result<()> {
    let listener = bind(addr).await?;
    tokio::spawn(serve(listener, render));
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr).await.with_context(|| {
        format!("serving metrics on --metrics-addr {addr} (is the port taken? give another)")
    })?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(l)
}

pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let r = render.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, r).await {
                debug!(error = %e, "metrics request failed");
            }
        });
    }
}

/// The request line of an HTTP request (`GET /metrics HTTP/1.1`): method and path.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split_whitespace();
    let method = parts.next()?;
    let path = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some((method, path))
}

async fn answer(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read_head = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::Error::other("request head not read within 5 s"))??;
    let head = String::from_utf8_lossy(&buf);
    let (status, ctype, body) = match request_line(&head) {
        Some(("GET", path)) if path == "/metrics" || path.starts_with("/metrics?") => {
            let r = render.clone();
            let body = tokio::task::spawn_blocking(move || r())
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        Some(("GET", _)) => (
            "404 Not Found",
            "text/plain",
            "meshgate serves metrics on /metrics\n".to_string(),
        ),
        Some(_) => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".to_string(),
        ),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::status::{DatapathStatus, PeerStatus};

    fn status() -> AgentStatus {
        serde_json::from_value(serde_json::json!({
            "node": "n1", "cluster": "c1", "cluster_id": 1, "backend": "userspace",
            "public_key": "k", "tunnel_ip": "100.64.0.1", "underlay_ip": "198.18.1.10",
            "listen_port": 51820, "pod_cidr": "10.1.0.0/24", "discovery_connected": true,
            "pid": 1, "updated_unix_ms": 0, "key_rotations": 2, "peers": [],
            "ipcache_entries": 4, "identities": 2
        }))
        .unwrap()
    }

    /// Parses the text format: `name{labels} value` -> value, checking
    /// every sample belongs to a family declared with HELP and TYPE first.
    pub(crate) fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut declared = std::collections::BTreeSet::new();
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split_whitespace();
                declared.insert(p.next().unwrap().to_string());
                assert!(matches!(p.next(), Some("counter" | "gauge")), "{line}");
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap();
            let family = key.split('{').next().unwrap();
            assert!(declared.contains(family), "{family} has no TYPE: {line}");
            out.insert(key.to_string(), value.parse().unwrap());
        }
        out
    }

    #[test]
    fn userspace_offloads_are_exposed() {
        let mut s = status();
        assert!(!render(&s, None).contains("meshgate_userspace_offload"));
        s.offloads = Some(crate::status::OffloadStatus {
            tun_tso: true,
            tun_uso: false,
            tun_gro: true,
            udp_gso_segments: 64,
            udp_gro: true,
        });
        let m = parse(&render(&s, None));
        assert_eq!(m["meshgate_userspace_offload{kind=\"tun_tso\"}"], 1.0);
        assert_eq!(m["meshgate_userspace_offload{kind=\"tun_uso\"}"], 0.0);
        assert_eq!(m["meshgate_userspace_offload{kind=\"udp_gso\"}"], 1.0);
        assert_eq!(m["meshgate_userspace_udp_gso_segments"], 64.0);
    }

    #[test]
    fn egress_gateways_are_exposed_per_policy() {
        use crate::status::{EgressGatewayStatus, EgressPolicyStatus, EgressStatus};
        let mut s = status();
        s.egress = Some(EgressStatus {
            policies: vec![EgressPolicyStatus {
                name: "egress-client".into(),
                endpoints: 2,
                gateways: vec![
                    EgressGatewayStatus {
                        node: "c1/g1".into(),
                        egress_ip: Some("203.0.113.50".into()),
                        health: "up".into(),
                        usable: true,
                        problem: None,
                        flows: 7,
                    },
                    EgressGatewayStatus {
                        node: "c1/g2".into(),
                        egress_ip: None,
                        health: "down".into(),
                        usable: false,
                        problem: Some("down".into()),
                        flows: 0,
                    },
                ],
            }],
            ..Default::default()
        });
        let m = parse(&render(&s, None));
        let k = |f: &str, g: &str| format!("{f}{{policy=\"egress-client\",gateway=\"{g}\"}}");
        assert_eq!(m[&k("meshgate_egress_gateway_up", "c1/g1")], 1.0);
        assert_eq!(m[&k("meshgate_egress_gateway_up", "c1/g2")], 0.0);
        assert_eq!(m[&k("meshgate_egress_gateway_flows", "c1/g1")], 7.0);
        assert_eq!(
            m["meshgate_egress_policy_endpoints{policy=\"egress-client\"}"],
            2.0
        );
        assert!(!parse(&render(&status(), None))
            .keys()
            .any(|k| k.starts_with("meshgate_egress")));
    }

    #[test]
    fn policy_warnings_are_counted_by_kind() {
        use crate::status::{PolicyStatus, PolicyWarningStatus};
        let mut s = status();
        s.datapath = Some(DatapathStatus {
            policy: Some(PolicyStatus {
                warnings: vec![
                    PolicyWarningStatus {
                        kind: "never-matches".into(),
                        warning: "p.yaml: CiliumNetworkPolicy a/b: spec: ...".into(),
                    };
                    2
                ],
                ..Default::default()
            }),
            ..Default::default()
        });
        let m = parse(&render(&s, Some(&DatapathFigures::default())));
        assert_eq!(m["meshgate_policy_warnings{kind=\"never-matches\"}"], 2.0);
        assert_eq!(m["meshgate_policy_warnings{kind=\"deprecated\"}"], 0.0);
    }

    #[test]
    fn exposition_has_every_family_and_parses() {
        let mut s = status();
        s.peers.push(PeerStatus {
            node: "n\"2".into(),
            cluster: "c1".into(),
            public_key: String::new(),
            endpoint: String::new(),
            allowed_ips: vec![],
            last_handshake_age_ms: Some(1500),
            last_rx_age_ms: Some(100),
            tx_bytes: 10,
            rx_bytes: 20,
        });
        let plain = parse(&render(&s, None));
        assert_eq!(plain["meshgate_discovery_connected"], 1.0);
        assert_eq!(plain["meshgate_ipcache_entries"], 4.0);
        assert_eq!(plain["meshgate_wireguard_peers"], 1.0);
        assert_eq!(
            plain["meshgate_wireguard_peer_last_handshake_seconds{peer=\"c1/n\\\"2\"}"],
            1.5
        );
        assert_eq!(
            plain["meshgate_wireguard_peer_rx_bytes_total{peer=\"c1/n\\\"2\"}"],
            20.0
        );
        assert!(!plain.keys().any(|k| k.starts_with("meshgate_drops_total")));

        s.datapath = Some(DatapathStatus {
            ipcache_entries: 3,
            ..Default::default()
        });
        let mut dp = DatapathFigures {
            events_lost: 7,
            events_denied: 5,
            policy_entries: 11,
            ..Default::default()
        };
        for r in Reason::ALL.iter().filter(|r| **r != Reason::None) {
            dp.drops.insert(*r, Counter::default());
        }
        dp.drops.insert(
            Reason::SourceSpoofed,
            Counter {
                packets: 5,
                bytes: 420,
            },
        );
        let m = parse(&render(&s, Some(&dp)));
        assert_eq!(m["meshgate_drops_total{reason=\"source-spoofed\"}"], 5.0);
        assert_eq!(
            m["meshgate_drop_bytes_total{reason=\"source-spoofed\"}"],
            420.0
        );
        assert_eq!(m["meshgate_drops_total{reason=\"policy-ingress\"}"], 0.0);
        assert_eq!(m["meshgate_flow_events_lost_total"], 7.0);
        assert_eq!(m["meshgate_flow_events_total{verdict=\"denied\"}"], 5.0);
        assert_eq!(m["meshgate_datapath_ipcache_entries"], 3.0);
        assert_eq!(m["meshgate_policy_entries"], 11.0);
        assert_eq!(
            m.keys()
                .filter(|k| k.starts_with("meshgate_drops_total{"))
                .count(),
            Reason::ALL.len() - 1
        );
    }

    #[tokio::test]
    async fn a_real_http_request_gets_the_text_format() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = render(&status(), None);
        tokio::spawn(serve(listener, Arc::new(move || text.clone())));
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let resp = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert_eq!(parse(body)["meshgate_identities"], 2.0);
        let resp = get("GET / HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        let resp = get("POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    }
}
