//! `mg_ct`: flows the datapath allowed, so that their replies pass.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData};

use super::{is_not_found, map_err, typed};
use crate::error::Result;
use crate::layout::{CtKey, CtValue};

pub(crate) const NAME: &str = "mg_ct";

/// One tracked flow, as first seen (the forward direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub last_seen_ns: u64,
    pub packets: u64,
}

pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtValue>,
}

impl Conntrack {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: typed(NAME, map, HashMap::try_from)?,
        })
    }

    pub fn entries(&self) -> Result<Vec<CtEntry>> {
        self.map
            .iter()
            .map(|r| {
                r.map(|(k, v)| CtEntry {
                    src: Ipv4Addr::from(k.saddr.to_ne_bytes()),
                    dst: Ipv4Addr::from(k.daddr.to_ne_bytes()),
                    sport: k.sport,
                    dport: k.dport,
                    proto: k.proto,
                    last_seen_ns: v.last_seen_ns,
                    packets: v.packets,
                })
                .map_err(map_err(NAME, "listing flows"))
            })
            .collect()
    }

    /// Forgets every flow (their replies are then judged by policy again).
    pub fn clear(&mut self) -> Result<()> {
        let keys: Vec<CtKey> = self
            .map
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(NAME, "listing flows"))?;
        for k in keys {
            match self.map.remove(&k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(NAME, "removing a flow")(e)),
            }
        }
        Ok(())
    }
}
