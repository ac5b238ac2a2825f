//! The tunnel interface's address and the routes through it, set over
//! route netlink ([`crate::netlink`]) in the calling thread's network
//! namespace. Each call is idempotent: replacing what is there, removing
//! what is absent, succeed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netlink::{LinkChange, Netlink, NetlinkError, Route};

/// Gives the interface its tunnel address (a /32) and MTU and brings it up.
pub fn configure_interface(iface: &str, tunnel_ip: Ipv4Addr, mtu: u16) -> Result<(), NetlinkError> {
    let mut nl = Netlink::open()?;
    nl.replace_address(iface, Ipv4Net::from(tunnel_ip))?;
    nl.set_link(
        iface,
        &LinkChange {
            mtu: Some(mtu.into()),
            up: Some(true),
            arp: None,
        },
    )
}

/// Routes `net` through the tunnel interface (replacing any route to it).
pub fn add_route(iface: &str, net: &Ipv4Net, src: Option<Ipv4Addr>) -> Result<(), NetlinkError> {
    Netlink::open()?.replace_route(&Route::via_dev(*net, iface).with_src(src))
}

/// Removes the route to `net` through the tunnel interface, if present
/// (a route through a device that is gone is gone too).
pub fn remove_route(iface: &str, net: &Ipv4Net) -> Result<(), NetlinkError> {
    match Netlink::open()?.delete_route(&Route::via_dev(*net, iface)) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// Removes the interface, if present.
pub fn delete_interface(iface: &str) -> Result<(), NetlinkError> {
    match Netlink::open()?.delete_link(iface) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}
