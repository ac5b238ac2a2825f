//! `meshgate certs`: makes the mesh CA and the certificates of discoveries
//! and agents (`meshgate_model::certs`), for mutual TLS between them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use meshgate_model::certs::files::{write_certs, CertRequest};

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write into (ca.pem, clusters/, agents/).
    #[arg(long)]
    pub out: PathBuf,
    /// Name of the mesh (in the CA's subject).
    #[arg(long)]
    pub mesh: String,
    /// A cluster whose discovery gets a server certificate
    /// (SAN discovery.<cluster>.meshgate); repeatable.
    #[arg(long = "cluster", value_name = "NAME")]
    pub clusters: Vec<String>,
    /// An extra IP SAN for a cluster's discovery certificate, as CLUSTER=IP; repeatable.
    #[arg(long = "san", value_name = "CLUSTER=IP")]
    pub sans: Vec<String>,
    /// A node whose agent gets a client certificate (CN CLUSTER/NODE); repeatable.
    #[arg(long = "agent", value_name = "CLUSTER/NODE")]
    pub agents: Vec<String>,
    /// Make a new CA even if DIR has one (certificates it signed stop working).
    #[arg(long)]
    pub force: bool,
}

/// Turns the flags into a request (pure).
pub fn request(args: &CertsArgs) -> anyhow::Result<CertRequest> {
    let mut sans: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for s in &args.sans {
        let Some((cluster, ip)) = s.split_once('=') else {
            bail!("--san {s:?} must be CLUSTER=IP, e.g. c1=198.18.1.2");
        };
        let ip: IpAddr = ip
            .parse()
            .with_context(|| format!("--san {s:?}: {ip:?} is not an IP address"))?;
        if !args.clusters.iter().any(|c| c == cluster) {
            bail!("--san {s:?} names cluster {cluster:?}, which has no --cluster {cluster}");
        }
        sans.entry(cluster.to_string()).or_default().push(ip);
    }
    let mut agents = Vec::new();
    for a in &args.agents {
        match a.split_once('/') {
            Some((c, n)) if !c.is_empty() && !n.is_empty() && !n.contains('/') => {
                agents.push((c.to_string(), n.to_string()))
            }
            _ => bail!("--agent {a:?} must be CLUSTER/NODE, e.g. c1/n1"),
        }
    }
    Ok(CertRequest {
        mesh: args.mesh.clone(),
        clusters: args
            .clusters
            .iter()
            .map(|c| (c.clone(), sans.remove(c).unwrap_or_default()))
            .collect(),
        agents,
        force: args.force,
    })
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let req = request(&args)?;
    let report = write_certs(&args.out, &req)
        .with_context(|| format!("making certificates in {}", args.out.display()))?;
    let mut out = if report.new_ca {
        format!("made a new mesh CA {}\n", args.out.join("ca.pem").display())
    } else {
        format!(
            "signed with the existing CA {} (--force makes a new one)\n",
            args.out.join("ca.pem").display()
        )
    };
    for f in &report.written {
        out.push_str(&format!("wrote {}\n", f.display()));
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args() -> CertsArgs {
        CertsArgs {
            out: "/tmp/x".into(),
            mesh: "m".into(),
            clusters: vec!["c1".into(), "c2".into()],
            sans: vec!["c1=198.18.1.2".into()],
            agents: vec!["c1/n1".into()],
            force: false,
        }
    }

    #[test]
    fn flags_become_a_request() {
        let r = request(&args()).unwrap();
        assert_eq!(
            r.clusters,
            vec![
                ("c1".to_string(), vec!["198.18.1.2".parse().unwrap()]),
                ("c2".to_string(), vec![])
            ]
        );
        assert_eq!(r.agents, vec![("c1".to_string(), "n1".to_string())]);
    }

    #[test]
    fn bad_flags_are_explained() {
        let mut a = args();
        a.agents = vec!["n1".into()];
        assert!(request(&a)
            .unwrap_err()
            .to_string()
            .contains("CLUSTER/NODE"));
        let mut a = args();
        a.sans = vec!["c9=1.2.3.4".into()];
        assert!(request(&a)
            .unwrap_err()
            .to_string()
            .contains("--cluster c9"));
        let mut a = args();
        a.sans = vec!["c1=nope".into()];
        assert!(request(&a).unwrap_err().to_string().contains("not an IP"));
    }
}
