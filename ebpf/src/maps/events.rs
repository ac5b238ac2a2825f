//! `mg_events`: flow events from the ring buffer (every drop, and every new
//! allowed flow).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{Map, MapData, RingBuf};

use super::typed;
use crate::error::Result;
use crate::layout::RawFlowEvent;
use crate::reason::{Point, Reason, Verdict};

pub(crate) const NAME: &str = "mg_events";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the verdict was taken.
    pub ts_ns: u64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `None` if the datapath wrote a value this build does not know.
    pub verdict: Option<Verdict>,
    pub reason: Option<Reason>,
    pub point: Option<Point>,
    pub ifindex: u32,
}

impl FlowEvent {
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<RawFlowEvent>() {
            return None;
        }
        // SAFETY: the length is checked; RawFlowEvent is plain integers, and
        // read_unaligned copes with the ring buffer's alignment.
        let raw: RawFlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some(Self {
            ts_ns: raw.ts_ns,
            src: Ipv4Addr::from(raw.saddr.to_ne_bytes()),
            dst: Ipv4Addr::from(raw.daddr.to_ne_bytes()),
            src_identity: raw.src_identity,
            dst_identity: raw.dst_identity,
            sport: raw.sport,
            dport: raw.dport,
            proto: raw.proto,
            verdict: Verdict::from_raw(raw.verdict),
            reason: Reason::from_raw(raw.reason),
            point: Point::from_raw(raw.point),
            ifindex: raw.ifindex,
        })
    }
}

pub struct FlowEvents {
    ring: RingBuf<MapData>,
}

impl FlowEvents {
    pub(crate) fn new(map: Map) -> Result<Self> {
        Ok(Self {
            ring: typed(NAME, map, RingBuf::try_from)?,
        })
    }

    /// The next event, if one is waiting. Events too short to parse are skipped.
    pub fn next_event(&mut self) -> Option<FlowEvent> {
        loop {
            let item = self.ring.next()?;
            if let Some(ev) = FlowEvent::from_bytes(&item) {
                return Some(ev);
            }
        }
    }

    /// Every event waiting now.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}

/// Readable when events are waiting (for epoll / tokio's `AsyncFd`).
impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
