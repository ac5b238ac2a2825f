//! `meshgate lab ...`: build and drive lab worlds (see scenarios/README.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the world of a scenario file and wait for a full mesh.
    Up {
        file: PathBuf,
        /// Seconds to wait for every node to handshake with every other.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Lease TTL of the discoveries, in seconds.
        #[arg(long, default_value_t = 10.0)]
        lease_ttl: f64,
    },
    /// Remove everything a world made (idempotent).
    Down { name: Option<String> },
    /// Show discoveries, agents, peers and handshake ages.
    Status { name: Option<String> },
    /// Print the IP address of a pod, node or discovery.
    Ip { target: String },
    /// Run a command inside a pod's or node's namespace.
    Exec {
        target: String,
        /// Run it in this container of the node (`lab run`) instead.
        #[arg(long)]
        container: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Start a container on a node with `runtime: containerd`, through
    /// `ctr run --cni` (and so `meshgate-cni`).
    Run {
        /// The node, CLUSTER/NODE.
        target: String,
        /// The container's name (its pod is `default/default-NAME`).
        #[arg(long)]
        name: String,
        /// A label of its endpoint, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The world (needed when several are up).
        #[arg(long)]
        world: Option<String>,
        /// The command (default: `sleep 1000000`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove a container started with `lab run` (its CNI DEL included).
    Rm {
        target: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        world: Option<String>,
    },
    /// Stop a node's agent (it leaves the mesh) or a discovery.
    Stop { target: String },
    /// Start a stopped agent or discovery again.
    Start { target: String },
    /// Restart a node's agent (forwarding resumes at once) or a discovery.
    Restart { target: String },
    /// Restart a node's DNS proxy: the new one takes the old one's sockets
    /// before the old one stops, so no query is lost.
    RestartDns { target: String },
    /// Replace a world's policies with those of FILEs (NetworkPolicy /
    /// CiliumNetworkPolicy YAML) and have its agents reload them (SIGHUP).
    Policy {
        /// The world (needed when several are up).
        #[arg(long)]
        world: Option<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Rotate a node's WireGuard key now.
    RotateKey { target: String },
    /// Rotate the world's IPsec mesh secret (`encryption: ipsec`) to the
    /// next generation and wait until every agent uses it.
    RotateSecret {
        /// The world (needed when several are up).
        #[arg(long)]
        world: Option<String>,
    },
    /// Make a node fail: cut its underlay link and SIGKILL its agent.
    Fail { target: String },
    /// Bring a failed node back: link up, agent started again.
    Recover { target: String },
    /// Stream flow events of one node (CLUSTER/NODE), or of every node of
    /// the world merged (needs `datapath: ebpf`).
    Observe {
        /// The world's name.
        world: String,
        /// One node, CLUSTER/NODE (default: every node, merged).
        node: Option<String>,
        #[command(flatten)]
        opts: crate::observe_cmd::ObserveOpts,
    },
    /// The lab's own process in each external's namespace: a TCP service
    /// answering every connection with the source address it saw.
    #[command(hide = true)]
    ExternalServer {
        #[arg(long, default_value_t = meshgate_lab::plan::EXTERNAL_PORT)]
        port: u16,
    },
    /// The lab's upstream DNS server (in its own namespace, at the
    /// scenario's `dns.server`): answers the records file's names over UDP
    /// and TCP.
    #[command(hide = true)]
    DnsServer {
        /// Address to serve on, UDP and TCP (e.g. 203.0.113.53:53).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The records (JSON, as the lab writes it from `dns.records`).
        #[arg(long)]
        records: PathBuf,
    },
}

fn bin() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the meshgate binary to start agents with")
}

#[allow(clippy::print_stdout)]
fn say(text: impl std::fmt::Display) {
    println!("{text}");
}

pub fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Up {
            file,
            timeout,
            lease_ttl,
        } => {
            let mut opts = meshgate_lab::UpOptions::new(bin()?);
            opts.timeout = Duration::from_secs(timeout);
            if !(lease_ttl > 0.0 && lease_ttl < 86_400.0) {
                anyhow::bail!(
                    "--lease-ttl {lease_ttl} is out of range: give seconds between 0 and 86400"
                );
            }
            opts.lease_ttl = Duration::from_secs_f64(lease_ttl);
            let summary = meshgate_lab::up(&file, &opts)?;
            say(summary);
        }
        LabCommand::Down { name } => say(meshgate_lab::down(name.as_deref())?),
        LabCommand::Status { name } => say(meshgate_lab::status(name.as_deref())?),
        LabCommand::Ip { target } => say(meshgate_lab::ip(&target)?),
        LabCommand::Exec {
            target,
            container,
            command,
        } => {
            let code = match container {
                Some(name) => meshgate_lab::runtime::exec_target(&target, &name, &command)?,
                None => meshgate_lab::exec(&target, &command)?,
            };
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        LabCommand::Run {
            target,
            name,
            labels,
            world,
            command,
        } => {
            let mut map = std::collections::BTreeMap::new();
            for l in &labels {
                let (k, v) = l.split_once('=').with_context(|| {
                    format!("--label {l:?} is not KEY=VALUE; write e.g. --label app=web")
                })?;
                map.insert(k.to_string(), v.to_string());
            }
            let command = if command.is_empty() {
                vec!["sleep".to_string(), "1000000".to_string()]
            } else {
                command
            };
            say(meshgate_lab::runtime::run(
                world.as_deref(),
                &target,
                &name,
                &map,
                &command,
            )?)
        }
        LabCommand::Rm {
            target,
            name,
            world,
        } => say(meshgate_lab::runtime::rm(world.as_deref(), &target, &name)?),
        LabCommand::Stop { target } => say(meshgate_lab::stop(&target)?),
        LabCommand::Start { target } => say(meshgate_lab::start(&target, &bin()?)?),
        LabCommand::Restart { target } => say(meshgate_lab::restart(&target, &bin()?)?),
        LabCommand::RestartDns { target } => {
            say(meshgate_lab::restart_dns_proxy(&target, &bin()?)?)
        }
        LabCommand::Policy { world, files } => {
            say(meshgate_lab::set_policies(world.as_deref(), &files)?)
        }
        LabCommand::RotateKey { target } => say(meshgate_lab::rotate_key(&target)?),
        LabCommand::RotateSecret { world } => say(meshgate_lab::rotate_secret(world.as_deref())?),
        LabCommand::Fail { target } => say(meshgate_lab::fail(&target)?),
        LabCommand::Recover { target } => say(meshgate_lab::recover(&target, &bin()?)?),
        LabCommand::Observe { world, node, opts } => {
            return crate::observe_cmd::run_lab(&world, node.as_deref(), &opts)
        }
        LabCommand::ExternalServer { port } => {
            meshgate_lab::external_server::run(port).with_context(|| {
                format!("serving the lab external's TCP service on port {port}")
            })?;
        }
        LabCommand::DnsServer { listen, records } => {
            meshgate_lab::dns_server::run(listen, &records)
                .with_context(|| format!("serving the lab's DNS on {listen}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
