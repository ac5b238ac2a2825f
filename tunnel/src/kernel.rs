//! Kernel WireGuard: detection, and a device driven through the kernel's
//! WireGuard netlink API (by way of iproute2 and wireguard-tools' `wg`).
//!
//! On kernels without the module (such as the machines meshgate is built and
//! tested on) [`probe`] says so and the agent falls back to, or insists on,
//! the userspace backend. The device code below only runs where the module
//! exists; it is not exercised by this repository's tests (see README).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use base64::Engine;

use crate::backend::{Backend, BackendError, BackendKind, PeerStats};
use crate::cmd::run;
use crate::keys::NodeKey;
use crate::peers::PeerChange;

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
    names: Mutex<std::collections::BTreeMap<String, String>>,
}

impl KernelDevice {
    pub fn start(iface: &str, key: &NodeKey, listen_port: u16) -> Result<Self, BackendError> {
        let exists = Path::new("/sys/class/net").join(iface).exists();
        if !exists {
            run(
                "ip",
                &["link", "add", iface, "type", "wireguard"],
                None,
                "creating the kernel WireGuard interface",
            )?;
        }
        let dev = KernelDevice {
            iface: iface.to_string(),
            names: Mutex::new(Default::default()),
        };
        dev.set_key(key)?;
        run(
            "wg",
            &["set", iface, "listen-port", &listen_port.to_string()],
            None,
            "setting the WireGuard listen port",
        )?;
        Ok(dev)
    }

    fn set_key(&self, key: &NodeKey) -> Result<(), BackendError> {
        // The key goes through a pipe, never the command line.
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.secret().to_bytes());
        run(
            "wg",
            &["set", &self.iface, "private-key", "/dev/stdin"],
            Some(b64.as_bytes()),
            "setting the WireGuard private key",
        )
        .map(|_| ())
    }
}

impl Backend for KernelDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    fn interface(&self) -> &str {
        &self.iface
    }

    fn apply(&self, change: &PeerChange) -> Result<(), BackendError> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        match change {
            PeerChange::Remove(old) => {
                run(
                    "wg",
                    &["set", &self.iface, "peer", &old.public_key, "remove"],
                    None,
                    "removing a peer",
                )?;
                names.remove(&old.public_key);
            }
            PeerChange::Add(new) | PeerChange::Update { new, .. } => {
                let allowed: Vec<String> = new.allowed_ips.iter().map(|n| n.to_string()).collect();
                // The kernel counts keepalives in whole seconds. It starts a
                // handshake only when it has something to send: setting a
                // persistent keepalive on a new peer of an interface that is
                // up sends one at once, so the handshake starts when the peer
                // is added, as the userspace backend does (without it no
                // pair handshook until pod traffic flowed, and `lab up`
                // timed out on every kernel with WireGuard).
                let keepalive = new
                    .keepalive_ms
                    .unwrap_or(DEFAULT_KEEPALIVE_MS)
                    .div_ceil(1000)
                    .max(1)
                    .to_string();
                run(
                    "wg",
                    &[
                        "set",
                        &self.iface,
                        "peer",
                        &new.public_key,
                        "endpoint",
                        &new.endpoint.to_string(),
                        "persistent-keepalive",
                        &keepalive,
                        "allowed-ips",
                        &allowed.join(","),
                    ],
                    None,
                    "configuring a peer",
                )?;
                names.insert(new.public_key.clone(), new.name.clone());
                // A new key: the new peer is set first, which moves the
                // allowed IPs to it in the kernel, and only then is the old
                // one removed, so no packet meets a gap with no peer.
                if let PeerChange::Update { old, .. } = change {
                    if old.public_key != new.public_key {
                        run(
                            "wg",
                            &["set", &self.iface, "peer", &old.public_key, "remove"],
                            None,
                            "removing the peer's old key",
                        )?;
                        names.remove(&old.public_key);
                    }
                }
            }
        }
        Ok(())
    }

    fn rotate_key(&self, key: &NodeKey) -> Result<(), BackendError> {
        self.set_key(key)
    }

    fn stats(&self) -> Vec<PeerStats> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(dump) = run(
            "wg",
            &["show", &self.iface, "dump"],
            None,
            "reading peer stats",
        ) else {
            return Vec::new();
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut stats: Vec<PeerStats> = dump
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let [key, _psk, endpoint, allowed, handshake, rx, tx, ..] = f.as_slice() else {
                    return None;
                };
                let hs: u64 = handshake.parse().ok()?;
                Some(PeerStats {
                    name: names.get(*key).cloned().unwrap_or_else(|| key.to_string()),
                    public_key: key.to_string(),
                    endpoint: endpoint.to_string(),
                    allowed_ips: allowed.split(',').map(str::to_string).collect(),
                    last_handshake_age_ms: (hs > 0).then(|| now.saturating_sub(hs) * 1000),
                    last_rx_age_ms: None,
                    tx_bytes: tx.parse().unwrap_or(0),
                    rx_bytes: rx.parse().unwrap_or(0),
                })
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
