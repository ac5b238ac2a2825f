//! Persistence of the registry state behind the [`Store`] seam.
//! [`db::DbStore`] (the default, `embedded`) keeps one record per node,
//! endpoint, identity and allocation in `<state_dir>/state.redb`.
//! [`EmbeddedStore`] is the earlier store, `<state_dir>/state.json`, written by
//! write-to-temp + fsync + rename (+ fsync of the directory) after every
//! change; it reads a `state.json` that [`db::DbStore`] migrates.
//! A corrupt file is an error naming the file; it is never overwritten silently.
//! [`etcd::EtcdStore`] shares the state between several discovery replicas
//! of one cluster ([`StoreChoice`] picks one from `--store`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Event;
use crate::registry::{Registry, RegistryState};

mod choice;
pub mod db;
pub mod etcd;
pub mod remote;

pub use choice::{Compaction, StoreChoice};
pub use remote::{RemoteChange, RemotePatch, RemoteState, StoreMark};

/// Version of the `state.json` layout.
pub const STATE_FORMAT: u32 = 1;
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state dir {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt ({reason}); it was left untouched: repair it, or move it \
         away to start with an empty registry"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("state file {path} has format {found}, this discovery reads format {STATE_FORMAT}; use a matching meshgate version")]
    Format { path: PathBuf, found: u32 },
    #[error("cannot write state file {path} while {step}: {source}")]
    Write {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the state database {path} failed while {op}: {reason}; if it is damaged, move it \\
         away (with state.json.migrated beside it, rename that back to state.json to start \\
         from the last migrated state)"
    )]
    Db {
        path: PathBuf,
        op: &'static str,
        reason: String,
    },
    #[error("cannot encode state for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "cannot reach etcd at {url}: {reason}; start etcd there (Debian: apt-get install \
         etcd-server) or point --store at a running one (etcd://HOST:PORT)"
    )]
    EtcdUnreachable { url: String, reason: String },
    #[error("etcd at {url} failed while {op}: {reason}")]
    Etcd {
        url: String,
        op: &'static str,
        reason: String,
    },
    #[error(
        "state in etcd at {url} (key {key}) is not readable ({reason}); it was left untouched: \
         repair or delete the key"
    )]
    EtcdCorrupt {
        url: String,
        key: String,
        reason: String,
    },
    #[error("cannot encode state for etcd at {url}: {source}")]
    EtcdEncode {
        url: String,
        source: serde_json::Error,
    },
    #[error(
        "a record of {bytes} bytes (one node's endpoints) is over the {} bytes one etcd \
         request may carry; the etcd store cannot keep it",
        etcd::MAX_TXN_BYTES
    )]
    EtcdTooLarge { url: String, bytes: usize },
    /// Another replica changed the state first; this is what it wrote.
    #[error("another discovery replica changed the state first (etcd revision {})", .0.mod_revision)]
    Conflict(Box<RemoteState>),
}

/// Where the registry state lives.
pub trait Store: Send {
    /// The stored state, or `None` when nothing was stored yet.
    fn load(&mut self) -> Result<Option<RegistryState>, StoreError>;
    /// Stores `state`, reached by the change whose events are `events`,
    /// durably before returning. A shared store refuses with
    /// [`StoreError::Conflict`] when another replica changed it since this
    /// one last loaded or adopted it.
    fn save(&mut self, state: &RegistryState, events: &[Event]) -> Result<(), StoreError>;
    /// Stores the change `events` made to the state `registry` now holds
    /// (after one load or save): what the server calls for each change. A
    /// store of records writes only those the events touch, without the
    /// whole state; the default saves the whole state.
    fn save_change(&mut self, registry: &Registry, events: &[Event]) -> Result<(), StoreError> {
        self.save(&registry.state(), events)
    }
    /// Records that `node` renewed its lease here, for the other replicas.
    fn renewed(&mut self, _node: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Changes made by other replicas, in store order (taken once).
    fn take_remote(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RemoteChange>> {
        None
    }
    /// If a state at `mark` is newer than what this replica holds: the
    /// version held now; `None` if it is not newer.
    fn newer(&self, _mark: StoreMark) -> Option<i64> {
        None
    }
    /// Records `remote` as the state this replica holds (after
    /// [`Store::newer`], once the registry took it: a state this replica
    /// could not take is never overwritten by it).
    fn adopt(&mut self, _remote: &RemoteState) {}
    /// [`Store::adopt`] for a change taken record by record.
    fn adopt_patch(&mut self, _patch: &RemotePatch) {}
    /// Everything stored, read now (shared stores; `None` for the others):
    /// for another replica's change that cannot be taken record by record.
    fn read_remote(&mut self) -> Result<Option<RemoteState>, StoreError> {
        Ok(None)
    }
    /// Whether this replica sees every lease renewal, so it may expire nodes.
    fn may_expire(&self) -> bool {
        true
    }
    /// Where the state is kept, for messages.
    fn describe(&self) -> String;
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    #[serde(flatten)]
    state: RegistryState,
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// The default store: one JSON file in a directory.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    dir: PathBuf,
}

impl EmbeddedStore {
    /// Uses `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(EmbeddedStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

impl Store for EmbeddedStore {
    fn load(&mut self) -> Result<Option<RegistryState>, StoreError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        };
        let FormatOnly { format } = serde_json::from_str(&text).map_err(corrupt)?;
        if format != STATE_FORMAT {
            return Err(StoreError::Format {
                path,
                found: format,
            });
        }
        let file: StateFile = serde_json::from_str(&text).map_err(corrupt)?;
        Ok(Some(file.state))
    }

    fn save(&mut self, state: &RegistryState, _events: &[Event]) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let doc = StateFile {
            format: STATE_FORMAT,
            state: state.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|source| StoreError::Encode {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        let write = |step: &'static str| {
            let path = path.clone();
            move |source| StoreError::Write { path, step, source }
        };
        let mut f = fs::File::create(&tmp).map_err(write("creating the temp file"))?;
        f.write_all(&bytes)
            .map_err(write("writing the temp file"))?;
        f.sync_all().map_err(write("syncing the temp file"))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(write("renaming the temp file into place"))?;
        // Make the rename durable.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(write("syncing the state dir"))?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::Node;
    use crate::registry::{Registry, RegistryConfig};
    use crate::test_support::pb_node;

    /// Drives a registry through `steps` random changes (seeded):
    /// registrations, some narrowing a node's pod CIDR, endpoint reports,
    /// deregistrations and expiries, over six nodes; `each` gets the
    /// registry after every change, with the change's events.
    pub(crate) fn random_changes(
        seed: u64,
        steps: usize,
        mut each: impl FnMut(&Registry, &[Event], usize),
    ) {
        use base64::Engine as _;
        let mut r = Registry::new(RegistryConfig {
            cluster: "c1".into(),
            cluster_id: 1,
            lease_ttl_ms: 1000,
            pod_cidrs: Vec::new(),
        })
        .unwrap();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut now = 0;
        for step in 0..steps {
            let n = next(6) as u8;
            let name = format!("n{n}");
            let events = match next(10) {
                0..=2 => {
                    let prefix = if next(3) == 0 { 25 } else { 24 };
                    let mut p = pb_node(&name, &format!("10.1.{n}.0/{prefix}"));
                    p.wg_public_key = base64::engine::general_purpose::STANDARD.encode([n + 1; 32]);
                    r.register(Node::try_from(p).unwrap(), now)
                        .map(|x| x.events)
                        .unwrap_or_default()
                }
                3..=7 => {
                    let eps = (0..next(6))
                        .map(|i| crate::pb::Endpoint {
                            ip: format!("10.1.{n}.{}", 1 + next(200)),
                            name: format!("p{i}"),
                            labels: [("app".to_string(), format!("a{}", next(8)))].into(),
                            ..Default::default()
                        })
                        .collect();
                    r.report_endpoints(&name, "c1", eps)
                        .map(|x| x.events)
                        .unwrap_or_default()
                }
                8 => r.deregister(&name, "c1").unwrap(),
                _ => {
                    now += 600;
                    r.expire(now)
                }
            };
            each(&r, &events, step);
        }
    }

    /// A registry with one node and one endpoint (one identity).
    pub(crate) fn sample() -> RegistryState {
        let mut r = Registry::new(RegistryConfig {
            cluster: "c1".into(),
            cluster_id: 1,
            lease_ttl_ms: 1000,
            pod_cidrs: Vec::new(),
        })
        .unwrap();
        r.register(Node::try_from(pb_node("n1", "10.1.0.0/24")).unwrap(), 0)
            .unwrap();
        let ep = crate::pb::Endpoint {
            ip: "10.1.0.10".into(),
            name: "a".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        r.report_endpoints("n1", "c1", vec![ep]).unwrap();
        r.state()
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open(&dir.path().join("sub")).unwrap();
        assert!(s.load().unwrap().is_none());
    }

    #[test]
    fn save_then_load_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open(dir.path()).unwrap();
        let state = sample();
        assert_eq!(state.identities.len(), 1);
        assert_eq!(state.endpoints.len(), 1);
        s.save(&state, &[]).unwrap();
        s.save(&state, &[]).unwrap();
        assert_eq!(s.load().unwrap(), Some(state));
        assert!(!dir.path().join("state.json.tmp").exists());
        let text = fs::read_to_string(s.path()).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EmbeddedStore::open(dir.path()).unwrap();
        fs::write(s.path(), "{not json").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(
            e.contains(&s.path().display().to_string()) && e.contains("corrupt"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(s.path()).unwrap(), "{not json");
        fs::write(s.path(), r#"{"format":1,"cluster":"c1"}"#).unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
        fs::write(s.path(), r#"{"format":7}"#).unwrap();
        assert!(matches!(s.load(), Err(StoreError::Format { found: 7, .. })));
    }
}
