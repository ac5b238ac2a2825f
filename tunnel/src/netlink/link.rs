//! Links: index by name, add (dummy, VXLAN), MTU/up/ARP, delete.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, InfoXfrm, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError};

/// A kind of link this crate makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// `type veth peer name PEER` (tests, benchmarks; both ends here).
    Veth { peer: String },
    /// `type veth peer name PEER netns FD`: the peer end made in another
    /// network namespace (a pod's, by an open fd of it), as a CNI plugin
    /// makes a pod's interface.
    VethPeerIn { peer: String, netns_fd: i32 },
    /// `type vxlan external dstport PORT`: collect_md (the tunnel key and
    /// remote come with each packet, set by a program), no learning.
    VxlanExternal { port: u16 },
    /// `type xfrm if_id ID [dev LINK]`: an XFRM interface; what is routed
    /// into it goes through the IPsec policies and SAs carrying `if_id`.
    Xfrm { if_id: u32, link: Option<u32> },
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkKind::Veth { peer } => write!(f, "veth peer name {peer}"),
            LinkKind::VethPeerIn { peer, netns_fd } => {
                write!(f, "veth peer name {peer} netns fd {netns_fd}")
            }
            LinkKind::VxlanExternal { port } => write!(f, "vxlan external dstport {port}"),
            LinkKind::Xfrm { if_id, link } => match link {
                Some(l) => write!(f, "xfrm if_id {if_id} dev index {l}"),
                None => write!(f, "xfrm if_id {if_id}"),
            },
        }
    }
}

/// Settings changed on a link; `None` leaves one as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    /// `Some(false)`: IFF_NOARP set (`arp off`).
    pub arp: Option<bool>,
}

impl std::fmt::Display for LinkChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on_off = |b: bool| if b { "on" } else { "off" };
        let mut words = Vec::new();
        if let Some(m) = self.mtu {
            words.push(format!("mtu {m}"));
        }
        if let Some(a) = self.arp {
            words.push(format!("arp {}", on_off(a)));
        }
        if let Some(u) = self.up {
            words.push(if u { "up" } else { "down" }.to_string());
        }
        f.write_str(&words.join(" "))
    }
}

impl LinkChange {
    /// The header flags and change mask this asks for.
    fn flags(&self) -> (LinkFlags, LinkFlags) {
        let (mut flags, mut mask) = (LinkFlags::empty(), LinkFlags::empty());
        if let Some(up) = self.up {
            mask |= LinkFlags::Up;
            flags.set(LinkFlags::Up, up);
        }
        if let Some(arp) = self.arp {
            mask |= LinkFlags::Noarp;
            flags.set(LinkFlags::Noarp, !arp);
        }
        (flags, mask)
    }
}

/// What a link is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mtu: Option<u32>,
    /// IFF_UP (administratively up).
    pub up: bool,
    /// IFF_NOARP clear.
    pub arp: bool,
}

fn by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

fn info(kind: &LinkKind) -> Vec<LinkInfo> {
    match kind {
        LinkKind::Veth { peer } => vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(by_name(peer)))),
        ],
        LinkKind::VethPeerIn { peer, netns_fd } => {
            let mut p = by_name(peer);
            p.attributes.push(LinkAttribute::NetNsFd(*netns_fd));
            vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
            ]
        }
        LinkKind::VxlanExternal { port } => vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Learning(false),
                InfoVxlan::Port(*port),
            ])),
        ],
        LinkKind::Xfrm { if_id, link } => {
            let mut data = vec![InfoXfrm::IfId(*if_id)];
            data.extend(link.map(InfoXfrm::Link));
            vec![
                LinkInfo::Kind(InfoKind::Xfrm),
                LinkInfo::Data(InfoData::Xfrm(data)),
            ]
        }
    }
}

impl Netlink {
    /// The link called `name` now, or `None` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        let answer = match self.request(RouteNetlinkMessage::GetLink(by_name(name)), 0, || {
            format!("looking up link {name}")
        }) {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        Ok(answer.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(LinkState {
                index: l.header.index,
                mtu: l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                }),
                up: l.header.flags.contains(LinkFlags::Up),
                arp: !l.header.flags.contains(LinkFlags::Noarp),
            }),
            _ => None,
        }))
    }

    /// The index of link `name`, or `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// The index of link `name`; an ENODEV error for `op` if there is none.
    pub(crate) fn require_link(
        &mut self,
        name: &str,
        op: impl FnOnce() -> String,
    ) -> Result<u32, NetlinkError> {
        match self.link_index(name)? {
            Some(i) => Ok(i),
            None => Err(NetlinkError::kernel(op(), libc::ENODEV, None)),
        }
    }

    /// The name of the link with `index`, or `None` if there is none.
    pub fn link_name(&mut self, index: u32) -> Result<Option<String>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let answer = match self.request(RouteNetlinkMessage::GetLink(m), 0, || {
            format!("looking up link {index}")
        }) {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        Ok(answer.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Creates link `name` of `kind` (EEXIST if it is there already).
    pub fn add_link(&mut self, name: &str, kind: &LinkKind) -> Result<(), NetlinkError> {
        let mut m = by_name(name);
        m.attributes.push(LinkAttribute::LinkInfo(info(kind)));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding link {name} type {kind}"),
        )
        .map(drop)
    }

    /// Changes link `name`'s MTU, up/down and ARP as `change` says.
    pub fn set_link(&mut self, name: &str, change: &LinkChange) -> Result<(), NetlinkError> {
        let mut m = by_name(name);
        (m.header.flags, m.header.change_mask) = change.flags();
        if let Some(mtu) = change.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::NewLink(m), 0, || {
            format!("setting link {name} {change}")
        })
        .map(drop)
    }

    /// Deletes link `name` (ENODEV if there is none).
    pub fn delete_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.request(RouteNetlinkMessage::DelLink(by_name(name)), 0, || {
            format!("deleting link {name}")
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_off_sets_noarp_and_only_asked_flags_are_in_the_mask() {
        let c = LinkChange {
            mtu: Some(1370),
            up: Some(true),
            arp: Some(false),
        };
        let (flags, mask) = c.flags();
        assert_eq!(flags, LinkFlags::Up | LinkFlags::Noarp);
        assert_eq!(mask, LinkFlags::Up | LinkFlags::Noarp);
        assert_eq!(c.to_string(), "mtu 1370 arp off up");
        let (flags, mask) = LinkChange {
            mtu: Some(1420),
            ..Default::default()
        }
        .flags();
        assert!(flags.is_empty() && mask.is_empty());
    }

    #[test]
    fn external_vxlan_is_collect_md_without_learning() {
        let i = info(&LinkKind::VxlanExternal { port: 4789 });
        let LinkInfo::Data(InfoData::Vxlan(data)) = &i[1] else {
            panic!("no vxlan data in {i:?}");
        };
        assert!(data.contains(&InfoVxlan::CollectMetadata(true)));
        assert!(data.contains(&InfoVxlan::Learning(false)));
        assert!(data.contains(&InfoVxlan::Port(4789)));
        assert_eq!(
            LinkKind::VxlanExternal { port: 4789 }.to_string(),
            "vxlan external dstport 4789"
        );
    }
}
