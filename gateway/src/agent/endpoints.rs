//! The agent's `--endpoints` file: a YAML list of the pods on this node
//! (`{name, namespace (default "default"), ip, labels}`), reported to
//! discovery after every registration. Checked here first, so a wrong file
//! stops the agent at start with the file and entry named.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use meshgate_discovery::endpoint::EndpointSpec;

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

/// Reads and checks the file.
pub fn load(path: &Path, pod_cidr: Ipv4Net) -> anyhow::Result<Vec<EndpointSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the endpoints file {}", path.display()))?;
    parse(&text, pod_cidr).with_context(|| format!("endpoints file {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cidr() -> Ipv4Net {
        "10.1.0.0/24".parse().unwrap()
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
