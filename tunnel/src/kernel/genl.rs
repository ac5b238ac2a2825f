//! The one WireGuard netlink request defguard_wireguard_rs does not offer
//! on its own: setting the device's private key and listen port while
//! leaving its peers alone. (Its `configure_interface` sends
//! `WGDEVICE_F_REPLACE_PEERS` and flushes the interface's addresses, which
//! would drop every session on an agent restart or a key rotation.)

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{WireguardAttribute, WireguardCmd, WireguardMessage};
use netlink_sys::constants::NETLINK_GENERIC;

use crate::nlsock::{io_err, request, NlError as GenlError};

/// The generic-netlink family id of WireGuard.
fn family_id() -> Result<u16, GenlError> {
    let what = "looking up the kernel's wireguard netlink family (is the module loaded?)";
    let ask = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".to_string())],
    });
    for reply in request(NETLINK_GENERIC, NetlinkMessage::from(ask), 0, what)? {
        if let NetlinkPayload::InnerMessage(m) = reply.payload {
            if let Some(id) = m.payload.nlas.iter().find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            }) {
                return Ok(id);
            }
        }
    }
    Err(io_err(
        what,
        std::io::Error::new(std::io::ErrorKind::NotFound, "no family id in the reply"),
    ))
}

/// Sets `iface`'s private key and listen port; its peers stay as they are.
pub fn set_key_and_port(iface: &str, secret: [u8; 32], port: u16) -> Result<(), GenlError> {
    let mut msg = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(iface.to_string()),
            WireguardAttribute::PrivateKey(secret),
            WireguardAttribute::ListenPort(port),
        ],
    });
    msg.set_resolved_family_id(family_id()?);
    request(
        NETLINK_GENERIC,
        NetlinkMessage::from(msg),
        0,
        &format!("setting the private key and port {port} of {iface}"),
    )
    .map(drop)
}
