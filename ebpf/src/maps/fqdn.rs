//! `mg_fqdn`: world addresses an identity may reach because the node's DNS
//! proxy answered them for a name its toFQDNs rules allow. The datapath side
//! is `bpf/fqdn.h`: `from_pod` consults an entry only when egress policy
//! denied a packet to a world address for lack of a rule (an explicit deny
//! rule still wins), admits a new flow while `expires_ns` (CLOCK_MONOTONIC,
//! see [`crate::monotonic_ns`]) is ahead and the port is listed, and keeps
//! admitting a flow whose conntrack entry is live after the entry expired.
//!
//! The DNS proxy writes it through the pins ([`crate::Maps::open_pinned`]),
//! also while the agent is down; the agent does not touch it. The DNS
//! steering switch that goes with it is [`crate::maps::ConfigMap::set_dns_proxy`].

use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData};

use super::{is_not_found, map_err, typed};
use crate::error::{Error, Result};
use crate::layout::{FqdnKey, FqdnPort, FqdnValue, FQDN_F_ANY_PORT};

pub(crate) const NAME: &str = "mg_fqdn";

/// The most (protocol, port) pairs one entry lists.
pub const FQDN_MAX_PORTS: usize = crate::layout::FQDN_MAX_PORTS;

/// Which packets to the address an entry admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FqdnPorts {
    /// Any protocol, any port.
    Any,
    /// `(proto, port)` pairs, at most [`FQDN_MAX_PORTS`]: proto 0
    /// is any protocol (on `port`), port 0 any port of `proto`. Ports in
    /// host byte order, as in [`crate::PolicyRule`]. An empty list admits
    /// nothing.
    Only(Vec<(u8, u16)>),
}

/// What `mg_fqdn` holds for (identity, address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnEntry {
    /// New flows are admitted while `bpf_ktime_get_ns()` is below this
    /// ([`crate::monotonic_ns`] is the same clock).
    pub expires_ns: u64,
    pub ports: FqdnPorts,
}

fn raw(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn key(identity: u32, addr: Ipv4Addr) -> FqdnKey {
    FqdnKey {
        identity,
        addr: raw(addr),
    }
}

impl FqdnEntry {
    fn to_raw(&self, identity: u32, addr: Ipv4Addr) -> Result<FqdnValue> {
        let mut v = FqdnValue {
            expires_ns: self.expires_ns,
            ..FqdnValue::default()
        };
        match &self.ports {
            FqdnPorts::Any => v.flags = FQDN_F_ANY_PORT,
            FqdnPorts::Only(ports) => {
                if ports.len() > FQDN_MAX_PORTS {
                    return Err(Error::TooManyFqdnPorts {
                        identity,
                        addr,
                        count: ports.len(),
                    });
                }
                v.nports = ports.len() as u32;
                for (slot, (proto, port)) in v.ports.iter_mut().zip(ports) {
                    *slot = FqdnPort {
                        port: *port,
                        proto: *proto,
                        pad: 0,
                    };
                }
            }
        }
        Ok(v)
    }

    fn from_raw(v: &FqdnValue) -> Self {
        let ports = if v.flags & FQDN_F_ANY_PORT != 0 {
            FqdnPorts::Any
        } else {
            let n = (v.nports as usize).min(FQDN_MAX_PORTS);
            FqdnPorts::Only(v.ports[..n].iter().map(|p| (p.proto, p.port)).collect())
        };
        Self {
            expires_ns: v.expires_ns,
            ports,
        }
    }
}

pub struct Fqdn {
    map: HashMap<MapData, FqdnKey, FqdnValue>,
}

impl Fqdn {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: typed(NAME, map, HashMap::try_from)?,
        })
    }

    /// Lets `identity` reach `addr` as `entry` says (replacing what was
    /// there in one update: a longer expiry or other ports apply to the
    /// next packet).
    pub fn set(&mut self, identity: u32, addr: Ipv4Addr, entry: &FqdnEntry) -> Result<()> {
        let value = entry.to_raw(identity, addr)?;
        self.map
            .insert(key(identity, addr), value, 0)
            .map_err(map_err(NAME, "writing an entry"))
    }

    /// The entry of (`identity`, `addr`), expired or not.
    pub fn get(&self, identity: u32, addr: Ipv4Addr) -> Result<Option<FqdnEntry>> {
        match self.map.get(&key(identity, addr), 0) {
            Ok(v) => Ok(Some(FqdnEntry::from_raw(&v))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(NAME, "looking up an entry")(e)),
        }
    }

    /// Removes the entry of (`identity`, `addr`); false if there was none.
    /// Flows it admitted that are live in conntrack keep passing.
    pub fn remove(&mut self, identity: u32, addr: Ipv4Addr) -> Result<bool> {
        match self.map.remove(&key(identity, addr)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(NAME, "removing an entry")(e)),
        }
    }

    /// Every entry, expired or not: (identity, address, entry).
    pub fn entries(&self) -> Result<Vec<(u32, Ipv4Addr, FqdnEntry)>> {
        self.map
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(map_err(NAME, "listing entries"))?;
                Ok((
                    k.identity,
                    Ipv4Addr::from(k.addr.to_ne_bytes()),
                    FqdnEntry::from_raw(&v),
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    #[test]
    fn keys_and_ports_are_laid_out_as_the_datapath_reads_them() {
        let k = key(0x1_0100, ADDR);
        assert_eq!(k.identity, 0x1_0100);
        assert_eq!(k.addr.to_ne_bytes(), [203, 0, 113, 7], "network order");

        let entry = FqdnEntry {
            expires_ns: 42,
            ports: FqdnPorts::Only(vec![(6, 443), (17, 0), (0, 8080)]),
        };
        let v = entry.to_raw(1, ADDR).expect("raw");
        assert_eq!((v.expires_ns, v.flags, v.nports), (42, 0, 3));
        assert_eq!(
            v.ports[0],
            FqdnPort {
                port: 443,
                proto: 6,
                pad: 0
            },
            "port in host order, as mg_policy_key's dport"
        );
        assert_eq!(v.ports[3], FqdnPort::default());
        assert_eq!(FqdnEntry::from_raw(&v), entry);
    }

    #[test]
    fn any_port_is_the_flag() {
        let entry = FqdnEntry {
            expires_ns: 7,
            ports: FqdnPorts::Any,
        };
        let v = entry.to_raw(1, ADDR).expect("raw");
        assert_eq!((v.flags, v.nports), (FQDN_F_ANY_PORT, 0));
        assert_eq!(FqdnEntry::from_raw(&v), entry);
    }

    #[test]
    fn more_than_eight_ports_is_an_error() {
        let entry = FqdnEntry {
            expires_ns: 7,
            ports: FqdnPorts::Only((0..9).map(|p| (6, 1000 + p)).collect()),
        };
        let err = entry.to_raw(5, ADDR).expect_err("9 ports");
        assert!(
            matches!(
                err,
                Error::TooManyFqdnPorts {
                    count: 9,
                    identity: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("at most 8"), "{err}");
        assert!(err.to_string().contains("203.0.113.7"), "{err}");
        let eight = FqdnEntry {
            expires_ns: 7,
            ports: FqdnPorts::Only((0..8).map(|p| (6, 1000 + p)).collect()),
        };
        assert_eq!(eight.to_raw(5, ADDR).expect("8 ports").nports, 8);
    }
}
