//! `netlink_bench`: the cost of setting and removing routes, the old way
//! (spawning `ip route replace` / `ip route del` for each, the anchor) and
//! through [`meshgate_tunnel::netlink`], measured in the same run.
//!
//! The process moves into a network namespace of its own first
//! (`unshare(CLONE_NEWNET)`: nothing to clean up, whatever happens), makes a
//! veth pair there (this kernel has no dummy driver) and routes
//! `--routes` /24 prefixes through it. Each method runs `--rounds` times,
//! alternating; its figure is the median round. After every phase the
//! table is dumped to check that all routes arrived, or all went.
//!
//! Run by `cargo xtask bench netlink-routes` (needs root); by hand:
//! `cargo run --release -p meshgate-tunnel --example netlink_bench`.
//! The result is one JSON line on stdout.
#![allow(clippy::print_stdout)] // a benchmark driver: stdout is its output

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use meshgate_tunnel::netlink::{LinkChange, LinkKind, Netlink, Route, MAIN_TABLE};
use serde_json::json;

const DEV: &str = "mgb0";
const USAGE: &str =
    "usage: netlink_bench [--routes N (default 1000, max 65536)] [--rounds N (default 3)]";

fn main() {
    match run() {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({ "error": e }));
            std::process::exit(1);
        }
    }
}

fn args() -> Result<(usize, usize), String> {
    let (mut routes, mut rounds) = (1000, 3);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |max: usize| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| format!("{a} needs a number from 1 to {max}\n{USAGE}"))
        };
        match a.as_str() {
            "--routes" => routes = num(65_536)?,
            "--rounds" => rounds = num(99)?,
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Ok((routes, rounds))
}

/// The `n` prefixes routed: 10.100.0.0/24, 10.100.1.0/24, ...
fn prefixes(n: usize) -> Vec<Ipv4Net> {
    (0..n)
        .map(|i| {
            let i = i as u32;
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + (i << 8));
            Ipv4Net::new(addr, 24).unwrap_or_default()
        })
        .collect()
}

fn run() -> Result<serde_json::Value, String> {
    let (n, rounds) = args()?;
    // SAFETY: unshare on this (still the only) thread; children inherit it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "entering a scratch network namespace: {} (run as root)",
            std::io::Error::last_os_error()
        ));
    }
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    nl.add_link(
        DEV,
        &LinkKind::Veth {
            peer: "mgb1".into(),
        },
    )
    .map_err(|e| e.to_string())?;
    nl.set_link(
        DEV,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let nets = prefixes(n);
    let (mut ip_add, mut ip_del, mut nl_add, mut nl_del) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (a, d) = with_ip(&mut nl, &nets)?;
        ip_add.push(a);
        ip_del.push(d);
        let (a, d) = with_netlink(&mut nl, &nets)?;
        nl_add.push(a);
        nl_del.push(d);
    }
    let (ip_add, ip_del) = (median(ip_add), median(ip_del));
    let (nl_add, nl_del) = (median(nl_add), median(nl_del));
    let ip_total = ip_add + ip_del;
    let nl_total = nl_add + nl_del;
    let per_op_us = |d: f64| d / n as f64 * 1e6;
    Ok(json!({
        "routes": n,
        "rounds": rounds,
        "ip_replace_s": ip_add,
        "ip_delete_s": ip_del,
        "netlink_replace_s": nl_add,
        "netlink_delete_s": nl_del,
        "ip_per_op_us": per_op_us(ip_total / 2.0),
        "netlink_per_op_us": per_op_us(nl_total / 2.0),
        "ip_total_s": ip_total,
        "netlink_total_s": nl_total,
        "ip_over_netlink": ip_total / nl_total,
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// How many of `nets` the main table routes through [`DEV`].
fn present(nl: &mut Netlink, nets: &[Ipv4Net]) -> Result<usize, String> {
    let routes = nl.routes(MAIN_TABLE).map_err(|e| e.to_string())?;
    Ok(routes
        .iter()
        .filter(|r| r.dev.as_deref() == Some(DEV) && nets.binary_search(&r.dst).is_ok())
        .count())
}

fn check(nl: &mut Netlink, nets: &[Ipv4Net], want: usize, after: &str) -> Result<(), String> {
    let have = present(nl, nets)?;
    if have != want {
        return Err(format!(
            "after {after}: {have} of the routes present, not {want}"
        ));
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (install iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The anchor: one `ip` process per route replaced, then per route deleted.
fn with_ip(nl: &mut Netlink, nets: &[Ipv4Net]) -> Result<(f64, f64), String> {
    let texts: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
    let t = Instant::now();
    for n in &texts {
        ip(&["route", "replace", n, "dev", DEV])?;
    }
    let add = secs(t.elapsed());
    check(nl, nets, nets.len(), "ip route replace")?;
    let t = Instant::now();
    for n in &texts {
        ip(&["route", "del", n, "dev", DEV])?;
    }
    let del = secs(t.elapsed());
    check(nl, nets, 0, "ip route del")?;
    Ok((add, del))
}

/// The module: one socket, one request (and its device lookup) per route.
fn with_netlink(nl: &mut Netlink, nets: &[Ipv4Net]) -> Result<(f64, f64), String> {
    let routes: Vec<Route> = nets.iter().map(|n| Route::via_dev(*n, DEV)).collect();
    let t = Instant::now();
    for r in &routes {
        nl.replace_route(r).map_err(|e| e.to_string())?;
    }
    let add = secs(t.elapsed());
    check(nl, nets, nets.len(), "netlink replace")?;
    let t = Instant::now();
    for r in &routes {
        nl.delete_route(r).map_err(|e| e.to_string())?;
    }
    let del = secs(t.elapsed());
    check(nl, nets, 0, "netlink delete")?;
    Ok((add, del))
}
