//! `cargo xtask bench netlink-routes`: 1,000 route replaces and 1,000
//! deletes through the tunnel crate's netlink module, beside the same done
//! the old way, one `ip route replace` / `ip route del` process each,
//! measured in the same run (`tunnel/examples/netlink_bench.rs`, in a
//! scratch network namespace of its own).

use anyhow::{bail, Result};
use serde_json::Value;

use super::example;
use super::report::{self, Machine};
use crate::util::Steps;

const ROUTES: &str = "1000";
const ROUNDS: &str = "3";

pub fn run(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("cargo xtask bench netlink-routes takes no arguments");
    }
    let mut steps = Steps::new(3);
    steps.step("build netlink_bench (release)", || {
        example::build_in("meshgate-tunnel", "netlink_bench")
    })?;
    let load = report::load_average();
    let result = steps.step("1,000 routes replaced and deleted, each way", || {
        let args = ["--routes", ROUTES, "--rounds", ROUNDS].map(String::from);
        let (v, status) = example::run("netlink_bench", &args)?;
        if let Some(e) = v["error"].as_str() {
            bail!("netlink_bench failed: {e}");
        }
        if !status.success() {
            bail!("netlink_bench exited with {status}");
        }
        Ok(v)
    })?;
    let machine = Machine::detect();
    let table = table(&result);
    println!("\nnetlink-routes, on {machine}, load average {load} before\n\n{table}");
    steps.step("docs/benchmarks.md", || {
        report::write_section("netlink-routes", &section(&machine, &load, &table))
    })
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |s| format!("{:.1}", s * 1e3))
}

fn us(v: &Value) -> String {
    v.as_f64().map_or_else(|| "—".into(), |u| format!("{u:.1}"))
}

fn table(r: &Value) -> String {
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}", a / b),
        _ => "—".into(),
    };
    let mut t = String::from(
        "| method | replace, ms | delete, ms | µs per route op | ip / netlink |\n\
         |---|---:|---:|---:|---:|\n",
    );
    t.push_str(&format!(
        "| anchor: `ip route replace` / `ip route del`, one process each | {} | {} | {} | 1 |\n",
        ms(&r["ip_replace_s"]),
        ms(&r["ip_delete_s"]),
        us(&r["ip_per_op_us"]),
    ));
    t.push_str(&format!(
        "| `meshgate_tunnel::netlink`, one socket | {} | {} | {} | {} |\n",
        ms(&r["netlink_replace_s"]),
        ms(&r["netlink_delete_s"]),
        us(&r["netlink_per_op_us"]),
        ratio(&r["ip_total_s"], &r["netlink_total_s"]),
    ));
    t
}

fn section(machine: &Machine, load: &str, table: &str) -> String {
    format!(
        "Measured {date} on {machine} with `cargo xtask bench netlink-routes`\n\
         (1-minute load average {load} before the run).\n\n\
         `tunnel/examples/netlink_bench.rs`, in a scratch network namespace of its own\n\
         (`unshare(CLONE_NEWNET)`), on a veth device (this kernel has no dummy driver):\n\
         {ROUTES} /24 routes set with replace, then deleted, in the main table. The anchor is\n\
         the way the agent did it before: one `ip route replace PREFIX dev DEV` (and\n\
         `ip route del`) process per route. The other is the tunnel crate's netlink\n\
         module on one socket, each route one request (plus the device's index looked\n\
         up, as `ip` does too) acknowledged before the next. Both run {ROUNDS} rounds,\n\
         alternating; each figure is the median round. Every phase is checked by a\n\
         dump of the table (all routes there, or none).\n\n{table}",
        date = report::today()
    )
}
