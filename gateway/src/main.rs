//! The `meshgate` binary: parses the command line and starts the part
//! asked for. The agent is `meshgate_agent` (gateway/agent), Kubernetes
//! `meshgate_k8s` (gateway/k8s), discovery `meshgate_discovery`.

mod certs_cmd;
mod cli;
// It parses discovery's command lines too.
#[cfg(all(test, feature = "discovery-server"))]
mod deploy_tests;
#[cfg(feature = "discovery-server")]
mod discovery_cmd;
#[cfg(feature = "discovery-server")]
mod discovery_kube;
mod dnsproxy;
mod federation_cmd;
mod ipcache_cmd;
mod lab_cmd;
mod nodes_cmd;
mod observe_cmd;
mod observe_dns;
mod policy_cmd;
mod services_cmd;
#[cfg(feature = "discovery-server")]
mod services_file;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshgate: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
