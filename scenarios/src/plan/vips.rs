//! Service VIPs of the lab: a service without `vip` gets one from its
//! cluster's service range `10.96.<cluster id>.0/24`, in definition order,
//! skipping addresses given explicitly.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use meshgate_model::service::Service;

/// The lab's service range of cluster `id`.
pub fn service_range(id: u8) -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(Ipv4Addr::new(10, 96, id, 0), 24).unwrap_or_else(|_| unreachable!())
}

/// `services` with a VIP each (given ones kept).
pub fn assign(id: u8, services: &[Service]) -> Vec<Service> {
    let taken: BTreeSet<Ipv4Addr> = services.iter().filter_map(|s| s.vip).collect();
    let mut free = service_range(id)
        .hosts()
        .skip(9) // .10 onwards: the first addresses stay for other uses
        .filter(|ip| !taken.contains(ip));
    services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if s.vip.is_none() {
                s.vip = free.next();
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn svc(name: &str, vip: Option<&str>) -> Service {
        serde_yaml::from_str::<Service>(&format!(
            "name: {name}\nports: [{{port: 80}}]\n{}",
            vip.map(|v| format!("vip: {v}\n")).unwrap_or_default()
        ))
        .unwrap()
    }

    #[test]
    fn missing_vips_come_from_the_cluster_range_skipping_given_ones() {
        let got = assign(
            3,
            &[svc("a", None), svc("b", Some("10.96.3.10")), svc("c", None)],
        );
        let vips: Vec<String> = got.iter().map(|s| s.vip.unwrap().to_string()).collect();
        assert_eq!(vips, ["10.96.3.11", "10.96.3.10", "10.96.3.12"]);
    }
}
