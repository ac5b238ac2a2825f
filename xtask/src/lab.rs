//! Driving `meshgate lab` from xtask: worlds that are always taken down.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{self, output, run};

/// Where `meshgate lab` keeps one folder per world that is up.
pub const LAB_STATE: &str = "/run/meshgate/lab";

pub fn meshgate(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(util::repo_root());
    cmd
}

/// The worlds that have state under `/run/meshgate/lab/`.
pub fn worlds() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(LAB_STATE) {
        Ok(dir) => dir,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {LAB_STATE}")),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.with_context(|| format!("listing {LAB_STATE}"))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `meshgate lab down NAME` for every world left; tries them all, reports the first failure.
pub fn down_all(bin: &Path) -> Result<()> {
    let mut first_err = None;
    for name in worlds()? {
        eprintln!("taking down lab world `{name}`");
        if let Err(err) = run(meshgate(bin).args(["lab", "down", &name])) {
            eprintln!("warning: {err:#}");
            first_err.get_or_insert(err);
        }
    }
    match first_err {
        Some(err) => Err(err.context("taking down leftover lab worlds")),
        None => Ok(()),
    }
}

/// A world that is taken down (`meshgate lab down NAME`) when dropped.
/// Made before `lab up`, so a half-built world goes too.
pub struct World {
    bin: PathBuf,
    name: String,
}

impl World {
    /// Takes down a leftover world of that name, then brings `file` up.
    pub fn up(bin: &Path, name: &str, file: &Path, extra: &[&str]) -> Result<Self> {
        if worlds()?.iter().any(|w| w == name) {
            eprintln!("a lab world `{name}` is left over; taking it down first");
            run(meshgate(bin).args(["lab", "down", name]))?;
        }
        let world = World {
            bin: bin.to_path_buf(),
            name: name.to_string(),
        };
        run(meshgate(bin).arg("lab").arg("up").arg(file).args(extra))
            .with_context(|| format!("bringing up lab world `{name}` from {}", file.display()))?;
        Ok(world)
    }

    /// `world:target`, so it resolves even when other worlds are up.
    pub fn target(&self, target: &str) -> String {
        format!("{}:{target}", self.name)
    }

    pub fn ip(&self, target: &str) -> Result<String> {
        let ip = output(meshgate(&self.bin).args(["lab", "ip", &self.target(target)]))?;
        Ok(ip.trim().to_string())
    }

    pub fn cmd(&self) -> Command {
        meshgate(&self.bin)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Err(err) = run(meshgate(&self.bin).args(["lab", "down", &self.name])) {
            eprintln!("warning: taking down lab world `{}`: {err:#}", self.name);
        }
    }
}
