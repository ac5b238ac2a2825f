//! meshgate on Kubernetes: the custom resources it reads and their CRDs
//! ([`crds`]), what it watches ([`resources`], which the deploy
//! manifests' RBAC is derived from: [`rbac`]), the watchers ([`watch`]
//! into a [`mirror`]) and the agent's inventory from them
//! ([`inventory`]).
//!
//! The agent applies the inventory in `meshgate_agent`'s `kube_source`;
//! discovery's Services and remote clusters are read in the gateway's
//! `discovery_kube.rs`; the manifests are in `deploy/kubernetes/`.
//! [`fake_apiserver`] (tests, and the `fake-apiserver` feature) is the one
//! fake this project allows: no API server can run on the build machines.

pub mod crds;
#[cfg(any(test, feature = "fake-apiserver"))]
pub mod fake_apiserver;
#[cfg(any(test, feature = "fake-apiserver"))]
pub mod fixtures;
pub mod inventory;
pub mod mirror;
pub mod rbac;
pub mod resources;
pub mod watch;

#[cfg(test)]
mod crds_tests;
#[cfg(test)]
mod watch_tests;

use std::path::{Path, PathBuf};

/// Why no API client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the kubeconfig {}: {source}", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("the kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "finding the Kubernetes API: no KUBECONFIG, ~/.kube/config or in-cluster service \
         account (give --kubeconfig, or run the agent in a pod): {0}"
    )]
    NotFound(kube::config::InferConfigError),
    #[error("making the Kubernetes API client: {0}")]
    Client(kube::Error),
}

/// A client from `kubeconfig` if given, else as kubectl finds one
/// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let cfg = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClientError::ReadKubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(ClientError::NotFound)?,
    };
    kube::Client::try_from(cfg).map_err(ClientError::Client)
}
