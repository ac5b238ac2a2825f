//! `meshgate lab ...`: placeholder until the lab crate lands.
use clap::Subcommand;
use std::process::ExitCode;
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    Status,
}
pub fn run(_c: LabCommand) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
