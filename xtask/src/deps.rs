//! `cargo xtask deps`: the Debian packages and cargo components the project needs.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, output};

/// What the lab, the tests, the demo and the benchmarks run.
pub const PACKAGES: &[&str] = &[
    "iproute2",          // ip, ss: namespaces, links, routes
    "iputils-ping",      // ping in the tests and the demo
    "tcpdump",           // the demo's proof that the underlay carries no clear pod traffic
    "iperf3",            // throughput benchmarks
    "procps",            // sysctl, ps
    "wireguard-go",      // the userspace anchor in `bench tunnel`
    "wireguard-tools",   // wg
    "nftables",          // nft
    "iptables",          // the anchor of `bench policy` (iptables-restore)
    "kmod",              // modprobe (kernel WireGuard when there is one)
    "etcd-server",       // etcd for the HA discovery store's tests and lab worlds
    "etcd-client",       // etcdctl, to look into that etcd when debugging
    "protobuf-compiler", // protoc: the etcd-client crate compiles etcd's protos at build time
    "clang",             // compiles the eBPF programs (ebpf/build.rs)
    "libbpf-dev",        // <bpf/bpf_helpers.h> for the eBPF programs
    "linux-libc-dev",    // <linux/bpf.h> and the other kernel UAPI headers
];

pub fn run() -> Result<()> {
    util::require_root()?;
    install_missing()?;
    check_cargo_components()
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

fn install_missing() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !installed(pkg))
        .collect();
    if missing.is_empty() {
        eprintln!("deps: all {} Debian packages are installed", PACKAGES.len());
        return Ok(());
    }
    eprintln!("deps: installing {}", missing.join(" "));
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed: is a Debian package mirror reachable?")?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {}", missing.join(" ")))?;
    let still: Vec<&str> = missing.into_iter().filter(|pkg| !installed(pkg)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn component_works(sub: &str) -> bool {
    util::succeeds(util::cargo().args([sub, "--version"]))
}

fn check_cargo_components() -> Result<()> {
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(sub, _)| !component_works(sub))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        eprintln!("deps: cargo fmt and cargo clippy work");
        return Ok(());
    }
    eprintln!("deps: adding rustup components {}", missing.join(" "));
    let added = util::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    );
    if let Err(err) = added {
        bail!(
            "cargo {} does not work and `rustup component add {}` failed ({err:#}); \
             rustup needs to download them, which fails offline: \
             install the components where the toolchain is made",
            missing.join("/"),
            missing.join(" ")
        );
    }
    for (sub, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        if missing.contains(&component) && !component_works(sub) {
            bail!("`rustup component add {component}` succeeded but `cargo {sub} --version` still fails");
        }
    }
    Ok(())
}
