//! Which peers are alive, judged from what the tunnel last received from
//! them. Pure: the caller passes `now` and the receive ages.
//!
//! Gateways and their peers send each other a keepalive every
//! [`KEEPALIVE_MS`]; a peer silent for longer than [`DEAD_AFTER`] is dead.
//! A peer that comes back is "fresh" for [`RETURN_HOLD`], so a gateway that
//! restarts is used again only once its sessions have settled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Keepalive interval towards and from cluster gateways.
pub const KEEPALIVE_MS: u64 = 200;
/// Keepalive interval from egress gateways to every peer.
pub const EGRESS_KEEPALIVE_MS: u64 = 100;
/// Silence after which an egress gateway counts as dead: its flows move
/// within a second of its death (this, plus one egress tick).
pub const EGRESS_DEAD_AFTER: Duration = Duration::from_millis(500);
/// Silence after which a peer counts as dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(900);
/// How long a peer must have been alive again before it is preferred.
pub const RETURN_HOLD: Duration = Duration::from_secs(1);

/// What is known of one peer's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heard from within [`DEAD_AFTER`] and continuously for [`RETURN_HOLD`].
    Up,
    /// Heard from recently, but alive again for less than [`RETURN_HOLD`].
    Fresh,
    /// Not heard from within [`DEAD_AFTER`], or never.
    Down,
}

/// Tracks since when each peer has been alive without a break.
#[derive(Debug, Default)]
pub struct Liveness {
    up_since: BTreeMap<String, Instant>,
}

impl Liveness {
    /// Takes the receive ages (milliseconds since anything arrived, per
    /// peer name; `None` = never) observed at `now`.
    pub fn observe(&mut self, now: Instant, rx_age_ms: &BTreeMap<String, Option<u64>>) {
        let alive: BTreeSet<&String> = rx_age_ms
            .iter()
            .filter(|(_, age)| age.is_some_and(|ms| Duration::from_millis(ms) <= DEAD_AFTER))
            .map(|(name, _)| name)
            .collect();
        self.up_since.retain(|name, _| alive.contains(name));
        for name in alive {
            self.up_since.entry(name.clone()).or_insert(now);
        }
    }

    pub fn health(&self, name: &str, now: Instant) -> Health {
        match self.up_since.get(name) {
            None => Health::Down,
            Some(since) if now.duration_since(*since) >= RETURN_HOLD => Health::Up,
            Some(_) => Health::Fresh,
        }
    }
}

/// The gateway to use among `candidates` (in name order): the first that
/// is up; else the first heard from at all; else the first by name. Every
/// node applies the same rule to the same observations, so all agree.
pub fn choose(candidates: &[String], health: impl Fn(&str) -> Health) -> Option<&String> {
    candidates
        .iter()
        .find(|c| health(c) == Health::Up)
        .or_else(|| candidates.iter().find(|c| health(c) == Health::Fresh))
        .or_else(|| candidates.first())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ages(list: &[(&str, Option<u64>)]) -> BTreeMap<String, Option<u64>> {
        list.iter().map(|(n, a)| (n.to_string(), *a)).collect()
    }

    #[test]
    fn silence_makes_a_peer_dead_and_return_needs_a_hold() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.observe(t0, &ages(&[("c1/g1", Some(100)), ("c1/g2", None)]));
        assert_eq!(l.health("c1/g1", t0), Health::Fresh);
        assert_eq!(l.health("c1/g2", t0), Health::Down);
        let t1 = t0 + RETURN_HOLD;
        l.observe(t1, &ages(&[("c1/g1", Some(50)), ("c1/g2", Some(50))]));
        assert_eq!(l.health("c1/g1", t1), Health::Up);
        assert_eq!(l.health("c1/g2", t1), Health::Fresh);
        // g1 falls silent: dead once the silence passes DEAD_AFTER.
        let t2 = t1 + Duration::from_millis(500);
        l.observe(t2, &ages(&[("c1/g1", Some(500)), ("c1/g2", Some(10))]));
        assert_eq!(l.health("c1/g1", t2), Health::Up);
        let t3 = t1 + Duration::from_millis(1000);
        l.observe(t3, &ages(&[("c1/g1", Some(1000)), ("c1/g2", Some(10))]));
        assert_eq!(l.health("c1/g1", t3), Health::Down);
        assert_eq!(l.health("c1/g2", t3), Health::Up);
        // g1 back: fresh first, up after the hold.
        let t4 = t3 + Duration::from_secs(5);
        l.observe(t4, &ages(&[("c1/g1", Some(0)), ("c1/g2", Some(10))]));
        assert_eq!(l.health("c1/g1", t4), Health::Fresh);
        l.observe(t4 + RETURN_HOLD, &ages(&[("c1/g1", Some(0))]));
        assert_eq!(l.health("c1/g1", t4 + RETURN_HOLD), Health::Up);
        // A peer missing from the observation is dead.
        assert_eq!(l.health("c1/g2", t4 + RETURN_HOLD), Health::Down);
    }

    #[test]
    fn choice_prefers_up_then_fresh_then_name() {
        let c = vec!["c1/g1".to_string(), "c1/g2".to_string()];
        let pick = |h1, h2| {
            choose(&c, |n| if n == "c1/g1" { h1 } else { h2 })
                .unwrap()
                .clone()
        };
        assert_eq!(pick(Health::Up, Health::Up), "c1/g1");
        assert_eq!(pick(Health::Down, Health::Up), "c1/g2");
        assert_eq!(pick(Health::Fresh, Health::Up), "c1/g2");
        assert_eq!(pick(Health::Fresh, Health::Down), "c1/g1");
        assert_eq!(pick(Health::Down, Health::Fresh), "c1/g2");
        assert_eq!(pick(Health::Down, Health::Down), "c1/g1");
        assert!(choose(&[], |_| Health::Up).is_none());
    }
}
