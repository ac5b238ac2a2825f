//! Discovery's services from the Kubernetes API (`meshgate discovery
//! --inventory kubernetes`): every Service with a selector, its ports,
//! ClusterIP and Cilium's global-service annotations
//! (`service.cilium.io/global`, `shared`, `affinity`), exported when an MCS
//! ServiceExport of the same namespace and name exists. A Service that
//! meshgate cannot take is refused on its own (named, the others go on).
//! And the MeshgateRemoteClusters: the remote clusters to link, beside
//! `--remote`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::watcher;
use meshgate_discovery::federation::RemoteConfig;
use meshgate_model::service::{Protocol, Service, ServicePort};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use meshgate_k8s::mirror::Objects;
use meshgate_k8s::resources;
use meshgate_k8s::watch::{self as feeds, Feed};

/// The services of `services`, exported per `exports`; and the Services
/// refused, each with why.
pub fn services_of(services: &Objects, exports: &Objects) -> (Vec<Service>, Vec<String>) {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (key, o) in services.iter() {
        let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
        let selector: BTreeMap<String, String> = spec
            .get("selector")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        // No selector (endpoints kept by hand) or a DNS alias: nothing of
        // ours backs it.
        if selector.is_empty() || spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
            continue;
        }
        match service(o, &spec, selector, exports.contains_key(key)) {
            Ok(s) => match s.validate() {
                Ok(()) => out.push(s),
                Err(e) => refused.push(format!("Service {key}: {e}")),
            },
            Err(why) => refused.push(format!("Service {key}: {why}")),
        }
    }
    (out, refused)
}

fn service(
    o: &kube::api::DynamicObject,
    spec: &Value,
    selector: BTreeMap<String, String>,
    exported: bool,
) -> Result<Service, String> {
    let mut ports = Vec::new();
    for p in spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let protocol = match p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => return Err(format!("port protocol {other} is not TCP or UDP")),
        };
        let port = p
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("port {p} has no port number 1..=65535"))?;
        ports.push(ServicePort {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            port,
            protocol,
        });
    }
    let annotations = o
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("service.cilium.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Service {
        name: o.metadata.name.clone().unwrap_or_default(),
        namespace: o
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        cluster: String::new(),
        ports,
        selector,
        annotations,
        exported,
        vip: spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse().ok()),
    })
}

/// The remote clusters of the feed's MeshgateRemoteClusters now (marked
/// seen); the refused ones logged.
fn linked(feed: &mut Feed) -> Vec<RemoteConfig> {
    let objects: Arc<Objects> = feed.borrow_and_update().clone().unwrap_or_default();
    let (remotes, refused) = remotes_of(&objects);
    for r in &refused {
        warn!(error = %r, "a MeshgateRemoteCluster is refused; skipped, the others are linked");
    }
    remotes
}

/// Discovery's watchers: Services, ServiceExports, MeshgateRemoteClusters.
pub struct ServiceFeeds {
    pub services: Feed,
    pub exports: Feed,
    pub remotes: Feed,
}

/// The remote clusters of MeshgateRemoteCluster objects (named by
/// `metadata.name`, `spec.discoveryUrls`), checked as `--remote` is; and
/// those refused, each with why.
pub fn remotes_of(objects: &Objects) -> (Vec<RemoteConfig>, Vec<String>) {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (name, o) in objects.iter() {
        let urls: Vec<&str> = o
            .data
            .pointer("/spec/discoveryUrls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if urls.is_empty() {
            refused.push(format!(
                "MeshgateRemoteCluster {name}: spec.discoveryUrls is empty"
            ));
            continue;
        }
        match format!("{name}={}", urls.join(",")).parse::<RemoteConfig>() {
            Ok(r) => out.push(r),
            Err(e) => refused.push(format!("MeshgateRemoteCluster {name}: {e}")),
        }
    }
    (out, refused)
}

/// Starts a watcher for every resource of [`resources::discovery`].
pub fn start(client: &kube::Client) -> ServiceFeeds {
    let mut feeds: BTreeMap<&str, Feed> = resources::discovery()
        .into_iter()
        .map(|w| {
            (
                w.kind,
                feeds::spawn(client.clone(), w, watcher::Config::default()),
            )
        })
        .collect();
    let mut take = |w: resources::Watched| {
        feeds
            .remove(w.kind)
            .unwrap_or_else(|| unreachable!("{} is in resources::discovery()", w.kind))
    };
    ServiceFeeds {
        services: take(resources::SERVICES),
        exports: take(resources::SERVICE_EXPORTS),
        remotes: take(resources::MESHGATE_REMOTE_CLUSTERS),
    }
}

impl ServiceFeeds {
    /// Waits for every first list; the services and the remote clusters then.
    pub async fn first(&mut self) -> (Vec<Service>, Vec<RemoteConfig>) {
        let mut logged = std::time::Instant::now();
        loop {
            let missing = feeds::unlisted([
                (resources::SERVICES.plural, &self.services),
                (resources::SERVICE_EXPORTS.plural, &self.exports),
                (resources::MESHGATE_REMOTE_CLUSTERS.plural, &self.remotes),
            ]);
            if missing.is_empty() {
                break;
            }
            if logged.elapsed() >= std::time::Duration::from_secs(10) {
                warn!(waiting_for = ?missing, "waiting for the Kubernetes API's first lists");
                logged = std::time::Instant::now();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        (self.now(), self.remotes_now())
    }

    fn remotes_now(&mut self) -> Vec<RemoteConfig> {
        linked(&mut self.remotes)
    }

    fn now(&mut self) -> Vec<Service> {
        let s: Arc<Objects> = self
            .services
            .borrow_and_update()
            .clone()
            .unwrap_or_default();
        let e: Arc<Objects> = self.exports.borrow_and_update().clone().unwrap_or_default();
        let (services, refused) = services_of(&s, &e);
        for r in &refused {
            warn!(error = %r, "a Service is refused; skipped, the others are served");
        }
        services
    }

    /// Publishes the services on `tx` and the remote clusters on `remotes`
    /// at every change, from now on.
    pub fn follow(
        mut self,
        tx: watch::Sender<Vec<Service>>,
        remotes: watch::Sender<Vec<RemoteConfig>>,
    ) {
        let mut feed = self.remotes.clone();
        tokio::spawn(async move {
            while feed.changed().await.is_ok() {
                let now = linked(&mut feed);
                info!(remotes = now.len(), "MeshgateRemoteClusters changed");
                if remotes.send(now).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = self.services.changed() => if r.is_err() { return },
                    r = self.exports.changed() => if r.is_err() { return },
                }
                let services = self.now();
                info!(
                    services = services.len(),
                    "Services from the Kubernetes API changed"
                );
                if tx.send(services).is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_k8s::fake_apiserver::FakeApiServer;
    use meshgate_k8s::fixtures::{objects, SERVICES};
    use serde_json::json;

    #[test]
    fn services_take_ports_selector_cluster_ip_cilium_annotations_and_their_export() {
        let (s, refused) = services_of(
            &objects(SERVICES, "Service"),
            &objects(SERVICES, "ServiceExport"),
        );
        let by: BTreeMap<String, &Service> = s.iter().map(|s| (s.key(), s)).collect();
        assert_eq!(
            by.keys().collect::<Vec<_>>(),
            ["shop/db", "shop/web"],
            "headless kept, no-selector left out"
        );
        let web = by["shop/web"];
        assert!(web.is_global().unwrap());
        assert_eq!(
            web.annotations.len(),
            2,
            "only Cilium's annotations: {:?}",
            web.annotations
        );
        assert_eq!(web.vip, Some("10.96.10.20".parse().unwrap()));
        assert_eq!(
            (web.ports[0].name.as_str(), web.ports[0].port),
            ("http", 80)
        );
        let db = by["shop/db"];
        assert!(db.exported, "a ServiceExport exports it");
        assert_eq!(db.vip, None, "headless");
        assert_eq!(db.ports[0].protocol, Protocol::Tcp);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].starts_with("Service shop/sctp:"), "{refused:?}");
    }

    #[tokio::test]
    async fn services_and_exports_added_changed_and_deleted_reach_discovery() {
        let api = FakeApiServer::start(&resources::discovery()).await;
        api.apply_fixture(SERVICES);
        let mut feeds = start(&api.client());
        let (first, remotes) = feeds.first().await;
        assert_eq!(first.len(), 2);
        assert_eq!(remotes.len(), 1);
        let (tx, mut rx) = watch::channel(first);
        let (rtx, mut rrx) = watch::channel(remotes);
        feeds.follow(tx, rtx);
        let wait = |rx: &mut watch::Receiver<Vec<Service>>,
                    what: &'static str,
                    ok: fn(&[Service]) -> bool| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(20), async {
                    while !ok(&rx.borrow_and_update()) {
                        rx.changed().await.unwrap();
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{what}: not seen; services {:?}", rx.borrow()))
            }
        };
        api.apply(
            json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                         "metadata": {"name": "web", "namespace": "shop"}}),
        );
        wait(&mut rx, "web exported", |s| {
            s.iter().any(|s| s.name == "web" && s.exported)
        })
        .await;
        api.delete("Service", "shop/db");
        wait(&mut rx, "db gone", |s| s.iter().all(|s| s.name != "db")).await;
        api.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"selector": {"app": "api"}, "clusterIP": "10.96.10.30",
                     "ports": [{"port": 8080, "protocol": "TCP"}]}}));
        wait(&mut rx, "api added", |s| s.iter().any(|s| s.name == "api")).await;
        api.delete("MeshgateRemoteCluster", "c2");
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while !rrx.borrow_and_update().is_empty() {
                rrx.changed().await.unwrap();
            }
        })
        .await
        .expect("the deleted MeshgateRemoteCluster reaches discovery");
    }

    #[test]
    fn remote_clusters_are_read_as_remote_flags_are_and_a_bad_one_is_refused_alone() {
        let (r, refused) = remotes_of(&objects(SERVICES, "MeshgateRemoteCluster"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "c2");
        assert_eq!(
            r[0].urls,
            ["https://198.18.2.2:7100", "https://198.18.2.3:7100"]
        );
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused
            .iter()
            .any(|e| e.starts_with("MeshgateRemoteCluster bad-scheme:")));
        assert!(refused.iter().any(|e| e.contains("empty")));
    }
}
