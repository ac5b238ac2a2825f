//! `cargo xtask test`: everything CI runs, in order, stopping at the first failure.

use anyhow::{Context, Result};

use crate::util::{self, run_tee, Steps};
use crate::{deps, lab};

/// Sums of the `test result:` lines cargo test printed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line; others are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

pub fn run() -> Result<()> {
    let mut tally = Tally::default();
    let result = run_steps(&mut tally);
    // The closing line CI reads, whatever happened.
    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

fn run_steps(tally: &mut Tally) -> Result<()> {
    let mut steps = Steps::new(7);
    steps.step("deps", deps::run)?;
    steps.step("cargo fmt --check", || {
        util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
            .context("formatting differs: run `cargo fmt --all`")
    })?;
    steps.step("cargo clippy", || {
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    steps.step("build meshgate (release)", || {
        util::run(util::cargo().args(["build", "-p", "meshgate-gateway", "--release"]))
    })?;
    steps.step("unit and crate tests", || {
        run_tee(
            // Root-only crate tests are #[ignore]d for unprivileged runs; here
            // (as root) they run too.
            util::cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "meshgate-e2e",
                "--",
                "--include-ignored",
            ]),
            |line| tally.add_line(line),
        )
    })?;
    let bin = util::meshgate_bin();
    steps.step("remove leftover lab worlds", || lab::down_all(&bin))?;
    let e2e = steps.step("end-to-end tests (one at a time)", || {
        run_tee(
            util::cargo()
                .args([
                    "test",
                    "--release",
                    "-p",
                    "meshgate-e2e",
                    "--",
                    "--test-threads=1",
                ])
                .env("MESHGATE_BIN", &bin),
            |line| tally.add_line(line),
        )
    });
    // Whatever the tests left, even after a failure.
    let cleanup = lab::down_all(&bin);
    e2e?;
    cleanup.context("the end-to-end tests left lab worlds that could not be taken down")
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn sums_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        t.add_line("test passed ... ok");
        assert_eq!(
            t,
            Tally {
                passed: 15,
                failed: 2,
                ignored: 1
            }
        );
    }
}
