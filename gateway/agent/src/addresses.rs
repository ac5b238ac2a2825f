//! This node's interface addresses, published in its node record so that
//! egress gateway policies can check a gateway's egress IP (or interface)
//! against what the node really has. Read over netlink at each
//! registration, and re-read every few seconds: a change re-registers.
//!
//! Left out: loopback, meshgate's own devices (`mg-*`) and the pods'
//! host-side interfaces. The same read gives the eBPF datapath every
//! address of the node but loopback (the pods' gateway address among
//! them): what a pod reaching them reaches is the `host` entity.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use meshgate_model::model::NodeAddress;
use meshgate_model::pb;
use meshgate_tunnel::netlink::{Netlink, MAIN_TABLE};
use tracing::{debug, info};

use super::Agent;

/// How often the addresses are read again.
const RECHECK: Duration = Duration::from_secs(3);

/// Which addresses are published, from what netlink listed (pure).
pub fn select(
    addrs: &[(String, Ipv4Addr)],
    default_dev: Option<&str>,
    skip: &BTreeSet<String>,
) -> Vec<NodeAddress> {
    let mut out: Vec<NodeAddress> = addrs
        .iter()
        .filter(|(dev, ip)| {
            dev != "lo" && !dev.starts_with("mg-") && !skip.contains(dev) && !ip.is_loopback()
        })
        .map(|(dev, ip)| NodeAddress {
            interface: dev.clone(),
            ip: *ip,
            default_route: default_dev == Some(dev.as_str()),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What one read of the node's addresses gives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Read {
    /// Published in the node record ([`select`]).
    pub published: Vec<NodeAddress>,
    /// Every IPv4 address of every interface but loopback's 127/8.
    pub host: BTreeSet<Ipv4Addr>,
}

/// Reads the node's addresses; an error leaves them empty (and is logged).
pub fn read(skip: &BTreeSet<String>) -> Read {
    match read_inner(skip) {
        Ok(a) => a,
        Err(e) => {
            debug!(error = %e, "reading this node's addresses failed");
            Read::default()
        }
    }
}

fn read_inner(skip: &BTreeSet<String>) -> Result<Read, meshgate_tunnel::netlink::NetlinkError> {
    let mut nl = Netlink::open()?;
    let mut names: BTreeMap<u32, Option<String>> = BTreeMap::new();
    let mut addrs = Vec::new();
    for (index, net) in nl.all_addresses()? {
        let name = match names.get(&index) {
            Some(n) => n.clone(),
            None => {
                let n = nl.link_name(index)?;
                names.insert(index, n.clone());
                n
            }
        };
        if let Some(name) = name {
            addrs.push((name, net.addr()));
        }
    }
    let default_dev = nl
        .routes(MAIN_TABLE)?
        .into_iter()
        .find(|r| r.dst == Ipv4Net::default() && r.dev.is_some())
        .and_then(|r| r.dev);
    Ok(Read {
        published: select(&addrs, default_dev.as_deref(), skip),
        host: addrs
            .iter()
            .map(|(_, ip)| *ip)
            .filter(|ip| !ip.is_loopback())
            .collect(),
    })
}

/// The addresses as the node record carries them.
pub fn to_pb(addrs: &[NodeAddress]) -> Vec<pb::NodeAddress> {
    addrs
        .iter()
        .map(|a| pb::NodeAddress {
            interface: a.interface.clone(),
            ip: a.ip.to_string(),
            default_route: a.default_route,
        })
        .collect()
}

/// Re-reads the addresses every [`RECHECK`]; when they differ from the
/// registered ones, the node registers again; when the host's differ, the
/// datapath's entries follow.
pub async fn watch(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = agent.clone();
        let now = tokio::task::spawn_blocking(move || {
            let pods = a
                .pod_interfaces
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            read(&pods)
        })
        .await
        .unwrap_or_default();
        let host_changed = {
            let mut host = agent.host_addresses();
            let changed = *host != now.host;
            *host = now.host;
            changed
        };
        if host_changed {
            super::datapath::kick(&agent);
        }
        let now = now.published;
        let changed = {
            let mut published = agent.addresses();
            if *published != now {
                *published = now.clone();
                true
            } else {
                false
            }
        };
        if changed {
            info!(
                addresses = now.len(),
                "this node's addresses changed; registering again"
            );
            agent.reregister.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn own_devices_pods_and_loopback_are_left_out() {
        let a = |d: &str, ip: &str| (d.to_string(), ip.parse::<Ipv4Addr>().unwrap());
        let addrs = [
            a("lo", "127.0.0.1"),
            a("eth0", "198.18.1.10"),
            a("eg0", "203.0.113.51"),
            a("eg0", "203.0.113.50"),
            a("mg-wg0", "100.64.0.1"),
            a("mg-vx0", "100.64.0.1"),
            a("pod0", "169.254.1.1"),
        ];
        let skip = BTreeSet::from(["pod0".to_string()]);
        let got = select(&addrs, Some("eth0"), &skip);
        let shown: Vec<String> = got
            .iter()
            .map(|a| {
                format!(
                    "{}={}{}",
                    a.interface,
                    a.ip,
                    if a.default_route { "*" } else { "" }
                )
            })
            .collect();
        assert_eq!(
            shown,
            ["eg0=203.0.113.50", "eg0=203.0.113.51", "eth0=198.18.1.10*"]
        );
    }
}
