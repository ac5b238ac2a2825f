//! Supervision of the lab's `meshgate` processes: detached spawning into a
//! namespace, liveness, signals, log tails.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

pub use libc::{SIGHUP, SIGKILL, SIGTERM, SIGUSR1, SIGUSR2};

/// Starts `ip netns exec NETNS BIN ARGS...` in its own process group, stdin
/// null, stdout and stderr appended to `log`. Returns its pid.
pub fn spawn(bin: &Path, netns: &str, args: &[String], log: &Path) -> Result<u32> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    let io = |what: String| move |source| LabError::Io { what, source };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("opening log {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("opening log {}", log.display())))?;
    // No namespace: the host's (containerd, whose runc needs the host's
    // cgroup mounts, which `ip netns exec` hides by remounting /sys).
    let mut cmd = if netns.is_empty() {
        Command::new(bin)
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]).arg(bin);
        c
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(io(format!(
            "starting `ip netns exec {netns} {} {}`",
            bin.display(),
            args.join(" ")
        )))?;
    Ok(child.id())
}

/// Reaps `pid` if it is our exited child (so it does not linger as a zombie).
fn reap(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only reads/writes `status`; a pid that is
    // not our child yields ECHILD, which we ignore.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// Is the process there and not a zombie?
pub fn alive(pid: u32) -> bool {
    reap(pid);
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the `(comm)` field, which may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Is `pid` a live meshgate process (guards against a reused pid)?
pub fn is_meshgate(pid: u32) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("meshgate"))
            .unwrap_or(false)
}

pub fn signal(pid: u32, sig: i32) -> Result<()> {
    let p = i32::try_from(pid).map_err(|_| LabError::Io {
        what: format!("signalling pid {pid}"),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(p, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(LabError::Io {
            what: format!("sending signal {sig} to pid {pid}"),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to every live meshgate pid, then SIGKILL to those still there
/// after `grace`. Returns how many were signalled.
pub fn terminate(pids: &[u32], grace: Duration) -> usize {
    let targets: Vec<u32> = pids.iter().copied().filter(|p| is_meshgate(*p)).collect();
    for pid in &targets {
        if let Err(e) = signal(*pid, SIGTERM) {
            tracing::warn!(pid, error = %e, "SIGTERM failed");
        }
    }
    let deadline = Instant::now() + grace;
    for pid in &targets {
        let left = deadline.saturating_duration_since(Instant::now());
        if !wait_exit(*pid, left) {
            tracing::warn!(pid, "still running after SIGTERM; sending SIGKILL");
            let _ = signal(*pid, SIGKILL);
            wait_exit(*pid, Duration::from_secs(1));
        }
    }
    targets.len()
}

/// Stops one process: `sig`, wait up to `grace`, then SIGKILL. Returns
/// whether it needed SIGKILL.
pub fn stop(pid: u32, sig: i32, grace: Duration) -> Result<bool> {
    signal(pid, sig)?;
    if wait_exit(pid, grace) {
        return Ok(false);
    }
    signal(pid, SIGKILL)?;
    wait_exit(pid, Duration::from_secs(2));
    Ok(true)
}

/// The last `n` lines of a log file (or why there are none).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return "    (empty)".to_string();
            }
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read: {e})"),
    }
}

/// Does the process `pid` (in its network namespace) have a TCP socket
/// listening on `ip:port` (or the wildcard)?
pub fn listening(pid: u32, ip: Ipv4Addr, port: u16) -> bool {
    bound(pid, "tcp", "0A", ip, port)
}

/// Does the network namespace of `pid` have an unconnected UDP socket
/// bound to `ip:port` (or the wildcard)? (Like [`listening`], it reads the
/// namespace's socket table: any process of the namespace counts.)
pub fn listening_udp(pid: u32, ip: Ipv4Addr, port: u16) -> bool {
    // UDP sockets that are not connected show state 07 (TCP_CLOSE).
    bound(pid, "udp", "07", ip, port)
}

fn bound(pid: u32, table: &str, state_want: &str, ip: Ipv4Addr, port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
        return false;
    };
    let want = format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    let any = format!("00000000:{port:04X}");
    text.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1).unwrap_or_default();
        let state = f.nth(1).unwrap_or_default();
        state == state_want && (local == want || local == any)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_bogus_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
    }

    #[test]
    fn sees_its_own_udp_and_tcp_sockets() {
        let me = std::process::id();
        let lo = Ipv4Addr::LOCALHOST;
        let udp = std::net::UdpSocket::bind((lo, 0)).expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        assert!(listening_udp(me, lo, port));
        assert!(!listening(me, lo, port) || std::net::TcpStream::connect((lo, port)).is_ok());
        let tcp = std::net::TcpListener::bind((lo, 0)).expect("bind tcp");
        let tport = tcp.local_addr().expect("addr").port();
        assert!(listening(me, lo, tport));
        drop(udp);
        assert!(!listening_udp(me, lo, port));
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = std::env::temp_dir().join(format!("mg-lab-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join("x.log");
        let text: String = (0..20).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).expect("write");
        let tail = log_tail(&p, 3);
        assert_eq!(tail, "    line 17\n    line 18\n    line 19");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
