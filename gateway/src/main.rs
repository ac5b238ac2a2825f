//! The `meshgate` binary: parses the command line and starts the part asked for.

mod agent;
mod certs_cmd;
mod cli;
mod discovery_cmd;
mod dnsproxy;
mod federation_cmd;
mod flow;
mod ipcache_cmd;
mod k8s;
mod lab_cmd;
mod nodes_cmd;
mod observe_cmd;
mod observe_dns;
mod policy_cmd;
mod services_cmd;
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
