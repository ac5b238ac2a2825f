//! `cargo xtask ...`: the project's chores in one place — installing what the
//! host needs, running everything CI runs, the demo and the benchmarks.
#![allow(clippy::print_stdout)] // a command-line tool: stdout is its output

mod bench;
mod demo;
mod deps;
mod fuzz;
mod kernel_lab;
mod lab;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  deps          install the Debian packages the project needs (root)
  test          run everything CI runs: deps, fmt, clippy, build, tests, e2e tests
  demo          bring up scenarios/one-cluster.yaml, ping across nodes, show the
                underlay carries only WireGuard and the control plane
  kernel-lab [-- CMD]
                boot Debian's 6.1 kernel in a qemu VM (TCG) and run the kernel-path
                end-to-end tests (kernel WireGuard) there, or CMD
  kernel-lab --prepare
                only install what the kernel lab needs (qemu, Debian's 6.1 kernel,
                virtme-ng)
  fuzz [--seconds N]
                fuzz the DNS proxy's parse-and-decide path with cargo-fuzz (60 s;
                installs nightly and cargo-fuzz when missing)
  bench NAME    run a benchmark beside its anchors and record it in docs/benchmarks.md
                (known: tunnel, mesh [--clusters N], policy, policy-compile, netlink-routes, egress, dns)
  help          this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["deps"] => deps::run(),
        ["test"] => test::run(),
        ["demo"] => demo::run(),
        ["kernel-lab", rest @ ..] => kernel_lab::run(rest),
        ["fuzz", rest @ ..] => fuzz::run(rest),
        ["bench", name, rest @ ..] => bench::run(name, rest),
        ["bench"] => Err(anyhow::anyhow!(
            "cargo xtask bench needs a benchmark name; known: {}",
            bench::known().join(", ")
        )),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [] => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        other => {
            eprintln!(
                "cargo xtask: unknown command `{}`\n\n{USAGE}",
                other.join(" ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\ncargo xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
