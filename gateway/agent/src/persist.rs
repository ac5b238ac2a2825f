//! What the agent keeps on disk: its last known peers (so a restart or a
//! discovery outage never tears the mesh down) and its status file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::status::{AgentStatus, OffloadStatus, PeerStatus};
use anyhow::Context;
use meshgate_tunnel::PeerConfig;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Agent;

const PEERS_FILE: &str = "peers.json";
const STATUS_FILE: &str = "status.json";

/// The last state the agent applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub tunnel_ip: Option<Ipv4Addr>,
    pub peers: BTreeMap<String, PeerConfig>,
}

/// Writes state so that a crash or power loss leaves either the old file or
/// the new one whole: a temp file, fsync'd, renamed into place, then the
/// directory fsync'd so the rename itself is durable (as discovery's store).
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// [`write_atomic`] from code that may run on the agent's runtime: the
/// fsyncs block, so on a multi-threaded runtime its other tasks (the watch
/// stream that brings identities) move to another worker meanwhile.
pub(super) fn write_atomic_blocking(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| write_atomic(path, bytes))
        }
        _ => write_atomic(path, bytes),
    }
}

/// The status file is a snapshot rewritten every 500 ms, not state: it is
/// replaced atomically but not fsync'd, which would cost a disk flush twice a
/// second per agent for nothing a restart needs.
fn write_snapshot(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn load(dir: &Path) -> anyhow::Result<Option<Saved>> {
    let path = dir.join(PEERS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).map(Some).with_context(|| {
        format!(
            "{} is corrupt: delete it and the agent will relearn its peers from discovery",
            path.display()
        )
    })
}

pub fn save(dir: &Path, saved: &Saved) -> anyhow::Result<()> {
    let path = dir.join(PEERS_FILE);
    let bytes = serde_json::to_vec_pretty(saved).context("encoding the peers")?;
    write_atomic(&path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// Forgets the peers, status and ipcache, when the node leaves the mesh.
pub fn forget(dir: &Path) {
    for f in [
        PEERS_FILE,
        STATUS_FILE,
        super::ipcache::IPCACHE_FILE,
        super::services::SERVICES_FILE,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn status(agent: &Agent) -> AgentStatus {
    let stats = agent.backend.stats();
    let (ipcache_entries, identities) = {
        let cache = agent.ipcache();
        (cache.entries.len(), cache.identities.len())
    };
    // Before the mesh lock: it reads the node records, and mesh::refresh
    // takes the mesh lock while holding those.
    let egress = super::datapath::egress_status(agent);
    let mesh = agent.mesh();
    let cfg = &agent.cfg;
    AgentStatus {
        node: cfg.node.clone(),
        cluster: cfg.cluster.clone(),
        cluster_id: cfg.cluster_id,
        backend: agent.backend.kind().to_string(),
        public_key: agent.key().public().to_base64(),
        tunnel_ip: mesh
            .core
            .tunnel_ip()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        underlay_ip: cfg.underlay_ip.to_string(),
        listen_port: cfg.listen_port,
        pod_cidr: cfg.pod_cidr.to_string(),
        discovery_connected: mesh.discovery_connected,
        pid: std::process::id(),
        updated_unix_ms: now_ms(),
        key_rotations: mesh.key_rotations,
        ipcache_entries,
        identities,
        services: agent.services().services.len(),
        gateways: mesh.core.gateways().to_vec(),
        datapath: agent.datapath.get().map(|d| d.status()),
        egress,
        ipsec: agent.backend.ipsec().map(|i| crate::status::IpsecStatus {
            generation: i.generation,
            rotating: i.rotating,
            offload: i.offload,
        }),
        offloads: agent.backend.offloads().map(|o| OffloadStatus {
            tun_tso: o.tso,
            tun_uso: o.uso,
            tun_gro: o.gro_writes,
            udp_gso_segments: o.udp_gso_segments,
            udp_gro: o.udp_gro,
        }),
        peers: stats
            .into_iter()
            .map(|s| {
                let (cluster, node) = s
                    .name
                    .split_once('/')
                    .map(|(c, n)| (c.to_string(), n.to_string()))
                    .unwrap_or_default();
                PeerStatus {
                    node,
                    cluster,
                    public_key: s.public_key,
                    endpoint: s.endpoint,
                    allowed_ips: s.allowed_ips,
                    last_handshake_age_ms: s.last_handshake_age_ms,
                    last_rx_age_ms: s.last_rx_age_ms,
                    tx_bytes: s.tx_bytes,
                    rx_bytes: s.rx_bytes,
                }
            })
            .collect(),
    }
}

pub fn write_status(agent: &Agent) {
    let path = agent.cfg.state_dir.join(STATUS_FILE);
    let result = serde_json::to_vec_pretty(&status(agent))
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_snapshot(&path, &bytes));
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "writing status failed");
    }
}

pub async fn status_loop(agent: std::sync::Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        write_status(&agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_replaced_whole_and_a_crashed_write_is_harmless() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut saved = Saved {
            tunnel_ip: Some(Ipv4Addr::new(100, 64, 0, 7)),
            ..Saved::default()
        };
        save(dir.path(), &saved).expect("first save");
        // A crash between writing the temp file and the rename leaves a
        // half-written temp file behind: the saved state is still whole.
        std::fs::write(dir.path().join("peers.tmp"), b"{\"tunnel_ip\": \"100.").expect("torn tmp");
        let back = load(dir.path())
            .expect("load")
            .expect("peers.json is there");
        assert_eq!(back.tunnel_ip, saved.tunnel_ip);
        // The next save replaces both.
        saved.tunnel_ip = Some(Ipv4Addr::new(100, 64, 0, 8));
        save(dir.path(), &saved).expect("second save");
        let back = load(dir.path())
            .expect("load")
            .expect("peers.json is there");
        assert_eq!(back.tunnel_ip, saved.tunnel_ip);
        assert!(
            !dir.path().join("peers.tmp").exists(),
            "the temp file is renamed into place, not left behind"
        );
    }
}
