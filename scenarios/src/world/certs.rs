//! The world's mesh CA and certificates (`<world dir>/certs`, see
//! docs/contracts.md): one server certificate per cluster's discovery (SANs
//! `discovery.<cluster>.meshgate` and its underlay IP), one client
//! certificate per node's agent. Made with the library, not the CLI;
//! removed with the world's directory by `down`.

use std::net::IpAddr;

use meshgate_model::certs::files::{write_certs, CertRequest};

use crate::error::Result;
use crate::plan::{certs_dir, Plan};

/// What the world needs (pure).
pub fn request(plan: &Plan) -> CertRequest {
    CertRequest {
        mesh: format!("lab-{}", plan.world),
        clusters: plan
            .clusters
            .iter()
            .map(|c| (c.name.clone(), vec![IpAddr::V4(c.discovery.ip)]))
            .collect(),
        agents: plan
            .clusters
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| (c.name.clone(), n.name.clone())))
            .collect(),
        force: true,
    }
}

/// Makes a fresh CA and every certificate of the world.
pub fn make(plan: &Plan) -> Result<()> {
    let dir = certs_dir(&plan.world);
    let report = write_certs(&dir, &request(plan))?;
    tracing::info!(dir = %dir.display(), files = report.written.len(), "certificates made");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_discovery_and_agent_gets_a_certificate() {
        let s = crate::scenario::Scenario::parse(
            "w.yaml",
            "name: w\nclusters:\n  - name: c1\n    id: 1\n    podCIDR: 10.1.0.0/16\n    nodes:\n      - name: n1\n      - name: n2\n  - name: c2\n    id: 2\n    podCIDR: 10.2.0.0/16\n    nodes:\n      - name: n1\n",
        )
        .unwrap();
        let r = request(&Plan::new(&s).unwrap());
        assert_eq!(
            r.clusters,
            vec![
                ("c1".to_string(), vec!["198.18.1.2".parse().unwrap()]),
                ("c2".to_string(), vec!["198.18.2.2".parse().unwrap()])
            ]
        );
        assert_eq!(r.agents.len(), 3);
        assert!(r.agents.contains(&("c2".to_string(), "n1".to_string())));
    }
}
