//! Helpers for talking to a lab world's discoveries over mutual TLS: the
//! world's certificates are under `/run/meshgate/lab/<world>/certs`.

use std::path::PathBuf;

use crate::World;

impl World {
    /// The world's certificate directory (ca.pem, clusters/, agents/).
    pub fn certs_dir(&self) -> PathBuf {
        PathBuf::from("/run/meshgate/lab")
            .join(&self.name)
            .join("certs")
    }

    /// `https://IP:7100` of a cluster's discovery.
    pub fn discovery_url(&self, cluster: &str) -> String {
        format!("https://{}:7100", self.ip(&format!("{cluster}/discovery")))
    }

    /// `--tls-*` flags for a client of `cluster`'s discovery that presents
    /// the certificate of agent `as_agent` (`cluster/node`).
    pub fn tls_flags(&self, cluster: &str, as_agent: &str) -> Vec<String> {
        let d = self.certs_dir();
        let agent = d.join("agents").join(as_agent);
        vec![
            "--tls-ca".into(),
            d.join("ca.pem").display().to_string(),
            "--tls-cert".into(),
            format!("{}.pem", agent.display()),
            "--tls-key".into(),
            format!("{}-key.pem", agent.display()),
            "--tls-server-name".into(),
            format!("discovery.{cluster}.meshgate"),
        ]
    }

    /// `--discovery URL` and the TLS flags of `meshgate nodes` for a
    /// cluster's discovery, presenting the certificate of agent `as_agent`.
    pub fn nodes_flags(&self, cluster: &str, as_agent: &str) -> Vec<String> {
        let mut v = vec!["--discovery".to_string(), self.discovery_url(cluster)];
        v.extend(self.tls_flags(cluster, as_agent));
        v
    }
}
