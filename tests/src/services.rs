//! Helpers for global services: `meshgate services --json` of a discovery
//! and an agent's `services.json`, both as `namespace/name` → backends
//! (`cluster ip`, sorted).

use std::collections::BTreeMap;

use crate::World;

/// `namespace/name` → sorted `"cluster ip"` of its backends.
pub type ServiceBackends = BTreeMap<String, Vec<String>>;

impl World {
    /// `meshgate services --json` of a cluster's discovery (run from its
    /// namespace, over mutual TLS as agent `<cluster>/n1`).
    pub fn services_json(&self, cluster: &str) -> serde_json::Value {
        let mut args = vec!["services".to_string(), "--json".to_string()];
        args.extend(self.nodes_flags(cluster, &format!("{cluster}/n1")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.meshgate_in(&self.discovery_ns(cluster), &args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("meshgate services --json is not JSON ({e}): {out}"))
    }

    /// The backends of every service a cluster's discovery shows.
    pub fn discovery_services(&self, cluster: &str) -> ServiceBackends {
        let v = self.services_json(cluster);
        v["services"]
            .as_array()
            .unwrap_or_else(|| panic!("no services list in {v}"))
            .iter()
            .map(|s| {
                let key = format!(
                    "{}/{}",
                    s["namespace"].as_str().unwrap_or_default(),
                    s["name"].as_str().unwrap_or_default()
                );
                (key, backends(&s["backends"]))
            })
            .collect()
    }

    /// The backends of every service in a node's `services.json` (empty if
    /// the agent wrote none yet).
    pub fn agent_services(&self, cluster: &str, node: &str) -> ServiceBackends {
        let path = format!(
            "/run/meshgate/lab/{}/{cluster}/nodes/{node}/services.json",
            self.name
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Default::default();
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
        v["services"]
            .as_object()
            .unwrap_or_else(|| panic!("{path} has no services object: {text}"))
            .iter()
            .map(|(k, s)| (k.clone(), backends(&s["backends"])))
            .collect()
    }
}

fn backends(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    format!(
                        "{} {}",
                        b["cluster"].as_str().unwrap_or_default(),
                        b["ip"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
