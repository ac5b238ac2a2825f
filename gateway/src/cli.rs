//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::certs_cmd::CertsArgs;
#[cfg(feature = "discovery-server")]
use crate::discovery_cmd::DiscoveryArgs;
use crate::federation_cmd::FederationArgs;
use crate::lab_cmd::LabCommand;
use crate::nodes_cmd::NodesArgs;
use crate::observe_cmd::ObserveArgs;
use crate::policy_cmd::PolicyCommand;
use crate::services_cmd::ServicesArgs;
use meshgate_agent::AgentArgs;

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
    #[cfg(feature = "discovery-server")]
    Discovery(DiscoveryArgs),
    /// Run the discovery service of one cluster (not in this build).
    #[cfg(not(feature = "discovery-server"))]
    #[command(disable_help_flag = true)]
    Discovery {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    /// Print the agent's and discovery's ClusterRoles: list and watch on
    /// exactly what each reads from the Kubernetes API.
    Rbac,
    /// Install the CNI plugin: copy `meshgate-cni` (from beside this
    /// binary, or --from) into --bin-dir, atomically (the deploy
    /// manifests' init container runs this).
    CniInstall {
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Print the ipcache (IP → identity, node) of the agent whose state directory is given.
    Ipcache {
        #[arg(long, default_value = "/var/lib/meshgate")]
        state_dir: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "discovery-server")]
        Command::Discovery(args) => crate::discovery_cmd::run(args).map(|_| ExitCode::SUCCESS),
        #[cfg(not(feature = "discovery-server"))]
        Command::Discovery { .. } => anyhow::bail!(
            "this meshgate was built without the discovery server (an agent-only build, \
             `--no-default-features`): run `meshgate discovery` from a default build"
        ),
        Command::Agent(args) => meshgate_agent::run(*args).map(|_| ExitCode::SUCCESS),
        Command::Lab { command } => crate::lab_cmd::run(command),
        Command::Nodes(args) => crate::nodes_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Services(args) => crate::services_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Certs(args) => crate::certs_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Federation(args) => crate::federation_cmd::run(args).map(|_| ExitCode::SUCCESS),
        Command::Policy { command } => crate::policy_cmd::run(command),
        Command::Status { state_dir } => meshgate_agent::print_status(&state_dir),
        Command::Observe(args) => crate::observe_cmd::run(args),
        Command::Dnsproxy(args) => crate::dnsproxy::run(*args),
        Command::Ipcache { state_dir } => crate::ipcache_cmd::run(&state_dir),
        Command::Rbac => {
            let yaml = meshgate_k8s::rbac::to_yaml(&meshgate_k8s::rbac::all())
                .map_err(|e| anyhow::anyhow!("encoding the ClusterRole: {e}"))?;
            #[allow(clippy::print_stdout)]
            {
                print!("{yaml}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CniInstall { bin_dir, from } => {
            cni_install(&bin_dir, from.as_deref()).map(|_| ExitCode::SUCCESS)
        }
        Command::Crds { out_dir } => crds(out_dir.as_deref()).map(|_| ExitCode::SUCCESS),
    }
}

/// `meshgate crds`.
fn crds(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut all = String::new();
    for crd in meshgate_k8s::crds::all() {
        let yaml = meshgate_k8s::crds::to_yaml(&crd).context("encoding a CRD")?;
        match out_dir {
            Some(dir) => {
                let path = dir.join(meshgate_k8s::crds::file_name(&crd));
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

/// `meshgate cni-install`: the plugin copied next to a temporary name,
/// then renamed over the old one, so a runtime never runs half a binary.
fn cni_install(bin_dir: &std::path::Path, from: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let from = match from {
        Some(f) => f.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this binary's directory")?
            .with_file_name("meshgate-cni"),
    };
    std::fs::create_dir_all(bin_dir)
        .with_context(|| format!("creating the CNI bin directory {}", bin_dir.display()))?;
    let dest = bin_dir.join("meshgate-cni");
    let tmp = bin_dir.join(".meshgate-cni.tmp");
    std::fs::copy(&from, &tmp).with_context(|| {
        format!(
            "copying {} to {} (give --from the meshgate-cni binary)",
            from.display(),
            tmp.display()
        )
    })?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    tracing::info!(plugin = %dest.display(), "CNI plugin installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn cni_install_copies_the_plugin_executable_and_replaces_an_old_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"new plugin").unwrap();
        let bin = dir.path().join("opt/cni/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("meshgate-cni"), b"old").unwrap();
        super::cni_install(&bin, Some(&src)).unwrap();
        let dest = bin.join("meshgate-cni");
        assert_eq!(std::fs::read(&dest).unwrap(), b"new plugin");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(!bin.join(".meshgate-cni.tmp").exists());
        let err = super::cni_install(&bin, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(format!("{err:#}").contains("give --from"), "{err:#}");
    }

    /// The agent-only build (`--no-default-features`, run by `cargo xtask
    /// test`) refuses `meshgate discovery` naming the build that has it.
    #[cfg(not(feature = "discovery-server"))]
    #[test]
    fn an_agent_only_build_refuses_discovery_naming_the_build_that_has_it() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(["meshgate", "discovery", "--cluster", "c1"])
            .expect("the subcommand still parses");
        let err = super::run(cli).unwrap_err();
        assert!(
            format!("{err:#}").contains("without the discovery server"),
            "{err:#}"
        );
    }
}
