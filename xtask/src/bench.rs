//! `cargo xtask bench NAME`: a figure beside its anchors, measured in the same
//! run on the same machine, reported as ratios and kept in docs/benchmarks.md.

mod cni;
mod dns;
mod egress;
mod example;
mod iperf;
mod latency;
mod mesh;
mod netlink_routes;
mod policy;
mod policy_compile;
mod report;
mod scale;
mod tunnel;

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::util;

type Bench = fn(&[&str]) -> Result<()>;

/// Every benchmark by name, whether it needs root, and how it is run.
const BENCHES: &[(&str, bool, Bench)] = &[
    ("tunnel", true, |args| {
        if !args.is_empty() {
            bail!("cargo xtask bench tunnel takes no arguments");
        }
        tunnel::run()
    }),
    ("mesh", false, mesh::run),
    ("scale", false, scale::run),
    ("policy", true, policy::run),
    ("policy-compile", false, policy_compile::run),
    ("netlink-routes", true, netlink_routes::run),
    ("egress", true, egress::run),
    ("dns", true, dns::run),
    ("cni", true, cni::run),
];

pub fn known() -> Vec<&'static str> {
    BENCHES.iter().map(|(name, _, _)| *name).collect()
}

pub fn run(name: &str, args: &[&str]) -> Result<()> {
    match BENCHES.iter().find(|(known, _, _)| *known == name) {
        Some((_, root, bench)) => {
            if *root {
                crate::util::require_root()?;
                // What the benchmarks run (clang for the build, dnsperf,
                // iperf3, dnsmasq, ...) is installed when missing, as for
                // `cargo xtask test`.
                crate::deps::run()?;
            }
            bench(args)
        }
        None => bail!("unknown benchmark `{name}`; known: {}", known().join(", ")),
    }
}

/// A binary of the release build.
fn release_bin(name: &str) -> PathBuf {
    util::target_dir().join("release").join(name)
}

/// Builds `meshgate` and `mg-probe` for the benches that drive lab worlds.
fn build_release() -> Result<()> {
    // Two builds, as the e2e tests do them: one command for both
    // packages would unify their dependencies' features differently
    // and build those dependencies a second time.
    util::run(util::cargo().args(["build", "--release", "-p", "meshgate-gateway"]))?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "meshgate-e2e",
        "--bin",
        "mg-probe",
    ]))
}
