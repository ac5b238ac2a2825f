//! The agent's `--namespaces` file: the labels of each namespace
//! (`name: {key: value}`), as a cluster's API server holds them. Each
//! endpoint reports its namespace's labels as
//! `io.cilium.k8s.namespace.labels.<key>`, which namespace selectors by
//! label select (Cilium's labels). Read at start, then every second: a
//! change of labels reports the endpoints again ([`watch`]). Every agent of
//! a cluster is given the same file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use meshgate_model::identity::Labels;
use meshgate_model::pb;
use meshgate_model::policy::NAMESPACE_LABELS_PREFIX;
use tracing::{info, warn};

use super::Agent;

/// Labels by namespace.
pub type Namespaces = BTreeMap<String, Labels>;

/// Parses the file's text.
pub fn parse(text: &str) -> anyhow::Result<Namespaces> {
    if text.trim().is_empty() {
        return Ok(Namespaces::new());
    }
    let ns: Namespaces = serde_yaml::from_str(text)
        .context("not a YAML map of namespace name to its labels ({key: value})")?;
    for (name, labels) in &ns {
        if name.trim().is_empty() {
            bail!("a namespace name is empty; give each namespace's name");
        }
        if labels.keys().any(|k| k.trim().is_empty()) {
            bail!("namespace {name}: a label key is empty");
        }
    }
    Ok(ns)
}

/// The file's text.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading the namespaces file {}", path.display()))
}

/// `listed` (the endpoints as the endpoints file gives them) with each
/// endpoint's namespace labels added. An endpoint that sets such a label
/// itself is refused: they come from the namespace.
pub fn apply(listed: &[pb::Endpoint], ns: &Namespaces) -> anyhow::Result<Vec<pb::Endpoint>> {
    let mut out = listed.to_vec();
    for e in out.iter_mut() {
        if let Some(k) = e
            .labels
            .keys()
            .find(|k| k.starts_with(NAMESPACE_LABELS_PREFIX))
        {
            bail!(
                "endpoint {}/{}: label {k} is a namespace label: set it on namespace {} in \
                 the --namespaces file, not on the pod",
                e.namespace,
                e.name,
                e.namespace
            );
        }
        for (k, v) in ns.get(&e.namespace).into_iter().flatten() {
            e.labels
                .insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
    }
    Ok(out)
}

/// How often the file is read again.
const RECHECK: Duration = Duration::from_secs(1);

/// Reads the file every [`RECHECK`]. When a namespace's labels change, the
/// endpoints take the new ones and are reported again: discovery gives the
/// changed endpoints their new identities, and every agent's policy
/// follows (the datapath writes a new identity's entries before its
/// ipcache entries point at it). A file that no longer reads is logged
/// once and changes nothing; one that is refused keeps the labels.
pub async fn watch(agent: Arc<Agent>, mut last: String) {
    let Some(path) = agent.cfg.namespaces.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match read(&path) {
            Ok(t) => t,
            Err(e) => {
                if !last.is_empty() {
                    warn!(error = %format!("{e:#}"), "the namespaces file does not read; the labels stay");
                    last.clear();
                }
                continue;
            }
        };
        if text == last {
            continue;
        }
        last.clone_from(&text);
        let ns = match parse(&text) {
            Ok(ns) => ns,
            Err(e) => {
                warn!(error = %format!("{e:#}"), file = %path.display(), "the namespaces file is refused; the labels stay");
                continue;
            }
        };
        set(&agent, ns, &path.display().to_string());
    }
}

/// Makes `ns` the namespaces' labels (from the file `source`, or the
/// Kubernetes API): the endpoints take them and are reported again if they
/// changed. Refused (a pod that sets a namespace label itself), the old
/// labels stay (logged).
pub fn set(agent: &Agent, ns: Namespaces, source: &str) {
    let before = agent
        .namespaces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(ns);
    match super::recompute_endpoints(agent) {
        Ok(true) => {
            info!(
                source,
                "namespace labels changed; reporting the endpoints again"
            );
            agent.report.notify_one();
        }
        Ok(false) => {}
        Err(e) => {
            warn!(error = %format!("{e:#}"), source, "the namespaces' labels are refused; the old ones stay");
            *agent.namespaces.lock().unwrap_or_else(|p| p.into_inner()) = before;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ep(name: &str, namespace: &str) -> pb::Endpoint {
        pb::Endpoint {
            name: name.into(),
            namespace: namespace.into(),
            ip: "10.1.0.10".into(),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_carry_their_namespaces_labels() {
        let ns = parse("shop: {team: payments, env: prod}\nother: {}\n").unwrap();
        let eps = apply(&[ep("a", "shop"), ep("b", "default")], &ns).unwrap();
        assert_eq!(
            eps[0].labels["io.cilium.k8s.namespace.labels.team"],
            "payments"
        );
        assert_eq!(eps[0].labels["io.cilium.k8s.namespace.labels.env"], "prod");
        assert!(eps[1].labels.is_empty(), "{:?}", eps[1].labels);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn wrong_files_and_pod_set_namespace_labels_are_refused() {
        let e = format!("{:#}", parse("- shop\n").unwrap_err());
        assert!(e.contains("namespace name to its labels"), "{e}");
        let e = format!("{:#}", parse("shop: {'': x}\n").unwrap_err());
        assert!(e.contains("namespace shop: a label key is empty"), "{e}");
        let mut eps = vec![ep("a", "shop")];
        eps[0]
            .labels
            .insert("io.cilium.k8s.namespace.labels.team".into(), "x".into());
        let e = format!("{:#}", apply(&eps, &Namespaces::new()).unwrap_err());
        assert!(e.contains("set it on namespace shop"), "{e}");
    }
}
