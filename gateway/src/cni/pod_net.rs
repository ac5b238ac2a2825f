//! The pod's network, as the lab's pods have it: a veth whose pod end
//! (`CNI_IFNAME`, MTU from the config) holds the pod's IP as a /32, a route
//! to the gateway 169.254.1.1 on the link and a default route through it
//! (`onlink`); the host end answers ARP for it (proxy ARP) and carries the
//! node's route to the pod's /32. Over netlink: the node's side from this
//! thread, the pod's from a thread inside the pod's network namespace.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use ipnet::Ipv4Net;
use meshgate_tunnel::netlink::{LinkChange, LinkKind, Netlink, NetlinkError, Route};

use super::config::{code, CniError};

/// The pods' gateway: the node answers for it on every pod's veth.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn io(what: impl Into<String>, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO, what, e.to_string())
}

fn nl(e: NetlinkError) -> CniError {
    io(format!("netlink: {}", e.operation()), e)
}

fn open_netlink() -> Result<Netlink, CniError> {
    Netlink::open().map_err(nl)
}

/// The pod's network namespace, opened (a missing one: code 3).
pub fn open_netns(path: &str) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("CNI_NETNS {path}: {e}"),
        )
    })
}

/// Runs `f` on a thread inside the network namespace `netns`.
fn in_netns<T: Send>(
    netns: &File,
    f: impl FnOnce() -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd that
            // outlives the scope.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io(
                    "entering the container's network namespace",
                    std::io::Error::last_os_error(),
                ));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io("configuring the pod's interface", "the thread panicked")))
    })
}

/// Whether the node has a link named `name`.
pub fn host_exists(name: &str) -> Result<bool, CniError> {
    Ok(open_netlink()?.link_index(name).map_err(nl)?.is_some())
}

/// Makes the veth: `host` here (down), `ifname` in the pod with the
/// pod's address and routes.
pub fn create(
    host: &str,
    netns: &File,
    ifname: &str,
    ip: Ipv4Addr,
    mtu: u32,
) -> Result<(), CniError> {
    let mut n = open_netlink()?;
    n.add_link(
        host,
        &LinkKind::VethPeerIn {
            peer: ifname.to_string(),
            netns_fd: netns.as_raw_fd(),
        },
    )
    .map_err(|e| {
        if e.is_exists() {
            CniError::new(
                code::ALREADY_ADDED,
                "the container's interface already exists",
                format!(
                    "{host} (or {ifname} in the container) is there: this container was \
                     added already; DEL it first"
                ),
            )
        } else {
            nl(e)
        }
    })?;
    let made = (|| {
        n.set_link(
            host,
            &LinkChange {
                mtu: Some(mtu),
                ..LinkChange::default()
            },
        )
        .map_err(nl)?;
        for (key, value) in [("proxy_arp", "1"), ("rp_filter", "0")] {
            let path = format!("/proc/sys/net/ipv4/conf/{host}/{key}");
            std::fs::write(&path, value).map_err(|e| io(format!("setting {path}"), e))?;
        }
        in_netns(netns, || {
            let mut p = open_netlink()?;
            p.set_link(
                ifname,
                &LinkChange {
                    mtu: Some(mtu),
                    up: Some(true),
                    ..LinkChange::default()
                },
            )
            .map_err(nl)?;
            if p.link_index("lo").map_err(nl)?.is_some() {
                p.set_link(
                    "lo",
                    &LinkChange {
                        up: Some(true),
                        ..LinkChange::default()
                    },
                )
                .map_err(nl)?;
            }
            p.replace_address(ifname, Ipv4Net::from(ip)).map_err(nl)?;
            p.replace_route(&Route::via_dev(Ipv4Net::from(GATEWAY), ifname))
                .map_err(nl)?;
            p.replace_route(
                &Route::via_dev(Ipv4Net::default(), ifname)
                    .with_gateway(Some(GATEWAY))
                    .onlink(),
            )
            .map_err(nl)
        })
    })();
    if made.is_err() {
        let _ = n.delete_link(host);
    }
    made
}

/// Brings the host side up with the node's route to the pod: traffic
/// flows from here on.
pub fn open_host_side(host: &str, ip: Ipv4Addr) -> Result<(), CniError> {
    let mut n = open_netlink()?;
    n.set_link(
        host,
        &LinkChange {
            up: Some(true),
            ..LinkChange::default()
        },
    )
    .map_err(nl)?;
    n.replace_route(&Route::via_dev(Ipv4Net::from(ip), host))
        .map_err(nl)
}

/// Deletes the host side (the pod side goes with it); gone already is no
/// error.
pub fn remove(host: &str) -> Result<(), CniError> {
    let mut n = open_netlink()?;
    match n.delete_link(host) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(nl(e)),
    }
}

/// What CHECK verifies: the host side up with the route to the pod, and
/// the pod side up with its address and default route. The first
/// difference, if any.
pub fn check(host: &str, netns: &File, ifname: &str, ip: Ipv4Addr) -> Result<(), CniError> {
    let differ = |what: String| {
        CniError::new(
            code::CHECK_FAILED,
            "the pod's network differs from what ADD made",
            what,
        )
    };
    let mut n = open_netlink()?;
    match n.link(host).map_err(nl)? {
        Some(l) if l.up => {}
        Some(_) => return Err(differ(format!("{host} is down"))),
        None => return Err(differ(format!("the host side {host} is gone"))),
    }
    let routes = n.routes(meshgate_tunnel::netlink::MAIN_TABLE).map_err(nl)?;
    if !routes
        .iter()
        .any(|r| r.dst == Ipv4Net::from(ip) && r.dev.as_deref() == Some(host))
    {
        return Err(differ(format!("the node has no route {ip}/32 dev {host}")));
    }
    in_netns(netns, || {
        let mut p = open_netlink()?;
        match p.link(ifname).map_err(nl)? {
            Some(l) if l.up => {}
            _ => return Err(differ(format!("{ifname} in the container is gone or down"))),
        }
        if !p
            .addresses(ifname)
            .map_err(nl)?
            .contains(&Ipv4Net::from(ip))
        {
            return Err(differ(format!("{ifname} in the container lacks {ip}/32")));
        }
        let routes = p.routes(meshgate_tunnel::netlink::MAIN_TABLE).map_err(nl)?;
        if !routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(GATEWAY))
        {
            return Err(differ(format!(
                "the container has no default route via {GATEWAY}"
            )));
        }
        Ok(())
    })
}
