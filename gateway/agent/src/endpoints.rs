//! The agent's `--endpoints` file: a YAML list of the pods on this node
//! (`{name, namespace (default "default"), ip, labels}`), reported to
//! discovery after every registration. Checked here first, so a wrong file
//! stops the agent at start with the file and entry named. Re-read every
//! second and on SIGHUP ([`watch`], [`reread`]): endpoints added, changed
//! or removed are reported and the datapath follows; a file that no longer
//! reads or is refused changes nothing (logged).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use meshgate_model::endpoint::EndpointSpec;
use meshgate_model::pb;
use tracing::{info, warn};

use super::Agent;

/// This node's endpoints as reported to discovery, and their pods'
/// host-side interfaces: what [`decide`] makes of the inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    /// The endpoints file's, then the CNI's pods', each with its
    /// namespace's labels.
    pub reported: Vec<pb::Endpoint>,
    /// Pod IP → its veth's host side (the datapath attaches there).
    pub interfaces: BTreeMap<Ipv4Addr, String>,
}

/// The agent's endpoints from its three sources, the same at start and on
/// every change: the endpoints file, the pods `meshgate-cni` added, and
/// the namespaces' labels (from the `--namespaces` file or the Kubernetes
/// API; `None`: none). Pure. An endpoint that sets a namespace label
/// itself is refused ([`super::namespaces::apply`]), and nothing changes.
pub fn decide(
    file: &FileEndpoints,
    pods: &super::pods::Pods,
    namespaces: Option<&super::namespaces::Namespaces>,
) -> anyhow::Result<Local> {
    let mut all = file.reported.clone();
    all.extend(pods.values().map(|p| p.to_pb()));
    let reported = match namespaces {
        Some(ns) => super::namespaces::apply(&all, ns)?,
        None => all,
    };
    let mut interfaces = file.interfaces.clone();
    interfaces.extend(
        pods.values()
            .map(|p| (p.pod.ip, p.pod.host_interface.clone())),
    );
    Ok(Local {
        reported,
        interfaces,
    })
}

/// Parses the file's text and checks every entry against this node's pod CIDR.
pub fn parse(text: &str, pod_cidr: Ipv4Net) -> anyhow::Result<Vec<EndpointSpec>> {
    let specs: Vec<EndpointSpec> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(text).context("not a YAML list of {name, namespace, ip, labels}")?
    };
    let net = pod_cidr.trunc();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, s) in specs.iter().enumerate() {
        let who = format!("entry {i} ({}/{})", s.namespace, s.name);
        if s.name.trim().is_empty() {
            bail!("entry {i}: `name` is empty; set the pod's name");
        }
        let inside = match s.ip {
            IpAddr::V4(v4) => net.contains(&v4),
            IpAddr::V6(_) => false,
        };
        if !inside {
            bail!(
                "{who}: IP {} is outside this node's pod CIDR {net}; list only this node's pods",
                s.ip
            );
        }
        if let Some(other) = seen.insert(s.ip, s.name.clone()) {
            bail!("{who}: IP {} is listed twice (also for {other})", s.ip);
        }
    }
    Ok(specs)
}

/// Reads and checks the file; the endpoints and the text.
pub fn load(path: &Path, pod_cidr: Ipv4Net) -> anyhow::Result<(Vec<EndpointSpec>, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the endpoints file {}", path.display()))?;
    let specs =
        parse(&text, pod_cidr).with_context(|| format!("endpoints file {}", path.display()))?;
    Ok((specs, text))
}

/// What the endpoints file last gave that was accepted.
#[derive(Clone, Debug, Default)]
pub struct FileEndpoints {
    pub text: String,
    /// As reported (before namespace labels).
    pub reported: Vec<pb::Endpoint>,
    /// Their host-side interfaces.
    pub interfaces: BTreeMap<Ipv4Addr, String>,
}

impl FileEndpoints {
    pub fn of(specs: &[EndpointSpec], text: String) -> FileEndpoints {
        FileEndpoints {
            text,
            reported: specs.iter().map(EndpointSpec::to_pb).collect(),
            interfaces: specs
                .iter()
                .filter_map(|e| match (e.ip, &e.interface) {
                    (IpAddr::V4(ip), Some(i)) => Some((ip, i.clone())),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// How often the file is read again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the file again now (SIGHUP, and every [`RECHECK`]); a change is
/// applied (reported, the datapath kicked).
pub fn reread(agent: &Agent) {
    let Some(path) = agent.cfg.endpoints.clone() else {
        return;
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            let mut file = agent
                .file_endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !file.text.is_empty() {
                warn!(file = %path.display(), error = %e, "the endpoints file does not read; its endpoints stay");
                // Logged once: the next good read is a change again.
                file.text.clear();
            }
            return;
        }
    };
    let before = {
        let file = agent
            .file_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if file.text == text {
            return;
        }
        file.clone()
    };
    let specs = match parse(&text, agent.cfg.pod_cidr) {
        Ok(s) => s,
        Err(e) => {
            warn!(file = %path.display(), error = %format!("{e:#}"), "the endpoints file is refused; its endpoints stay");
            agent
                .file_endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .text = text;
            return;
        }
    };
    let pods = agent.pods().clone();
    if let Some(p) = pods
        .values()
        .find(|p| specs.iter().any(|s| s.ip == IpAddr::V4(p.pod.ip)))
    {
        warn!(file = %path.display(), ip = %p.pod.ip, pod = %p.pod.key(), "the endpoints file lists an address a CNI pod holds; the file is refused, its endpoints stay");
        agent
            .file_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .text = text;
        return;
    }
    *agent
        .file_endpoints
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = FileEndpoints::of(&specs, text);
    match super::recompute_endpoints(agent) {
        Ok(changed) => {
            info!(endpoints = specs.len(), "the endpoints file changed");
            if changed {
                agent.report.notify_one();
            }
            super::datapath::kick(agent);
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the endpoints file's endpoints are refused; the old ones stay");
            *agent
                .file_endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = before;
        }
    }
}

/// Re-reads the file every [`RECHECK`].
pub async fn watch(agent: Arc<Agent>) {
    if agent.cfg.endpoints.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = agent.clone();
        let _ = tokio::task::spawn_blocking(move || reread(&a)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cidr() -> Ipv4Net {
        "10.1.0.0/24".parse().unwrap()
    }

    fn pod(name: &str, ip: &str, app: &str) -> crate::pods::PodRecord {
        crate::pods::PodRecord {
            pod: crate::pods::proto::Pod {
                container_id: format!("c-{name}"),
                ifname: "eth0".into(),
                netns: format!("/run/netns/{name}"),
                namespace: "shop".into(),
                name: name.into(),
                ip: ip.parse().unwrap(),
                host_interface: format!("veth-{name}"),
            },
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            service_account: None,
        }
    }

    /// The one decision of what this node reports, from the file, the
    /// CNI's pods and the namespaces, the same at start and on change.
    #[test]
    fn the_reported_endpoints_are_the_files_then_the_pods_with_their_namespaces_labels() {
        let text = "- name: listed\n  namespace: shop\n  ip: 10.1.0.10\n  interface: veth-listed\n";
        let file = FileEndpoints::of(&parse(text, cidr()).unwrap(), text.into());
        let pods =
            crate::pods::Pods::from([("shop/cart".to_string(), pod("cart", "10.1.0.20", "cart"))]);
        let ns = crate::namespaces::parse("shop: {team: payments}\n").unwrap();

        let local = decide(&file, &pods, Some(&ns)).unwrap();
        let names: Vec<&str> = local.reported.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["listed", "cart"]);
        for e in &local.reported {
            assert_eq!(
                e.labels["io.cilium.k8s.namespace.labels.team"], "payments",
                "{e:?}"
            );
        }
        assert_eq!(local.reported[1].labels["app"], "cart");
        assert_eq!(
            local.interfaces,
            BTreeMap::from([
                ("10.1.0.10".parse().unwrap(), "veth-listed".to_string()),
                ("10.1.0.20".parse().unwrap(), "veth-cart".to_string()),
            ])
        );
        // Without namespace labels, the endpoints are as listed.
        let plain = decide(&file, &pods, None).unwrap();
        assert!(plain.reported.iter().all(|e| !e
            .labels
            .keys()
            .any(|k| k.starts_with("io.cilium.k8s.namespace.labels."))));

        // A pod that sets a namespace label itself is refused, naming it.
        let mut bad = pod("evil", "10.1.0.30", "x");
        bad.labels
            .insert("io.cilium.k8s.namespace.labels.team".into(), "x".into());
        let pods = crate::pods::Pods::from([("shop/evil".to_string(), bad)]);
        let e = format!("{:#}", decide(&file, &pods, Some(&ns)).unwrap_err());
        assert!(e.contains("set it on namespace shop"), "{e}");
    }

    #[test]
    fn parses_with_default_namespace() {
        let specs = parse(
            "- name: n1-a\n  ip: 10.1.0.10\n  labels: {app: web}\n- name: n1-b\n  namespace: prod\n  ip: 10.1.0.11\n",
            cidr(),
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].namespace, "default");
        assert_eq!(specs[0].labels["app"], "web");
        assert_eq!(specs[1].namespace, "prod");
        assert!(parse("", cidr()).unwrap().is_empty());
    }

    #[test]
    fn wrong_entries_are_named() {
        let e = format!(
            "{:#}",
            parse("- name: x\n  ip: 10.2.0.1\n", cidr()).unwrap_err()
        );
        assert!(
            e.contains("default/x") && e.contains("10.2.0.1") && e.contains("10.1.0.0/24"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse(
                "- name: x\n  ip: 10.1.0.1\n- name: y\n  ip: 10.1.0.1\n",
                cidr()
            )
            .unwrap_err()
        );
        assert!(e.contains("listed twice"), "{e}");
        let e = format!(
            "{:#}",
            parse("- name: x\n  ipp: 10.1.0.1\n", cidr()).unwrap_err()
        );
        assert!(e.contains("ipp"), "{e}");
    }
}
