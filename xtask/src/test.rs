//! `cargo xtask test`: everything CI runs. It keeps going past a failing
//! check or test binary (cargo's `--no-fail-fast`), so one failure never
//! hides whether the rest pass, and ends with the list of every failure.
//! Only the steps the rest stand on (deps, the release build) stop it.
//! The last step runs the kernel-path tests in the kernel lab's VM.

use anyhow::{bail, Context, Result};

use crate::util::{self, run_tee_all, Steps};
use crate::{deps, lab};

/// What the test harness and cargo printed: sums of the `test result:` lines,
/// and every failed test and test target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// `target: test` for each test the harness reported FAILED.
    pub failed_tests: Vec<String>,
    /// Targets cargo reported failed (a crash reports no test of its own).
    pub failed_targets: Vec<String>,
    /// The test target now running (from cargo's `Running ...` line).
    current: String,
}

impl Tally {
    /// Reads one line of cargo's or the harness's output; others are ignored.
    pub fn add_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            // `Running tests/lb.rs (target/release/deps/lb-1234)` or
            // `Running unittests src/lib.rs (target/debug/deps/meshgate_tunnel-...)`
            let binary = rest
                .rsplit_once('(')
                .map(|(_, b)| b.trim_end_matches(')'))
                .unwrap_or(rest);
            let file = binary.rsplit('/').next().unwrap_or(binary);
            let name = file.rsplit_once('-').map_or(file, |(n, _)| n);
            self.current = name.to_owned();
            return;
        }
        if let Some(rest) = line.strip_prefix("test result:") {
            self.add_result(rest);
            return;
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|r| r.strip_suffix(" ... FAILED"))
        {
            self.failed_tests.push(format!("{}: {name}", self.current));
            return;
        }
        // `error: test failed, to rerun pass `--test lb``
        if let Some(rest) = line.strip_prefix("error: test failed, to rerun pass `") {
            let target = rest.trim_end_matches('`').to_owned();
            if !self.failed_targets.contains(&target) {
                self.failed_targets.push(target);
            }
        }
    }

    fn add_result(&mut self, rest: &str) {
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

/// Crate tests that need what the build machines' kernel lacks (ESP): left
/// out of the host's crate tests, run by the kernel lab (step 8).
const KERNEL_LAB_ONLY: &[&str] =
    &["ipsec_carries_every_pair_only_as_esp_rotates_without_loss_and_rejects_a_wrong_key"];

pub fn run() -> Result<()> {
    let mut tally = Tally::default();
    let mut failed_steps = Vec::new();
    let result = run_steps(&mut tally, &mut failed_steps);
    report(&tally, &failed_steps);
    // The closing line CI reads, whatever happened.
    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result?;
    if !failed_steps.is_empty() {
        bail!(
            "{} step(s) failed: {}",
            failed_steps.len(),
            failed_steps.join("; ")
        );
    }
    Ok(())
}

fn report(tally: &Tally, failed_steps: &[String]) {
    if failed_steps.is_empty() {
        return;
    }
    println!("\nfailures:");
    for step in failed_steps {
        println!("  step: {step}");
    }
    for test in &tally.failed_tests {
        println!("  test: {test}");
    }
    for target in &tally.failed_targets {
        println!("  test target: {target}");
    }
}

fn run_steps(tally: &mut Tally, failed: &mut Vec<String>) -> Result<()> {
    let mut steps = Steps::new(10);
    // Each of these records its failure and lets the run go on.
    let mut keep_going = |steps: &mut Steps, name: &str, f: &mut dyn FnMut() -> Result<()>| {
        if let Err(err) = steps.step(name, f) {
            eprintln!("cargo xtask test: {err:#}; going on with the other steps");
            failed.push(format!("{name}: {err:#}"));
        }
    };
    steps.step("deps", deps::run)?;
    // The last step's VM needs packages of its own: install them while the
    // host builds and tests.
    let lab_prep = crate::kernel_lab::Preparing::start()
        .map_err(|e| {
            eprintln!("kernel lab: no head start ({e:#}); its step installs what it needs")
        })
        .ok();
    keep_going(&mut steps, "cargo fmt --check", &mut || {
        util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
            .context("formatting differs: run `cargo fmt --all`")
    });
    keep_going(&mut steps, "cargo clippy", &mut || {
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    keep_going(
        &mut steps,
        "the agent-only build links no discovery server",
        &mut agent_only_build,
    );
    steps.step("build meshgate (release)", || {
        util::run(util::cargo().args(["build", "-p", "meshgate-gateway", "--release"]))
    })?;
    keep_going(&mut steps, "unit and crate tests", &mut || {
        for t in KERNEL_LAB_ONLY {
            eprintln!("unit and crate tests: {t} needs ESP, which this kernel lacks: step 8 (the kernel lab) runs it");
        }
        let mut cmd = util::cargo();
        // Root-only crate tests are #[ignore]d for unprivileged runs; here
        // (as root) they run too.
        cmd.args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "meshgate-e2e",
            "--",
            "--include-ignored",
        ]);
        for t in KERNEL_LAB_ONLY {
            cmd.args(["--skip", t]);
        }
        run_tee_all(&mut cmd, |line| tally.add_line(line))
    });
    keep_going(
        &mut steps,
        "fuzz the DNS proxy (60 s; corpus replay on CI)",
        &mut || {
            if !crate::fuzz::test_step()? {
                tally.ignored += 1;
            }
            Ok(())
        },
    );
    let bin = util::meshgate_bin();
    steps.step("remove leftover lab worlds", || lab::down_all(&bin))?;
    keep_going(&mut steps, "end-to-end tests (one at a time)", &mut || {
        let e2e = run_tee_all(
            util::cargo()
                .args([
                    "test",
                    "--no-fail-fast",
                    "--release",
                    "-p",
                    "meshgate-e2e",
                    "--",
                    "--test-threads=1",
                ])
                .env("MESHGATE_BIN", &bin),
            |line| tally.add_line(line),
        );
        // Whatever the tests left, even after a failure.
        let cleanup = lab::down_all(&bin)
            .context("the end-to-end tests left lab worlds that could not be taken down");
        e2e.and(cleanup)
    });
    // The kernel paths on Debian's 6.1 kernel, in a VM: never skipped; a VM
    // that cannot start fails the step with the reason.
    if let Some(prep) = lab_prep {
        prep.finish();
    }
    keep_going(&mut steps, "kernel lab (Debian 6.1 in qemu)", &mut || {
        crate::kernel_lab::run_with(&[], &mut |line| tally.add_line(line))
    });
    Ok(())
}

/// Crates only `meshgate discovery` needs: the server and its stores.
const SERVER_CRATES: &[&str] = &["meshgate-discovery", "etcd-client", "redb"];

/// The agent's crate, and `meshgate` built without the discovery server
/// (`--no-default-features`), link none of [`SERVER_CRATES`]; that build
/// passes clippy and its own unit tests too.
fn agent_only_build() -> Result<()> {
    for args in [
        &["-p", "meshgate-agent"][..],
        &["-p", "meshgate-gateway", "--no-default-features"][..],
    ] {
        let tree = util::output(
            util::cargo()
                .args([
                    "tree", "-e", "normal", "--prefix", "none", "--format", "{p}",
                ])
                .args(args),
        )?;
        let linked = server_crates_in(&tree);
        if !linked.is_empty() {
            bail!(
                "`cargo tree {}` shows {}: the agent must depend on meshgate-model only, \
                 not on the discovery server",
                args.join(" "),
                linked.join(", ")
            );
        }
    }
    util::run(util::cargo().args([
        "clippy",
        "-p",
        "meshgate-gateway",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    util::run(util::cargo().args(["test", "-p", "meshgate-gateway", "--no-default-features"]))
}

/// The [`SERVER_CRATES`] named in `cargo tree --prefix none` output.
fn server_crates_in(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| SERVER_CRATES.contains(name))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::{server_crates_in, Tally};

    #[test]
    fn finds_server_crates_in_a_dependency_tree() {
        let tree = "meshgate-agent v0.1.0 (/w/gateway/agent)\nmeshgate-model v0.1.0 (/w/discovery/model)\n\
                    tonic v0.14.2\nredb v2.6.0\nmeshgate-discovery v0.1.0 (/w/discovery)\nredb v2.6.0\n";
        assert_eq!(server_crates_in(tree), ["meshgate-discovery", "redb"]);
        assert!(server_crates_in("meshgate-model v0.1.0\nredbx v1.0.0\n").is_empty());
    }

    #[test]
    fn sums_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        t.add_line("test passed ... ok");
        assert_eq!((t.passed, t.failed, t.ignored), (15, 2, 1));
        assert!(t.failed_tests.is_empty());
    }

    #[test]
    fn names_every_failed_test_and_target() {
        let mut t = Tally::default();
        let out = "\
     Running tests/lb.rs (target/release/deps/lb-0123abcd)
running 2 tests
test failover_to_remote ... FAILED
test local_first ... ok
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
error: test failed, to rerun pass `--test lb`
     Running tests/mesh.rs (target/release/deps/mesh-4567)
running 1 test
test every_pod_reaches_every_pod ... ok
     Running tests/strict.rs (target/release/deps/strict-89ab)
error: test failed, to rerun pass `--test strict`
     Running unittests src/lib.rs (target/debug/deps/meshgate_tunnel-cdef)
test keys::tests::rotate ... FAILED
";
        for line in out.lines() {
            t.add_line(line);
        }
        assert_eq!(
            t.failed_tests,
            [
                "lb: failover_to_remote",
                "meshgate_tunnel: keys::tests::rotate"
            ]
        );
        assert_eq!(t.failed_targets, ["--test lb", "--test strict"]);
    }
}
