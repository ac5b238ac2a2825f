//! Routes: replace, delete and list, in any table (`table 28007` as the
//! 32-bit RTA_TABLE), of the types the agent uses: unicast through a
//! device, unreachable and throw.

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType as RtnType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError};

/// The main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

/// The type of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteType {
    /// Forwarded (through a device).
    Unicast,
    /// Dropped with ICMP unreachable (EHOSTUNREACH locally).
    Unreachable,
    /// Looked up in the next table the rules name.
    Throw,
    /// Any other `RTN_*` type, as read from a dump.
    Other(u8),
}

impl From<RouteType> for RtnType {
    fn from(t: RouteType) -> RtnType {
        match t {
            RouteType::Unicast => RtnType::Unicast,
            RouteType::Unreachable => RtnType::Unreachable,
            RouteType::Throw => RtnType::Throw,
            RouteType::Other(n) => RtnType::from(n),
        }
    }
}

impl From<RtnType> for RouteType {
    fn from(t: RtnType) -> RouteType {
        match t {
            RtnType::Unicast => RouteType::Unicast,
            RtnType::Unreachable => RouteType::Unreachable,
            RtnType::Throw => RouteType::Throw,
            other => RouteType::Other(other.into()),
        }
    }
}

/// A route, as `ip route` would write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub kind: RouteType,
    pub table: u32,
    /// The device (`dev`) of a unicast route.
    pub dev: Option<String>,
    /// The preferred source address (`src`).
    pub src: Option<Ipv4Addr>,
    /// The next hop (`via`); none: the destination is on the link.
    pub gateway: Option<Ipv4Addr>,
    /// `onlink`: the next hop is on the link even though no prefix of the
    /// device covers it (a pod's `default via 169.254.1.1 onlink`).
    pub onlink: bool,
}

impl Route {
    /// `DST dev DEV` in the main table.
    pub fn via_dev(dst: Ipv4Net, dev: &str) -> Route {
        Route {
            dst,
            kind: RouteType::Unicast,
            table: MAIN_TABLE,
            dev: Some(dev.to_string()),
            src: None,
            gateway: None,
            onlink: false,
        }
    }

    /// `unreachable DST` in the main table.
    pub fn unreachable(dst: Ipv4Net) -> Route {
        Route {
            dst,
            kind: RouteType::Unreachable,
            table: MAIN_TABLE,
            dev: None,
            src: None,
            gateway: None,
            onlink: false,
        }
    }

    /// `throw DST` in the main table.
    pub fn throw(dst: Ipv4Net) -> Route {
        Route {
            kind: RouteType::Throw,
            ..Route::unreachable(dst)
        }
    }

    /// The same route in `table`.
    pub fn in_table(self, table: u32) -> Route {
        Route { table, ..self }
    }

    /// The same route through the next hop `gateway` (`via`).
    pub fn with_gateway(self, gateway: Option<Ipv4Addr>) -> Route {
        Route { gateway, ..self }
    }

    /// The same route with its next hop taken as on the link (`onlink`).
    pub fn onlink(self) -> Route {
        Route {
            onlink: true,
            ..self
        }
    }

    /// The same route with the preferred source `src`.
    pub fn with_src(self, src: Option<Ipv4Addr>) -> Route {
        Route { src, ..self }
    }

    /// The message for `RTM_NEWROUTE` (`delete: false`, as `ip route
    /// replace` sends it) or `RTM_DELROUTE` (scope and protocol left as
    /// wildcards, as `ip route del` sends it).
    fn message(&self, oif: Option<u32>, delete: bool) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: self.dst.prefix_len(),
            // Tables past 255 only fit the 32-bit attribute.
            table: u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
            kind: self.kind.into(),
            ..Default::default()
        };
        if delete {
            m.header.scope = RouteScope::NoWhere;
        } else {
            m.header.protocol = RouteProtocol::Boot;
            // A unicast route without a gateway reaches its destination on
            // the link itself.
            m.header.scope = if self.kind == RouteType::Unicast && self.gateway.is_none() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
        }
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                self.dst.addr(),
            )));
        m.attributes.push(RouteAttribute::Table(self.table));
        if let Some(oif) = oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        if self.onlink && !delete {
            m.header.flags |= RouteFlags::Onlink;
        }
        if let (Some(gw), false) = (self.gateway, delete) {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let (Some(src), false) = (self.src, delete) {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        m
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RouteType::Unicast => {}
            RouteType::Unreachable => f.write_str("unreachable ")?,
            RouteType::Throw => f.write_str("throw ")?,
            RouteType::Other(n) => write!(f, "type {n} ")?,
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// A route of a dump, if it is an IPv4 route of `table` (cached clones
/// skipped); its device by index.
fn parse(m: RouteMessage, table: u32) -> Option<(Route, Option<u32>)> {
    if m.header.address_family != AddressFamily::Inet || m.header.flags.contains(RouteFlags::Cloned)
    {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let (mut in_table, mut oif, mut src, mut gateway) =
        (u32::from(m.header.table), None, None, None);
    for a in m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = d,
            RouteAttribute::Table(t) => in_table = t,
            RouteAttribute::Oif(i) => oif = Some(i),
            RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(s),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(g),
            _ => {}
        }
    }
    if in_table != table {
        return None;
    }
    let route = Route {
        dst: Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?,
        kind: m.header.kind.into(),
        table,
        dev: None,
        src,
        gateway,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
    };
    Some((route, oif))
}

impl Netlink {
    /// Adds `route`, or replaces the route to the same destination in its
    /// table (`ip route replace`).
    pub fn replace_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let op = || format!("setting route {route}");
        let oif = match &route.dev {
            Some(dev) => Some(self.require_link(dev, op)?),
            None => None,
        };
        self.request(
            RouteNetlinkMessage::NewRoute(route.message(oif, false)),
            NLM_F_CREATE | NLM_F_REPLACE,
            op,
        )
        .map(drop)
    }

    /// Deletes `route` (`ip route del`; ESRCH if there is no such route,
    /// ENODEV if its device is gone).
    pub fn delete_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let op = || format!("deleting route {route}");
        let oif = match &route.dev {
            Some(dev) => Some(self.require_link(dev, op)?),
            None => None,
        };
        self.request(
            RouteNetlinkMessage::DelRoute(route.message(oif, true)),
            0,
            op,
        )
        .map(drop)
    }

    /// The IPv4 routes of `table`, in the kernel's order; an empty list
    /// for a table never used.
    pub fn routes(&mut self, table: u32) -> Result<Vec<Route>, NetlinkError> {
        let op = || format!("listing the routes of table {table}");
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let answer = self.dump(RouteNetlinkMessage::GetRoute(req), op)?;
        let found: Vec<(Route, Option<u32>)> = answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse(r, table),
                _ => None,
            })
            .collect();
        let mut names: BTreeMap<u32, Option<String>> = BTreeMap::new();
        let mut out = Vec::with_capacity(found.len());
        for (mut route, oif) in found {
            if let Some(i) = oif {
                let name = match names.entry(i) {
                    Entry::Occupied(e) => e.get().clone(),
                    Entry::Vacant(e) => e.insert(self.link_name(i)?).clone(),
                };
                route.dev = name;
            }
            out.push(route);
        }
        Ok(out)
    }

    /// Deletes every IPv4 route of `table` (`ip route flush table N`);
    /// how many went.
    pub fn flush_table(&mut self, table: u32) -> Result<usize, NetlinkError> {
        let mut gone = 0;
        for route in self.routes(table)? {
            // By destination, type and table: the first route that matches
            // goes, whatever its device or gateway.
            let any = Route { dev: None, ..route };
            match self.delete_route(&any) {
                Ok(()) => gone += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn written_as_ip_route_writes_it() {
        let r = Route::via_dev(net("10.1.2.0/24"), "mg-wg0").in_table(28_007);
        assert_eq!(r.to_string(), "10.1.2.0/24 dev mg-wg0 table 28007");
        let r = Route::via_dev(net("100.64.0.2/32"), "mg-wg0")
            .with_src(Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(r.to_string(), "100.64.0.2/32 dev mg-wg0 src 100.64.0.1");
        assert_eq!(
            Route::unreachable(net("10.1.0.0/16")).to_string(),
            "unreachable 10.1.0.0/16"
        );
        assert_eq!(
            Route::throw(net("10.1.0.0/24"))
                .in_table(28_007)
                .to_string(),
            "throw 10.1.0.0/24 table 28007"
        );
    }

    #[test]
    fn a_large_table_goes_in_the_attribute_and_deletes_are_wildcards() {
        let r = Route::via_dev(net("10.1.2.0/24"), "x").in_table(28_007);
        let add = r.message(Some(7), false);
        assert_eq!(add.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(add.attributes.contains(&RouteAttribute::Table(28_007)));
        assert!(add.attributes.contains(&RouteAttribute::Oif(7)));
        assert_eq!(add.header.scope, RouteScope::Link);
        assert_eq!(add.header.kind, RtnType::Unicast);
        let del = r.message(Some(7), true);
        assert_eq!(del.header.scope, RouteScope::NoWhere);
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
        let main = Route::unreachable(net("10.1.0.0/16")).message(None, false);
        assert_eq!(main.header.table, 254);
        assert_eq!(main.header.scope, RouteScope::Universe);
        assert_eq!(main.header.kind, RtnType::Unreachable);
        let with_src = Route::via_dev(net("10.1.2.0/24"), "x")
            .with_src(Some(Ipv4Addr::new(100, 64, 0, 1)))
            .message(Some(7), false);
        assert!(with_src
            .attributes
            .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(
                Ipv4Addr::new(100, 64, 0, 1)
            ))));
    }

    #[test]
    fn a_dump_keeps_only_ipv4_routes_of_the_table() {
        let msg = Route::throw(net("10.1.0.0/24"))
            .in_table(28_007)
            .message(None, false);
        let (r, oif) = parse(msg.clone(), 28_007).unwrap();
        assert_eq!(r, Route::throw(net("10.1.0.0/24")).in_table(28_007));
        assert_eq!(oif, None);
        assert!(parse(msg.clone(), MAIN_TABLE).is_none());
        let mut v6 = msg;
        v6.header.address_family = AddressFamily::Inet6;
        assert!(parse(v6, 28_007).is_none());
    }
}
