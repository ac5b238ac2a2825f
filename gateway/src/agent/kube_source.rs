//! `--inventory kubernetes`: the agent's node, pods, namespaces and
//! policies from the API ([`crate::k8s::inventory`]'s watchers), applied as
//! the files' are: the Node's pod CIDR and labels (labels published again
//! when they change), the labels of the pods `meshgate-cni` adds (by
//! `namespace/name`), the namespaces' labels, and every policy kind.
//!
//! Nothing is set up before every first list is complete, so no pod ever
//! runs under a partial policy set; after that the API server being away
//! changes nothing applied (the watchers keep what they read and retry).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use super::namespaces::Namespaces;
use super::pods::LabelEntry;
use super::Agent;
use crate::k8s::inventory::{self, Inventory, NodeFacts, ParsedPolicies};
use crate::k8s::mirror::Objects;
use crate::k8s::resources;
use crate::k8s::watch::Feed;

/// How often the wait for the first lists says what it still waits for.
const WAIT_LOG: Duration = Duration::from_secs(10);

/// What the first complete lists gave, and the watchers going on.
pub struct KubeStart {
    pub inventory: Inventory,
    pub node: NodeFacts,
    pub pods: BTreeMap<String, LabelEntry>,
    pub namespaces: Namespaces,
    pub policies: ParsedPolicies,
}

/// Starts the watchers and waits for every first list (logging what it
/// still waits for every [`WAIT_LOG`]).
pub async fn first_sync(
    node: &str,
    kubeconfig: Option<&Path>,
    opts: &meshgate_model::policy::ParseOptions,
) -> anyhow::Result<KubeStart> {
    let client = crate::k8s::client(kubeconfig).await?;
    let mut inv = inventory::start(&client, node);
    let mut logged = Instant::now();
    loop {
        let mut missing: Vec<&str> = Vec::new();
        let feeds = [
            (resources::NODES.plural, &inv.node),
            (resources::PODS.plural, &inv.pods),
            (resources::NAMESPACES.plural, &inv.namespaces),
        ];
        for (name, feed) in feeds.into_iter().chain(
            resources::POLICIES
                .iter()
                .map(|w| w.plural)
                .zip(inv.policies.iter()),
        ) {
            if feed.borrow().is_none() {
                missing.push(name);
            }
        }
        if missing.is_empty() {
            break;
        }
        if logged.elapsed() >= WAIT_LOG {
            warn!(waiting_for = ?missing, "waiting for the Kubernetes API's first lists; nothing is set up until they come");
            logged = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nodes = seen(&mut inv.node);
    let node_facts = inventory::node_facts(&nodes, node).with_context(|| {
        format!(
            "the Kubernetes API has no Node {node:?}: give --node the name of this node's Node \
             object (kubectl get nodes)"
        )
    })?;
    let pods = labels_of(&seen(&mut inv.pods));
    let namespaces = inventory::namespace_labels(&seen(&mut inv.namespaces));
    let policies = parse(&mut inv.policies, opts);
    info!(
        pods = pods.len(),
        namespaces = namespaces.len(),
        policies = policies.file.identity.len(),
        egress_policies = policies.file.egress.len(),
        refused = policies.errors.len(),
        "first lists from the Kubernetes API read"
    );
    Ok(KubeStart {
        inventory: inv,
        node: node_facts,
        pods,
        namespaces,
        policies,
    })
}

/// The feed's objects, marked seen.
fn seen(feed: &mut Feed) -> Arc<Objects> {
    feed.borrow_and_update().clone().unwrap_or_default()
}

fn labels_of(objects: &Objects) -> BTreeMap<String, LabelEntry> {
    inventory::pod_facts(objects)
        .into_iter()
        .map(|(k, f)| {
            (
                k,
                LabelEntry {
                    labels: f.labels,
                    service_account: f.service_account,
                },
            )
        })
        .collect()
}

/// Every policy kind's objects now, parsed.
fn parse(feeds: &mut [Feed], opts: &meshgate_model::policy::ParseOptions) -> ParsedPolicies {
    let all: Vec<Arc<Objects>> = feeds.iter_mut().map(seen).collect();
    let docs = inventory::policy_documents(
        resources::POLICIES
            .into_iter()
            .zip(all.iter().map(|o| &**o)),
    );
    inventory::parse_policies(&docs, opts)
}

/// Applies every change the watchers bring from now on.
pub fn follow(agent: Arc<Agent>, inv: Inventory, start_node: NodeFacts) {
    let Inventory {
        node,
        pods,
        namespaces,
        mut policies,
    } = inv;
    let a = agent.clone();
    tokio::spawn(on_change(pods, move |objects| {
        let labels = labels_of(objects);
        *a.kube_pods.lock().unwrap_or_else(|p| p.into_inner()) = Some(labels.clone());
        if let Err(e) = super::pods::relabel(&a, &labels) {
            warn!(error = %format!("{e:#}"), "the pods' labels from the API could not be saved; tried again at the next change");
        }
    }));
    let a = agent.clone();
    tokio::spawn(on_change(namespaces, move |objects| {
        super::namespaces::set(&a, inventory::namespace_labels(objects), "kubernetes");
    }));
    let a = agent.clone();
    let name = agent.cfg.node.clone();
    let mut last = start_node;
    tokio::spawn(on_change(node, move |objects| {
        let Some(now) = inventory::node_facts(objects, &name) else {
            warn!(node = %name, "this node's Node object is gone from the API; the agent keeps what it had");
            return;
        };
        if now.labels != last.labels {
            info!(node = %name, "the Node's labels changed; publishing them");
            *a.node_labels.lock().unwrap_or_else(|p| p.into_inner()) = now.labels.clone();
            a.reregister.notify_one();
        }
        if now.pod_cidr != last.pod_cidr {
            warn!(node = %name, was = ?last.pod_cidr, now = ?now.pod_cidr,
                "the Node's pod CIDR changed; the agent keeps its own until it restarts");
        }
        last = now;
    }));
    let opts = agent.cfg.policy_options;
    tokio::spawn(async move {
        loop {
            // Any kind's change: all kinds parsed again, applied at once.
            let changes = policies.iter_mut().map(|f| Box::pin(f.changed()));
            let (r, _, _) = futures::future::select_all(changes).await;
            if r.is_err() {
                return;
            }
            let parsed = parse(&mut policies, &opts);
            let a = agent.clone();
            let _ = tokio::task::spawn_blocking(move || {
                super::datapath::apply_api_policies(&a, parsed)
            })
            .await;
        }
    });
}

/// Calls `apply` with the feed's objects at each change.
async fn on_change(mut feed: Feed, mut apply: impl FnMut(&Objects) + Send + 'static) {
    while feed.changed().await.is_ok() {
        let objects = feed.borrow_and_update().clone();
        if let Some(o) = objects {
            apply(&o);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! Against the FAKE API server of `k8s::fake_apiserver` (no Kubernetes
    //! API server can run here), through a kubeconfig as a user gives one.

    use super::*;
    use crate::k8s::fake_apiserver::FakeApiServer;
    use crate::k8s::fixtures;

    async fn api() -> (FakeApiServer, tempfile::TempDir, std::path::PathBuf) {
        let api = FakeApiServer::start(&resources::agent()).await;
        for f in [
            fixtures::NODES,
            fixtures::PODS,
            fixtures::NAMESPACES,
            fixtures::POLICIES,
        ] {
            api.apply_fixture(f);
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n\
                 current-context: c\n",
                api.url()
            ),
        )
        .unwrap();
        (api, dir, kubeconfig)
    }

    #[tokio::test]
    async fn the_first_lists_give_the_node_its_pods_namespaces_and_policies() {
        let (_api, _dir, kubeconfig) = api().await;
        let start = first_sync("n1", Some(&kubeconfig), &Default::default())
            .await
            .unwrap();
        assert_eq!(start.node.pod_cidr, Some("10.1.1.0/24".parse().unwrap()));
        assert_eq!(start.node.labels["egress-gateway"], "true");
        assert_eq!(
            start.pods.keys().collect::<Vec<_>>(),
            ["shop/db-0", "shop/web-5d8f7c9b4-x2k1p"],
            "this node's pods, host-network ones left out"
        );
        assert_eq!(
            start.pods["shop/web-5d8f7c9b4-x2k1p"]
                .service_account
                .as_deref(),
            Some("web")
        );
        assert_eq!(start.namespaces["shop"]["team"], "retail");
        assert_eq!(start.policies.file.identity.len(), 3);
        assert_eq!(start.policies.file.egress.len(), 1);
        assert_eq!(
            start.policies.errors.len(),
            1,
            "the broken policy, reported and skipped"
        );
    }

    #[tokio::test]
    async fn a_node_the_api_does_not_have_is_named() {
        let (_api, _dir, kubeconfig) = api().await;
        let err = first_sync("n9", Some(&kubeconfig), &Default::default())
            .await
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("no Node \"n9\""), "{err:#}");
    }

    #[tokio::test]
    async fn the_agent_waits_for_an_api_server_that_is_down_at_start() {
        let (api, _dir, kubeconfig) = api().await;
        api.set_down(true);
        let k = kubeconfig.clone();
        let sync =
            tokio::spawn(async move { first_sync("n1", Some(&k), &Default::default()).await });
        // Refused meanwhile: the sync is still waiting, nothing set up.
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            assert!(
                !sync.is_finished(),
                "first_sync gave up or went on without the API"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        api.set_down(false);
        let start = tokio::time::timeout(Duration::from_secs(30), sync)
            .await
            .expect("the first lists came once the API server was back")
            .unwrap()
            .unwrap();
        assert_eq!(start.pods.len(), 2);
    }

    #[test]
    fn a_bad_kubeconfig_is_named() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = rt
            .block_on(crate::k8s::client(Some(Path::new(
                "/nonexistent/kubeconfig",
            ))))
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("reading the kubeconfig /nonexistent/kubeconfig"),
            "{err:#}"
        );
    }
}
