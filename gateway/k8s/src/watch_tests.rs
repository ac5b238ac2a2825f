#![allow(clippy::unwrap_used)]
//! The watchers against a FAKE API server ([`FakeApiServer`], the one fake
//! this project allows: no Kubernetes API server can run here). It serves
//! list and watch with resourceVersions, bookmarks, 410 Gone, dropped
//! connections and an outage, from JSON fixtures in the API's own shapes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::fake_apiserver::FakeApiServer;
use super::fixtures as fx;
use super::inventory::{self, Inventory};
use super::mirror::Objects;
use super::resources;
use super::watch::Feed;

const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until `cond` holds of the feed's objects; panics with what was seen.
async fn wait_for(feed: &Feed, what: &str, cond: impl Fn(&Objects) -> bool) {
    let mut feed = feed.clone();
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(o) = feed.borrow_and_update().as_ref() {
            if cond(o) {
                return;
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, feed.changed()).await.is_err() {
            let seen: Option<Vec<String>> =
                feed.borrow().as_ref().map(|o| o.keys().cloned().collect());
            panic!("{what}: not seen within {DEADLINE:?}; the feed holds {seen:?}");
        }
    }
}

/// Polls `cond` until it holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn world() -> (FakeApiServer, Inventory) {
    let api = FakeApiServer::start(&resources::agent()).await;
    for f in [fx::NODES, fx::PODS, fx::NAMESPACES, fx::POLICIES] {
        api.apply_fixture(f);
    }
    let inv = inventory::start(&api.client(), "n1");
    (api, inv)
}

fn pod(name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
           "status": {"podIPs": [{"ip": "10.1.1.9"}]}})
}

#[tokio::test]
async fn pods_namespaces_and_policies_added_changed_and_deleted_reach_the_agent() {
    let (api, inv) = world().await;
    // The first lists: only this node and its pods (field selectors).
    wait_for(&inv.node, "node n1", |o| o.keys().eq(["n1"])).await;
    wait_for(&inv.pods, "n1's pods", |o| {
        o.keys().eq([
            "meshgate-system/meshgate-agent-abcde",
            "shop/db-0",
            "shop/web-5d8f7c9b4-x2k1p",
        ])
    })
    .await;
    wait_for(&inv.namespaces, "namespaces", |o| o.len() == 2).await;
    for (feed, w) in inv.policies.iter().zip(resources::POLICIES) {
        wait_for(feed, w.kind, |_| true).await;
    }
    let facts = |o: &Objects| inventory::pod_facts(o);
    // A pod added on this node, one on another node, a label change, a delete.
    api.apply(pod("new", "n1", json!({"app": "new"})));
    api.apply(pod("elsewhere", "n2", json!({"app": "x"})));
    wait_for(&inv.pods, "the new pod", |o| {
        facts(o).contains_key("shop/new")
    })
    .await;
    api.apply(pod("new", "n1", json!({"app": "newer"})));
    wait_for(&inv.pods, "the relabelled pod", |o| {
        facts(o)
            .get("shop/new")
            .is_some_and(|p| p.labels["app"] == "newer")
    })
    .await;
    api.delete("Pod", "shop/db-0");
    wait_for(&inv.pods, "db-0 gone", |o| !o.contains_key("shop/db-0")).await;
    assert!(!inv
        .pods
        .borrow()
        .as_ref()
        .unwrap()
        .contains_key("shop/elsewhere"));
    // Namespace labels.
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "shop", "labels": {"team": "payments"}}}));
    wait_for(&inv.namespaces, "shop relabelled", |o| {
        inventory::namespace_labels(o)["shop"]
            .get("team")
            .map(String::as_str)
            == Some("payments")
    })
    .await;
    // Policies: the broken one deleted, a new one added.
    api.delete("CiliumNetworkPolicy", "shop/broken");
    api.apply(
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "db-in", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}]}]}}),
    );
    let cnp = &inv.policies[1];
    wait_for(cnp, "the policy change", |o| {
        o.contains_key("shop/db-in") && !o.contains_key("shop/broken")
    })
    .await;
    let all: Vec<Arc<Objects>> = inv
        .policies
        .iter()
        .map(|f| f.borrow().clone().unwrap())
        .collect();
    let docs = inventory::policy_documents(
        resources::POLICIES
            .into_iter()
            .zip(all.iter().map(|o| &**o)),
    );
    let parsed = inventory::parse_policies(&docs, &Default::default());
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.file.identity.len(), 4);
}

#[tokio::test]
async fn a_relist_after_410_gone_converges_without_removing_and_re_adding_anything() {
    let (api, inv) = world().await;
    wait_for(&inv.pods, "n1's pods", |o| o.len() == 3).await;
    // Every set of pods the feed publishes from now on.
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let (mut rx, log) = (inv.pods.clone(), seen.clone());
    rx.borrow_and_update();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let keys = rx
                .borrow_and_update()
                .as_ref()
                .map(|o| o.keys().cloned().collect());
            log.lock().unwrap().push(keys.unwrap_or_default());
        }
    });
    let lists_before = api
        .requests(&resources::PODS)
        .iter()
        .filter(|r| *r == "list")
        .count();
    // The watch breaks and the history it would resume from is compacted
    // away meanwhile, with a change in it: the watcher gets 410 and lists.
    api.set_down(true);
    api.apply(pod("during", "n1", json!({"app": "during"})));
    api.compact();
    api.set_down(false);
    wait_for(&inv.pods, "the pod added during the outage", |o| {
        o.contains_key("shop/during")
    })
    .await;
    let reqs = api.requests(&resources::PODS);
    assert!(
        reqs.iter().filter(|r| *r == "list").count() > lists_before,
        "the watcher listed again after 410: {reqs:?}"
    );
    let seen = seen.lock().unwrap().clone();
    let kept = [
        "meshgate-system/meshgate-agent-abcde",
        "shop/db-0",
        "shop/web-5d8f7c9b4-x2k1p",
    ];
    for set in &seen {
        for k in kept {
            assert!(
                set.iter().any(|s| s == k),
                "{k} went missing in a published set: {seen:?}"
            );
        }
    }
    assert_eq!(
        seen.len(),
        1,
        "one change published for the relist: {seen:?}"
    );
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version_and_bookmarks_keep_it_fresh() {
    let (api, inv) = world().await;
    wait_for(&inv.pods, "n1's pods", |o| o.len() == 3).await;
    until("the pods watch is open", || {
        api.requests(&resources::PODS)
            .iter()
            .any(|r| r.starts_with("watch"))
    })
    .await;
    // A dropped connection: the watcher watches again from where it was,
    // with no new list.
    let n = api.requests(&resources::PODS).len();
    api.drop_watches();
    until("a new watch", || api.requests(&resources::PODS).len() > n).await;
    api.apply(pod("after-drop", "n1", json!({"app": "a"})));
    wait_for(&inv.pods, "the pod added after the drop", |o| {
        o.contains_key("shop/after-drop")
    })
    .await;
    let reqs = api.requests(&resources::PODS);
    assert_eq!(
        reqs.iter().filter(|r| *r == "list").count(),
        1,
        "no relist: {reqs:?}"
    );
    // Changes elsewhere move the resourceVersion on; a bookmark carries it
    // to the pods watch, so after a compaction and a drop it resumes from
    // the bookmark without 410 and without a relist.
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    let at = api.bookmark();
    until("the bookmark was sent on the pods watch", || {
        api.requests(&resources::PODS)
            .contains(&format!("bookmark at {at}"))
    })
    .await;
    let n = api.requests(&resources::PODS).len();
    api.compact();
    api.drop_watches();
    until("a new watch after the bookmark", || {
        api.requests(&resources::PODS).len() > n
    })
    .await;
    let reqs = api.requests(&resources::PODS);
    assert_eq!(
        reqs.last().map(String::as_str),
        Some(format!("watch from {at}").as_str()),
        "{reqs:?}"
    );
    api.apply(pod("after-bookmark", "n1", json!({"app": "b"})));
    wait_for(&inv.pods, "the pod after the bookmark", |o| {
        o.contains_key("shop/after-bookmark")
    })
    .await;
    let reqs = api.requests(&resources::PODS);
    assert_eq!(
        reqs.iter().filter(|r| *r == "list").count(),
        1,
        "resumed from the bookmark: {reqs:?}"
    );
}

#[tokio::test]
async fn the_api_server_down_changes_nothing_published() {
    let (api, inv) = world().await;
    wait_for(&inv.pods, "n1's pods", |o| o.len() == 3).await;
    let before = inv.pods.borrow().clone().unwrap();
    let mut rx = inv.pods.clone();
    rx.borrow_and_update();
    api.set_down(true);
    let n = api.requests(&resources::PODS).len();
    // The watcher retries (its connections are refused) and publishes nothing.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert!(
            !rx.has_changed().unwrap(),
            "a change was published while the API server was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        api.requests(&resources::PODS).len(),
        n,
        "refused before any request"
    );
    api.set_down(false);
    api.apply(pod("back", "n1", json!({"app": "back"})));
    wait_for(&inv.pods, "the pod after the outage", |o| {
        o.contains_key("shop/back")
    })
    .await;
    let after = inv.pods.borrow().clone().unwrap();
    for k in before.keys() {
        assert!(after.contains_key(k), "{k} lost across the outage");
    }
}
