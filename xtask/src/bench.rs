//! `cargo xtask bench NAME`: a figure beside its anchors, measured in the same
//! run on the same machine, reported as ratios and kept in docs/benchmarks.md.

mod iperf;
mod report;
mod tunnel;

use anyhow::{bail, Result};

type Bench = fn() -> Result<()>;

/// Every benchmark by name; `mesh` and `policy` go here when they exist.
const BENCHES: &[(&str, Bench)] = &[("tunnel", tunnel::run)];

pub fn known() -> Vec<&'static str> {
    BENCHES.iter().map(|(name, _)| *name).collect()
}

pub fn run(name: &str) -> Result<()> {
    match BENCHES.iter().find(|(known, _)| *known == name) {
        Some((_, bench)) => {
            crate::util::require_root()?;
            bench()
        }
        None => bail!("unknown benchmark `{name}`; known: {}", known().join(", ")),
    }
}
