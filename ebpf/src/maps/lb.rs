//! `mg_lb_svc`, `mg_lb_backends` and `mg_lb_ct`: service load balancing.
//! A service frontend (VIP, port, protocol) points at a backend set stored
//! under a revision; [`LoadBalancer::set`] writes a new set under a fresh
//! revision and switches the frontend to it in one map update, so a new
//! connection always picks from one whole set. The old slots are retired,
//! not deleted: a program that read the frontend just before the switch may
//! still read them, so [`LoadBalancer::reap`] deletes them only once they
//! have been retired for [`RETIRE_GRACE`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};

use super::{is_not_found, map_err, typed, Proto};
use crate::error::{Error, Result};
use crate::layout::*;

pub(crate) const SVC_NAME: &str = "mg_lb_svc";
pub(crate) const BACKENDS_NAME: &str = "mg_lb_backends";
pub(crate) const CT_NAME: &str = "mg_lb_ct";

/// A service's virtual address as clients use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            _ => "other",
        };
        write!(f, "{}:{}/{proto}", self.vip, self.port)
    }
}

/// Which backends a new connection may get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Affinity {
    /// Any backend.
    #[default]
    None,
    /// This cluster's backends while any exists, else the others.
    Local,
    /// Other clusters' backends while any exists, else this cluster's.
    Remote,
}

impl Affinity {
    fn raw(self) -> u32 {
        match self {
            Affinity::None => LB_AFFINITY_NONE,
            Affinity::Local => LB_AFFINITY_LOCAL,
            Affinity::Remote => LB_AFFINITY_REMOTE,
        }
    }

    fn from_raw(raw: u32) -> Affinity {
        match raw {
            LB_AFFINITY_LOCAL => Affinity::Local,
            LB_AFFINITY_REMOTE => Affinity::Remote,
            _ => Affinity::None,
        }
    }
}

/// One backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// In this node's cluster.
    pub local: bool,
}

/// What the datapath holds for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbService {
    pub affinity: Affinity,
    /// This cluster's backends first, then the others'.
    pub backends: Vec<Backend>,
    pub rev: u32,
}

/// One translated connection, as `mg_lb_ct` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbConnection {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub frontend: Frontend,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
}

fn addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn proto_of(n: u8) -> Proto {
    match n {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        other => Proto::Other(other),
    }
}

/// How long the slots of a replaced backend set stay readable.
pub const RETIRE_GRACE: Duration = Duration::from_millis(500);

pub struct LoadBalancer {
    svc: HashMap<MapData, LbSvcKey, LbSvcValue>,
    backends: HashMap<MapData, LbBackendKey, LbBackendValue>,
    ct: HashMap<MapData, CtKey, LbCtValue>,
    next_rev: u32,
    /// Replaced backend sets: (revision, slots, when replaced).
    retired: Vec<(u32, u16, Instant)>,
}

impl LoadBalancer {
    pub(crate) fn new(svc: Map, backends: Map, ct: Map) -> Result<Self> {
        let mut lb = Self {
            svc: typed(SVC_NAME, svc, HashMap::try_from)?,
            backends: typed(BACKENDS_NAME, backends, HashMap::try_from)?,
            ct: typed(CT_NAME, ct, HashMap::try_from)?,
            next_rev: 1,
            retired: Vec::new(),
        };
        // Revisions of pinned entries are not used again.
        let mut max = 0u32;
        for k in lb.backends.keys() {
            let k = k.map_err(map_err(BACKENDS_NAME, "listing backends"))?;
            max = max.max(k.rev);
        }
        for r in lb.svc.iter() {
            let (_, v) = r.map_err(map_err(SVC_NAME, "listing services"))?;
            max = max.max(v.rev);
        }
        lb.next_rev = max.wrapping_add(1).max(1);
        Ok(lb)
    }

    fn key(frontend: &Frontend) -> Result<LbSvcKey> {
        if !matches!(frontend.proto, Proto::Tcp | Proto::Udp) {
            return Err(Error::LbProto {
                frontend: frontend.to_string(),
                proto: frontend.proto,
            });
        }
        Ok(LbSvcKey {
            vip: addr(frontend.vip),
            port: frontend.port,
            proto: frontend.proto.number(),
            pad: 0,
        })
    }

    /// Sets the backends of `frontend` (creating it) at `now`. Connections
    /// already translated keep their backend; new ones pick from `backends`
    /// only. The replaced set's slots are retired ([`Self::reap`]).
    pub fn set(
        &mut self,
        frontend: &Frontend,
        affinity: Affinity,
        backends: &[Backend],
        now: Instant,
    ) -> Result<()> {
        let key = Self::key(frontend)?;
        let mut ordered: Vec<Backend> = backends.to_vec();
        // Local slots first: the datapath picks from [0, local) or [local, count).
        ordered.sort_by_key(|b| !b.local);
        let count = u16::try_from(ordered.len()).map_err(|_| Error::TooManyBackends {
            frontend: frontend.to_string(),
            count: ordered.len(),
        })?;
        let local_count = ordered.iter().filter(|b| b.local).count() as u16;
        let rev = self.next_rev;
        self.next_rev = self.next_rev.wrapping_add(1).max(1);
        for (slot, b) in ordered.iter().enumerate() {
            let v = LbBackendValue {
                addr: addr(b.addr),
                port: b.port,
                flags: if b.local { LB_BACKEND_F_LOCAL } else { 0 },
                pad: 0,
            };
            self.backends
                .insert(
                    LbBackendKey {
                        rev,
                        slot: slot as u32,
                    },
                    v,
                    0,
                )
                .map_err(map_err(BACKENDS_NAME, "writing a backend"))?;
        }
        let old = match self.svc.get(&key, 0) {
            Ok(v) => Some(v),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(map_err(SVC_NAME, "reading a service")(e)),
        };
        let value = LbSvcValue {
            rev,
            count,
            local_count,
            affinity: affinity.raw(),
        };
        self.svc
            .insert(key, value, 0)
            .map_err(map_err(SVC_NAME, "writing a service"))?;
        if let Some(old) = old {
            self.retired.push((old.rev, old.count, now));
        }
        self.reap(now)?;
        Ok(())
    }

    /// Deletes the slots retired at least [`RETIRE_GRACE`] before `now`;
    /// how many backend sets went.
    pub fn reap(&mut self, now: Instant) -> Result<usize> {
        let mut reaped = 0;
        while let Some(&(rev, count, at)) = self.retired.first() {
            if now.saturating_duration_since(at) < RETIRE_GRACE {
                break;
            }
            self.remove_slots(rev, count)?;
            self.retired.remove(0);
            reaped += 1;
        }
        Ok(reaped)
    }

    /// Backend sets retired and not yet reaped.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    fn remove_slots(&mut self, rev: u32, count: u16) -> Result<()> {
        for slot in 0..u32::from(count) {
            match self.backends.remove(&LbBackendKey { rev, slot }) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(BACKENDS_NAME, "removing a backend")(e)),
            }
        }
        Ok(())
    }

    /// Removes a frontend: new connections to it are no longer translated.
    /// Whether it was there.
    pub fn remove(&mut self, frontend: &Frontend) -> Result<bool> {
        let key = Self::key(frontend)?;
        let old = match self.svc.get(&key, 0) {
            Ok(v) => v,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(map_err(SVC_NAME, "reading a service")(e)),
        };
        match self.svc.remove(&key) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_err(SVC_NAME, "removing a service")(e)),
        }
        self.remove_slots(old.rev, old.count)?;
        Ok(true)
    }

    /// Every frontend with its backends, read from the maps.
    pub fn services(&self) -> Result<BTreeMap<Frontend, LbService>> {
        let mut out = BTreeMap::new();
        for r in self.svc.iter() {
            let (k, v) = r.map_err(map_err(SVC_NAME, "listing services"))?;
            let mut backends = Vec::with_capacity(usize::from(v.count));
            for slot in 0..u32::from(v.count) {
                match self.backends.get(&LbBackendKey { rev: v.rev, slot }, 0) {
                    Ok(b) => backends.push(Backend {
                        addr: ip(b.addr),
                        port: b.port,
                        local: b.flags & LB_BACKEND_F_LOCAL != 0,
                    }),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(map_err(BACKENDS_NAME, "reading a backend")(e)),
                }
            }
            out.insert(
                Frontend {
                    vip: ip(k.vip),
                    port: k.port,
                    proto: proto_of(k.proto),
                },
                LbService {
                    affinity: Affinity::from_raw(v.affinity),
                    backends,
                    rev: v.rev,
                },
            );
        }
        Ok(out)
    }

    /// Deletes backend slots of revisions no frontend uses (left by an
    /// agent that stopped in the middle of an update). Call it from the
    /// only writer, before its first update.
    pub fn gc(&mut self) -> Result<usize> {
        let mut live = std::collections::BTreeSet::new();
        for r in self.svc.iter() {
            let (_, v) = r.map_err(map_err(SVC_NAME, "listing services"))?;
            live.insert(v.rev);
        }
        let stale: Vec<LbBackendKey> = self
            .backends
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !live.contains(&k.rev))
            .collect();
        for k in &stale {
            match self.backends.remove(k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(BACKENDS_NAME, "removing a backend")(e)),
            }
        }
        Ok(stale.len())
    }

    /// Forgets the translated connections of `frontend` that go to one of
    /// `gone` (both their entries), so that their next packet picks a
    /// backend again. For UDP, where a client socket reusing its port would
    /// otherwise keep sending to a backend that left (as kube-proxy flushes
    /// UDP conntrack entries of removed endpoints). Returns how many.
    pub fn forget(&mut self, frontend: &Frontend, gone: &[Backend]) -> Result<usize> {
        let key = Self::key(frontend)?;
        let gone: std::collections::BTreeSet<(u32, u16)> =
            gone.iter().map(|b| (addr(b.addr), b.port)).collect();
        let mut doomed = Vec::new();
        for r in self.ct.iter() {
            let Ok((k, v)) = r else { continue };
            if v.flags & LB_CT_F_REVERSE == 0
                && k.daddr == key.vip
                && k.dport == key.port
                && k.proto == key.proto
                && gone.contains(&(v.addr, v.port))
            {
                doomed.push(k);
                doomed.push(CtKey {
                    saddr: v.addr,
                    daddr: k.saddr,
                    sport: v.port,
                    dport: k.sport,
                    proto: k.proto,
                    pad: [0; 3],
                });
            }
        }
        for k in &doomed {
            match self.ct.remove(k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(CT_NAME, "removing a connection")(e)),
            }
        }
        Ok(doomed.len() / 2)
    }

    /// The translated connections (forward entries of `mg_lb_ct`).
    pub fn connections(&self) -> Result<Vec<LbConnection>> {
        let mut out = Vec::new();
        for r in self.ct.iter() {
            let (k, v) = r.map_err(map_err(CT_NAME, "listing connections"))?;
            if v.flags & LB_CT_F_REVERSE != 0 {
                continue;
            }
            out.push(LbConnection {
                client: ip(k.saddr),
                client_port: k.sport,
                frontend: Frontend {
                    vip: ip(k.daddr),
                    port: k.dport,
                    proto: proto_of(k.proto),
                },
                backend: ip(v.addr),
                backend_port: v.port,
            });
        }
        Ok(out)
    }
}
