//! The embedded store on redb (`<state_dir>/state.redb`): one record per
//! node, endpoint, identity and tunnel-IP allocation, and the revision, each
//! change one write transaction holding only the records that changed
//! (redb's commit is crash-safe: a crash leaves the last committed state).
//! Services have no records: they are the discovery's configuration
//! (`--services`), read again at every start, not state it keeps.
//!
//! redb rather than SQLite: the records are key → JSON value with no query
//! beyond "all of a kind", so a key-value store fits; it is pure Rust (no C
//! library to build or install on a fresh machine) and its commit is
//! durable by default.
//!
//! An existing `state.json` (the store before this one) is migrated on the
//! first start: its state written whole in one transaction, then the file
//! renamed to `state.json.migrated` and kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{EmbeddedStore, Store, StoreError, STATE_FILE};
use crate::model::Event;
use crate::registry::{Registry, RegistryState};

/// The database file in the state dir.
pub const DB_FILE: &str = "state.redb";
/// What `state.json` becomes once migrated.
pub const MIGRATED_FILE: &str = "state.json.migrated";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
const IDENTITIES: TableDefinition<u32, &[u8]> = TableDefinition::new("identities");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");

/// The registry's scalar fields, one record.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    cluster: String,
    cluster_id: u8,
    revision: u64,
}

/// The state as records by key, to diff one save against the last.
#[derive(Default, PartialEq)]
struct Records {
    nodes: BTreeMap<String, Vec<u8>>,
    allocations: BTreeMap<String, Vec<u8>>,
    identities: BTreeMap<u32, Vec<u8>>,
    endpoints: BTreeMap<String, Vec<u8>>,
    meta: Vec<u8>,
}

pub struct DbStore {
    dir: PathBuf,
    db: Database,
    /// Records the last save wrote (upserted or removed).
    written: usize,
}

impl std::fmt::Debug for DbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbStore({})", self.path().display())
    }
}

fn db_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(redb::Error) -> StoreError + 'a {
    move |e| StoreError::Db {
        path: path.to_path_buf(),
        op,
        reason: e.to_string(),
    }
}

fn encode<T: Serialize>(path: &Path, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Encode {
        path: path.to_path_buf(),
        source,
    })
}

fn decode<T: DeserializeOwned>(path: &Path, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("record {what}: {e}"),
    })
}

impl DbStore {
    /// Opens (or creates) the database in `dir`, migrating `state.json`.
    pub fn open(dir: &Path) -> Result<DbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let json = dir.join(STATE_FILE);
        // A state.json to migrate is read first: one that is refused
        // (corrupt, another format) stops here, before any database exists.
        let migrating = if !path.exists() && json.exists() {
            EmbeddedStore::open(dir)?.load()?
        } else {
            None
        };
        let db = Database::create(&path).map_err(|e| StoreError::Db {
            path: path.clone(),
            op: "opening",
            reason: e.to_string(),
        })?;
        let mut store = DbStore {
            dir: dir.to_path_buf(),
            db,
            written: 0,
        };
        store.create_tables()?;
        if let Some(state) = migrating {
            let kept = dir.join(MIGRATED_FILE);
            let moved = store.save(&state, &[]).and_then(|()| {
                std::fs::rename(&json, &kept).map_err(|source| StoreError::Write {
                    path: json.clone(),
                    step: "renaming the migrated state.json",
                    source,
                })
            });
            if let Err(e) = moved {
                // Half a migration is none: the next start tries again.
                drop(store);
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            tracing::info!(from = %json.display(), kept = %kept.display(), "state.json migrated into the database");
        }
        Ok(store)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// Records the last save wrote (upserted or removed), the meta record
    /// included.
    pub fn last_written(&self) -> usize {
        self.written
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let path = self.path();
        let err = db_err(&path, "creating the tables");
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            txn.open_table(META).map_err(|e| err(e.into()))?;
            txn.open_table(NODES).map_err(|e| err(e.into()))?;
            txn.open_table(ALLOCATIONS).map_err(|e| err(e.into()))?;
            txn.open_table(IDENTITIES).map_err(|e| err(e.into()))?;
            txn.open_table(ENDPOINTS).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    fn records(&self, state: &RegistryState) -> Result<Records, StoreError> {
        let path = self.path();
        let mut r = Records {
            meta: meta_record(&path, &state.cluster, state.cluster_id, state.revision)?,
            ..Records::default()
        };
        for (k, n) in &state.nodes {
            r.nodes.insert(k.clone(), encode(&path, n)?);
        }
        for (k, ip) in &state.allocations {
            r.allocations.insert(k.clone(), encode(&path, ip)?);
        }
        for i in &state.identities {
            r.identities.insert(i.id, encode(&path, i)?);
        }
        for e in &state.endpoints {
            r.endpoints.insert(e.ip.to_string(), encode(&path, e)?);
        }
        Ok(r)
    }
}

/// The meta record.
fn meta_record(
    path: &Path,
    cluster: &str,
    cluster_id: u8,
    revision: u64,
) -> Result<Vec<u8>, StoreError> {
    encode(
        path,
        &Meta {
            format: super::STATE_FORMAT,
            cluster: cluster.to_string(),
            cluster_id,
            revision,
        },
    )
}

/// Writes into `table` what differs between `old` and `new`: upserts, then
/// removals.
fn apply_str(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    old: Option<&BTreeMap<String, Vec<u8>>>,
    new: &BTreeMap<String, Vec<u8>>,
    err: &dyn Fn(redb::Error) -> StoreError,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for (k, v) in new {
        if old.and_then(|o| o.get(k)) != Some(v) {
            table
                .insert(k.as_str(), v.as_slice())
                .map_err(|e| err(e.into()))?;
            n += 1;
        }
    }
    for k in old.into_iter().flat_map(|o| o.keys()) {
        if !new.contains_key(k) {
            table.remove(k.as_str()).map_err(|e| err(e.into()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// [`apply_str`] for the identities' integer keys.
fn apply_u32(
    table: &mut redb::Table<'_, u32, &'static [u8]>,
    old: Option<&BTreeMap<u32, Vec<u8>>>,
    new: &BTreeMap<u32, Vec<u8>>,
    err: &dyn Fn(redb::Error) -> StoreError,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for (k, v) in new {
        if old.and_then(|o| o.get(k)) != Some(v) {
            table.insert(*k, v.as_slice()).map_err(|e| err(e.into()))?;
            n += 1;
        }
    }
    for k in old.into_iter().flat_map(|o| o.keys()) {
        if !new.contains_key(k) {
            table.remove(*k).map_err(|e| err(e.into()))?;
            n += 1;
        }
    }
    Ok(n)
}

impl Store for DbStore {
    fn load(&mut self) -> Result<Option<RegistryState>, StoreError> {
        let path = self.path();
        let stored = self.stored_records()?;
        if stored.meta.is_empty() {
            return Ok(None);
        }
        let meta: Meta = decode(&path, "meta", &stored.meta)?;
        if meta.format != super::STATE_FORMAT {
            return Err(StoreError::Format {
                path: path.clone(),
                found: meta.format,
            });
        }
        let mut state = RegistryState {
            cluster: meta.cluster,
            cluster_id: meta.cluster_id,
            revision: meta.revision,
            nodes: BTreeMap::new(),
            allocations: BTreeMap::new(),
            identities: Vec::new(),
            endpoints: Vec::new(),
        };
        for (k, v) in &stored.nodes {
            state.nodes.insert(k.clone(), decode(&path, k, v)?);
        }
        for (k, v) in &stored.allocations {
            state.allocations.insert(k.clone(), decode(&path, k, v)?);
        }
        for (id, v) in &stored.identities {
            state
                .identities
                .push(decode(&path, &format!("identity {id}"), v)?);
        }
        for (k, v) in &stored.endpoints {
            state.endpoints.push(decode(&path, k, v)?);
        }
        // In IP order, as the registry keeps them.
        state.endpoints.sort_by_key(|e| e.ip);
        Ok(Some(state))
    }

    fn save(&mut self, state: &RegistryState, _events: &[Event]) -> Result<(), StoreError> {
        let path = self.path();
        // The whole state, diffed against what is stored (read whole): the
        // server saves its changes with `save_change` instead.
        let new = self.records(state)?;
        let stored = self.stored_records()?;
        if stored == new {
            return Ok(());
        }
        let err = db_err(&path, "writing");
        let old = Some(&stored);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let mut written = 1;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert("state", new.meta.as_slice())
                .map_err(|e| err(e.into()))?;
            let mut t = txn.open_table(NODES).map_err(|e| err(e.into()))?;
            written += apply_str(&mut t, old.map(|o| &o.nodes), &new.nodes, &err)?;
            let mut t = txn.open_table(ALLOCATIONS).map_err(|e| err(e.into()))?;
            written += apply_str(&mut t, old.map(|o| &o.allocations), &new.allocations, &err)?;
            let mut t = txn.open_table(IDENTITIES).map_err(|e| err(e.into()))?;
            written += apply_u32(&mut t, old.map(|o| &o.identities), &new.identities, &err)?;
            let mut t = txn.open_table(ENDPOINTS).map_err(|e| err(e.into()))?;
            written += apply_str(&mut t, old.map(|o| &o.endpoints), &new.endpoints, &err)?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        self.written = written;
        Ok(())
    }

    fn save_change(&mut self, registry: &Registry, events: &[Event]) -> Result<(), StoreError> {
        let path = self.path();
        let err = db_err(&path, "writing");
        let cfg = registry.config();
        let meta = meta_record(&path, &cfg.cluster, cfg.cluster_id, registry.revision())?;
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        let mut written = 1;
        {
            let mut meta_t = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta_t
                .insert("state", meta.as_slice())
                .map_err(|e| err(e.into()))?;
            let mut nodes = txn.open_table(NODES).map_err(|e| err(e.into()))?;
            let mut allocs = txn.open_table(ALLOCATIONS).map_err(|e| err(e.into()))?;
            let mut ids = txn.open_table(IDENTITIES).map_err(|e| err(e.into()))?;
            let mut eps = txn.open_table(ENDPOINTS).map_err(|e| err(e.into()))?;
            for event in events {
                match event {
                    Event::Upserted { node, .. } => {
                        let n = encode(&path, node)?;
                        nodes
                            .insert(node.name.as_str(), n.as_slice())
                            .map_err(|e| err(e.into()))?;
                        if let Some(ip) = node.tunnel_ip {
                            let ip = encode(&path, &ip)?;
                            allocs
                                .insert(node.name.as_str(), ip.as_slice())
                                .map_err(|e| err(e.into()))?;
                        }
                        written += 2;
                    }
                    Event::Removed { name, .. } => {
                        nodes.remove(name.as_str()).map_err(|e| err(e.into()))?;
                        allocs.remove(name.as_str()).map_err(|e| err(e.into()))?;
                        written += 2;
                    }
                    Event::EndpointUpserted { endpoint, .. } => {
                        let v = encode(&path, endpoint)?;
                        eps.insert(endpoint.ip.to_string().as_str(), v.as_slice())
                            .map_err(|e| err(e.into()))?;
                        written += 1;
                    }
                    Event::EndpointRemoved { ip, .. } => {
                        eps.remove(ip.to_string().as_str())
                            .map_err(|e| err(e.into()))?;
                        written += 1;
                    }
                    Event::IdentityAdded { identity, .. } => {
                        let v = encode(&path, identity)?;
                        ids.insert(identity.id, v.as_slice())
                            .map_err(|e| err(e.into()))?;
                        written += 1;
                    }
                    // Services and the mesh's CIDRs are not stored.
                    _ => {}
                }
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        self.written = written;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

impl DbStore {
    /// Every record the database holds, encoded as stored.
    fn stored_records(&self) -> Result<Records, StoreError> {
        let path = self.path();
        let err = db_err(&path, "reading");
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let mut r = Records::default();
        if let Some(m) = txn
            .open_table(META)
            .map_err(|e| err(e.into()))?
            .get("state")
            .map_err(|e| err(e.into()))?
        {
            r.meta = m.value().to_vec();
        }
        for (table, into) in [
            (NODES, &mut r.nodes),
            (ALLOCATIONS, &mut r.allocations),
            (ENDPOINTS, &mut r.endpoints),
        ] {
            for row in txn
                .open_table(table)
                .map_err(|e| err(e.into()))?
                .iter()
                .map_err(|e| err(e.into()))?
            {
                let (k, v) = row.map_err(|e| err(e.into()))?;
                into.insert(k.value().to_string(), v.value().to_vec());
            }
        }
        for row in txn
            .open_table(IDENTITIES)
            .map_err(|e| err(e.into()))?
            .iter()
            .map_err(|e| err(e.into()))?
        {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            r.identities.insert(k.value(), v.value().to_vec());
        }
        Ok(r)
    }
}

#[cfg(test)]
#[path = "db_tests.rs"]
mod tests;
