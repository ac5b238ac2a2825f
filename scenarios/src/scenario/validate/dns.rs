//! The `dns:` section: its records, its two addresses, and the datapath
//! it needs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{check_host_ip, reserved_ranges, Errors};
use crate::scenario::{Datapath, Scenario};

/// Checks `s.dns`; `owners` holds the external network's addresses seen
/// so far (egress IPs, externals), which the server's must not repeat.
pub(super) fn check(
    errors: &mut Errors,
    s: &Scenario,
    nets: &[(Ipv4Net, usize)],
    owners: &mut BTreeMap<Ipv4Addr, String>,
) {
    let Some(dns) = &s.dns else { return };
    for (ci, c) in s.clusters.iter().enumerate() {
        if c.datapath.unwrap_or(s.datapath) != Datapath::Ebpf {
            let field = if c.datapath.is_some() {
                format!("clusters[{ci}].datapath")
            } else {
                "dns".to_string()
            };
            errors.add(
                field,
                format!(
                    "`dns:` runs a DNS proxy on every node, which needs the eBPF datapath (FQDN \
                     policy is enforced there), but cluster \"{}\" has the plain one: set \
                     `datapath: ebpf`",
                    c.name
                ),
            );
        }
    }
    check_host_ip(
        errors,
        s,
        nets,
        owners,
        ("dns.server".to_string(), "dns.server".to_string()),
        dns.server,
    );
    check_cluster_ip(errors, s, nets, owners, dns.cluster_ip);
    if let Err(problems) = crate::scenario::dns::records(dns) {
        errors.0.extend(problems);
    }
}

/// The pods' nameserver: not an address of the world, not in a range the
/// lab uses, not a service VIP.
fn check_cluster_ip(
    errors: &mut Errors,
    s: &Scenario,
    nets: &[(Ipv4Net, usize)],
    owners: &BTreeMap<Ipv4Addr, String>,
    ip: Ipv4Addr,
) {
    let field = "dns.clusterIP";
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        errors.add(field, format!("{ip} is not a unicast host address"));
    }
    for (range, what) in reserved_ranges() {
        if range.contains(&ip) {
            errors.add(field, format!("{ip} is inside {range}, {what}"));
        }
    }
    for (net, ci) in nets {
        if net.contains(&ip) {
            errors.add(
                field,
                format!(
                    "{ip} is inside {net}, the podCIDR of cluster \"{}\"",
                    s.clusters[*ci].name
                ),
            );
        }
    }
    if let Some(owner) = owners.get(&ip) {
        errors.add(
            field,
            format!(
                "{ip} is already used by {owner}; the cluster IP is a service address of its own"
            ),
        );
    }
    for c in &s.clusters {
        let Ok(id) = u8::try_from(c.id) else { continue };
        let range = crate::plan::vips::service_range(id);
        if range.contains(&ip) {
            errors.add(
                field,
                format!(
                    "{ip} is inside {range}, where the lab gives cluster \"{}\"'s services their \
                     VIPs: use an address outside 10.96.<cluster id>.0/24, like the default \
                     10.96.0.10",
                    c.name
                ),
            );
        }
    }
}
