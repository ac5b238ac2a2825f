//! The XFRM interface (`ip link add NAME type xfrm if_id ID`): routing a
//! prefix into it is what sends it through ESP, as routing into `mg-wg0`
//! sends it through WireGuard.

use netlink_packet_core::{NetlinkMessage, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoXfrm, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::constants::NETLINK_ROUTE;

use crate::nlsock::{request, NlError};

/// The interface index of `iface`, 0 if there is none.
pub fn ifindex(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Creates XFRM interface `iface` with `if_id` over the device with index
/// `link` (0: none); one that exists already is kept.
pub fn create(iface: &str, if_id: u32, link: u32) -> Result<(), NlError> {
    let mut data = vec![InfoXfrm::IfId(if_id)];
    if link != 0 {
        data.push(InfoXfrm::Link(link));
    }
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(iface.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Xfrm),
        LinkInfo::Data(InfoData::Xfrm(data)),
    ]));
    let what = format!(
        "creating the XFRM interface {iface} (if_id {if_id}; the kernel needs CONFIG_XFRM_INTERFACE)"
    );
    match request(
        NETLINK_ROUTE,
        NetlinkMessage::from(RouteNetlinkMessage::NewLink(msg)),
        NLM_F_CREATE | NLM_F_EXCL,
        &what,
    ) {
        Err(e) if e.source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}
