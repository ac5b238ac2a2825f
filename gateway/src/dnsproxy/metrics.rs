//! The proxy's Prometheus metrics: queries by verdict, upstream latency,
//! the addresses it holds in `mg_fqdn` and their expirations.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshgate_egress::dnsproxy::decide::Verdict;
use tracing::warn;

use super::Core;

/// Upper bounds of the upstream latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
pub struct Metrics {
    queries: [AtomicU64; Verdict::ALL.len()],
    upstream_buckets: [AtomicU64; BUCKETS.len()],
    upstream_count: AtomicU64,
    upstream_sum_ns: AtomicU64,
    upstream_failures: AtomicU64,
    map_write_failures: AtomicU64,
    pub addresses_written: AtomicU64,
    pub egress_routes_written: AtomicU64,
    held: AtomicU64,
    expired: AtomicU64,
    last_unknown_log: Mutex<Option<Instant>>,
}

impl Metrics {
    pub fn query(&self, v: Verdict) {
        let i = Verdict::ALL.iter().position(|x| *x == v).unwrap_or(0);
        self.queries[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream(&self, took: Duration) {
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.upstream_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.upstream_count.fetch_add(1, Ordering::Relaxed);
        self.upstream_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn upstream_failed(&self) {
        self.upstream_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn map_write_failed(&self) {
        self.map_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn held(&self, held: usize, removed: usize) {
        self.held.store(held as u64, Ordering::Relaxed);
        self.expired.fetch_add(removed as u64, Ordering::Relaxed);
    }

    /// Says (at most every 5 s) that a pod's identity is not known to the
    /// proxy: the agent has not written it into the policy file yet.
    pub fn unknown_identity(&self, pod: Ipv4Addr, identity: Option<u32>) {
        let mut last = self
            .last_unknown_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            *last = Some(Instant::now());
            match identity {
                Some(id) => {
                    warn!(%pod, identity = id, "identity not in the policy file yet (is the agent running?): SERVFAIL")
                }
                None => warn!(%pod, "source is not a pod of this node in the ipcache: SERVFAIL"),
            }
        }
    }
}

pub fn render(core: &Core) -> String {
    let m = &core.metrics;
    let mut out = String::new();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP meshgate_dns_queries_total DNS queries from pods, by verdict.\n\
         # TYPE meshgate_dns_queries_total counter"
    );
    for (i, v) in Verdict::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "meshgate_dns_queries_total{{verdict=\"{}\"}} {}",
            v.as_str(),
            load(&m.queries[i])
        );
    }
    let _ = writeln!(
        out,
        "# HELP meshgate_dns_upstream_seconds Time the upstream took to answer.\n\
         # TYPE meshgate_dns_upstream_seconds histogram"
    );
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "meshgate_dns_upstream_seconds_bucket{{le=\"{b}\"}} {}",
            load(&m.upstream_buckets[i])
        );
    }
    let count = load(&m.upstream_count);
    let _ = writeln!(
        out,
        "meshgate_dns_upstream_seconds_bucket{{le=\"+Inf\"}} {count}\n\
         meshgate_dns_upstream_seconds_sum {}\n\
         meshgate_dns_upstream_seconds_count {count}",
        load(&m.upstream_sum_ns) as f64 / 1e9
    );
    for (name, help, kind, v) in [
        (
            "meshgate_dns_upstream_failures_total",
            "Queries answered SERVFAIL because the upstream failed or timed out.",
            "counter",
            load(&m.upstream_failures),
        ),
        (
            "meshgate_dns_map_write_failures_total",
            "Answers withheld (SERVFAIL) because their addresses could not be written.",
            "counter",
            load(&m.map_write_failures),
        ),
        (
            "meshgate_dns_addresses_written_total",
            "Answered addresses written into mg_fqdn.",
            "counter",
            load(&m.addresses_written),
        ),
        (
            "meshgate_dns_egress_routes_written_total",
            "FQDN egress gateway routes written into mg_egress.",
            "counter",
            load(&m.egress_routes_written),
        ),
        (
            "meshgate_dns_addresses_held",
            "Entries held in mg_fqdn (identity, address) at the last collection.",
            "gauge",
            load(&m.held),
        ),
        (
            "meshgate_dns_addresses_expired_total",
            "Expired mg_fqdn entries removed.",
            "counter",
            load(&m.expired),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    out
}
