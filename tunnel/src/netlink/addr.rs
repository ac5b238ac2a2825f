//! Addresses: replace or remove one on a device, list a device's.

use std::net::IpAddr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError};

fn message(index: u32, addr: Ipv4Net) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = addr.prefix_len();
    m.header.scope = AddressScope::Universe;
    m.header.index = index;
    let ip = IpAddr::V4(addr.addr());
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    m
}

impl Netlink {
    /// Gives `dev` the address `addr` (`ip addr replace ADDR dev DEV`):
    /// added, or left as it is when it is there.
    pub fn replace_address(&mut self, dev: &str, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let op = || format!("setting address {addr} on {dev}");
        let index = self.require_link(dev, op)?;
        self.request(
            RouteNetlinkMessage::NewAddress(message(index, addr)),
            NLM_F_CREATE | NLM_F_REPLACE,
            op,
        )
        .map(drop)
    }

    /// Takes `addr` off `dev` (`ip addr del ADDR dev DEV`); false when it
    /// was not there.
    pub fn remove_address(&mut self, dev: &str, addr: Ipv4Net) -> Result<bool, NetlinkError> {
        let op = || format!("removing address {addr} from {dev}");
        let index = self.require_link(dev, op)?;
        match self.request(RouteNetlinkMessage::DelAddress(message(index, addr)), 0, op) {
            Ok(_) => Ok(true),
            // EADDRNOTAVAIL: no such address on the device.
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every IPv4 address of every device: (interface index, address).
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let answer = self.dump(RouteNetlinkMessage::GetAddress(req), || {
            "listing the addresses of every device".to_string()
        })?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let ip = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })?;
                    Some((a.header.index, Ipv4Net::new(ip, a.header.prefix_len).ok()?))
                }
                _ => None,
            })
            .collect())
    }

    /// The IPv4 addresses of `dev`, with their prefix lengths.
    pub fn addresses(&mut self, dev: &str) -> Result<Vec<Ipv4Net>, NetlinkError> {
        let op = || format!("listing the addresses of {dev}");
        let index = self.require_link(dev, op)?;
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        req.header.index = index;
        let answer = self.dump(RouteNetlinkMessage::GetAddress(req), op)?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })?;
                    Ipv4Net::new(ip, a.header.prefix_len).ok()
                }
                _ => None,
            })
            .collect())
    }
}
