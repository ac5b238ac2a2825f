//! `cargo xtask kernel-lab [-- CMD...]`: the kernel paths, run for real.
//!
//! The build machines' kernel has no WireGuard and no ESP. The kernel lab
//! boots Debian's own kernel (`linux-image-amd64`, 6.1, with the wireguard,
//! esp4, xfrm and vxlan modules) under qemu with virtme-ng, over the host's
//! filesystem shared read-only (qemu-system-x86, linux-image-amd64,
//! busybox-static and python3-venv are installed when missing, virtme-ng
//! from PyPI into a venv under target/), and runs inside it the kernel-path
//! end-to-end tests (`tests/tests/kernel.rs`, `#[ignore]`d on the host),
//! meshgate-ebpf's root-only tests and a few eBPF datapath end-to-end tests
//! ([`DATAPATH_TESTS`]; 6.1 has no TCX, so they run the tc clsact
//! fallback), or CMD.
//! qemu runs under TCG emulation: a KVM guest hangs at boot here (no nested
//! virtualisation), so the lab says so and does not try KVM.
//!
//! The VM's result comes back as a marker line on its console, so a VM that
//! does not boot, or a test that fails, fails the stage with the reason.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::deps::{self, Prereq};
use crate::util::{self, output};

/// The kernel series the lab boots.
const KERNEL_SERIES: &str = "6.1.";
/// Printed by the guest script as its last line: `<marker> <exit code>`.
const MARKER: &str = "MESHGATE-KERNEL-LAB-EXIT";

pub fn run(args: &[&str]) -> Result<()> {
    if args == ["--prepare"] {
        util::require_root()?;
        let kernel = prerequisites()?;
        eprintln!(
            "kernel lab: ready: {} (kernel {}) and virtme-ng",
            kernel.image.display(),
            kernel.release
        );
        return Ok(());
    }
    run_with(args, &mut |_| {})
}

/// `cargo xtask kernel-lab --prepare` running in the background while
/// `cargo xtask test` builds and tests on the host: on a fresh machine
/// installing qemu and Debian's kernel (two initramfs builds) and virtme-ng
/// takes minutes that need not wait for the last step. Only a head start:
/// the lab's step checks its prerequisites again by use, and says why when
/// they still fail.
pub struct Preparing {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

impl Preparing {
    /// Runs this binary's `kernel-lab --prepare`, its output into a log
    /// under target/kernel-lab, shown when [`Preparing::finish`] is called.
    pub fn start() -> Result<Self> {
        let dir = util::target_dir().join("kernel-lab");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("prepare.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {} twice", log.display()))?;
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        let child = Command::new(&exe)
            .args(["kernel-lab", "--prepare"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting `{} kernel-lab --prepare`", exe.display()))?;
        eprintln!(
            "kernel lab: installing its prerequisites in the background (log: {})",
            log.display()
        );
        Ok(Self {
            child: Some(child),
            log,
            started: Instant::now(),
        })
    }

    /// Waits for the background run and prints its log. Its failure is
    /// told, not returned: the lab's own check of its prerequisites decides.
    pub fn finish(mut self) {
        let status = self.child.take().map(|mut c| c.wait());
        let took = self.started.elapsed().as_secs_f64();
        let verdict = match status {
            Some(Ok(s)) if s.success() => "done".to_owned(),
            Some(Ok(s)) => format!("failed ({s}); the lab checks again below"),
            Some(Err(e)) => format!("could not be waited for ({e}); the lab checks again below"),
            None => "not running".to_owned(),
        };
        eprintln!(
            "kernel lab: background preparation {verdict}, {took:.0} s after it started; its log ({}):",
            self.log.display()
        );
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text.lines().for_each(|l| eprintln!("  | {l}")),
            Err(e) => eprintln!("  (cannot read it: {e})"),
        }
    }
}

impl Drop for Preparing {
    /// A run that stops early still waits for it: killing apt-get or dpkg
    /// in the middle of an install would leave the machine half set up.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            eprintln!("kernel lab: waiting for the background preparation to end");
            let _ = child.wait();
        }
    }
}

/// [`run`], handing every line of the VM's console to `on_line` too.
pub fn run_with(args: &[&str], on_line: &mut dyn FnMut(&str)) -> Result<()> {
    util::require_root()?;
    let started = Instant::now();
    let kernel = prerequisites()?;
    let cmd: String = match args {
        [] => {
            // The build needs the host's own prerequisites (clang, libbpf
            // headers, ...), as `cargo xtask test` does.
            deps::run()?;
            let tests = build_tests()?;
            for (name, why) in KERNEL_TESTS_SKIPPED {
                eprintln!("kernel lab: not in the default run: {name} ({why})");
            }
            default_script(&tests)
        }
        ["--", rest @ ..] | rest => {
            if rest.is_empty() {
                bail!("cargo xtask kernel-lab -- CMD: CMD is missing");
            }
            rest.join(" ")
        }
    };
    let rc = match boot(&kernel, &cmd, on_line) {
        // Debian's 6.1 under TCG has panicked now and then in the middle of
        // a test (seen twice in the IPsec world with the eBPF datapath; not
        // reproduced since, the console was not kept then). Once more, loudly:
        // a second panic fails the step.
        Err(e) if e.downcast_ref::<Panicked>().is_some() => {
            eprintln!(
                "kernel lab: {e:#}\nkernel lab: the guest kernel panicked (not a test's \
                 failure); running the lab's command once more"
            );
            boot(&kernel, &cmd, on_line)
                .context("the guest kernel panicked on the first try too")?
        }
        other => other?,
    };
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "kernel lab: kernel {} (Debian, qemu TCG), {took:.0} s in all, exit code {rc}",
        kernel.release
    );
    if rc != 0 {
        bail!("the kernel lab's command failed in the VM (exit code {rc}; its output is above)");
    }
    Ok(())
}

struct Kernel {
    image: PathBuf,
    release: String,
}

/// The lab's prerequisites, each checked by use ([`deps::ensure`]).
const PREREQS: &[Prereq] = &[
    Prereq {
        what: "qemu-system-x86_64",
        package: Some("qemu-system-x86"),
        check: |_| output(Command::new("qemu-system-x86_64").arg("--version")).map(drop),
    },
    Prereq {
        what: "Debian's 6.1 kernel with the wireguard module (/boot, /lib/modules)",
        package: Some("linux-image-amd64"),
        check: |_| {
            find_kernel().map(drop).with_context(|| {
                format!("no /boot/vmlinuz-{KERNEL_SERIES}* with WireGuard modules")
            })
        },
    },
    Prereq {
        // virtme-ng builds the guest's initramfs (Debian's kernel has its
        // root filesystem drivers as modules) with busybox.
        what: "busybox (virtme-ng's initramfs)",
        package: Some("busybox-static"),
        check: |_| output(Command::new("busybox").arg("true")).map(drop),
    },
    Prereq {
        // virtme-ng comes from PyPI into a venv of the lab's own.
        what: "python3 -m venv (with pip)",
        package: Some("python3-venv"),
        check: |s| {
            output(
                Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(s.dir().join("venv")),
            )
            .map(drop)
        },
    },
];

/// qemu, Debian's 6.1 kernel with its modules, and virtme-ng.
fn prerequisites() -> Result<Kernel> {
    deps::ensure(PREREQS)?;
    let kernel = find_kernel().context("Debian's 6.1 kernel went away after its check")?;
    if vng().is_none() {
        let venv = venv_dir();
        eprintln!(
            "kernel lab: installing virtme-ng from PyPI into {}",
            venv.display()
        );
        util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("making the kernel lab's python venv")?;
        util::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "virtme-ng"]))
            .context("installing virtme-ng (`pip install virtme-ng`) failed: is PyPI reachable?")?;
        if vng().is_none() {
            bail!(
                "`vng` does not run after `pip install virtme-ng` in {}",
                venv.display()
            );
        }
    }
    Ok(kernel)
}

/// The kernel lab's own python venv, for virtme-ng.
fn venv_dir() -> PathBuf {
    util::target_dir().join("kernel-lab").join("venv")
}

/// The `vng` that runs: the lab venv's, else one on PATH.
fn vng() -> Option<PathBuf> {
    [venv_dir().join("bin/vng"), PathBuf::from("vng")]
        .into_iter()
        .find(|v| util::succeeds(Command::new(v).arg("--version")))
}

/// `/boot/vmlinuz-6.1.*` whose modules include WireGuard.
fn find_kernel() -> Option<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            let wg = Path::new("/lib/modules")
                .join(&release)
                .join("kernel/drivers/net/wireguard");
            (release.starts_with(KERNEL_SERIES) && wg.is_dir()).then(|| Kernel {
                image: e.path(),
                release,
            })
        })
        .collect();
    found.sort_by(|a, b| a.release.cmp(&b.release));
    found.pop()
}

/// The eBPF datapath's end-to-end tests the default run picks, by suite
/// (`tests/tests/<suite>.rs`). TCG is slow: a 2-node world with the eBPF
/// datapath takes ~2 minutes (each agent's load through the verifier ~15 s),
/// so one e2e test (reach and identity through real agents, VXLAN and
/// kernel WireGuard) and the rest from meshgate-ebpf ([`EBPF_TESTS`]).
const DATAPATH_TESTS: &[(&str, &[&str])] = &[(
    "datapath",
    &["pod_traffic_crosses_nodes_in_vxlan_with_the_source_identity_as_vni_inside_wireguard"],
)];

/// meshgate-ebpf's root-only tests (`ebpf/tests/<file>.rs`) the default run
/// picks (all of a file when none are named), loaded through 6.1's verifier
/// and attached with tc clsact (no TCX there): restarts under traffic with no
/// packet without a program and policy enforced throughout, one policy
/// verdict, one service, strict mode. (All five files pass on 6.1 but take
/// ~10 minutes under TCG: run them with `cargo xtask kernel-lab -- CMD`.)
const EBPF_TESTS: &[(&str, &[&str])] = &[
    ("tc_fallback", &[]),
    (
        "policy",
        &["allowed_flow_passes_denied_flow_is_dropped_counted_and_reported"],
    ),
    (
        "lb",
        &["tcp_and_udp_to_a_vip_reach_a_backend_and_replies_come_from_the_vip"],
    ),
    (
        "mesh",
        &["strict_mode_drops_pod_traffic_to_a_remote_node_that_would_leave_unencrypted"],
    ),
    (
        "egress",
        &["a_selected_pod_leaves_through_the_gateway_with_its_egress_ip"],
    ),
];

/// Kernel tests (`tests/tests/kernel.rs`) the default run leaves out to keep
/// the stage in budget, each with why; `cargo xtask kernel-lab -- CMD` runs
/// them. The run says so when it starts.
const KERNEL_TESTS_SKIPPED: &[(&str, &str)] = &[(
    "ipsec_mesh_carries_only_esp_rotates_and_restarts_losing_nothing",
    "the IPsec world with the eBPF datapath in strict mode runs the same checks (ESP only, \
     secret rotation, restart) over the same SAs; this one differs only in routing pod \
     CIDRs straight into the XFRM interface",
)];

/// Whether the default run adds [`DATAPATH_TESTS`]: off to keep the stage
/// in budget, since the kernel tests' reach world and the IPsec world in
/// strict mode already run the eBPF datapath end to end on 6.1 (VXLAN in
/// kernel WireGuard, and in ESP) through real agents.
const RUN_DATAPATH_E2E: bool = false;

/// What the default run needs: the release binaries and the test binaries.
struct Tests {
    meshgate: PathBuf,
    kernel_tests: PathBuf,
    /// meshgate-ebpf's test binaries with the tests picked from each.
    ebpf: Vec<(PathBuf, &'static [&'static str])>,
    /// The datapath e2e binaries with the tests picked from each.
    datapath: Vec<(PathBuf, &'static [&'static str])>,
    /// meshgate-tunnel's IPsec test between namespaces (`ipsec_netns`).
    ipsec: PathBuf,
}

fn build_tests() -> Result<Tests> {
    util::run(util::cargo().args(["build", "-p", "meshgate-gateway", "--release"]))?;
    let mut e2e = vec!["kernel"];
    e2e.extend(DATAPATH_TESTS.iter().map(|(suite, _)| *suite));
    let e2e = test_binaries("meshgate-e2e", &e2e)?;
    let ebpf_files: Vec<&str> = EBPF_TESTS.iter().map(|(file, _)| *file).collect();
    let ebpf = test_binaries("meshgate-ebpf", &ebpf_files)?;
    let tunnel = test_binaries("meshgate-tunnel", &["ipsec_netns"])?;
    let exe = |bins: &std::collections::BTreeMap<String, PathBuf>, name: &str| {
        bins.get(name)
            .cloned()
            .with_context(|| format!("cargo built no executable for the test target {name}"))
    };
    Ok(Tests {
        meshgate: util::meshgate_bin(),
        kernel_tests: exe(&e2e, "kernel")?,
        ipsec: exe(&tunnel, "ipsec_netns")?,
        ebpf: EBPF_TESTS
            .iter()
            .map(|(file, tests)| Ok((exe(&ebpf, file)?, *tests)))
            .collect::<Result<_>>()?,
        datapath: DATAPATH_TESTS
            .iter()
            .map(|(suite, tests)| Ok((exe(&e2e, suite)?, *tests)))
            .collect::<Result<_>>()?,
    })
}

/// Builds the `--test` targets `tests` of `package` (release) without
/// running them: target name -> executable.
fn test_binaries(
    package: &str,
    tests: &[&str],
) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut cmd = util::cargo();
    cmd.args(["test", "--release", "-p", package]);
    for t in tests {
        cmd.args(["--test", t]);
    }
    cmd.args(["--no-run", "--message-format=json"]);
    let out =
        output(&mut cmd).with_context(|| format!("building the kernel lab's {package} tests"))?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| {
            let name = v["target"]["name"].as_str()?.to_owned();
            let exe = v["executable"].as_str()?;
            tests
                .contains(&name.as_str())
                .then(|| (name, PathBuf::from(exe)))
        })
        .collect())
}

/// The guest's default command: the kernel tests (the ignored ones: they
/// need this kernel: kernel WireGuard and IPsec worlds), the IPsec test
/// between namespaces, meshgate-ebpf's root-only tests, then the picked eBPF
/// datapath end-to-end tests (on 6.1 they attach with tc clsact: no TCX).
/// Every binary runs even after one fails; the exit code is 1 if any did.
fn default_script(t: &Tests) -> String {
    let bin = t.meshgate.display();
    // Under TCG a world takes longer to form than `lab up`'s 30 s.
    let skips: String = KERNEL_TESTS_SKIPPED
        .iter()
        .map(|(name, _)| format!(" --skip {name}"))
        .collect();
    let mut steps = vec![
        format!(
            "MESHGATE_BIN={bin} MESHGATE_LAB_UP_TIMEOUT=120 {} --ignored --test-threads=1{skips}",
            t.kernel_tests.display()
        ),
        format!("{} --ignored --test-threads=1", t.ipsec.display()),
    ];
    for (exe, tests) in &t.ebpf {
        let exact = if tests.is_empty() { "" } else { " --exact" };
        steps.push(format!(
            "{} --ignored{exact} --test-threads=1 {}",
            exe.display(),
            tests.join(" ")
        ));
    }
    for (exe, tests) in t.datapath.iter().filter(|_| RUN_DATAPATH_E2E) {
        // Under TCG each agent takes ~15 s to load the programs (the
        // verifier), so `lab up` gets longer than its 30 s.
        steps.push(format!(
            "MESHGATE_BIN={bin} MESHGATE_LAB_UP_TIMEOUT=120 {} --exact --test-threads=1 {}",
            exe.display(),
            tests.join(" ")
        ));
    }
    let mut script = String::from("rc=0; ");
    for step in steps {
        // Timed, so the lab's log shows where the minutes go.
        script.push_str(&format!(
            "s=$(date +%s); {step} || rc=1; echo \"kernel lab: step took $(( $(date +%s) - s )) s\"; "
        ));
    }
    script.push_str("exit $rc");
    script
}

/// Boots the VM, runs `cmd` in it and returns its exit code.
fn boot(kernel: &Kernel, cmd: &str, on_line: &mut dyn FnMut(&str)) -> Result<i32> {
    // In the guest: modules, bpffs, a writable /run, then the command; the
    // last line carries its exit code back.
    let script = format!(
        "uname -r; modprobe -a wireguard tun vxlan veth esp4 xfrm_user 2>&1; \
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; \
         mkdir -p /run/meshgate /run/netns; \
         cd {root}; ({cmd}); echo {MARKER} $?",
        root = util::repo_root().display(),
    );
    // virtme-ng hands `--exec` to the guest on the kernel command line,
    // which the kernel cuts at 2048 bytes (the guest then hangs with no
    // output): the script goes in a file, which the guest sees through the
    // shared host filesystem.
    let script_file = util::target_dir()
        .join("kernel-lab")
        .join(format!("guest-{}.sh", std::process::id()));
    if let Some(dir) = script_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&script_file, format!("{script}\n"))
        .with_context(|| format!("writing the guest script {}", script_file.display()))?;
    let exec = format!("sh {}", script_file.display());
    eprintln!(
        "kernel lab: booting {} under qemu TCG (KVM guests hang on this host), then: {cmd}",
        kernel.image.display()
    );
    let vng_bin = vng().context("virtme-ng's `vng` does not run")?;
    let mut vng = Command::new(&vng_bin);
    // vng runs its siblings (virtme-run, ...) by name: the venv's bin first.
    if let Some(bin) = vng_bin.parent().filter(|d| !d.as_os_str().is_empty()) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(dirs) {
            vng.env("PATH", joined);
        }
    }
    vng.arg("--disable-kvm")
        .arg("--verbose")
        .arg("--run")
        .arg(&kernel.image)
        .args(["--cpus", "2", "--memory", "4G", "--exec", &exec])
        .current_dir(util::repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Piped, never inherited: virtme-ng reopens its stderr (through
        // /dev/stderr, truncating a log file it was redirected to).
        .stderr(Stdio::piped());
    eprintln!("$ {}", util::describe(&vng));
    let mut child = vng
        .spawn()
        .context("starting `vng` (virtme-ng): is it installed and on PATH?")?;
    // With `-v` the guest kernel's console comes on vng's stderr: its
    // lines go to a log file (boot noise), everything else is shown; the
    // last kernel lines are kept to show why a VM died.
    let console_log = util::target_dir().join("kernel-lab").join("console.log");
    let mut log = std::fs::File::create(&console_log)
        .with_context(|| format!("creating {}", console_log.display()))?;
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut last = std::collections::VecDeque::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if is_kernel_line(&line) {
                    if last.len() == KERNEL_LINES_KEPT {
                        last.pop_front();
                    }
                    last.push_back(line);
                } else {
                    eprintln!("{line}");
                }
            }
            last
        })
    });
    let mut rc = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the VM's console")?;
            if let Some(code) = line.trim().strip_prefix(MARKER) {
                rc = code.trim().parse::<i32>().ok();
                continue;
            }
            println!("{line}");
            on_line(&line);
        }
    }
    let status = child.wait().context("waiting for the VM")?;
    let kernel_lines = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let _ = std::fs::remove_file(&script_file);
    match rc {
        Some(rc) => Ok(rc),
        None => {
            eprintln!(
                "kernel lab: the guest kernel's last {} console lines (all of them: {}):",
                kernel_lines.len(),
                console_log.display()
            );
            for line in &kernel_lines {
                eprintln!("  {line}");
            }
            // virtme-ng boots with panic=-1 and -no-reboot: 255 is a panic.
            if status.code() == Some(255) {
                return Err(Panicked.into());
            }
            bail!(
                "the VM ended ({status}) without reporting its command's exit code: it did not \
                 boot or the command never finished (the console output is above)"
            )
        }
    }
}

/// The VM ended with virtme-ng's exit code for a guest kernel panic.
#[derive(Debug)]
struct Panicked;

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the VM ended (exit status 255) without reporting its command's exit code: the \
             guest kernel panicked (its last console lines are above)"
        )
    }
}

impl std::error::Error for Panicked {}

/// How many of the guest kernel's console lines [`boot`] keeps to show.
const KERNEL_LINES_KEPT: usize = 80;

/// A kernel console line: `[    1.904391] ...`.
fn is_kernel_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim_start();
            !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

#[cfg(test)]
mod tests {
    use super::is_kernel_line;

    #[test]
    fn kernel_console_lines_are_told_from_the_commands_output() {
        assert!(is_kernel_line("[    1.904391] loop: module loaded"));
        assert!(is_kernel_line(
            "[  265.1] Kernel panic - not syncing: Fatal exception"
        ));
        assert!(!is_kernel_line("test ipsec_mesh ... ok"));
        assert!(!is_kernel_line("[c1/n1] agent started"));
        assert!(!is_kernel_line("[] empty"));
    }
}
