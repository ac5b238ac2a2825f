//! meshgate lab: scenario YAML and the runner that builds multi-node,
//! multi-cluster worlds from Linux network namespaces on one machine
//! (docs/contracts.md, "Lab addressing"), starts discovery and agents in
//! them, and tears everything down again.
//!
//! Pure parts: [`scenario`] (parse + validate) and [`plan`] (names and
//! addresses). The shell: [`world`] (`ip` commands, processes, world.json)
//! and the per-target commands in [`control`].

pub mod control;
pub mod dns_server;
pub mod error;
pub mod external_server;
pub mod host;
pub mod observe;
pub mod plan;
mod procs;
pub mod report;
pub mod runtime;
pub mod scenario;
pub mod status;
pub mod target;
pub mod world;

pub use control::{
    agent_status, exec, fail, ip, recover, restart, restart_dns_proxy, rotate_key, rotate_secret,
    set_policies, start, status, stop,
};
pub use error::LabError;
pub use host::check_host;
pub use plan::Plan;
pub use report::{NodeRow, Summary};
pub use scenario::Scenario;
pub use status::AgentStatus;
pub use target::{resolve, Target, TargetKind};
pub use world::{build_world_only, down, up, worlds, UpOptions};
