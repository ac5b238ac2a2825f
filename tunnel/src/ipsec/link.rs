//! The XFRM interface (`ip link add NAME type xfrm if_id ID`): routing a
//! prefix into it is what sends it through ESP, as routing into `mg-wg0`
//! sends it through WireGuard.

use crate::netlink::{LinkKind, Netlink, NetlinkError};

/// The interface index of `iface`, 0 if there is none.
pub fn ifindex(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Creates XFRM interface `iface` with `if_id` over the device with index
/// `link`; one that exists already is kept.
pub fn create(iface: &str, if_id: u32, link: u32) -> Result<(), NetlinkError> {
    let kind = LinkKind::Xfrm {
        if_id,
        link: (link != 0).then_some(link),
    };
    match Netlink::open()?.add_link(iface, &kind) {
        Err(e) if e.is_exists() => Ok(()),
        other => other,
    }
}
