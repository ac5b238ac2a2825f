//! Fuzzing the DNS proxy's parse-and-decide path (`egress/fuzz`, target
//! `decide`) with cargo-fuzz (libFuzzer, a nightly toolchain).
//!
//! - `cargo xtask fuzz [--seconds N]`: installs what is missing (the
//!   nightly toolchain, cargo-fuzz) and runs the target N seconds (60).
//! - `cargo xtask test` runs it for 60 s, except on CI (`MESHGATE_CI` set,
//!   as `.ci/run` does), where the unit tests' corpus replay and mutations
//!   (`meshgate_egress::dnsproxy::fuzz`) are the run: the nightly build of
//!   the target alone takes longer than the whole CI budget allows.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

const TARGET: &str = "decide";

fn fuzz_dir() -> PathBuf {
    util::repo_root().join("egress")
}

fn has_nightly() -> bool {
    util::succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
}

fn has_cargo_fuzz() -> bool {
    util::succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
}

/// Installs the nightly toolchain and cargo-fuzz when missing.
fn ensure_tools() -> Result<()> {
    if !util::succeeds(Command::new("rustup").arg("--version")) {
        bail!(
            "cargo-fuzz needs a nightly toolchain, installed here with rustup, which this \
             machine lacks: install Rust with rustup (https://rustup.rs), then run this again"
        );
    }
    if !has_nightly() {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain cargo-fuzz needs")?;
    }
    if !has_cargo_fuzz() {
        util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz")?;
    }
    Ok(())
}

/// Runs the target for `seconds` over the corpus; a crash fails with the
/// input saved under egress/fuzz/artifacts.
pub fn run_for(seconds: u64) -> Result<()> {
    ensure_tools()?;
    let corpus = fuzz_dir().join("fuzz/corpus").join(TARGET);
    // New inputs go to a scratch corpus: the committed one stays the seeds.
    let scratch = util::target_dir().join("fuzz-corpus");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let status = Command::new("cargo")
        .current_dir(fuzz_dir())
        .env_remove("PROTOC")
        .args(["+nightly", "fuzz", "run", TARGET])
        .arg(&scratch)
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
        ])
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!(
            "cargo fuzz run {TARGET} failed ({status}): a crashing input is in {}",
            fuzz_dir().join("fuzz/artifacts").join(TARGET).display()
        );
    }
    Ok(())
}

/// `cargo xtask fuzz [--seconds N]`.
pub fn run(args: &[&str]) -> Result<()> {
    let seconds = match args {
        [] => 60,
        ["--seconds", n] => n
            .parse()
            .with_context(|| format!("--seconds {n}: give a whole number of seconds"))?,
        other => bail!(
            "cargo xtask fuzz: unknown arguments {other:?} (usage: cargo xtask fuzz [--seconds N])"
        ),
    };
    run_for(seconds)
}

/// The step of `cargo xtask test`: 60 s of libFuzzer, or on CI a note that
/// the corpus replay ran with the unit tests. Returns whether it ran.
pub fn test_step() -> Result<bool> {
    if std::env::var_os("MESHGATE_CI").is_some() {
        eprintln!(
            "fuzz: SKIPPED on CI (MESHGATE_CI is set): the nightly build of the fuzz target takes \
             longer than CI allows; the corpus replay and 10,000+ mutations of it ran with the unit \
             tests (meshgate_egress::dnsproxy::fuzz). `cargo xtask fuzz` runs libFuzzer for 60 s."
        );
        return Ok(false);
    }
    if !util::succeeds(Command::new("rustup").arg("--version")) {
        eprintln!(
            "fuzz: SKIPPED: cargo-fuzz needs a nightly toolchain, and this Rust was not \
             installed with rustup, which is how `cargo xtask fuzz` installs nightly; the \
             corpus replay and its mutations ran with the unit tests"
        );
        return Ok(false);
    }
    run_for(60)?;
    Ok(true)
}
