//! One peer of the userspace device and its tunnel slots.
//!
//! A slot is one boringtun [`Tunn`] for one (local key, peer key) pair. A
//! key change on either side adds a new slot in front of the old ones; data
//! keeps flowing through the newest slot that has a session, and older slots
//! are kept for receiving until the new one has been up for a grace period.
//! That is what makes key rotation lossless.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use ipnet::Ipv4Net;

/// How long an older slot stays after a newer one has a session.
pub const SLOT_GRACE: Duration = Duration::from_secs(10);
/// How long an older slot may wait for a newer one to come up at most.
pub const SLOT_MAX_AGE: Duration = Duration::from_secs(240);

pub struct Slot {
    /// Index given to boringtun; incoming packets carry it shifted by 8.
    pub index: u32,
    /// Which local key this slot uses.
    pub key_id: u32,
    pub peer_public: [u8; 32],
    pub tunn: Tunn,
    pub created: Instant,
    /// When this slot first had a session.
    pub established: Option<Instant>,
}

impl Slot {
    pub fn has_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Notes the moment the slot first has a session.
    pub fn note_session(&mut self, now: Instant) {
        if self.established.is_none() && self.has_session() {
            self.established = Some(now);
        }
    }
}

pub struct Peer {
    pub name: String,
    pub public_key: String,
    pub endpoint: SocketAddr,
    pub allowed: Vec<Ipv4Net>,
    /// Newest first.
    pub slots: Vec<Slot>,
    /// Bytes counted by slots that were dropped.
    pub retired_tx: u64,
    pub retired_rx: u64,
    /// When anything authenticated last arrived from this peer.
    pub last_rx: Option<Instant>,
    /// How often to send a keepalive, if at all.
    pub keepalive: Option<Duration>,
    /// When the last keepalive went out.
    pub last_keepalive: Option<Instant>,
}

impl Peer {
    /// The slot that carries outgoing data: the newest with a session.
    pub fn sending_slot(&self) -> Option<usize> {
        self.slots.iter().position(Slot::has_session)
    }

    /// Drops slots that a newer, established slot has replaced; returns
    /// the indices dropped so the device forgets them.
    pub fn prune(&mut self, now: Instant) -> Vec<u32> {
        let newest_up = self
            .slots
            .first()
            .and_then(|s| s.established)
            .map(|t| now.duration_since(t) >= SLOT_GRACE)
            .unwrap_or(false);
        let mut dropped = Vec::new();
        let mut kept = Vec::with_capacity(self.slots.len());
        for (i, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            let stale = i > 0 && (newest_up || now.duration_since(slot.created) >= SLOT_MAX_AGE);
            if stale {
                let (_, tx, rx, _, _) = slot.tunn.stats();
                self.retired_tx += tx as u64;
                self.retired_rx += rx as u64;
                dropped.push(slot.index);
            } else {
                kept.push(slot);
            }
        }
        self.slots = kept;
        dropped
    }

    /// Milliseconds since the sending slot's handshake.
    pub fn handshake_age_ms(&self) -> Option<u64> {
        let slot = &self.slots[self.sending_slot()?];
        slot.tunn
            .time_since_last_handshake()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether a keepalive is due at `now`.
    pub fn keepalive_due(&self, now: Instant) -> bool {
        match (self.keepalive, self.last_keepalive) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(every), Some(last)) => now.duration_since(last) >= every,
        }
    }

    /// Milliseconds since anything authenticated arrived from the peer.
    pub fn rx_age_ms(&self, now: Instant) -> Option<u64> {
        self.last_rx
            .map(|t| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX))
    }

    pub fn bytes(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((self.retired_tx, self.retired_rx), |(tx, rx), s| {
                let (_, t, r, _, _) = s.tunn.stats();
                (tx + t as u64, rx + r as u64)
            })
    }
}
