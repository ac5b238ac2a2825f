//! The tunnel interface's address and the routes through it, set with
//! iproute2 in the agent's network namespace.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::backend::BackendError;

fn ip(args: &[&str], action: String) -> Result<(), BackendError> {
    crate::cmd::run("ip", args, None, &action).map(drop)
}

/// Gives the interface its tunnel address and MTU and brings it up.
pub fn configure_interface(iface: &str, tunnel_ip: Ipv4Addr, mtu: u16) -> Result<(), BackendError> {
    let action = format!("configuring interface {iface}");
    ip(
        &["addr", "replace", &format!("{tunnel_ip}/32"), "dev", iface],
        action.clone(),
    )?;
    ip(
        &["link", "set", "dev", iface, "mtu", &mtu.to_string(), "up"],
        action,
    )
}

/// Routes `net` through the tunnel interface.
pub fn add_route(iface: &str, net: &Ipv4Net, src: Option<Ipv4Addr>) -> Result<(), BackendError> {
    let net_s = net.to_string();
    let mut args = vec!["route", "replace", net_s.as_str(), "dev", iface];
    let src_s = src.map(|s| s.to_string());
    if let Some(s) = src_s.as_deref() {
        args.extend(["src", s]);
    }
    ip(&args, format!("routing {net} through {iface}"))
}

/// Removes the route to `net` through the tunnel interface, if present.
pub fn remove_route(iface: &str, net: &Ipv4Net) -> Result<(), BackendError> {
    let net_s = net.to_string();
    match ip(
        &["route", "del", net_s.as_str(), "dev", iface],
        format!("removing route {net}"),
    ) {
        Err(BackendError::Command { detail, .. }) if detail.contains("No such process") => Ok(()),
        other => other,
    }
}

/// Removes the interface, if present.
pub fn delete_interface(iface: &str) -> Result<(), BackendError> {
    match ip(
        &["link", "del", iface],
        format!("deleting interface {iface}"),
    ) {
        Err(BackendError::Command { detail, .. }) if detail.contains("Cannot find device") => {
            Ok(())
        }
        other => other,
    }
}
