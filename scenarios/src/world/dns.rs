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

/// The name the readiness query asks for: in no zone, allowed by no rule.
const READY_NAME: &str = "lab-ready.meshgate.invalid.";

/// Waits until every pod of an eBPF node gets an answer from its node's
/// DNS proxy that is not SERVFAIL: the proxy knows the pod's identity
/// (from the pinned ipcache and the policy file its agent writes). A pod
/// whose first lookup came earlier would get SERVFAIL (a resolver retries;
/// a test must not). The query's name is in no zone and allowed by no
/// rule: it is REFUSED or answered NXDOMAIN, and writes nothing into the
/// datapath.
pub(crate) fn wait_answering(rec: &WorldRecord, timeout: Duration) -> Result<()> {
    let Some(dns) = &rec.plan.dns else {
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    for c in &rec.plan.clusters {
        if c.datapath != crate::scenario::Datapath::Ebpf {
            continue;
        }
        for n in &c.nodes {
            for p in &n.pods {
                loop {
                    let last = match ready_query(&p.netns, dns.cluster_ip) {
                        Ok(rcode) if rcode != SERVFAIL => break,
                        Ok(_) => "SERVFAIL (its identity unknown to the proxy)".to_string(),
                        Err(e) => e.to_string(),
                    };
                    if Instant::now() >= deadline {
                        return Err(LabError::Timeout {
                            what: format!(
                                "pod {}/{} on {}: DNS through {}:53 not answered ({last}); see {}",
                                c.name,
                                p.name,
                                n.name,
                                dns.cluster_ip,
                                proxy_log(n).display()
                            ),
                            timeout,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    Ok(())
}

/// RCODE 2.
const SERVFAIL: u8 = 2;

/// Sends [`READY_NAME`] from the namespace `netns` to `server`:53 and
/// returns the answer's RCODE. On a thread of its own, which enters the
/// namespace (setns moves only the calling thread).
fn ready_query(netns: &str, server: std::net::Ipv4Addr) -> std::io::Result<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::os::fd::AsRawFd;
    use std::str::FromStr;

    let name = Name::from_str(READY_NAME).map_err(std::io::Error::other)?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, RecordType::A));
    let query = m.to_vec().map_err(std::io::Error::other)?;
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<u8> {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on an open namespace file; it changes this
            // (scoped, short-lived) thread's network namespace only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_millis(500)))?;
            sock.send_to(&query, (server, DNS_PORT))?;
            let mut buf = [0u8; 512];
            loop {
                let (n, _) = sock.recv_from(&mut buf)?;
                if n >= 4 && buf[..2] == id.to_be_bytes() {
                    return Ok(buf[3] & 0x0f);
                }
            }
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the DNS readiness thread panicked")))
    })
}
