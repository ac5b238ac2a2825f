//! Running `ip` (iproute2) and turning failures into errors that name the
//! command and keep its stderr.

use std::process::Command;

use crate::error::{LabError, Result};

/// Runs `ip ARGS...`; returns its stdout.
pub fn ip(args: &[String]) -> Result<String> {
    let cmd = format!("ip {}", args.join(" "));
    tracing::debug!(%cmd, "run");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| LabError::Io {
            what: format!("running `{cmd}` (is iproute2 installed?)"),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip_str(args: &[&str]) -> Result<String> {
    ip(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
}

/// Names of all network namespaces (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>> {
    let out = ip_str(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

pub fn netns_delete(ns: &str) -> Result<()> {
    ip_str(&["netns", "delete", ns]).map(|_| ())
}

/// Pids of processes in a namespace (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Result<Vec<u32>> {
    let out = ip_str(&["netns", "pids", ns])?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}
