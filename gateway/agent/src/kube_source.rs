//! `--inventory kubernetes`: the agent's node, pods, namespaces and
//! policies from the API ([`meshgate_k8s::inventory`]'s watchers), applied as
//! the files' are: the Node's pod CIDR and labels (labels published again
//! when they change), the labels of the pods `meshgate-cni` adds (by
//! `namespace/name`), the namespaces' labels, and every policy kind.
//!
//! Nothing is set up before every first list is complete, so no pod ever
//! runs under a partial policy set; after that the API server being away
//! changes nothing applied (the watchers keep what they read and retry).
//! What was applied is saved (`kube-inventory.json` in the state
//! directory): an agent that restarts while the API server is away starts
//! from it after [`SAVED_AFTER`], and takes the API's lists when they come.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use super::namespaces::Namespaces;
use super::pods::LabelEntry;
use super::Agent;
use meshgate_k8s::inventory::{self, Inventory, NodeFacts, ParsedPolicies};
use meshgate_k8s::mirror::Objects;
use meshgate_k8s::resources;
use meshgate_k8s::watch::Feed;

/// How often the wait for the first lists says what it still waits for.
const WAIT_LOG: Duration = Duration::from_secs(10);
/// How long a start waits for the API server before it starts from the
/// inventory saved at the last run (when there is one).
pub const SAVED_AFTER: Duration = Duration::from_secs(10);
/// The saved inventory, in the state directory.
const SAVED_FILE: &str = "kube-inventory.json";

/// What the agent last applied from the API, saved for a restart while
/// the API server is away.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pod_cidr: Option<ipnet::Ipv4Net>,
    node_labels: BTreeMap<String, String>,
    pods: BTreeMap<String, LabelEntry>,
    namespaces: Namespaces,
    /// The policy objects as documents.
    policies: Vec<inventory::PolicyDocument>,
}

fn load_saved(state_dir: &Path) -> Option<Saved> {
    let path = state_dir.join(SAVED_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "the saved Kubernetes inventory does not read; ignored");
            None
        }
    }
}

fn save(state_dir: &Path, saved: &Saved) {
    let path = state_dir.join(SAVED_FILE);
    let written = serde_json::to_vec(saved)
        .map_err(std::io::Error::other)
        .and_then(|bytes| super::persist::write_atomic_blocking(&path, &bytes));
    if let Err(e) = written {
        warn!(file = %path.display(), error = %e, "saving the Kubernetes inventory failed; a restart while the API server is away would wait for it");
    }
}

/// What the first complete lists gave, and the watchers going on.
pub struct KubeStart {
    pub inventory: Inventory,
    pub node: NodeFacts,
    pub pods: BTreeMap<String, LabelEntry>,
    pub namespaces: Namespaces,
    pub policies: ParsedPolicies,
    /// What is saved for the next start.
    pub saved: Saved,
    /// The API server did not answer: this is the last run's inventory.
    pub from_saved: bool,
}

/// Starts the watchers and waits for every first list (logging what it
/// still waits for every [`WAIT_LOG`]); after `saved_after` without them,
/// starts from the inventory saved in `state_dir`, if there is one.
pub async fn first_sync(
    node: &str,
    kubeconfig: Option<&Path>,
    opts: &meshgate_model::policy::ParseOptions,
    state_dir: &Path,
    saved_after: Duration,
) -> anyhow::Result<KubeStart> {
    let client = meshgate_k8s::client(kubeconfig).await?;
    let mut inv = inventory::start(&client, node);
    let started = Instant::now();
    let mut logged = Instant::now();
    loop {
        let feeds = [
            (resources::NODES.plural, &inv.node),
            (resources::PODS.plural, &inv.pods),
            (resources::NAMESPACES.plural, &inv.namespaces),
        ];
        let missing = meshgate_k8s::watch::unlisted(
            feeds.into_iter().chain(
                resources::POLICIES
                    .iter()
                    .map(|w| w.plural)
                    .zip(inv.policies.iter()),
            ),
        );
        if missing.is_empty() {
            break;
        }
        if started.elapsed() >= saved_after {
            if let Some(saved) = load_saved(state_dir) {
                warn!(waiting_for = ?missing, "the Kubernetes API does not answer; starting from the inventory saved at the last run, the watchers go on trying");
                let policies = inventory::parse_policies(&saved.policies, opts);
                return Ok(KubeStart {
                    inventory: inv,
                    node: NodeFacts {
                        pod_cidr: saved.pod_cidr,
                        labels: saved.node_labels.clone(),
                    },
                    pods: saved.pods.clone(),
                    namespaces: saved.namespaces.clone(),
                    policies,
                    saved,
                    from_saved: true,
                });
            }
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
    let docs = documents(&mut inv.policies);
    let policies = inventory::parse_policies(&docs, opts);
    let saved = Saved {
        pod_cidr: node_facts.pod_cidr,
        node_labels: node_facts.labels.clone(),
        pods: pods.clone(),
        namespaces: namespaces.clone(),
        policies: docs,
    };
    save(state_dir, &saved);
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
        saved,
        from_saved: false,
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

/// Every policy kind's objects now, as documents.
fn documents(feeds: &mut [Feed]) -> Vec<inventory::PolicyDocument> {
    let all: Vec<Arc<Objects>> = feeds.iter_mut().map(seen).collect();
    inventory::policy_documents(
        resources::POLICIES
            .into_iter()
            .zip(all.iter().map(|o| &**o)),
    )
}

/// Applies every change the watchers bring from now on.
pub fn follow(agent: Arc<Agent>, inv: Inventory, start_node: NodeFacts, saved: Saved) {
    let Inventory {
        node,
        pods,
        namespaces,
        mut policies,
    } = inv;
    let saved = Arc::new(std::sync::Mutex::new(saved));
    let keep =
        |agent: &Arc<Agent>, saved: &Arc<std::sync::Mutex<Saved>>, f: &dyn Fn(&mut Saved)| {
            let mut s = saved.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            save(&agent.cfg.state_dir, &s);
        };
    let (a, kept) = (agent.clone(), saved.clone());
    tokio::spawn(on_change(pods, move |objects| {
        let labels = labels_of(objects);
        keep(&a, &kept, &|s| s.pods.clone_from(&labels));
        *a.kube_pods.lock().unwrap_or_else(|p| p.into_inner()) = Some(labels.clone());
        if let Err(e) = super::pods::relabel(&a, &labels) {
            warn!(error = %format!("{e:#}"), "the pods' labels from the API could not be saved; tried again at the next change");
        }
    }));
    let (a, kept) = (agent.clone(), saved.clone());
    tokio::spawn(on_change(namespaces, move |objects| {
        let ns = inventory::namespace_labels(objects);
        keep(&a, &kept, &|s| s.namespaces.clone_from(&ns));
        super::namespaces::set(&a, ns, "kubernetes");
    }));
    let (a, kept) = (agent.clone(), saved.clone());
    let name = agent.cfg.node.clone();
    let mut last = start_node;
    tokio::spawn(on_change(node, move |objects| {
        let Some(now) = inventory::node_facts(objects, &name) else {
            warn!(node = %name, "this node's Node object is gone from the API; the agent keeps what it had");
            return;
        };
        keep(&a, &kept, &|s| {
            s.node_labels.clone_from(&now.labels);
            s.pod_cidr = now.pod_cidr;
        });
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
            // Started from the saved inventory: a kind not listed yet
            // would read as no policy of that kind.
            if policies.iter().any(|f| f.borrow().is_none()) {
                continue;
            }
            let docs = documents(&mut policies);
            let parsed = inventory::parse_policies(&docs, &opts);
            keep(&agent, &saved, &|s| s.policies.clone_from(&docs));
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
    use meshgate_k8s::fake_apiserver::FakeApiServer;
    use meshgate_k8s::fixtures;

    /// A long wait: these tests never start from a saved inventory.
    const NEVER: Duration = Duration::from_secs(3600);

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
        let (_api, dir, kubeconfig) = api().await;
        let start = first_sync(
            "n1",
            Some(&kubeconfig),
            &Default::default(),
            dir.path(),
            NEVER,
        )
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
        let (_api, dir, kubeconfig) = api().await;
        let err = first_sync(
            "n9",
            Some(&kubeconfig),
            &Default::default(),
            dir.path(),
            NEVER,
        )
        .await
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("no Node \"n9\""), "{err:#}");
    }

    #[tokio::test]
    async fn the_agent_waits_for_an_api_server_that_is_down_at_start() {
        let (api, dir, kubeconfig) = api().await;
        api.set_down(true);
        let k = kubeconfig.clone();
        // No saved inventory: it waits however long it takes.
        let state = dir.path().to_path_buf();
        let sync = tokio::spawn(async move {
            first_sync("n1", Some(&k), &Default::default(), &state, Duration::ZERO).await
        });
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

    #[tokio::test]
    async fn a_restart_while_the_api_server_is_away_starts_from_what_was_saved() {
        let (api, dir, kubeconfig) = api().await;
        let first = first_sync(
            "n1",
            Some(&kubeconfig),
            &Default::default(),
            dir.path(),
            NEVER,
        )
        .await
        .unwrap();
        assert!(!first.from_saved);
        drop(first);
        api.set_down(true);
        let again = first_sync(
            "n1",
            Some(&kubeconfig),
            &Default::default(),
            dir.path(),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert!(again.from_saved);
        assert_eq!(again.node.pod_cidr, Some("10.1.1.0/24".parse().unwrap()));
        assert_eq!(again.pods.len(), 2);
        assert_eq!(again.namespaces["shop"]["team"], "retail");
        assert_eq!(
            again.policies.file.identity.len(),
            3,
            "the same policies, parsed again"
        );
        assert_eq!(again.policies.file.egress.len(), 1);
        // The watchers go on: the API's lists come once it is back.
        api.set_down(false);
        let mut pods = again.inventory.pods.clone();
        tokio::time::timeout(Duration::from_secs(30), async {
            while pods.borrow_and_update().is_none() {
                pods.changed().await.unwrap();
            }
        })
        .await
        .expect("the pods' list after the API server came back");
    }

    #[test]
    fn a_bad_kubeconfig_is_named() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = rt
            .block_on(meshgate_k8s::client(Some(Path::new(
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
