//! Userspace WireGuard: boringtun's protocol over a persistent TUN device
//! and one UDP socket.
//!
//! Three threads: TUN → encrypt → UDP, UDP → decrypt → TUN, and a timer
//! thread that drives boringtun's timers and retires replaced slots. The
//! device survives the agent: the TUN device is persistent, so on restart
//! the agent re-attaches and handshakes again with every peer at once.
//!
//! Both directions run in batches with offloads ([`io`]): the kernel hands
//! over TCP/UDP super-packets, which are split, encrypted straight into one
//! UDP GSO buffer and sent in one call; received GRO batches are decrypted
//! and coalesced into super-packets for the kernel.

mod io;
mod peer;
mod steer;

/// How a userspace device starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserspaceOptions {
    /// 0 or 1, flipped at each restart: marks this process's sessions so a
    /// handover tells them from the old process's.
    pub generation: u8,
    /// Attach beside an old process that still forwards (see
    /// [`UserspaceDevice::start_with`]).
    pub standby: bool,
}

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
use rand_core::RngCore;
use tracing::{debug, info, trace, warn};

use crate::backend::{Backend, BackendError, BackendKind, Offloads, PeerStats};
use crate::keys::NodeKey;
use crate::lpm::Lpm;
use crate::peers::{PeerChange, PeerConfig};
use crate::tun::{Tun, WantOffloads};
use io::{GsoBatch, RecvBufs, TunWriter, Udp, DATA_OVERHEAD};
use peer::{Peer, Slot};

const BUF: usize = 65_536 + 256;
/// A handshake initiation, which `encapsulate` writes when no session is up.
const HANDSHAKE_INIT_LEN: usize = 148;
/// Names the offloads to use, comma-separated, or `none` (default: all of
/// `tso,uso,gro,udp-gso,udp-gro`); for measuring each step and for kernels
/// that misbehave with one.
pub const OFFLOADS_ENV: &str = "MESHGATE_USERSPACE_OFFLOADS";
const POLL: Duration = Duration::from_millis(200);
const TIMER_TICK: Duration = Duration::from_millis(100);

struct LocalKey {
    id: u32,
    secret: StaticSecret,
    public: XPublic,
}

type PeerRef = Arc<Mutex<Peer>>;

#[derive(Default)]
struct State {
    /// Newest first; older keys stay while a slot still uses them.
    keys: Vec<Arc<LocalKey>>,
    peers: BTreeMap<String, PeerRef>,
    by_key: HashMap<[u8; 32], PeerRef>,
    by_index: HashMap<u32, PeerRef>,
    routes: Lpm<PeerRef>,
}

struct Shared {
    iface: String,
    tun: Tun,
    udp: Udp,
    /// Bit 23 of every session index this process makes (see [`steer`]).
    generation: u32,
    /// The old process of a handover stops reading the TUN queue.
    tx_stop: AtomicBool,
    /// Coalesce received TCP into super-packets (needs the vnet header).
    gro_writes: bool,
    stop: AtomicBool,
    state: RwLock<State>,
    next_index: AtomicU32,
    next_key_id: AtomicU32,
}

fn lock(peer: &PeerRef) -> MutexGuard<'_, Peer> {
    peer.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn send_udp(&self, packet: &[u8], to: SocketAddr) {
        if let Err(e) = self.udp.sock.send_to(packet, to) {
            trace!(%to, error = %e, "udp send failed");
        }
    }

    fn new_slot(&self, key: &LocalKey, peer_public: [u8; 32]) -> Slot {
        let index = (self.next_index.fetch_add(1, Ordering::Relaxed) & 0x007f_ffff)
            | (self.generation << 23);
        let tunn = Tunn::new(
            key.secret.clone(),
            XPublic::from(peer_public),
            None,
            None,
            index,
            None,
        );
        Slot {
            index,
            key_id: key.id,
            peer_public,
            tunn,
            created: Instant::now(),
            established: None,
        }
    }

    /// Starts a handshake on the peer's newest slot.
    fn initiate(&self, peer: &mut Peer, buf: &mut [u8]) {
        let endpoint = peer.endpoint;
        if let Some(slot) = peer.slots.first_mut() {
            if let TunnResult::WriteToNetwork(pkt) =
                slot.tunn.format_handshake_initiation(buf, false)
            {
                self.send_udp(pkt, endpoint);
            }
        }
    }

    /// Encrypts one IP packet read from the TUN device into the batch for
    /// its peer. `last` keeps the previous packet's peer: a burst goes to
    /// one peer, so the route is looked up once for it.
    fn outbound(
        &self,
        packet: &[u8],
        batch: &mut GsoBatch,
        last: &mut Option<(Ipv4Addr, PeerRef)>,
        buf: &mut [u8],
    ) {
        let Some(dst) = io::ipv4_dst(packet) else {
            trace!("dropping a non-IPv4 packet from the tunnel interface");
            return;
        };
        let peer = match last {
            Some((d, p)) if *d == dst => p.clone(),
            _ => {
                let Some(peer) = self.read().routes.lookup(dst).cloned() else {
                    trace!(%dst, "no peer for destination");
                    return;
                };
                *last = Some((dst, peer.clone()));
                peer
            }
        };
        let mut peer = lock(&peer);
        let endpoint = peer.endpoint;
        // Queued inside boringtun until a handshake completes when no slot
        // has a session yet.
        let (slot, nudge) = match peer.sending_slot() {
            Some(i) => (i, i != 0),
            None => (0, false),
        };
        let Some(s) = peer.slots.get_mut(slot) else {
            return;
        };
        batch.push(
            &self.udp,
            endpoint,
            (packet.len() + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN),
            |out| match s.tunn.encapsulate(packet, out) {
                TunnResult::WriteToNetwork(pkt) => Some(pkt.len()),
                _ => None,
            },
        );
        if nudge {
            // A newer slot is waiting for its handshake: nudge it.
            self.initiate(&mut peer, buf);
        }
    }

    /// Handles one datagram from the underlay; decrypted packets go to
    /// `deliver`.
    fn inbound(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        buf: &mut [u8],
        deliver: &mut impl FnMut(&[u8]),
    ) {
        let parsed = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(e) => {
                trace!(%from, error = ?e, "not a WireGuard packet");
                return;
            }
        };
        let (peer, index) = match parsed {
            Packet::HandshakeInit(ref init) => {
                let state = self.read();
                let found = state.keys.iter().find_map(|k| {
                    parse_handshake_anon(&k.secret, &k.public, init)
                        .ok()
                        .map(|half| (k.id, half.peer_static_public))
                });
                let Some((key_id, peer_pub)) = found else {
                    debug!(%from, "handshake initiation for none of our keys");
                    return;
                };
                let Some(peer) = state.by_key.get(&peer_pub).cloned() else {
                    debug!(%from, "handshake initiation from an unknown key");
                    return;
                };
                drop(state);
                let index = lock(&peer)
                    .slots
                    .iter()
                    .find(|s| s.key_id == key_id && s.peer_public == peer_pub)
                    .map(|s| s.index);
                let Some(index) = index else {
                    debug!(%from, "handshake initiation for a retired key pair");
                    return;
                };
                Some((peer, index))
            }
            Packet::HandshakeResponse(ref r) => self.by_index(r.receiver_idx, from),
            Packet::PacketCookieReply(ref r) => self.by_index(r.receiver_idx, from),
            Packet::PacketData(ref d) => self.by_index(d.receiver_idx, from),
        }
        .map_or_else(|| (None, 0), |(p, i)| (Some(p), i));
        let Some(peer) = peer else { return };
        let mut guard = lock(&peer);
        let Peer {
            slots,
            allowed,
            endpoint,
            last_rx,
            ..
        } = &mut *guard;
        let endpoint = *endpoint;
        let Some(slot) = slots.iter_mut().find(|s| s.index == index) else {
            return;
        };
        let src_ip = Some(from.ip());
        let mut result = slot.tunn.decapsulate(src_ip, datagram, buf);
        if !matches!(result, TunnResult::Err(_)) {
            // Authenticated: data, a keepalive or a handshake message.
            *last_rx = Some(Instant::now());
        }
        loop {
            match result {
                TunnResult::WriteToNetwork(pkt) => {
                    self.send_udp(pkt, endpoint);
                    // Flush packets boringtun queued while the handshake ran.
                    result = slot.tunn.decapsulate(None, &[], buf);
                    continue;
                }
                TunnResult::WriteToTunnelV4(pkt, src) => {
                    if allowed.iter().any(|n| n.contains(&src)) {
                        deliver(pkt);
                    } else {
                        debug!(%src, "dropping a packet from a source the peer may not use");
                    }
                }
                TunnResult::WriteToTunnelV6(..) => trace!("dropping an IPv6 packet"),
                TunnResult::Err(e) => trace!(%from, error = ?e, "decapsulation failed"),
                TunnResult::Done => {}
            }
            break;
        }
        slot.note_session(Instant::now());
    }

    fn by_index(&self, receiver_idx: u32, from: SocketAddr) -> Option<(PeerRef, u32)> {
        let index = receiver_idx >> 8;
        match self.read().by_index.get(&index) {
            Some(p) => Some((p.clone(), index)),
            None => {
                trace!(%from, index, "packet for an unknown session index");
                None
            }
        }
    }

    fn tick(&self, buf: &mut [u8]) {
        let now = Instant::now();
        let peers: Vec<PeerRef> = self.read().peers.values().cloned().collect();
        let mut retired = Vec::new();
        for peer in &peers {
            let mut peer = lock(peer);
            let endpoint = peer.endpoint;
            for slot in peer.slots.iter_mut() {
                if let TunnResult::WriteToNetwork(pkt) = slot.tunn.update_timers(buf) {
                    self.send_udp(pkt, endpoint);
                }
                slot.note_session(now);
            }
            if peer.keepalive_due(now) {
                if let Some(i) = peer.sending_slot() {
                    // An empty data packet: boringtun's keepalive.
                    if let TunnResult::WriteToNetwork(pkt) =
                        peer.slots[i].tunn.encapsulate(&[], buf)
                    {
                        self.send_udp(pkt, endpoint);
                    }
                    peer.last_keepalive = Some(now);
                }
            }
            let dropped = peer.prune(now);
            if !dropped.is_empty() {
                debug!(peer = %peer.name, slots = dropped.len(), "retired replaced tunnel slots");
                retired.extend(dropped);
            }
        }
        if retired.is_empty() {
            return;
        }
        let mut state = self.write();
        for index in &retired {
            state.by_index.remove(index);
        }
        state.retire_unused();
    }
}

impl State {
    /// Removes the route for `net` if it still leads to `peer`.
    fn remove_route_of(&mut self, net: &ipnet::Ipv4Net, peer: &PeerRef) {
        if self.routes.get(net).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            self.routes.remove(net);
        }
    }

    /// Forgets local keys and peer keys that no slot uses any more.
    fn retire_unused(&mut self) {
        let mut used_keys = std::collections::HashSet::new();
        let mut used_pubs = std::collections::HashSet::new();
        for peer in self.peers.values() {
            for slot in &lock(peer).slots {
                used_keys.insert(slot.key_id);
                used_pubs.insert(slot.peer_public);
            }
        }
        let newest = self.keys.first().map(|k| k.id);
        self.keys
            .retain(|k| Some(k.id) == newest || used_keys.contains(&k.id));
        self.by_key.retain(|k, _| used_pubs.contains(k));
    }
}

/// The userspace WireGuard device.
pub struct UserspaceDevice {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl UserspaceDevice {
    /// Attaches to (or creates) the persistent TUN device `iface`, binds
    /// the WireGuard UDP port and starts forwarding.
    pub fn start(iface: &str, key: &NodeKey, listen_port: u16) -> Result<Self, BackendError> {
        Self::start_with(iface, key, listen_port, UserspaceOptions::default())
    }

    /// As [`UserspaceDevice::start`]; with `opts.standby` the device
    /// attaches beside an old process still forwarding (a restart's
    /// handover): it takes no packets from the kernel until
    /// [`Backend::activate`], while it handshakes and already delivers what
    /// peers send on its new sessions.
    pub fn start_with(
        iface: &str,
        key: &NodeKey,
        listen_port: u16,
        opts: UserspaceOptions,
    ) -> Result<Self, BackendError> {
        let want = Wanted::from_env();
        let tun = Tun::attach_with(
            iface,
            WantOffloads {
                tso: want.tso,
                uso: want.uso,
                gro: want.gro,
            },
        )?;
        let gro_writes = want.gro && tun.offloads().vnet_hdr;
        if opts.standby {
            if !tun.multi_queue() {
                // Only a multi-queue device takes a second reader.
                return Err(BackendError::Tun(crate::tun::TunError::Busy {
                    name: iface.to_string(),
                }));
            }
            tun.set_queue_enabled(false)
                .map_err(|source| BackendError::Handover {
                    action: "detaching the new TUN queue until the sessions are up",
                    source,
                })?;
        }
        let bind_err = |source| BackendError::Bind {
            port: listen_port,
            source,
        };
        let sock = steer::bind_reuseport(listen_port).map_err(bind_err)?;
        let udp = Udp::new(sock, want.udp_gso, want.udp_gro).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            iface: iface.to_string(),
            tun,
            udp,
            gro_writes,
            generation: u32::from(opts.generation & 1),
            tx_stop: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            state: RwLock::new(State::default()),
            next_index: AtomicU32::new(rand_core::OsRng.next_u32()),
            next_key_id: AtomicU32::new(1),
        });
        shared.write().keys.push(Arc::new(LocalKey {
            id: 0,
            secret: key.secret().clone(),
            public: XPublic::from(key.public().0),
        }));
        let device = UserspaceDevice {
            shared,
            threads: Mutex::new(Vec::new()),
        };
        device.spawn("tun-rx", |s| {
            let mut rd = vec![0u8; BUF];
            let mut scratch = Vec::with_capacity(BUF);
            let mut out = vec![0u8; BUF];
            let mut batch = GsoBatch::default();
            while !s.stop.load(Ordering::Relaxed) {
                if s.tx_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    continue;
                }
                match crate::tun::wait_readable(s.tun.as_raw_fd(), POLL) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        warn!(error = %e, "waiting on the TUN device failed");
                        std::thread::sleep(POLL);
                        continue;
                    }
                }
                let mut last = None;
                io::read_tun_batch(&s.tun, &mut rd, &mut scratch, |pkt| {
                    s.outbound(pkt, &mut batch, &mut last, &mut out)
                });
                batch.flush(&s.udp);
            }
        })?;
        device.spawn("udp-rx", |s| {
            let mut bufs = RecvBufs::new(s.udp.gro());
            let mut out = vec![0u8; BUF];
            let mut writer = TunWriter::new(s.gro_writes);
            while !s.stop.load(Ordering::Relaxed) {
                let n = bufs.recv(&s.udp, POLL, |d, from| {
                    s.inbound(d, from, &mut out, &mut |pkt| writer.push(&s.tun, pkt))
                });
                if n > 0 {
                    writer.flush(&s.tun);
                }
            }
        })?;
        device.spawn("wg-timers", |s| {
            let mut out = vec![0u8; BUF];
            while !s.stop.load(Ordering::Relaxed) {
                s.tick(&mut out);
                std::thread::sleep(TIMER_TICK);
            }
        })?;
        let offloads = device.offloads();
        info!(
            interface = iface,
            port = listen_port,
            backend = "userspace",
            tso = offloads.tso,
            uso = offloads.uso,
            gro_writes = offloads.gro_writes,
            udp_gso_segments = offloads.udp_gso_segments,
            udp_gro = offloads.udp_gro,
            "WireGuard device up"
        );
        Ok(device)
    }

    fn spawn(
        &self,
        what: &'static str,
        body: impl FnOnce(Arc<Shared>) + Send + 'static,
    ) -> Result<(), BackendError> {
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(what.to_string())
            .spawn(move || body(shared))
            .map_err(|source| BackendError::Thread { what, source })?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Ok(())
    }

    fn add(&self, cfg: &PeerConfig) -> Result<(), BackendError> {
        let key = cfg.key()?;
        let mut state = self.shared.write();
        let Some(local) = state.keys.first().cloned() else {
            return Ok(());
        };
        let slot = self.shared.new_slot(&local, key.0);
        let index = slot.index;
        let peer = Arc::new(Mutex::new(Peer {
            name: cfg.name.clone(),
            public_key: cfg.public_key.clone(),
            endpoint: cfg.endpoint,
            allowed: cfg.allowed_ips.clone(),
            slots: vec![slot],
            retired_tx: 0,
            retired_rx: 0,
            last_rx: None,
            keepalive: cfg.keepalive_ms.map(Duration::from_millis),
            last_keepalive: None,
        }));
        for net in &cfg.allowed_ips {
            state.routes.insert(*net, peer.clone());
        }
        state.by_key.insert(key.0, peer.clone());
        state.by_index.insert(index, peer.clone());
        state.peers.insert(cfg.name.clone(), peer.clone());
        drop(state);
        let mut buf = vec![0u8; BUF];
        self.shared.initiate(&mut lock(&peer), &mut buf);
        info!(peer = %cfg.name, endpoint = %cfg.endpoint, "peer added");
        Ok(())
    }

    fn update(&self, old: &PeerConfig, new: &PeerConfig) -> Result<(), BackendError> {
        let key = new.key()?;
        let mut state = self.shared.write();
        let Some(peer) = state.peers.get(&new.name).cloned() else {
            drop(state);
            return self.add(new);
        };
        // A prefix may have moved to another peer already (a gateway
        // switch): only this peer's own entries go.
        for net in &old.allowed_ips {
            state.remove_route_of(net, &peer);
        }
        for net in &new.allowed_ips {
            state.routes.insert(*net, peer.clone());
        }
        let mut p = lock(&peer);
        p.endpoint = new.endpoint;
        p.allowed = new.allowed_ips.clone();
        p.keepalive = new.keepalive_ms.map(Duration::from_millis);
        let key_changed = p.public_key != new.public_key;
        if key_changed {
            p.public_key = new.public_key.clone();
            if let Some(local) = state.keys.first().cloned() {
                let slot = self.shared.new_slot(&local, key.0);
                state.by_index.insert(slot.index, peer.clone());
                p.slots.insert(0, slot);
            }
            state.by_key.insert(key.0, peer.clone());
        }
        drop(state);
        if key_changed {
            let mut buf = vec![0u8; BUF];
            self.shared.initiate(&mut p, &mut buf);
            info!(peer = %new.name, "peer key changed: new session under way, old one kept meanwhile");
        } else {
            info!(peer = %new.name, endpoint = %new.endpoint, "peer updated");
        }
        Ok(())
    }

    fn remove(&self, old: &PeerConfig) {
        let mut state = self.shared.write();
        let Some(peer) = state.peers.remove(&old.name) else {
            return;
        };
        for net in &old.allowed_ips {
            state.remove_route_of(net, &peer);
        }
        let indices: Vec<u32> = lock(&peer).slots.iter().map(|s| s.index).collect();
        for index in indices {
            state.by_index.remove(&index);
        }
        state.by_key.retain(|_, p| !Arc::ptr_eq(p, &peer));
        info!(peer = %old.name, "peer removed");
    }
}

/// The offloads asked for through [`OFFLOADS_ENV`].
struct Wanted {
    tso: bool,
    uso: bool,
    gro: bool,
    udp_gso: bool,
    udp_gro: bool,
}

impl Wanted {
    fn from_env() -> Wanted {
        let all = Wanted {
            tso: true,
            uso: true,
            gro: true,
            udp_gso: true,
            udp_gro: true,
        };
        let Ok(v) = std::env::var(OFFLOADS_ENV) else {
            return all;
        };
        let v = v.trim();
        if v.is_empty() || v == "all" {
            return all;
        }
        let names: Vec<&str> = v.split(',').map(str::trim).collect();
        for n in &names {
            if !matches!(*n, "none" | "tso" | "uso" | "gro" | "udp-gso" | "udp-gro") {
                warn!(
                    name = n,
                    "{OFFLOADS_ENV}: unknown offload ignored (known: tso, uso, gro, udp-gso, udp-gro, all, none)"
                );
            }
        }
        let has = |n: &str| names.contains(&n);
        Wanted {
            tso: has("tso"),
            uso: has("uso"),
            gro: has("gro"),
            udp_gso: has("udp-gso"),
            udp_gro: has("udp-gro"),
        }
    }
}

impl UserspaceDevice {
    /// What the datapath offloads now.
    pub fn offloads(&self) -> Offloads {
        let t = self.shared.tun.offloads();
        Offloads {
            tso: t.tso,
            uso: t.uso,
            gro_writes: self.shared.gro_writes,
            udp_gso_segments: self.shared.udp.max_segments(),
            udp_gro: self.shared.udp.gro(),
        }
    }
}

impl Backend for UserspaceDevice {
    fn offloads(&self) -> Option<Offloads> {
        Some(UserspaceDevice::offloads(self))
    }

    fn begin_handoff(&self) -> bool {
        if !self.shared.tun.multi_queue() {
            return false;
        }
        // The new process's queue joins as the second and is read nothing
        // until it takes over; the kernel would send it packets the moment
        // it joins (by flow hash, or by the steering program the last
        // handover left pointing at the second queue), and they would go
        // when it steps aside at once. This queue, the only one now, is
        // the first: every packet comes here until the new one activates.
        if let Err(e) = self.shared.tun.steer_to_queue(0) {
            warn!(error = %e, "cannot keep the kernel's packets on this TUN queue: a few may be dropped as the new agent attaches");
        }
        match steer::attach(&self.shared.udp.sock, self.shared.generation) {
            Ok(()) => {
                info!(
                    generation = self.shared.generation,
                    "handing over: datagrams of this process's sessions stay here, the rest go to the new one"
                );
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot steer datagrams between old and new process: restart without handover");
                false
            }
        }
    }

    fn release_tx(&self) {
        self.shared.tx_stop.store(true, Ordering::Relaxed);
        if let Err(e) = self.shared.tun.set_queue_enabled(false) {
            warn!(error = %e, "detaching the old TUN queue");
        }
    }

    fn activate(&self) -> Result<(), BackendError> {
        self.shared
            .tun
            .set_queue_enabled(true)
            .map_err(|source| BackendError::Handover {
                action: "attaching the new TUN queue",
                source,
            })?;
        // This queue is the second (the old process's is the first): every
        // packet comes here from now on, and the old queue only empties.
        if let Err(e) = self.shared.tun.steer_to_queue(1) {
            warn!(error = %e, "cannot steer the kernel's packets to the new TUN queue: the old queue's last packets may be dropped when it goes");
        }
        Ok(())
    }

    fn sessions_ready(&self) -> bool {
        self.shared
            .read()
            .peers
            .values()
            .all(|p| lock(p).sending_slot().is_some())
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    fn interface(&self) -> &str {
        &self.shared.iface
    }

    fn apply(&self, change: &PeerChange) -> Result<(), BackendError> {
        match change {
            PeerChange::Add(cfg) => self.add(cfg),
            PeerChange::Update { old, new } => self.update(old, new),
            PeerChange::Remove(old) => {
                self.remove(old);
                Ok(())
            }
        }
    }

    fn rotate_key(&self, key: &NodeKey) -> Result<(), BackendError> {
        let local = Arc::new(LocalKey {
            id: self.shared.next_key_id.fetch_add(1, Ordering::Relaxed),
            secret: key.secret().clone(),
            public: XPublic::from(key.public().0),
        });
        let mut state = self.shared.write();
        state.keys.insert(0, local.clone());
        let peers: Vec<PeerRef> = state.peers.values().cloned().collect();
        let mut buf = vec![0u8; BUF];
        for peer in peers {
            let mut p = lock(&peer);
            let Some(peer_public) = p.slots.first().map(|s| s.peer_public) else {
                continue;
            };
            let slot = self.shared.new_slot(&local, peer_public);
            state.by_index.insert(slot.index, peer.clone());
            p.slots.insert(0, slot);
            self.shared.initiate(&mut p, &mut buf);
        }
        info!(public_key = %key.public().short(), "local key rotated; old sessions carry traffic until new ones are up");
        Ok(())
    }

    fn stats(&self) -> Vec<PeerStats> {
        let state = self.shared.read();
        let now = Instant::now();
        state
            .peers
            .values()
            .map(|peer| {
                let p = lock(peer);
                let (tx, rx) = p.bytes();
                PeerStats {
                    name: p.name.clone(),
                    public_key: p.public_key.clone(),
                    endpoint: p.endpoint.to_string(),
                    allowed_ips: p.allowed.iter().map(|n| n.to_string()).collect(),
                    last_handshake_age_ms: p.handshake_age_ms(),
                    last_rx_age_ms: p.rx_age_ms(now),
                    tx_bytes: tx,
                    rx_bytes: rx,
                }
            })
            .collect()
    }

    fn shutdown(&self, remove_device: bool) -> Result<(), BackendError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        if remove_device {
            let _ = self.shared.tun.unpersist();
            crate::routes::delete_interface(&self.shared.iface)?;
        }
        Ok(())
    }
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
