//! `meshgate observe --protocol dns`: the DNS proxies' query events (name,
//! type, verdict, the answer's addresses), from `dnsproxy-observe.sock` in
//! each node's state directory. Recent events first (merged in time
//! order), then, with --follow or --count, new ones as they come.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::dnsproxy::{observe_socket, DnsEvent};
use crate::observe_cmd::ObserveOpts;

/// The line that ends the recent events of one proxy.
pub const LIVE_MARKER: &str = "{\"live\":true}";

/// One event as a line.
pub fn line(label: &str, e: &DnsEvent) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time_ms) * 1_000_000)
        .map(|t| {
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default();
    let id = e.identity.map_or("?".to_string(), |i| i.to_string());
    let addrs = if e.addresses.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = e.addresses.iter().take(8).map(|a| a.to_string()).collect();
        let more = e.addresses.len().saturating_sub(8);
        format!(
            " -> {}{}",
            list.join(","),
            if more > 0 {
                format!(" (+{more})")
            } else {
                String::new()
            }
        )
    };
    let up = e
        .upstream_ms
        .map(|ms| format!(" {ms:.1} ms"))
        .unwrap_or_default();
    format!(
        "{t} {label} dns {pod} (identity {id}) {qtype} {name} {verdict} {rcode}{addrs} [{tr}{up}]",
        pod = e.pod,
        qtype = e.qtype,
        name = e.name,
        verdict = e.verdict,
        rcode = e.rcode,
        tr = e.transport,
    )
}

struct Filter {
    pod: Option<Ipv4Addr>,
    verdict: Option<String>,
}

impl Filter {
    fn matches(&self, e: &DnsEvent) -> bool {
        self.pod.is_none_or(|p| p == e.pod) && self.verdict.as_ref().is_none_or(|v| *v == e.verdict)
    }
}

/// Reads DNS events from the proxies of `dirs` (label, state dir).
pub fn observe(dirs: Vec<(String, PathBuf)>, opts: &ObserveOpts) -> anyhow::Result<ExitCode> {
    if opts.reason.is_some() {
        bail!("--reason is for the datapath's drops; DNS events have a --verdict (allowed, refused, unknown-identity, local, malformed, upstream-failed)");
    }
    let pod = match &opts.pod {
        None => None,
        Some(p) => Some(p.parse::<Ipv4Addr>().map_err(|_| {
            anyhow::anyhow!("--pod {p}: DNS events name pods by address (the proxy knows no names): give the pod's IP")
        })?),
    };
    if opts.count == Some(0) {
        bail!("--count 0 would print nothing: give 1 or more");
    }
    let filter = Filter {
        pod,
        verdict: opts.verdict.clone(),
    };
    let deadline = opts
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let follow = opts.follow || opts.count.is_some();
    let (tx, rx) = mpsc::channel::<(usize, Option<DnsEvent>)>();
    let mut labels = Vec::new();
    for (label, dir) in dirs {
        let sock = observe_socket(&dir);
        let stream = match UnixStream::connect(&sock) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "meshgate: {label}: no DNS proxy answers on {} ({e}): is `meshgate dnsproxy` running there?",
                    sock.display()
                );
                continue;
            }
        };
        let idx = labels.len();
        labels.push(label);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stream).lines() {
                let Ok(l) = l else { break };
                let ev = if l == LIVE_MARKER {
                    None
                } else {
                    match serde_json::from_str::<DnsEvent>(&l) {
                        Ok(e) => Some(e),
                        Err(_) => continue,
                    }
                };
                if tx.send((idx, ev)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    if labels.is_empty() {
        bail!("no DNS proxy to read events from");
    }
    let recv = || match deadline {
        Some(d) => rx
            .recv_timeout(d.saturating_duration_since(Instant::now()))
            .ok(),
        None => rx.recv().ok(),
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0usize;
    let mut print = |label: &str, e: &DnsEvent| -> anyhow::Result<bool> {
        let text = if opts.json {
            serde_json::to_string(e).context("encoding an event")?
        } else {
            line(label, e)
        };
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return Ok(false);
        }
        printed += 1;
        Ok(opts.count.is_none_or(|n| printed < n))
    };
    let mut live = vec![false; labels.len()];
    let mut recent = Vec::new();
    let mut early = Vec::new();
    while live.iter().any(|l| !l) {
        let Some((idx, ev)) = recv() else { break };
        match ev {
            None => live[idx] = true,
            Some(e) if live[idx] => early.push((idx, e)),
            Some(e) => recent.push((idx, e)),
        }
    }
    recent.sort_by_key(|(_, e)| e.time_ms);
    let matching: Vec<_> = recent.iter().filter(|(_, e)| filter.matches(e)).collect();
    for (idx, e) in &matching[matching.len().saturating_sub(opts.last)..] {
        if !print(&labels[*idx], e)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    for (idx, e) in early.iter().filter(|(_, e)| filter.matches(e)) {
        if !print(&labels[*idx], e)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    while let Some((idx, ev)) = recv() {
        if let Some(e) = ev.filter(|e| filter.matches(e)) {
            if !print(&labels[idx], &e)? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if let Some(n) = opts.count {
        if printed < n {
            bail!("only {printed} of {n} DNS events came before the timeout");
        }
    }
    Ok(ExitCode::SUCCESS)
}
