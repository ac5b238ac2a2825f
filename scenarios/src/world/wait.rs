//! Waiting until every agent reports a handshake with every other node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::record::WorldRecord;
use crate::error::{LabError, Result};
use crate::procs;
use crate::report::NodeRow;
use crate::status::{self, AgentStatus};

/// A node without a handshake with a peer, and why.
struct Missing {
    line: String,
    logs: Vec<PathBuf>,
}

fn agent_log(rec: &WorldRecord, cluster: &str, node: &str) -> PathBuf {
    rec.plan
        .cluster(cluster)
        .and_then(|c| c.node(node))
        .map(|n| n.state_dir.join("agent.log"))
        .unwrap_or_default()
}

/// What is still missing; empty when every pair has a handshake.
fn missing(rec: &WorldRecord, statuses: &[(String, String, Option<AgentStatus>)]) -> Vec<Missing> {
    let mut out = Vec::new();
    for (cluster, node, st) in statuses {
        let me = agent_log(rec, cluster, node);
        let Some(st) = st else {
            out.push(Missing {
                line: format!("{cluster}/{node}: no status.json yet"),
                logs: vec![me],
            });
            continue;
        };
        for (pc, pn, _) in statuses {
            if (pc == cluster && pn == node)
                || !rec.plan.direct_peers(
                    (cluster.as_str(), node.as_str()),
                    (pc.as_str(), pn.as_str()),
                )
            {
                continue;
            }
            let peer = st.peers.iter().find(|p| &p.cluster == pc && &p.node == pn);
            let why = match peer {
                None => "peer not listed",
                // IPsec has no handshake: its SAs are set when the peer is.
                Some(p) if p.last_handshake_age_ms.is_none() && st.backend != "ipsec" => {
                    "listed, no handshake yet"
                }
                Some(_) => continue,
            };
            let mut logs = vec![me.clone(), agent_log(rec, pc, pn)];
            if peer.is_none() {
                if let Some(c) = rec.plan.cluster(cluster) {
                    logs.push(c.discovery.state_dir.join("discovery.log"));
                }
            }
            out.push(Missing {
                line: format!("{cluster}/{node} lacks a handshake with {pc}/{pn}: {why}"),
                logs,
            });
        }
    }
    out
}

fn read_all(rec: &WorldRecord) -> Vec<(String, String, Option<AgentStatus>)> {
    let mut out = Vec::new();
    for c in &rec.plan.clusters {
        for n in &c.nodes {
            let st = status::read(&n.state_dir.join("status.json")).ok();
            out.push((c.name.clone(), n.name.clone(), st));
        }
    }
    out
}

fn check_alive(rec: &WorldRecord) -> Result<()> {
    for p in &rec.processes {
        let Some(pid) = p.pid else { continue };
        if !procs::alive(pid) {
            return Err(LabError::ProcessDied {
                component: p.component.to_string(),
                pid,
                log: p.log.clone(),
                tail: procs::log_tail(&p.log, 10),
            });
        }
    }
    Ok(())
}

pub fn handshakes(rec: &WorldRecord, timeout: Duration) -> Result<Vec<NodeRow>> {
    let deadline = Instant::now() + timeout;
    loop {
        check_alive(rec)?;
        let statuses = read_all(rec);
        let gaps = missing(rec, &statuses);
        if gaps.is_empty() {
            return Ok(statuses
                .into_iter()
                .filter_map(|(_, _, st)| st.map(|s| NodeRow::from_status(&s)))
                .collect());
        }
        if Instant::now() >= deadline {
            let mut logs = String::new();
            if let Some(first) = gaps.first() {
                for log in &first.logs {
                    logs.push_str(&format!(
                        "last lines of {}:\n{}\n",
                        log.display(),
                        procs::log_tail(log, 10)
                    ));
                }
            }
            return Err(LabError::NoHandshake {
                timeout,
                missing: gaps.into_iter().map(|m| m.line).collect(),
                logs,
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
