//! Lossless restarts of the userspace backend (issue 14): the old agent
//! keeps forwarding until the new one holds working sessions.
//!
//! 1. `SIGUSR2` to the old agent: its backend keeps the kernel's packets on
//!    its own TUN queue (so the new agent's queue, read nothing until step
//!    3, is sent none as it joins) and starts steering datagrams by
//!    session (see `meshgate_tunnel::userspace`), its async work stops
//!    (discovery session, servers, state files: the runtime is dropped),
//!    and it writes `handoff-old.pid`. Only its WireGuard threads run on.
//! 2. The new agent sees that file with a live pid: it attaches a second
//!    TUN queue (detached from the kernel's choice for now) and joins the
//!    WireGuard port, restores its peers and handshakes with every one.
//!    Peers switch to the new sessions, whose datagrams reach it.
//! 3. Once every peer has a session (or after [`SESSIONS_WAIT`]), the new
//!    agent attaches its TUN queue and writes `handoff-ready`.
//!    Its queue's eBPF steering sends the new queue every packet, so the
//!    old queue only empties.
//! 4. The old agent forwards for [`RX_GRACE`] more (its queue's last
//!    packets, datagrams still in flight on its sessions), detaches its
//!    queue, and exits.
//!
//! The kernel backend and IPsec need none of this: the kernel keeps their
//! state, and the old agent exits at once as before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Agent;

const LOCK_FILE: &str = "agent.lock";
/// How long a starting agent waits for the state directory's lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
const OLD_FILE: &str = "handoff-old.pid";
const READY_FILE: &str = "handoff-ready";
const GENERATION_FILE: &str = "wg-generation";
/// How long the old agent waits for the new one at most.
pub const WAIT_READY: Duration = Duration::from_secs(15);
/// How long the new agent waits for sessions with every peer at most.
pub const SESSIONS_WAIT: Duration = Duration::from_secs(3);
/// How long the old agent still decrypts after the new one took over.
pub const RX_GRACE: Duration = Duration::from_millis(300);

fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks the process exists.
    pid != std::process::id() && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
}

fn read_pid(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Takes the locks that keep one agent per node: the state directory's,
/// and the WireGuard device's in this network namespace (under
/// `/run/meshgate`, keyed by the namespace and the interface, so a second
/// agent with another state directory is refused too: the multi-queue TUN
/// device and the shared WireGuard port would not refuse it). An old agent
/// lets go of both when it starts handing over; this waits up to `wait`.
pub fn lock_node(
    state_dir: &Path,
    interface: &str,
    wait: Duration,
) -> anyhow::Result<Vec<std::fs::File>> {
    let mut held = vec![lock_file(&path(state_dir, LOCK_FILE), wait)?];
    match device_lock_path(interface) {
        Ok(p) => held.push(lock_file(&p, wait)?),
        Err(e) => warn!(error = %e, "cannot lock the node's WireGuard device (is /run writable?)"),
    }
    Ok(held)
}

/// `/run/meshgate/wg-<netns inode>-<interface>.lock`.
fn device_lock_path(interface: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net")?.ino();
    let dir = Path::new("/run/meshgate");
    std::fs::create_dir_all(dir)?;
    Ok(dir.join(format!("wg-{netns}-{interface}.lock")))
}

fn lock_file(p: &Path, wait: Duration) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?;
    let start = Instant::now();
    loop {
        // SAFETY: flock on an open file's fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if start.elapsed() > wait {
            anyhow::bail!(
                "another agent still running on this node holds {}: stop it first \
                 (SIGTERM leaves the mesh), or send it SIGUSR2 to hand over to this one",
                p.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of an old agent handing over to us, if one is.
pub fn incoming(dir: &Path) -> Option<u32> {
    let _ = std::fs::remove_file(path(dir, READY_FILE));
    read_pid(&path(dir, OLD_FILE)).filter(|pid| alive(*pid))
}

/// The generation this process's sessions carry: the last one flipped.
pub fn next_generation(dir: &Path) -> u8 {
    let p = path(dir, GENERATION_FILE);
    let last: u8 = std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    let next = (last + 1) & 1;
    if let Err(e) = std::fs::write(&p, format!("{next}\n")) {
        warn!(path = %p.display(), error = %e, "cannot record the session generation");
    }
    next
}

/// Old agent, at SIGUSR2: says it is handing over (`handoff-old.pid`), so
/// the lab starts the new agent; that one waits for this one's locks, which
/// go with its runtime. `false` if it cannot say so (then it just exits).
pub fn announce(dir: &Path) -> bool {
    match std::fs::write(path(dir, OLD_FILE), format!("{}\n", std::process::id())) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "cannot announce the handover: exiting instead");
            false
        }
    }
}

/// Old agent, after its runtime stopped and its locks went: waits for the
/// new agent, lets go, and exits.
pub fn serve_out(agent: &Agent) -> ! {
    let dir = &agent.cfg.state_dir;
    let me = std::process::id();
    // The runtime's signal handlers are gone with it: SIGTERM and SIGINT
    // stop this process at once again (leaving the device, as a crash).
    // SAFETY: resetting two signals to their default action.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    info!("forwarding until the new agent holds its sessions");
    let start = Instant::now();
    let ready = loop {
        if read_pid(&path(dir, READY_FILE)).is_some_and(|p| p != me) {
            break true;
        }
        if start.elapsed() > WAIT_READY {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if ready {
        // The kernel sends the new agent every packet now: this queue
        // empties, and what is in flight on this process's sessions is
        // still decrypted here.
        std::thread::sleep(RX_GRACE);
        agent.backend.release_tx();
        info!(
            took_ms = start.elapsed().as_millis() as u64,
            "handed over: exiting"
        );
    } else {
        agent.backend.release_tx();
        warn!("no new agent took over within {WAIT_READY:?}: exiting");
    }
    let _ = std::fs::remove_file(path(dir, OLD_FILE));
    std::process::exit(0);
}

/// New agent, when the old one could not share the device (an agent from
/// before multi-queue, or a single-queue device): tells it to go, and
/// waits until it has.
pub fn let_go(dir: &Path, old: u32) {
    let _ = std::fs::write(path(dir, READY_FILE), format!("{}\n", std::process::id()));
    let start = Instant::now();
    while alive(old) && start.elapsed() < WAIT_READY {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// New agent, standing by beside the old one: once every peer has a
/// session, takes the kernel's packets and tells the old agent to go.
pub fn take_over(agent: Arc<Agent>) {
    let spawned = std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            let start = Instant::now();
            while !agent.backend.sessions_ready() && start.elapsed() < SESSIONS_WAIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            let all = agent.backend.sessions_ready();
            if let Err(e) = agent.backend.activate() {
                warn!(error = %e, "taking over from the old agent");
            }
            let dir = &agent.cfg.state_dir;
            let _ = std::fs::write(path(dir, READY_FILE), format!("{}\n", std::process::id()));
            info!(
                sessions_with_every_peer = all,
                took_ms = start.elapsed().as_millis() as u64,
                "took over from the old agent"
            );
        });
    if let Err(e) = spawned {
        warn!(error = %e, "starting the handover thread");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_agent_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOCK_FILE);
        let first = lock_file(&p, Duration::ZERO).unwrap();
        let err = lock_file(&p, Duration::from_millis(50)).unwrap_err();
        assert!(
            err.to_string().contains("another agent still running"),
            "{err}"
        );
        drop(first);
        lock_file(&p, Duration::ZERO).expect("free once the first lets go");
    }

    #[test]
    fn generations_alternate_and_stale_markers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let seen: Vec<u8> = (0..4).map(|_| next_generation(dir.path())).collect();
        assert_eq!(seen, [0, 1, 0, 1]);
        // A marker left by a process that is gone is no handover.
        std::fs::write(dir.path().join(OLD_FILE), "999999999\n").unwrap();
        std::fs::write(dir.path().join(READY_FILE), "1\n").unwrap();
        assert_eq!(incoming(dir.path()), None);
        assert!(
            !dir.path().join(READY_FILE).exists(),
            "a stale ready marker is removed"
        );
    }
}
