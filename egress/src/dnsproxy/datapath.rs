//! Writing what an answer makes reachable into the pinned maps, and
//! removing what expired. The proxy calls [`write_learned`] before the pod
//! gets the answer, so a connection made right after it never races the
//! policy.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_ebpf::EgressRoute;
use meshgate_ebpf::Maps;
use meshgate_ebpf::{FqdnEntry, FqdnPorts};

use super::decide::Learned;

/// What one answer wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub addresses: usize,
    pub egress_routes: usize,
}

/// Writes `learned` (the answer to a query of `source`, a pod with
/// `identity`). An address already reachable for the identity keeps the
/// later expiry and the union of the ports: another name may have given it.
pub fn write_learned(
    maps: &mut Maps,
    identity: u32,
    source: Ipv4Addr,
    learned: &Learned,
    now_ns: u64,
) -> meshgate_ebpf::Result<Written> {
    let mut w = Written::default();
    if let Some(ports) = &learned.reach_ports {
        let ports = if ports.is_empty() {
            FqdnPorts::Any
        } else {
            FqdnPorts::Only(ports.clone())
        };
        for (addr, expires_ns) in &learned.reach {
            let entry = match maps.fqdn.get(identity, *addr)? {
                Some(old) if old.expires_ns > now_ns => FqdnEntry {
                    expires_ns: old.expires_ns.max(*expires_ns),
                    ports: union(&old.ports, &ports),
                },
                _ => FqdnEntry {
                    expires_ns: *expires_ns,
                    ports: ports.clone(),
                },
            };
            maps.fqdn.set(identity, *addr, &entry)?;
            w.addresses += 1;
        }
    }
    for (e, addr) in &learned.egress {
        let route = EgressRoute {
            excluded: false,
            snat_index: e.snat_index,
            gateways: e.gateways.clone(),
            fqdn_tag: e.tag,
            gateway_only: false,
        };
        let dst = Ipv4Net::new(*addr, 32).expect("32 is a valid prefix length");
        maps.egress.set(source, dst, &route)?;
        w.egress_routes += 1;
    }
    Ok(w)
}

/// The ports of both, at most [`meshgate_ebpf::FQDN_MAX_PORTS`]:
/// beyond that the newer ports win (never "any").
fn union(a: &FqdnPorts, b: &FqdnPorts) -> FqdnPorts {
    match (a, b) {
        (FqdnPorts::Any, _) | (_, FqdnPorts::Any) => FqdnPorts::Any,
        (FqdnPorts::Only(x), FqdnPorts::Only(y)) => {
            let mut all: Vec<(u8, u16)> = y.clone();
            for p in x {
                if !all.contains(p) && all.len() < meshgate_ebpf::FQDN_MAX_PORTS {
                    all.push(*p);
                }
            }
            FqdnPorts::Only(all)
        }
    }
}

/// Removes the `mg_fqdn` entries expired at `now_ns`: (held, removed).
pub fn collect_expired(maps: &mut Maps, now_ns: u64) -> meshgate_ebpf::Result<(usize, usize)> {
    let entries = maps.fqdn.entries()?;
    let mut removed = 0;
    for (identity, addr, e) in &entries {
        if e.expires_ns <= now_ns {
            maps.fqdn.remove(*identity, *addr)?;
            removed += 1;
        }
    }
    Ok((entries.len() - removed, removed))
}
