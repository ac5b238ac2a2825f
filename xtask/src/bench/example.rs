//! The benchmarks that are examples of a crate (`meshgate-discovery`'s
//! `mesh_bench` and `policy_bench`, `meshgate-tunnel`'s `netlink_bench`):
//! built in release, run, and read from the JSON line they print last.

use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::util;

/// `cargo build -p meshgate-discovery --release --example NAME`.
pub fn build(name: &str) -> Result<()> {
    build_in("meshgate-discovery", name)
}

/// `cargo build -p PACKAGE --release --example NAME`.
pub fn build_in(package: &str, name: &str) -> Result<()> {
    util::run(util::cargo().args(["build", "-p", package, "--release", "--example", name]))
}

/// Runs the built example `name` with `args` (its stderr shown as it
/// goes): the last JSON line it printed, and how it exited.
pub fn run(name: &str, args: &[String]) -> Result<(Value, ExitStatus)> {
    let bin = util::target_dir().join("release/examples").join(name);
    let mut cmd = Command::new(&bin);
    cmd.args(args).stderr(Stdio::inherit());
    eprintln!("$ {}", util::describe(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{name} printed no JSON result"))?;
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("reading {name}'s JSON result"))?;
    Ok((v, out.status))
}
