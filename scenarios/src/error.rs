//! Errors of the lab, each with the facts needed to act on it.

use std::path::PathBuf;
use std::time::Duration;

use crate::plan::PlanError;
use crate::scenario::ScenarioError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("making the world's certificates: {0}")]
    Certs(#[from] meshgate_model::certs::CertError),
    #[error("the lab needs root (network namespaces, veth, TUN): run it as root")]
    NotRoot,
    #[error("{missing}: {fix}")]
    HostMissing { missing: String, fix: String },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    BadFile { path: PathBuf, problem: String },
    #[error("world {world} is already up; run `meshgate lab down {world}` first")]
    WorldUp { world: String },
    #[error(
        "namespaces of world {world} are left from an earlier run ({}); run `meshgate lab down {world}`",
        namespaces.join(", ")
    )]
    Leftovers {
        world: String,
        namespaces: Vec<String>,
    },
    #[error("no lab world is up")]
    NoWorldUp,
    #[error("world {world} is not up (worlds up: {})", list_or_none(up))]
    WorldNotUp { world: String, up: Vec<String> },
    #[error("several lab worlds are up ({}): name one", worlds.join(", "))]
    SeveralWorlds { worlds: Vec<String> },
    #[error("target {target}: {problem}")]
    Target { target: String, problem: String },
    #[error("{component} is not running")]
    NotRunning { component: String },
    #[error("{component} is already running (pid {pid})")]
    AlreadyRunning { component: String, pid: u32 },
    #[error("{component} exited (pid {pid}); last lines of {}:\n{tail}", log.display())]
    ProcessDied {
        component: String,
        pid: u32,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} within {} s", timeout.as_secs_f32())]
    Timeout { what: String, timeout: Duration },
    #[error(
        "no WireGuard handshake within {} s:\n  {}\n{logs}",
        timeout.as_secs_f32(),
        missing.join("\n  ")
    )]
    NoHandshake {
        timeout: Duration,
        missing: Vec<String>,
        logs: String,
    },
    #[error("{error}\n(tearing the world down also failed: {cleanup})")]
    UpFailed {
        error: Box<LabError>,
        cleanup: Box<LabError>,
    },
}

fn list_or_none(worlds: &[String]) -> String {
    if worlds.is_empty() {
        "none".to_string()
    } else {
        worlds.join(", ")
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
