//! IPsec (`--encryption ipsec`): ESP between nodes in tunnel mode with
//! rfc4106(gcm(aes)), configured through XFRM netlink.
//!
//! * [`keys`]: the mesh secret, per pair-and-direction keys (HKDF), SPIs
//!   that carry the key generation.
//! * [`rotation`]: zero-loss rotation of the secret, pure.
//! * [`xfrm`]: SAs and policies over netlink.
//! * [`link`]: the XFRM interface that traffic is routed into.
//!
//! The device plays the part `mg-wg0` plays for WireGuard: the agent gives
//! it the tunnel address and routes peers' prefixes into it; each peer's
//! prefixes get an outbound policy (to the peer's underlay address, with
//! the SAs of the generation being sent under) and inbound and forward
//! policies (any generation held). A thread rereads the secret file and
//! drives rotations. Hardware offload is asked for on the underlay device
//! and the kernel falls back to software where the device has none;
//! [`IpsecDevice::offload`] says which is in use.

pub mod keys;
mod link;
pub mod rotation;
pub mod xfrm;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::backend::{Backend, BackendError, BackendKind, PeerStats};
use crate::keys::NodeKey;
use crate::nlsock::NlError;
use crate::peers::{PeerChange, PeerConfig};
use keys::{MeshSecret, SecretError};
use rotation::Rotation;
use xfrm::{Dir, Policy, Sa};

/// The XFRM interface id meshgate's SAs and policies carry.
pub const IF_ID: u32 = 28_007;
/// Priority of meshgate's policies.
const POLICY_PRIORITY: u32 = 100;
/// How often the secret file is reread.
const SECRET_POLL: Duration = Duration::from_millis(500);

/// What the IPsec backend needs beyond the interface name.
#[derive(Debug, Clone)]
pub struct IpsecConfig {
    /// This node's mesh name (`cluster/node`): one half of every pair key.
    pub me: String,
    /// This node's underlay address: the source of its ESP.
    pub underlay_ip: Ipv4Addr,
    /// The mesh secret file (`<generation> <cipher> <base64>`).
    pub secret_file: PathBuf,
}

/// Errors of the IPsec backend.
#[derive(Debug, thiserror::Error)]
pub enum IpsecError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("{0} (the kernel needs CONFIG_XFRM_INTERFACE)")]
    Link(#[from] crate::netlink::NetlinkError),
    #[error(
        "no interface has the underlay address {0}: --underlay-ip must be one of this node's \
         addresses"
    )]
    NoUnderlayDevice(Ipv4Addr),
}

impl From<IpsecError> for BackendError {
    fn from(e: IpsecError) -> Self {
        BackendError::Command {
            action: "IPsec".into(),
            detail: e.to_string(),
        }
    }
}

/// Whether the kernel or the NIC does the ESP crypto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offload {
    /// Every SA is offloaded to the device.
    Hardware { device: String },
    /// The device has no ESP offload (or not for every SA): software.
    Software { device: String, reason: String },
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offload::Hardware { device } => write!(f, "hardware ({device})"),
            Offload::Software { device, reason } => write!(f, "software ({device}: {reason})"),
        }
    }
}

/// One SA as installed: enough to find and remove it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SaId {
    dst: Ipv4Addr,
    spi: u32,
}

struct State {
    rotation: Rotation,
    peers: BTreeMap<String, PeerConfig>,
    /// SAs installed, per peer name.
    sas: BTreeMap<String, BTreeSet<SaId>>,
    /// Outbound policies installed: peer -> (net -> generation).
    out: BTreeMap<String, BTreeMap<Ipv4Net, u8>>,
    /// Receive ages, per peer name.
    rx: crate::rx_ages::RxAges<String>,
    offload: Offload,
}

struct Shared {
    iface: String,
    cfg: IpsecConfig,
    underlay_dev: (String, u32),
    state: Mutex<State>,
    stop: AtomicBool,
}

/// The IPsec backend: an XFRM interface and the kernel's SAs and policies.
pub struct IpsecDevice {
    shared: Arc<Shared>,
}

/// The interface holding `ip`: (name, index).
fn device_of(ip: Ipv4Addr) -> Option<(String, u32)> {
    // SAFETY: getifaddrs fills a list we free with freeifaddrs; every
    // pointer is checked before use.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == ip {
                    let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                        .to_string_lossy()
                        .into_owned();
                    let index = link::ifindex(&name);
                    found = Some((name, index));
                    break;
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
        found
    }
}

impl IpsecDevice {
    /// Creates (or takes over) XFRM interface `iface` and starts the
    /// secret watcher. No peer yet.
    pub fn start(iface: &str, cfg: IpsecConfig) -> Result<Self, IpsecError> {
        let secret = MeshSecret::load(&cfg.secret_file)?;
        let underlay_dev =
            device_of(cfg.underlay_ip).ok_or(IpsecError::NoUnderlayDevice(cfg.underlay_ip))?;
        link::create(iface, IF_ID, underlay_dev.1)?;
        info!(
            interface = iface,
            generation = secret.generation,
            cipher = secret.cipher.name(),
            underlay = %underlay_dev.0,
            "IPsec device ready"
        );
        let shared = Arc::new(Shared {
            iface: iface.to_string(),
            underlay_dev: underlay_dev.clone(),
            state: Mutex::new(State {
                rotation: Rotation::new(secret),
                peers: BTreeMap::new(),
                sas: BTreeMap::new(),
                out: BTreeMap::new(),
                rx: Default::default(),
                offload: Offload::Software {
                    device: underlay_dev.0,
                    reason: "no SA yet".into(),
                },
            }),
            cfg,
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mg-ipsec-secret".into())
            .spawn(move || watch_secret(&s))
            .map_err(|e| {
                IpsecError::Netlink(NlError {
                    what: "starting the IPsec secret watcher".into(),
                    source: e,
                })
            })?;
        Ok(IpsecDevice { shared })
    }

    /// Whether the NIC or the kernel does the crypto, as last seen.
    pub fn offload(&self) -> Offload {
        self.shared.lock().offload.clone()
    }

    /// The generation outbound traffic is sent under, and whether a
    /// rotation is in progress.
    pub fn generation(&self) -> (u8, bool) {
        let st = self.shared.lock();
        (st.rotation.outbound().generation, st.rotation.rotating())
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peer_ip(peer: &PeerConfig) -> Option<Ipv4Addr> {
        match peer.endpoint.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    /// Brings one peer's SAs and policies to what the rotation wants.
    fn reconcile_peer(&self, st: &mut State, name: &str) -> Result<(), IpsecError> {
        let me = self.cfg.underlay_ip;
        let Some(peer) = st.peers.get(name).cloned() else {
            return self.remove_peer(st, name);
        };
        let Some(remote) = Self::peer_ip(&peer) else {
            warn!(
                peer = name,
                "IPsec needs an IPv4 underlay address; peer skipped"
            );
            return Ok(());
        };
        let mut want: BTreeSet<SaId> = BTreeSet::new();
        let secrets: Vec<MeshSecret> = st.rotation.installed().into_iter().cloned().collect();
        for secret in &secrets {
            let out = secret.sa_key(&self.cfg.me, name);
            let inb = secret.sa_key(name, &self.cfg.me);
            for (src, dst, key, reqid, inbound) in [
                (me, remote, &out, u32::from(secret.generation), false),
                (remote, me, &inb, 0, true),
            ] {
                let id = SaId { dst, spi: key.spi };
                if !st.sas.get(name).is_some_and(|s| s.contains(&id)) {
                    self.add_sa(st, name, (src, dst), key, reqid, inbound)?;
                }
                want.insert(id);
            }
        }
        // Policies: outbound under the generation being sent; in and fwd
        // for any generation held.
        let out_gen = st.rotation.outbound().generation;
        let nets: BTreeSet<Ipv4Net> = peer.allowed_ips.iter().copied().collect();
        let have = st.out.get(name).cloned().unwrap_or_default();
        for net in &nets {
            if have.get(net) == Some(&out_gen) {
                continue;
            }
            for (dir, reqid) in [(Dir::In, 0), (Dir::Fwd, 0), (Dir::Out, u32::from(out_gen))] {
                xfrm::set_policy(&Policy {
                    dir,
                    net: *net,
                    local: me,
                    remote,
                    reqid,
                    if_id: IF_ID,
                    priority: POLICY_PRIORITY,
                })?;
            }
        }
        for net in have.keys().filter(|n| !nets.contains(n)) {
            for dir in [Dir::Out, Dir::In, Dir::Fwd] {
                xfrm::delete_policy(dir, *net, IF_ID)?;
            }
        }
        st.out.insert(
            name.to_string(),
            nets.iter().map(|n| (*n, out_gen)).collect(),
        );
        // SAs of generations no longer held, or of an old endpoint.
        let stale: Vec<SaId> = st
            .sas
            .get(name)
            .map(|s| s.difference(&want).cloned().collect())
            .unwrap_or_default();
        for id in &stale {
            xfrm::delete_sa(id.dst, id.spi, IF_ID)?;
        }
        if let Some(s) = st.sas.get_mut(name) {
            for id in &stale {
                s.remove(id);
            }
        }
        Ok(())
    }

    fn add_sa(
        &self,
        st: &mut State,
        peer: &str,
        (src, dst): (Ipv4Addr, Ipv4Addr),
        key: &keys::SaKey,
        reqid: u32,
        inbound: bool,
    ) -> Result<(), IpsecError> {
        let mut sa = Sa {
            src,
            dst,
            spi: key.spi,
            reqid,
            key: key.kernel_key(),
            if_id: IF_ID,
            offload: Some((self.underlay_dev.1, inbound)),
        };
        if let Err(e) = xfrm::add_sa(&sa) {
            // A device that refuses the offload request: software.
            let code = e.source.raw_os_error();
            if code == Some(libc::EOPNOTSUPP) || code == Some(libc::EINVAL) {
                sa.offload = None;
                xfrm::add_sa(&sa)?;
                st.offload = Offload::Software {
                    device: self.underlay_dev.0.clone(),
                    reason: format!("the kernel refused the offload request: {}", e.source),
                };
            } else {
                return Err(e.into());
            }
        }
        st.sas
            .entry(peer.to_string())
            .or_default()
            .insert(SaId { dst, spi: key.spi });
        Ok(())
    }

    fn remove_peer(&self, st: &mut State, name: &str) -> Result<(), IpsecError> {
        if let Some(nets) = st.out.remove(name) {
            for net in nets.keys() {
                for dir in [Dir::Out, Dir::In, Dir::Fwd] {
                    xfrm::delete_policy(dir, *net, IF_ID)?;
                }
            }
        }
        for id in st.sas.remove(name).unwrap_or_default() {
            xfrm::delete_sa(id.dst, id.spi, IF_ID)?;
        }
        Ok(())
    }

    fn reconcile_all(&self, st: &mut State) {
        let names: Vec<String> = st.peers.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.reconcile_peer(st, &name) {
                warn!(peer = %name, error = %e, "IPsec peer not reconciled");
            }
        }
    }

    /// Reads back which SAs the kernel offloaded.
    fn refresh_offload(&self, st: &mut State, sas: &[xfrm::SaState]) {
        if sas.is_empty() {
            return;
        }
        let device = self.underlay_dev.0.clone();
        let on = sas.iter().filter(|s| s.offload_dev.is_some()).count();
        st.offload = if on == sas.len() {
            Offload::Hardware { device }
        } else if let Offload::Software { reason, .. } = &st.offload {
            Offload::Software {
                device,
                reason: if on == 0 && reason == "no SA yet" {
                    "the device has no ESP offload".into()
                } else {
                    reason.clone()
                },
            }
        } else {
            Offload::Software {
                device,
                reason: format!("{on} of {} SAs offloaded", sas.len()),
            }
        };
    }
}

fn watch_secret(shared: &Shared) {
    let mut last_error = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let offered = MeshSecret::load(&shared.cfg.secret_file);
        let mut st = shared.lock();
        let mut changed = false;
        match offered {
            Ok(secret) => {
                let before: Vec<u8> = st
                    .rotation
                    .installed()
                    .iter()
                    .map(|s| s.generation)
                    .collect();
                st.rotation.offer(secret, now);
                let after: Vec<u8> = st
                    .rotation
                    .installed()
                    .iter()
                    .map(|s| s.generation)
                    .collect();
                if before != after {
                    info!(generations = ?after, "IPsec secret changed: accepting the new generation");
                    changed = true;
                }
                last_error.clear();
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    warn!(error = %msg, "IPsec secret unreadable; keeping the current one");
                    last_error = msg;
                }
            }
        }
        if st.rotation.tick(now) {
            let (out, rotating) = (st.rotation.outbound().generation, st.rotation.rotating());
            info!(generation = out, rotating, "IPsec rotation step");
            changed = true;
        }
        if changed {
            shared.reconcile_all(&mut st);
        }
        drop(st);
        std::thread::sleep(SECRET_POLL);
    }
}

impl Drop for IpsecDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Backend for IpsecDevice {
    fn kind(&self) -> BackendKind {
        BackendKind::Ipsec
    }

    fn interface(&self) -> &str {
        &self.shared.iface
    }

    fn apply(&self, change: &PeerChange) -> Result<(), BackendError> {
        let mut st = self.shared.lock();
        match change {
            PeerChange::Remove(old) => {
                st.peers.remove(&old.name);
                self.shared.remove_peer(&mut st, &old.name)?;
            }
            PeerChange::Add(new) | PeerChange::Update { new, .. } => {
                if let PeerChange::Update { old, .. } = change {
                    if old.endpoint != new.endpoint {
                        // New underlay address: everything anew.
                        self.shared.remove_peer(&mut st, &old.name)?;
                    }
                }
                st.peers.insert(new.name.clone(), new.clone());
                self.shared.reconcile_peer(&mut st, &new.name)?;
            }
        }
        Ok(())
    }

    fn rotate_key(&self, _key: &NodeKey) -> Result<(), BackendError> {
        // The node key is its identity in discovery; IPsec keys come from
        // the mesh secret, rotated by replacing the secret file.
        Ok(())
    }

    fn stats(&self) -> Vec<PeerStats> {
        let sas = xfrm::dump_sas(IF_ID).unwrap_or_default();
        let mut st = self.shared.lock();
        self.shared.refresh_offload(&mut st, &sas);
        let now = Instant::now();
        let me = self.shared.cfg.underlay_ip;
        let peers: Vec<PeerConfig> = st.peers.values().cloned().collect();
        let mut out = Vec::new();
        for p in peers {
            let Some(remote) = Shared::peer_ip(&p) else {
                continue;
            };
            let sum = |src: Ipv4Addr, dst: Ipv4Addr| -> u64 {
                sas.iter()
                    .filter(|s| s.src == src && s.dst == dst)
                    .map(|s| s.bytes)
                    .sum()
            };
            let (tx, rx) = (sum(me, remote), sum(remote, me));
            out.push(PeerStats {
                name: p.name.clone(),
                public_key: p.public_key.clone(),
                endpoint: p.endpoint.to_string(),
                allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
                last_handshake_age_ms: None,
                last_rx_age_ms: st.rx.observe(now, p.name.clone(), rx, None),
                tx_bytes: tx,
                rx_bytes: rx,
            });
        }
        out
    }

    fn ipsec(&self) -> Option<crate::backend::IpsecState> {
        let (generation, rotating) = self.generation();
        Some(crate::backend::IpsecState {
            generation,
            rotating,
            offload: self.offload().to_string(),
        })
    }

    fn shutdown(&self, remove_device: bool) -> Result<(), BackendError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        if remove_device {
            let mut st = self.shared.lock();
            let names: Vec<String> = st.peers.keys().cloned().collect();
            for name in names {
                self.shared.remove_peer(&mut st, &name)?;
            }
            crate::routes::delete_interface(&self.shared.iface)?;
        }
        Ok(())
    }
}
