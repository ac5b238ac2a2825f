//! Kernel WireGuard: detection, and a device driven over the kernel's
//! WireGuard generic-netlink API with defguard_wireguard_rs (peers, stats,
//! device creation) plus one request of our own ([`genl`]: key and port
//! without touching the peers).
//!
//! The kernel keeps forwarding when the agent exits: a restarted agent
//! finds the device with its peers and only re-asserts them. Receive ages,
//! which the kernel does not give, come from its receive counters
//! ([`crate::rx_ages`]); sub-second keepalives, which it cannot send, from
//! [`heartbeat`]. On kernels without the module (such as the machines
//! meshgate is built on) [`probe`] says so; the kernel lab
//! (`cargo xtask kernel-lab`) runs this backend on Debian's 6.1 kernel.

mod genl;
mod heartbeat;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer;
use defguard_wireguard_rs::{Kernel, WGApi, WireguardInterfaceApi};
use tracing::info;

use crate::backend::{Backend, BackendError, BackendKind, PeerStats};
use crate::keys::NodeKey;
use crate::peers::{PeerChange, PeerConfig};

/// Ok when the kernel has WireGuard, else why not.
pub fn probe() -> Result<(), BackendError> {
    if Path::new("/sys/module/wireguard").exists() {
        return Ok(());
    }
    let loaded = Command::new("modprobe")
        .args(["-q", "wireguard"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if loaded && Path::new("/sys/module/wireguard").exists() {
        return Ok(());
    }
    Err(BackendError::KernelUnavailable {
        reason: "this kernel has no WireGuard module (/sys/module/wireguard is absent and \
                 `modprobe wireguard` did not load it)"
            .to_string(),
    })
}

/// The persistent keepalive of peers that ask for none: 25 s, as
/// wg-quick users set it; the first goes out when the peer is added.
pub const DEFAULT_KEEPALIVE_MS: u64 = 25_000;

/// A kernel WireGuard interface.
pub struct KernelDevice {
    iface: String,
    api: Mutex<WGApi<Kernel>>,
    /// Public key (base64) -> peer name.
    names: Mutex<BTreeMap<String, String>>,
    rx: Mutex<crate::rx_ages::RxAges>,
    heartbeat: heartbeat::Heartbeat,
}

fn command_err(action: String, e: impl std::fmt::Display) -> BackendError {
    BackendError::Command {
        action,
        detail: e.to_string(),
    }
}

impl KernelDevice {
    /// Creates `iface` if missing, or takes over the one a previous agent
    /// left forwarding (its peers stay), and sets the key and port.
    pub fn start(iface: &str, key: &NodeKey, listen_port: u16) -> Result<Self, BackendError> {
        let mut api = WGApi::<Kernel>::new(iface)
            .map_err(|e| command_err(format!("opening WireGuard interface {iface}"), e))?;
        let existed = Path::new("/sys/class/net").join(iface).exists();
        if !existed {
            api.create_interface().map_err(|e| {
                command_err(
                    format!("creating the kernel WireGuard interface {iface}"),
                    e,
                )
            })?;
        }
        genl::set_key_and_port(iface, key.secret().to_bytes(), listen_port)
            .map_err(|e| command_err("configuring the kernel WireGuard device".into(), e))?;
        let heartbeat = heartbeat::Heartbeat::start().map_err(|source| BackendError::Thread {
            what: "heartbeat",
            source,
        })?;
        let dev = KernelDevice {
            iface: iface.to_string(),
            api: Mutex::new(api),
            names: Mutex::new(BTreeMap::new()),
            rx: Mutex::new(crate::rx_ages::RxAges::default()),
            heartbeat,
        };
        if existed {
            let peers = dev.host_peers().map(|p| p.len()).unwrap_or(0);
            info!(
                interface = iface,
                peers, "took over the kernel WireGuard device"
            );
        }
        Ok(dev)
    }

    fn host_peers(&self) -> Result<Vec<Peer>, BackendError> {
        let api = self.api.lock().unwrap_or_else(|p| p.into_inner());
        let host = api
            .read_interface_data()
            .map_err(|e| command_err(format!("reading WireGuard interface {}", self.iface), e))?;
        Ok(host.peers.into_values().collect())
    }

    fn remove_key(&self, b64: &str, name: &str) -> Result<(), BackendError> {
        let key = parse_key(b64, name)?;
        let api = self.api.lock().unwrap_or_else(|p| p.into_inner());
        api.remove_peer(&key)
            .map_err(|e| command_err(format!("removing peer {name} from {}", self.iface), e))
    }

    fn set_peer(&self, cfg: &PeerConfig) -> Result<(), BackendError> {
        let mut peer = Peer::new(parse_key(&cfg.public_key, &cfg.name)?);
        peer.endpoint = Some(cfg.endpoint);
        // The kernel counts keepalives in whole seconds. It starts a
        // handshake only when it has something to send: a persistent
        // keepalive set on a peer of an interface that is up sends one at
        // once, so the handshake starts when the peer is added, as the
        // userspace backend does (without it no pair handshook until pod
        // traffic flowed, and `lab up` timed out on every kernel with
        // WireGuard). Keepalives under a second go by heartbeat.
        let keepalive_ms = cfg.keepalive_ms.unwrap_or(DEFAULT_KEEPALIVE_MS);
        peer.persistent_keepalive_interval =
            Some(keepalive_ms.div_ceil(1000).clamp(1, u64::from(u16::MAX)) as u16);
        peer.allowed_ips = cfg
            .allowed_ips
            .iter()
            .map(|n| IpAddrMask::new(n.addr().into(), n.prefix_len()))
            .collect();
        {
            let api = self.api.lock().unwrap_or_else(|p| p.into_inner());
            api.configure_peer(&peer).map_err(|e| {
                command_err(
                    format!("configuring peer {} on {}", cfg.name, self.iface),
                    e,
                )
            })?;
        }
        let beat = match (cfg.keepalive_ms, cfg.tunnel_ip) {
            (Some(ms), Some(ip)) if ms < 1000 => Some((
                SocketAddrV4::new(ip, cfg.endpoint.port()),
                Duration::from_millis(ms),
            )),
            _ => None,
        };
        self.heartbeat.set(&cfg.name, beat);
        Ok(())
    }
}

fn parse_key(b64: &str, name: &str) -> Result<Key, BackendError> {
    let key = crate::keys::PublicKey::parse(b64, &format!("public key of peer {name}"))?;
    Ok(Key::new(key.0))
}

impl Backend for KernelDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    fn interface(&self) -> &str {
        &self.iface
    }

    fn apply(&self, change: &PeerChange) -> Result<(), BackendError> {
        match change {
            PeerChange::Remove(old) => {
                self.heartbeat.set(&old.name, None);
                self.remove_key(&old.public_key, &old.name)?;
                self.names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&old.public_key);
            }
            PeerChange::Add(new) | PeerChange::Update { new, .. } => {
                self.set_peer(new)?;
                self.names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(new.public_key.clone(), new.name.clone());
                // A new key: the new peer is set first, which moves the
                // allowed IPs to it in the kernel, and only then is the old
                // one removed, so no packet meets a gap with no peer.
                if let PeerChange::Update { old, .. } = change {
                    if old.public_key != new.public_key {
                        self.remove_key(&old.public_key, &old.name)?;
                        self.names
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&old.public_key);
                    }
                }
            }
        }
        Ok(())
    }

    fn rotate_key(&self, key: &NodeKey) -> Result<(), BackendError> {
        // The port stays; the kernel keeps the sessions it has until the
        // peers handshake again under the new key.
        let port = {
            let api = self.api.lock().unwrap_or_else(|p| p.into_inner());
            api.read_interface_data()
                .map_err(|e| command_err(format!("reading WireGuard interface {}", self.iface), e))?
                .listen_port
        };
        genl::set_key_and_port(&self.iface, key.secret().to_bytes(), port)
            .map_err(|e| command_err("rotating the kernel WireGuard key".into(), e))
    }

    fn stats(&self) -> Vec<PeerStats> {
        let Ok(peers) = self.host_peers() else {
            return Vec::new();
        };
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let wall = SystemTime::now();
        let keys: BTreeSet<[u8; 32]> = peers.iter().map(|p| p.public_key.as_array()).collect();
        rx.retain(&keys);
        let mut stats: Vec<PeerStats> = peers
            .into_iter()
            .map(|p| {
                let b64 = crate::keys::PublicKey(p.public_key.as_array()).to_base64();
                let handshake = p
                    .last_handshake
                    .filter(|t| *t > SystemTime::UNIX_EPOCH)
                    .map(|t| wall.duration_since(t).unwrap_or_default());
                PeerStats {
                    name: names.get(&b64).cloned().unwrap_or_else(|| b64.clone()),
                    endpoint: p.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                    allowed_ips: p.allowed_ips.iter().map(|a| a.to_string()).collect(),
                    last_handshake_age_ms: handshake.map(|d| d.as_millis() as u64),
                    last_rx_age_ms: rx.observe(now, p.public_key.as_array(), p.rx_bytes, handshake),
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    public_key: b64,
                }
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    fn shutdown(&self, remove_device: bool) -> Result<(), BackendError> {
        if remove_device {
            crate::routes::delete_interface(&self.iface)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_names_the_missing_module() {
        // On a kernel with WireGuard this passes trivially (probe is Ok);
        // on one without, the error must say what is missing and what to do.
        if let Err(e) = super::probe() {
            let msg = e.to_string();
            assert!(msg.contains("WireGuard module"), "{msg}");
            assert!(msg.contains("--backend userspace"), "{msg}");
        }
    }
}
