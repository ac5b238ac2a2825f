//! `cargo xtask deps`: every prerequisite of the lab, the tests, the demo and
//! the benchmarks, each checked by *using* it (compiling a proto that imports
//! a well-known type, compiling and loading a BPF object, running each tool),
//! never by asking dpkg whether a package is there. What fails is fixed by
//! installing the Debian package named beside its check, and checked again.
//!
//! protoc is not a system dependency: every crate that compiles protos gets
//! the vendored protoc (with its well-known includes) through `PROTOC`, which
//! [`crate::util::cargo`] sets for every cargo it runs ([`protoc`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, output};

/// One prerequisite: what it is, the Debian package that provides it, and how
/// it is checked.
pub struct Prereq {
    pub what: &'static str,
    /// The package that fixes a failed check; `None` when no package does.
    pub package: Option<&'static str>,
    pub check: fn(&Scratch) -> Result<()>,
}

/// In the order they are checked: later checks may use what earlier ones proved.
const PREREQS: &[Prereq] = &[
    Prereq {
        what: "ip (namespaces, links, routes)",
        package: Some("iproute2"),
        check: |_| version("ip", &["-V"]),
    },
    Prereq {
        what: "ss (sockets, used to wait for listeners)",
        package: Some("iproute2"),
        check: |_| version("ss", &["-V"]),
    },
    Prereq {
        what: "ping",
        package: Some("iputils-ping"),
        check: |_| version("ping", &["-V"]),
    },
    Prereq {
        what: "tcpdump (the captures that prove nothing crosses in clear)",
        package: Some("tcpdump"),
        check: |_| version("tcpdump", &["--version"]),
    },
    Prereq {
        what: "iperf3 (throughput tests and benchmarks)",
        package: Some("iperf3"),
        check: |_| version("iperf3", &["--version"]),
    },
    Prereq {
        what: "sysctl and ps",
        package: Some("procps"),
        check: |_| version("sysctl", &["--version"]).and_then(|()| version("ps", &["--version"])),
    },
    Prereq {
        what: "wireguard-go (the userspace anchor of `bench tunnel`)",
        package: Some("wireguard-go"),
        check: |_| version("wireguard-go", &["--version"]),
    },
    Prereq {
        what: "wg",
        package: Some("wireguard-tools"),
        check: |_| version("wg", &["--version"]),
    },
    Prereq {
        what: "nft (a table checked against the kernel)",
        package: Some("nftables"),
        check: check_nft,
    },
    Prereq {
        what: "iptables-restore (the anchor of `bench policy`)",
        package: Some("iptables"),
        check: check_iptables,
    },
    Prereq {
        what: "modprobe",
        package: Some("kmod"),
        check: |_| version("modprobe", &["--version"]),
    },
    Prereq {
        what: "etcd (the HA store's tests and lab worlds)",
        package: Some("etcd-server"),
        check: |_| version("etcd", &["--version"]),
    },
    Prereq {
        what: "etcdctl",
        package: Some("etcd-client"),
        check: |_| version("etcdctl", &["version"]),
    },
    Prereq {
        what: "python3 (the tests' UDP senders)",
        package: Some("python3"),
        check: |_| output(Command::new("python3").args(["-c", "import socket, json"])).map(drop),
    },
    Prereq {
        what: "curl (the tests scrape the agents' metrics)",
        package: Some("curl"),
        check: |_| version("curl", &["--version"]),
    },
    Prereq {
        what: "dig (the DNS tests query the lab's DNS server and the proxies)",
        package: Some("bind9-dnsutils"),
        check: |_| version("dig", &["-v"]),
    },
    Prereq {
        // dnsmasq-base: the binary without the dnsmasq package's system
        // service, which would take port 53 on the host.
        what: "dnsmasq (the forwarder `bench dns` measures the DNS proxy against)",
        package: Some("dnsmasq-base"),
        check: |_| version("dnsmasq", &["--version"]),
    },
    Prereq {
        what: "the CNI reference plugins (meshgate-cni delegates IPAM to host-local)",
        package: Some("containernetworking-plugins"),
        check: |_| {
            output(
                Command::new("/usr/lib/cni/host-local")
                    .env("CNI_COMMAND", "VERSION")
                    .stdin(std::process::Stdio::null()),
            )
            .map(drop)
        },
    },
    Prereq {
        what: "containerd and ctr (nodes with `runtime: containerd` in the lab)",
        package: Some("containerd"),
        check: |_| {
            version("ctr", &["--version"]).and_then(|()| version("containerd", &["--version"]))
        },
    },
    Prereq {
        what: "runc (containerd's OCI runtime)",
        package: Some("runc"),
        check: |_| version("runc", &["--version"]),
    },
    Prereq {
        what: "busybox-static (the lab's container image is built from it)",
        package: Some("busybox-static"),
        check: |_| {
            output(Command::new("/bin/busybox").args(["sh", "-c", "true"])).map(drop)?;
            // The static build runs in a container that holds nothing else:
            // a dynamic one has a PT_INTERP program header (its loader).
            if has_interpreter(&std::fs::read("/bin/busybox")?) {
                anyhow::bail!("/bin/busybox is dynamically linked: install busybox-static");
            }
            Ok(())
        },
    },
    Prereq {
        what: "dnsperf (the DNS benchmark's load generator)",
        package: Some("dnsperf"),
        check: |_| version("dnsperf", &["-h"]),
    },
    Prereq {
        what: "kubectl kustomize (renders the deploy manifests offline)",
        package: Some("kubernetes-client"),
        check: check_kustomize,
    },
    Prereq {
        what: "protoc with its well-known protos (compiling a proto that imports descriptor.proto)",
        package: None,
        check: check_protoc,
    },
    Prereq {
        what: "clang targeting bpf",
        package: Some("clang"),
        check: |s| s.compile_bpf("plain", ""),
    },
    Prereq {
        what: "the kernel UAPI headers (<linux/bpf.h>)",
        package: Some("linux-libc-dev"),
        check: |s| s.compile_bpf("uapi", "#include <linux/bpf.h>\n"),
    },
    Prereq {
        what: "the libbpf headers (<bpf/bpf_helpers.h>)",
        package: Some("libbpf-dev"),
        check: |s| {
            s.compile_bpf(
                "libbpf",
                "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n",
            )
        },
    },
    Prereq {
        what: "loading a BPF object into the kernel (tc on a veth in a scratch namespace)",
        package: None,
        check: check_bpf_load,
    },
];

pub fn run() -> Result<()> {
    util::require_root()?;
    ensure(PREREQS)?;
    check_cargo_components()
}

/// Checks each of `prereqs` by use; installs the packages of those that
/// fail and checks them again. Also what other commands (the kernel lab)
/// use for their own prerequisites.
pub fn ensure(prereqs: &[Prereq]) -> Result<()> {
    let scratch = Scratch::new()?;
    let failed = failing(&scratch, prereqs.iter());
    if failed.is_empty() {
        eprintln!("deps: all {} prerequisites work", prereqs.len());
        return Ok(());
    }
    install_for(&scratch, &failed, prereqs.len())
}

/// The prerequisites whose check fails, each with why.
fn failing<'a>(
    scratch: &Scratch,
    prereqs: impl Iterator<Item = &'a Prereq>,
) -> Vec<(&'a Prereq, anyhow::Error)> {
    prereqs
        .filter_map(|p| (p.check)(scratch).err().map(|e| (p, e)))
        .collect()
}

fn install_for(scratch: &Scratch, failed: &[(&Prereq, anyhow::Error)], all: usize) -> Result<()> {
    for (p, err) in failed {
        eprintln!("deps: {} does not work: {err:#}", p.what);
    }
    let mut packages: Vec<&str> = failed.iter().filter_map(|(p, _)| p.package).collect();
    packages.sort_unstable();
    packages.dedup();
    if !packages.is_empty() {
        eprintln!("deps: installing {}", packages.join(" "));
        util::run(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("apt-get update failed: is a Debian package mirror reachable?")?;
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("installing {}", packages.join(" ")))?;
    }
    let still = failing(scratch, failed.iter().map(|(p, _)| *p));
    if still.is_empty() {
        eprintln!("deps: all {all} prerequisites work");
        return Ok(());
    }
    let lines: Vec<String> = still
        .iter()
        .map(|(p, err)| match p.package {
            Some(pkg) => format!(
                "- {} still fails after installing the Debian package {pkg}: {err:#}",
                p.what
            ),
            None => format!("- {}: {err:#}", p.what),
        })
        .collect();
    bail!("prerequisites that do not work:\n{}", lines.join("\n"))
}

/// `prog args` runs and exits 0.
/// Whether an ELF64 little-endian executable names a program interpreter
/// (PT_INTERP), i.e. is dynamically linked; false for anything else.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| u32_at(off + i * usize::from(size)))
            == Some(3)
    })
}

/// Renders a base and an overlay the way `deploy/kubernetes` is laid out
/// (`bases`, `patchesStrategicMerge`: what kustomize reads from the 2.0
/// that Debian's kubectl 1.20 embeds to today's).
fn check_kustomize(s: &Scratch) -> Result<()> {
    let base = s.path("kustomize/base");
    let overlay = s.path("kustomize/overlay");
    for d in [&base, &overlay] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    s.write(
        "kustomize/base/kustomization.yaml",
        "namespace: mg-check\nresources:\n- cm.yaml\n",
    )?;
    s.write(
        "kustomize/base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mg\ndata:\n  a: \"1\"\n",
    )?;
    s.write(
        "kustomize/overlay/kustomization.yaml",
        "bases:\n- ../base\npatchesStrategicMerge:\n- patch.yaml\n",
    )?;
    s.write(
        "kustomize/overlay/patch.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mg\ndata:\n  a: \"2\"\n",
    )?;
    let out = output(Command::new("kubectl").arg("kustomize").arg(&overlay))?;
    if !(out.contains("namespace: mg-check") && out.contains("a: \"2\"")) {
        bail!("kubectl kustomize rendered something else:\n{out}");
    }
    Ok(())
}

fn version(prog: &str, args: &[&str]) -> Result<()> {
    output(Command::new(prog).args(args)).map(drop)
}

/// The protoc every cargo that xtask runs is given: `PROTOC` when the user set
/// it, else the vendored one (protoc-bin-vendored, which carries the
/// well-known protos beside its binary).
pub fn protoc() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROTOC") {
        return Ok(PathBuf::from(path));
    }
    protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| anyhow::anyhow!("the vendored protoc has no binary for this machine: {e}"))
}

fn check_protoc(scratch: &Scratch) -> Result<()> {
    let protoc = protoc()?;
    let proto = scratch.write(
        "check.proto",
        "syntax = \"proto3\";\n\
         package meshgate.depscheck;\n\
         import \"google/protobuf/descriptor.proto\";\n\
         message Check { google.protobuf.FileDescriptorProto file = 1; }\n",
    )?;
    let out = scratch.path("check.pb");
    output(
        Command::new(&protoc)
            .arg("-I")
            .arg(scratch.dir())
            .arg("--descriptor_set_out")
            .arg(&out)
            .arg(&proto),
    )
    .with_context(|| {
        format!(
            "{} cannot compile a proto importing google/protobuf/descriptor.proto; \
             unset PROTOC to use the vendored protoc, or point it at one whose \
             well-known protos are installed (Debian: libprotobuf-dev)",
            protoc.display()
        )
    })
    .map(drop)
}

fn check_nft(scratch: &Scratch) -> Result<()> {
    let file = scratch.write(
        "check.nft",
        "table inet mg_depscheck {\n  chain c {\n    type filter hook output priority 0; policy accept;\n  }\n}\n",
    )?;
    output(Command::new("nft").arg("--check").arg("-f").arg(&file)).map(drop)
}

fn check_iptables(scratch: &Scratch) -> Result<()> {
    let file = scratch.write(
        "check.rules",
        "*filter\n:MG_DEPSCHECK - [0:0]\n-A MG_DEPSCHECK -p tcp --dport 1 -j ACCEPT\nCOMMIT\n",
    )?;
    output(
        Command::new("iptables-restore")
            .arg("--test")
            .stdin(std::fs::File::open(&file).context("opening the iptables check rules")?),
    )
    .map(drop)
}

const BPF_PROG: &str = "#define SEC(name) __attribute__((section(name), used))\n\
     SEC(\"tc\") int mg_depscheck(void *skb) { return 0; }\n\
     char _license[] SEC(\"license\") = \"GPL\";\n";

fn check_bpf_load(scratch: &Scratch) -> Result<()> {
    let obj = scratch.path("plain.o");
    if !obj.is_file() {
        bail!("no BPF object to load: clang could not compile one (see above)");
    }
    let ns = format!("mg-deps-{}", std::process::id());
    let netns = util::NetnsGuard::create(&ns)?;
    let tc = |args: &[&str]| -> Result<()> {
        output(util::in_netns(netns.name(), "tc").args(args)).map(drop)
    };
    output(util::in_netns(netns.name(), "ip").args([
        "link", "add", "mgd0", "type", "veth", "peer", "name", "mgd1",
    ]))
    .context("adding a veth pair")?;
    tc(&["qdisc", "add", "dev", "mgd0", "clsact"]).context("adding a clsact qdisc")?;
    let obj = obj.to_string_lossy();
    tc(&[
        "filter", "add", "dev", "mgd0", "ingress", "bpf", "da", "obj", &obj, "sec", "tc",
    ])
    .context(
        "loading a trivial tc program with the bpf syscall failed: the eBPF datapath \
         needs a kernel with BPF and tc clsact, and iproute2 built with libbpf",
    )
}

/// A scratch folder for the checks' inputs and outputs, removed when dropped.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Result<Self> {
        let dir = util::target_dir()
            .join("xtask-deps")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.path(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Compiles [`BPF_PROG`] after `includes` into `<name>.o` with `clang -target bpf`.
    fn compile_bpf(&self, name: &str, includes: &str) -> Result<()> {
        let src = self.write(&format!("{name}.c"), &format!("{includes}{BPF_PROG}"))?;
        let mut clang = Command::new(std::env::var_os("CLANG").unwrap_or_else(|| "clang".into()));
        clang.args(["-O2", "-g", "-target", "bpf"]);
        if let Some(multiarch) = multiarch_include() {
            clang.arg("-I").arg(multiarch);
        }
        clang
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(self.path(&format!("{name}.o")));
        output(&mut clang).map(drop)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/include/<multiarch>` (for `<asm/types.h>`), as ebpf/build.rs uses.
fn multiarch_include() -> Option<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        _ => return None,
    };
    Some(Path::new("/usr/include").join(arch))
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

#[cfg(test)]
mod elf_tests {
    use super::has_interpreter;

    #[test]
    fn a_dynamic_executable_names_its_interpreter_and_other_bytes_do_not() {
        // /bin/sh is dynamically linked on Debian and Ubuntu.
        let sh = std::fs::read("/bin/sh").expect("reading /bin/sh");
        assert!(has_interpreter(&sh), "/bin/sh should be dynamic");
        assert!(!has_interpreter(b"#!/bin/sh\necho ld-linux\n"));
        assert!(!has_interpreter(b"\x7fELF\x02"));
    }
}
