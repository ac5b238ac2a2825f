//! Running commands with clear errors, step banners, paths and clean-up guards.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The repository root (xtask lives in `<root>/xtask`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// The release `meshgate` binary that `cargo build -p meshgate-gateway --release` makes.
pub fn meshgate_bin() -> PathBuf {
    target_dir().join("release").join("meshgate")
}

/// The cargo that runs us (so `cargo +toolchain xtask` keeps its toolchain).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    // Crates that compile protos at build time (etcd-client) run the protoc
    // named here, so no system protoc or libprotobuf-dev is needed.
    if let Ok(protoc) = crate::deps::protoc() {
        cmd.env("PROTOC", protoc);
    }
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root() -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask needs root to install packages and build network namespaces; run it as root"
        );
    }
    Ok(())
}

/// `prog arg arg`, quoted where needed, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn spawn_error(cmd: &Command, err: std::io::Error) -> anyhow::Error {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let hint = if err.kind() == std::io::ErrorKind::NotFound {
        format!(
            " (`{prog}` is not installed or not on PATH; `cargo xtask deps` installs the tools)"
        )
    } else {
        String::new()
    };
    anyhow::anyhow!("could not start `{}`: {err}{hint}", describe(cmd))
}

/// Runs a command with inherited stdio, echoing it first; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; on failure the error carries its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`], but a failure is only reported back, never echoed.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command, reading its stdout and stderr line by line (cargo prints
/// its `Running ...` and `error: test failed` lines on stderr): each line goes
/// back to the stream it came from and to `on_line`, in the order they arrive.
/// Fails on a non-zero exit.
pub fn run_tee_all(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(forward_lines(out, false, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(forward_lines(err, true, tx.clone()));
    }
    drop(tx);
    for (is_err, line) in rx {
        // Losing our own stdout or stderr is no reason to stop the command.
        if is_err {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            let mut ours = std::io::stdout();
            let _ = writeln!(ours, "{line}");
            let _ = ours.flush();
        }
        on_line(&line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().context("waiting for a command")?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

fn forward_lines(
    from: impl std::io::Read + Send + 'static,
    is_err: bool,
    tx: std::sync::mpsc::Sender<(bool, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send((is_err, line)).is_err() {
                break;
            }
        }
    })
}

/// `ip netns exec NS prog args...`
pub fn in_netns(ns: &str, prog: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, prog]);
    cmd
}

/// Step banners on stderr with elapsed times.
pub struct Steps {
    started: Instant,
    total: usize,
    done: usize,
}

impl Steps {
    pub fn new(total: usize) -> Self {
        Steps {
            started: Instant::now(),
            total,
            done: 0,
        }
    }

    /// Runs one step between banners; the error names the step.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.done += 1;
        let n = self.done;
        eprintln!("\n==> [{n}/{}] {name}", self.total);
        let t = Instant::now();
        let result = f();
        let took = t.elapsed().as_secs_f64();
        let total = self.started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => eprintln!(
                "<== [{n}/{}] {name}: ok ({took:.1} s, {total:.1} s in all)",
                self.total
            ),
            Err(_) => eprintln!(
                "<== [{n}/{}] {name}: FAILED ({took:.1} s, {total:.1} s in all)",
                self.total
            ),
        }
        result.with_context(|| format!("step {n}/{} `{name}` failed", self.total))
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self> {
        eprintln!("$ {} &", describe(cmd));
        let child = cmd.spawn().map_err(|e| spawn_error(cmd, e))?;
        Ok(ChildGuard {
            child: Some(child),
            what: what.to_string(),
        })
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Has it exited already? (`Some(status)` if so.)
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("checking on {}", self.what)),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for it to exit by itself (SIGKILL after that).
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.stop(0, timeout)
    }

    /// Sends `signal` (0: none), then waits up to `grace` before SIGKILL; returns the exit status.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.what);
        };
        if let Some(status) = child.try_wait().context("checking a child")? {
            return Ok(status);
        }
        if let (true, Ok(pid)) = (signal != 0, libc::pid_t::try_from(child.id())) {
            // SAFETY: kill() on our own, not yet reaped child: the pid is still ours.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().context("checking a child")? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.what);
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("waiting for {} to exit", self.what))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(libc::SIGTERM, Duration::from_secs(3));
        }
    }
}

/// A network namespace made for the run, deleted when dropped.
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Deletes a leftover namespace of that name, then makes it fresh with `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        if netns_exists(name) {
            eprintln!("removing leftover network namespace {name}");
            let _ = output(Command::new("ip").args(["netns", "del", name]));
        }
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let guard = NetnsGuard {
            name: name.to_string(),
        };
        run(in_netns(name, "ip").args(["link", "set", "lo", "up"]))?;
        Ok(guard)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = output(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: {err:#}");
        }
    }
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Waits until something listens on TCP `port` inside namespace `ns`.
pub fn wait_tcp_listen(ns: &str, port: u16, server: &mut ChildGuard) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!("sport = :{port}");
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("the server in {ns} exited before listening on port {port} ({status})");
        }
        let listening = output(in_netns(ns, "ss").args(["-Hltn", &filter]))?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on TCP port {port} in namespace {ns} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
