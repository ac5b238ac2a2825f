//! The node's side of the steering: the proxy's address and the nft rule
//! that sends pods' DNS to it.
//!
//! from_pod marks every pod packet `MARK_MAGIC | identity` and, with the
//! DNS proxy flag, lets UDP and TCP to port 53 through without policy; the
//! `meshgate_dns` table DNATs exactly those (by the mark) to the proxy.
//! Replies are un-NATed by conntrack, so the pod sees its server answer.
//! Both are left in place when the proxy exits, so a restart never sends a
//! query to a missing rule; `--uninstall` removes them.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub const NFT_TABLE: &str = "meshgate_dns";

/// The nft script that (re)creates the steering table, whole.
pub fn ruleset(listen: Ipv4Addr, port: u16) -> String {
    let magic = meshgate_ebpf::MARK_MAGIC;
    format!(
        "table ip {NFT_TABLE} {{}}\n\
         delete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n\
         \t\tmeta mark & 0xff000000 == {magic:#010x} udp dport 53 counter dnat to {listen}:{port}\n\
         \t\tmeta mark & 0xff000000 == {magic:#010x} tcp dport 53 counter dnat to {listen}:{port}\n\
         \t}}\n\
         }}\n"
    )
}

/// Puts `listen` on `lo` (idempotent) and installs the steering table.
pub fn install(listen: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    run(
        Command::new("ip").args(["addr", "replace", &format!("{listen}/32"), "dev", "lo"]),
        None,
    )
    .context("adding the proxy's address to lo (needs root and iproute2)")?;
    run(
        Command::new("nft").args(["-f", "-"]),
        Some(&ruleset(listen, port)),
    )
    .context("installing the nft rule that steers pods' DNS to the proxy (needs nftables)")
}

/// Removes the steering table and the address.
pub fn uninstall(listen: Ipv4Addr) -> anyhow::Result<()> {
    run(
        Command::new("nft").args(["-f", "-"]),
        Some(&format!(
            "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n"
        )),
    )?;
    let _ = run(
        Command::new("ip").args(["addr", "del", &format!("{listen}/32"), "dev", "lo"]),
        None,
    );
    Ok(())
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {name}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {name}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {name}"))?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
