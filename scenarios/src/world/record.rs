//! `world.json`: what a world is and what was created for it, written as it
//! is created so that `down` removes exactly that, even after a crash.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::plan::{world_dir, Plan};

pub const RECORD_FILE: &str = "world.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Component {
    Discovery {
        cluster: String,
    },
    Agent {
        cluster: String,
        node: String,
    },
    /// Discovery replica 2, 3, ... of a cluster (replica 1 is `Discovery`).
    DiscoveryReplica {
        cluster: String,
        replica: u8,
    },
    /// A cluster's etcd (not a `meshgate` process).
    Etcd {
        cluster: String,
    },
    /// The TCP service of an external host (`meshgate lab external-server`).
    External {
        name: String,
    },
    /// The world's upstream DNS server (`meshgate lab dns-server`).
    DnsServer,
    /// A node's DNS proxy (`meshgate dnsproxy`).
    DnsProxy {
        cluster: String,
        node: String,
    },
    /// A node's containerd (`runtime: containerd`; not a `meshgate` process).
    Containerd {
        cluster: String,
        node: String,
    },
}

impl Component {
    /// Discovery replica `k` of `cluster`.
    pub fn discovery(cluster: &str, k: u8) -> Component {
        if k <= 1 {
            Component::Discovery {
                cluster: cluster.to_string(),
            }
        } else {
            Component::DiscoveryReplica {
                cluster: cluster.to_string(),
                replica: k,
            }
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Discovery { cluster } => write!(f, "discovery {cluster}"),
            Component::Agent { cluster, node } => write!(f, "agent {cluster}/{node}"),
            Component::DiscoveryReplica { cluster, replica } => {
                write!(f, "discovery {cluster} replica {replica}")
            }
            Component::Etcd { cluster } => write!(f, "etcd {cluster}"),
            Component::External { name } => write!(f, "service of external {name}"),
            Component::DnsServer => write!(f, "DNS server"),
            Component::DnsProxy { cluster, node } => write!(f, "DNS proxy {cluster}/{node}"),
            Component::Containerd { cluster, node } => write!(f, "containerd {cluster}/{node}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub component: Component,
    pub netns: String,
    /// Arguments after the `meshgate` binary.
    pub args: Vec<String>,
    pub log: PathBuf,
    /// `None` once stopped by the lab.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldRecord {
    pub plan: Plan,
    pub scenario: PathBuf,
    /// Namespaces, recorded just before each is created.
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcessRecord>,
}

pub fn record_path(world: &str) -> PathBuf {
    world_dir(world).join(RECORD_FILE)
}

impl WorldRecord {
    pub fn new(plan: Plan, scenario: &Path) -> WorldRecord {
        WorldRecord {
            plan,
            scenario: scenario.to_path_buf(),
            namespaces: Vec::new(),
            processes: Vec::new(),
        }
    }

    /// The record of a world, `None` if there is none.
    pub fn load(world: &str) -> Result<Option<WorldRecord>> {
        let path = record_path(world);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LabError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LabError::BadFile {
                path,
                problem: e.to_string(),
            })
    }

    /// The record of a world that must be up.
    pub fn load_up(world: &str) -> Result<WorldRecord> {
        WorldRecord::load(world)?.ok_or_else(|| LabError::WorldNotUp {
            world: world.to_string(),
            up: crate::world::worlds(),
        })
    }

    /// Writes the record atomically (temp file + rename).
    pub fn save(&self) -> Result<()> {
        let path = record_path(&self.plan.world);
        let tmp = path.with_extension("json.tmp");
        let io = |what: String| move |source| LabError::Io { what, source };
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::BadFile {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
    }

    pub fn process(&self, component: &Component) -> Option<&ProcessRecord> {
        self.processes.iter().find(|p| &p.component == component)
    }

    /// Sets (or adds) a component's process and saves.
    pub fn set_process(&mut self, rec: ProcessRecord) -> Result<()> {
        match self
            .processes
            .iter_mut()
            .find(|p| p.component == rec.component)
        {
            Some(p) => *p = rec,
            None => self.processes.push(rec),
        }
        self.save()
    }

    pub fn set_pid(&mut self, component: &Component, pid: Option<u32>) -> Result<()> {
        if let Some(p) = self
            .processes
            .iter_mut()
            .find(|p| &p.component == component)
        {
            p.pid = pid;
        }
        self.save()
    }
}
