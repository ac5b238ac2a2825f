//! The world's DNS on the system: the records file and the pods'
//! resolv.conf (written after the namespaces, removed by `down`), the
//! upstream server (started before the agents) and each node's DNS proxy
//! (started after its agent, which writes the proxy's policy file). The
//! plan side is `plan::dns`; the server itself `dns_server`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::record::{Component, ProcessRecord, WorldRecord};
use super::{spawn_recorded, wait_listening_on, Listen};
use crate::error::{LabError, Result};
use crate::plan::dns::{proxy_log, resolv_conf_path, DnsPlan, DNS_PORT, PROXY_ADDR, RESOLV_MARK};
use crate::plan::{ClusterPlan, NodePlan, Plan};

fn io(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

/// Writes the server's records file and every pod's resolv.conf.
pub(crate) fn write_files(plan: &Plan) -> Result<()> {
    let Some(dns) = &plan.dns else { return Ok(()) };
    std::fs::create_dir_all(&dns.dir).map_err(io(format!("creating {}", dns.dir.display())))?;
    let path = dns.records_file();
    let text = serde_json::to_string_pretty(&dns.records).map_err(|e| LabError::BadFile {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    let conf = dns.resolv_conf();
    for ns in plan.pod_namespaces() {
        let path = resolv_conf_path(ns);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        std::fs::write(&path, &conf).map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// Removes the resolv.conf the lab wrote for namespace `ns` (only a file
/// that starts with [`RESOLV_MARK`]) and its directory when that is then
/// empty. Returns whether it removed anything.
pub(crate) fn remove_resolv_conf(ns: &str) -> Result<bool> {
    let path = resolv_conf_path(ns);
    let ours = std::fs::read_to_string(&path)
        .map(|t| t.starts_with(RESOLV_MARK))
        .unwrap_or(false);
    if !ours {
        return Ok(false);
    }
    std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    if let Some(dir) = path.parent() {
        // Left alone when something else put files there.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(true)
}

/// Names under /etc/netns (namespaces with their own /etc files).
pub(crate) fn netns_etc_names() -> Vec<String> {
    std::fs::read_dir(crate::plan::dns::NETNS_ETC)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn server_record(dns: &DnsPlan) -> ProcessRecord {
    ProcessRecord {
        component: Component::DnsServer,
        netns: dns.netns.clone(),
        args: dns.server_args(),
        log: dns.server_log(),
        pid: None,
    }
}

/// Starts the upstream server and waits until it listens on UDP and TCP.
pub(crate) fn start_server(rec: &mut WorldRecord, bin: &Path, timeout: Duration) -> Result<()> {
    let Some(dns) = rec.plan.dns.clone() else {
        return Ok(());
    };
    let p = server_record(&dns);
    let (component, log) = (p.component.clone(), p.log.clone());
    let pid = spawn_recorded(rec, p, bin)?;
    let at = Listen {
        ip: dns.server,
        port: DNS_PORT,
        udp: true,
    };
    wait_listening_on(&component, pid, &log, at, timeout)
}

pub(crate) fn proxy_record(dns: &DnsPlan, c: &ClusterPlan, n: &NodePlan) -> ProcessRecord {
    ProcessRecord {
        component: Component::DnsProxy {
            cluster: c.name.clone(),
            node: n.name.clone(),
        },
        netns: n.netns.clone(),
        args: dns.proxy_args(n),
        log: proxy_log(n),
        pid: None,
    }
}

/// Starts every node's DNS proxy (after the agents) and waits until each
/// listens on [`PROXY_ADDR`]:53, UDP and TCP.
pub(crate) fn start_proxies(rec: &mut WorldRecord, bin: &Path, timeout: Duration) -> Result<()> {
    let Some(dns) = rec.plan.dns.clone() else {
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    let mut started = Vec::new();
    for c in rec.plan.clusters.clone() {
        for n in &c.nodes {
            let p = proxy_record(&dns, &c, n);
            let (component, log) = (p.component.clone(), p.log.clone());
            let pid = spawn_recorded(rec, p, bin)?;
            started.push((component, pid, log));
        }
    }
    for (component, pid, log) in started {
        let at = Listen {
            ip: PROXY_ADDR,
            port: DNS_PORT,
            udp: true,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        wait_listening_on(&component, pid, &log, at, left)?;
    }
    Ok(())
}
