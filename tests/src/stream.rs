//! A ping stream at a short interval whose replies are timestamped
//! (`ping -D`), to measure how long traffic stopped while something failed.

use std::io::Read;
use std::process::Child;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as `ping -D` prints them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reply timestamps (`[1700000000.123456] 64 bytes from ...`) from `ping -D`.
pub fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (ts, _) = rest.split_once(']')?;
            ts.parse().ok()
        })
        .collect()
}

/// The longest time without a reply within `[from, to]`, counting the
/// edges (a stream that never resumes has a gap up to `to`).
pub fn longest_gap(replies: &[f64], from: f64, to: f64) -> f64 {
    let inside: Vec<f64> = replies
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let mut points = vec![from];
    points.extend(inside);
    points.push(to);
    points.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// A running `ping -D` in a namespace.
pub struct PingStream {
    child: Child,
    pub started: f64,
}

impl PingStream {
    pub fn new(child: Child) -> PingStream {
        PingStream {
            child,
            started: unix_now(),
        }
    }

    /// Waits for the ping to end; returns the reply times and its output.
    pub fn finish(mut self) -> (Vec<f64>, String) {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        (reply_times(&out), out)
    }
}

impl Drop for PingStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps_and_finds_the_gap() {
        let out = "PING 10.2.2.10 (10.2.2.10) 56(84) bytes of data.\n\
                   [100.00] 64 bytes from 10.2.2.10: icmp_seq=1 ttl=61 time=0.3 ms\n\
                   [100.02] 64 bytes from 10.2.2.10: icmp_seq=2 ttl=61 time=0.3 ms\n\
                   [101.10] 64 bytes from 10.2.2.10: icmp_seq=50 ttl=61 time=0.3 ms\n";
        let t = reply_times(out);
        assert_eq!(t, vec![100.00, 100.02, 101.10]);
        assert!((longest_gap(&t, 99.99, 101.2) - 1.08).abs() < 1e-6);
        // Nothing after 101.10 until 104: the gap runs to the end.
        assert!((longest_gap(&t, 100.0, 104.0) - 2.9).abs() < 1e-6);
    }
}
