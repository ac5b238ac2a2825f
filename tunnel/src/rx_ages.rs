//! Receive ages for the kernel backends. The kernel's WireGuard tells
//! each peer's receive byte count and last handshake, and XFRM each SA's
//! byte count, not when anything last arrived; the age is the time since
//! the count was last seen to grow. Pure: the caller passes `now` (the
//! agent polls about every 100 ms, which is then the ages' resolution).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Per peer (by key `K`): the last receive count seen and when it last grew.
#[derive(Debug)]
pub struct RxAges<K = [u8; 32]> {
    seen: BTreeMap<K, (u64, Instant)>,
}

impl<K> Default for RxAges<K> {
    fn default() -> Self {
        RxAges {
            seen: BTreeMap::new(),
        }
    }
}

impl<K: Ord> RxAges<K> {
    /// Takes one peer's counters at `now`; returns milliseconds since
    /// something last arrived from it, or `None` if nothing ever did.
    pub fn observe(
        &mut self,
        now: Instant,
        key: K,
        rx_bytes: u64,
        handshake_age: Option<Duration>,
    ) -> Option<u64> {
        if rx_bytes == 0 {
            self.seen.remove(&key);
            return None;
        }
        let entry = self.seen.entry(key).or_insert_with(|| {
            // First sight (a restarted agent, a new peer): the handshake is
            // the latest arrival known for sure.
            let at = handshake_age
                .and_then(|age| now.checked_sub(age))
                .unwrap_or(now);
            (rx_bytes, at)
        });
        if entry.0 != rx_bytes {
            *entry = (rx_bytes, now);
        }
        Some(now.saturating_duration_since(entry.1).as_millis() as u64)
    }

    /// Forgets peers whose keys are not in `keys`.
    pub fn retain(&mut self, keys: &std::collections::BTreeSet<K>) {
        self.seen.retain(|k, _| keys.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_the_time_since_the_count_last_grew() {
        let t0 = Instant::now();
        let k = [1u8; 32];
        let mut rx = RxAges::default();
        assert_eq!(rx.observe(t0, k, 0, None), None, "nothing received yet");
        // First sight: as old as the handshake.
        let hs = Some(Duration::from_millis(300));
        assert_eq!(
            rx.observe(t0 + Duration::from_secs(1), k, 148, hs),
            Some(300)
        );
        // The count stands still: the age grows.
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(rx.observe(t1, k, 148, hs), Some(800));
        // It grows: the age starts again.
        let t2 = t0 + Duration::from_millis(1600);
        assert_eq!(rx.observe(t2, k, 180, hs), Some(0));
        assert_eq!(
            rx.observe(t2 + Duration::from_millis(950), k, 180, hs),
            Some(950)
        );
        // The peer was removed and re-added (count reset): fresh again.
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(rx.observe(t3, k, 32, hs), Some(0));
    }

    #[test]
    fn forgotten_peers_start_over() {
        let t0 = Instant::now();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut rx = RxAges::default();
        rx.observe(t0, a, 10, None);
        rx.observe(t0, b, 10, None);
        rx.retain(&[a].into_iter().collect());
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(rx.observe(t1, a, 10, None), Some(5000));
        assert_eq!(rx.observe(t1, b, 10, None), Some(0), "b starts over");
    }
}
