//! The node's side of the DNS steering (the proxy is `meshgate dnsproxy`): the proxy's address and the nft rule
//! that sends pods' DNS to it.
//!
//! from_pod marks every pod packet `MARK_MAGIC | identity` and, with the
//! DNS proxy flag, lets UDP and TCP to port 53 through without policy; the
//! `meshgate_dns` table DNATs exactly those (by the mark) to the proxy.
//! Replies are un-NATed by conntrack, so the pod sees its server answer.
//! Both are left in place when the proxy exits, so a restart never sends a
//! query to a missing rule; `--uninstall` removes them.

use std::net::Ipv4Addr;

use anyhow::Context;
use ipnet::Ipv4Net;
use meshgate_tunnel::netlink::Netlink;

use crate::datapath::nft;

/// The address the proxy listens on (on `lo`) and pods' DNS is DNATed to.
pub const LISTEN: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
/// Its port.
pub const PORT: u16 = 53;

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
    Netlink::open()?
        .replace_address("lo", Ipv4Net::from(listen))
        .context("adding the proxy's address to lo (needs root)")?;
    nft(&ruleset(listen, port))
        .context("installing the nft rule that steers pods' DNS to the proxy")
}

/// Removes the steering table and the address.
pub fn uninstall(listen: Ipv4Addr) -> anyhow::Result<()> {
    nft(&format!(
        "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n"
    ))?;
    Netlink::open()?
        .remove_address("lo", Ipv4Net::from(listen))
        .context("removing the proxy's address from lo")?;
    Ok(())
}
