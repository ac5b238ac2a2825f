//! meshgate on Kubernetes: the custom resources it reads and their CRDs
//! ([`crds`]), what it watches ([`resources`], which the deploy
//! manifests' RBAC is checked against), the watchers ([`watch`] into a
//! [`mirror`]) and the agent's inventory from them ([`inventory`]).
//! The agent applies the inventory in `agent/kube_source.rs`; the
//! manifests are in `deploy/kubernetes/`.

pub mod crds;
#[cfg(test)]
pub mod fake_apiserver;
#[cfg(test)]
pub mod fixtures;
pub mod inventory;
pub mod mirror;
pub mod rbac;
pub mod resources;
pub mod services;
pub mod watch;

#[cfg(test)]
mod crds_tests;
#[cfg(test)]
mod deploy_tests;
#[cfg(test)]
mod watch_tests;

/// A client from `kubeconfig` if given, else as kubectl finds one
/// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let cfg = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding the Kubernetes API: no KUBECONFIG, ~/.kube/config or in-cluster service \
             account (give --kubeconfig, or run the agent in a pod)",
        )?,
    };
    kube::Client::try_from(cfg).context("making the Kubernetes API client")
}
