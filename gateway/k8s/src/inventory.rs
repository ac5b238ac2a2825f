//! The agent's inventory from the Kubernetes API (`--inventory
//! kubernetes`): one watcher per resource of [`resources::agent`] (its
//! node, the pods on it, the namespaces, every policy kind), and the facts
//! the agent takes from their objects. The facts are pure functions of the
//! objects, so they are tested without a cluster; `agent/kube_source.rs`
//! applies them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;

use super::mirror::Objects;
use super::resources::{self, Watched};
use super::watch::{self, Feed};

/// The feeds of the agent's watchers.
pub struct Inventory {
    pub node: Feed,
    pub pods: Feed,
    pub namespaces: Feed,
    /// One per [`resources::POLICIES`] kind, in that order.
    pub policies: Vec<Feed>,
}

/// Starts a watcher for every resource the agent reads ([`resources::agent`]):
/// its own node and the pods scheduled on it by field selector.
pub fn start(client: &kube::Client, node: &str) -> Inventory {
    let mut feeds: BTreeMap<&'static str, Feed> = BTreeMap::new();
    let mut policies = Vec::new();
    for w in resources::agent() {
        let cfg = match w {
            resources::NODES => watcher::Config::default().fields(&format!("metadata.name={node}")),
            resources::PODS => watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            _ => watcher::Config::default(),
        };
        let feed = watch::spawn(client.clone(), w, cfg);
        if resources::POLICIES.contains(&w) {
            policies.push(feed);
        } else {
            feeds.insert(w.kind, feed);
        }
    }
    let mut take = |w: Watched| {
        feeds
            .remove(w.kind)
            .unwrap_or_else(|| unreachable!("{} is in resources::agent()", w.kind))
    };
    Inventory {
        node: take(resources::NODES),
        pods: take(resources::PODS),
        namespaces: take(resources::NAMESPACES),
        policies,
    }
}

/// What the agent takes from its Node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// `spec.podCIDRs`' IPv4 one (the first, if several).
    pub pod_cidr: Option<Ipv4Net>,
    pub labels: BTreeMap<String, String>,
}

/// The facts of node `node`, when the feed holds it.
pub fn node_facts(objects: &Objects, node: &str) -> Option<NodeFacts> {
    let o = objects.get(node)?;
    let cidrs = o.data.pointer("/spec/podCIDRs").and_then(Value::as_array);
    let single = o.data.pointer("/spec/podCIDR").and_then(Value::as_str);
    let pod_cidr = cidrs
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(single)
        .find_map(|c| c.parse::<Ipv4Net>().ok());
    Some(NodeFacts {
        pod_cidr,
        labels: o.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A pod's labels and service account, as the agent gives its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodFacts {
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// `status.podIPs`' IPv4 addresses.
    pub ips: Vec<Ipv4Addr>,
}

/// The pods by `namespace/name`; host-network pods are not endpoints.
pub fn pod_facts(objects: &Objects) -> BTreeMap<String, PodFacts> {
    objects
        .iter()
        .filter(|(_, o)| o.data.pointer("/spec/hostNetwork").and_then(Value::as_bool) != Some(true))
        .map(|(k, o)| (k.clone(), pod(o)))
        .collect()
}

fn pod(o: &DynamicObject) -> PodFacts {
    let ips = o
        .data
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("ip").and_then(Value::as_str))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    PodFacts {
        labels: o.metadata.labels.clone().unwrap_or_default(),
        service_account: o
            .data
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .map(str::to_string),
        ips,
    }
}

/// Every namespace's labels, by name.
pub fn namespace_labels(objects: &Objects) -> BTreeMap<String, BTreeMap<String, String>> {
    objects
        .values()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                o.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// A policy object as a YAML document for the policy parser.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyDocument {
    /// `Kind namespace/name` (or `Kind name`), which errors name.
    pub source: String,
    pub yaml: String,
}

/// The policy objects of every kind's feed, as the policy files would hold
/// them: `apiVersion`, `kind`, the metadata a policy reads (name,
/// namespace, labels, annotations) and the rest but `status`, which the
/// API server adds and no policy file has.
/// Their `apiVersion` and `kind` are the watched resource's: items of a
/// list come without them.
pub fn policy_documents<'a>(
    kinds: impl IntoIterator<Item = (Watched, &'a Objects)>,
) -> Vec<PolicyDocument> {
    let mut out = Vec::new();
    for (what, objects) in kinds {
        for (key, o) in objects.iter() {
            let kind = what.kind;
            let mut doc = serde_json::Map::new();
            doc.insert("apiVersion".into(), Value::String(what.api_version()));
            doc.insert("kind".into(), Value::String(kind.into()));
            let mut meta = serde_json::Map::new();
            meta.insert(
                "name".into(),
                o.metadata.name.clone().unwrap_or_default().into(),
            );
            if let Some(ns) = &o.metadata.namespace {
                meta.insert("namespace".into(), ns.clone().into());
            }
            for (field, map) in [
                ("labels", &o.metadata.labels),
                ("annotations", &o.metadata.annotations),
            ] {
                if let Some(m) = map.as_ref().filter(|m| !m.is_empty()) {
                    meta.insert(field.into(), serde_json::json!(m));
                }
            }
            doc.insert("metadata".into(), Value::Object(meta));
            if let Value::Object(rest) = &o.data {
                for (k, v) in rest {
                    if k != "status" {
                        doc.insert(k.clone(), v.clone());
                    }
                }
            }
            let yaml = serde_yaml::to_string(&Value::Object(doc))
                .unwrap_or_else(|e| format!("# {kind} {key} does not encode: {e}\n"));
            out.push(PolicyDocument {
                source: format!("{kind} {key}"),
                yaml,
            });
        }
    }
    out
}

/// The policies of `docs`, parsed as the policy files are (`opts`): each
/// document on its own, so one that is refused (its error names it) is
/// skipped and the others apply.
pub struct ParsedPolicies {
    pub file: meshgate_egress::PolicyFile,
    pub warnings: Vec<meshgate_model::policy::PolicyWarning>,
    pub errors: Vec<String>,
}

pub fn parse_policies(
    docs: &[PolicyDocument],
    opts: &meshgate_model::policy::ParseOptions,
) -> ParsedPolicies {
    let mut out = ParsedPolicies {
        file: meshgate_egress::PolicyFile::default(),
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    for d in docs {
        let mut r = meshgate_egress::parse_policy_text_report(&d.yaml, &d.source, opts);
        if !r.errors.is_empty() {
            out.errors.extend(r.errors.iter().map(|e| e.to_string()));
            continue;
        }
        out.warnings.append(&mut r.warnings);
        out.file.identity.append(&mut r.file.identity);
        out.file.egress.append(&mut r.file.egress);
    }
    out
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
