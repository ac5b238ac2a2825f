//! `mg_drops`: per-CPU packet and byte counters per drop reason.

use std::collections::BTreeMap;

use aya::maps::{Map, MapData, PerCpuArray};

use super::{map_err, typed};
use crate::error::Result;
use crate::layout::{Counter, SLOT_EVENTS_LOST};
use crate::reason::Reason;

pub(crate) const NAME: &str = "mg_drops";

pub struct DropCounters {
    map: PerCpuArray<MapData, Counter>,
}

impl DropCounters {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: typed(NAME, map, PerCpuArray::try_from)?,
        })
    }

    /// Drops for `reason`, summed over CPUs.
    pub fn get(&self, reason: Reason) -> Result<Counter> {
        self.slot(u32::from(reason as u8))
    }

    fn slot(&self, index: u32) -> Result<Counter> {
        let per_cpu = self
            .map
            .get(&index, 0)
            .map_err(map_err(NAME, "reading a counter"))?;
        Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }

    /// Flow events lost because the ring buffer was full (nobody read it fast enough).
    pub fn events_lost(&self) -> Result<u64> {
        Ok(self.slot(SLOT_EVENTS_LOST)?.packets)
    }

    /// Every reason with at least one drop.
    pub fn all(&self) -> Result<BTreeMap<Reason, Counter>> {
        let mut out = BTreeMap::new();
        for reason in Reason::ALL.iter().copied().filter(|r| *r != Reason::None) {
            let c = self.get(reason)?;
            if c.packets > 0 {
                out.insert(reason, c);
            }
        }
        Ok(out)
    }
}
