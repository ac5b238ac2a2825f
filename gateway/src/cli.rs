//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::agent::AgentArgs;
use crate::certs_cmd::CertsArgs;
use crate::discovery_cmd::DiscoveryArgs;
use crate::federation_cmd::FederationArgs;
use crate::lab_cmd::LabCommand;
use crate::nodes_cmd::NodesArgs;
use crate::observe_cmd::ObserveArgs;
use crate::policy_cmd::PolicyCommand;
use crate::services_cmd::ServicesArgs;

/// meshgate: encrypted multi-cluster mesh for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the discovery service of one cluster.
    Discovery(DiscoveryArgs),
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// Build and drive lab worlds made of network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// List the nodes a discovery knows.
    Nodes(NodesArgs),
    /// List a discovery's services, global ones with backends merged across clusters.
    Services(ServicesArgs),
    /// Make the mesh CA and certificates for discoveries and agents (mutual TLS).
    Certs(CertsArgs),
    /// Show what a discovery imports from remote clusters, and what it rejected.
    Federation(FederationArgs),
    /// Check identity policy files (NetworkPolicy, CiliumNetworkPolicy).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print the status of the agent whose state directory is given.
    Status {
        #[arg(long, default_value = "/var/lib/meshgate")]
        state_dir: PathBuf,
    },
    /// Stream the flow events (allowed flows and drops with their reason) of
    /// the agent whose state directory is given (eBPF datapath only).
    Observe(ObserveArgs),
    /// Run the node's DNS proxy (FQDN policy): its own process beside the agent.
    Dnsproxy(Box<crate::dnsproxy::DnsProxyArgs>),
    /// Print the CRDs meshgate reads (Cilium's kinds, MCS's ServiceExport,
    /// MeshgateRemoteCluster), generated from its Rust types; with
    /// --out-dir, write one file each (`<plural>.<group>.yaml`).
    Crds {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the ipcache (IP → identity, node) of the agent whose state directory is given.
    Ipcache {
        #[arg(long, default_value = "/var/lib/meshgate")]
        state_dir: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Discovery(args) => crate::discovery_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Agent(args) => crate::agent::run(*args).map(|_| ExitCode::SUCCESS),
        Command::Lab { command } => crate::lab_cmd::run(command),
        Command::Nodes(args) => crate::nodes_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Services(args) => crate::services_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Certs(args) => crate::certs_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Federation(args) => crate::federation_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Policy { command } => crate::policy_cmd::run(command),
        Command::Status { state_dir } => crate::agent::print_status(&state_dir),
        Command::Observe(args) => crate::observe_cmd::run(args),
        Command::Dnsproxy(args) => crate::dnsproxy::run(*args),
        Command::Ipcache { state_dir } => crate::ipcache_cmd::run(&state_dir),
        Command::Crds { out_dir } => crds(out_dir.as_deref()).map(|_| ExitCode::SUCCESS),
    }
}

/// `meshgate crds`.
fn crds(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut all = String::new();
    for crd in crate::k8s::crds::all() {
        let yaml = crate::k8s::crds::to_yaml(&crd).context("encoding a CRD")?;
        match out_dir {
            Some(dir) => {
                let path = dir.join(crate::k8s::crds::file_name(&crd));
                std::fs::write(&path, &yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => {
                all.push_str("---\n");
                all.push_str(&yaml);
            }
        }
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{all}");
    }
    Ok(())
}
