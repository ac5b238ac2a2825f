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

/// A Curve25519 secret as the kernel stores it: clamped (RFC 7748). The
/// same key either way, but the kernel compares a key it is given with the
/// clamped copy it holds, and takes any difference for a new key: it
/// expires every peer's session. Our keys are kept unclamped (x25519
/// clamps at use), so without this every agent start on a device that
/// persisted made each peer handshake again; after a crash those first
/// handshakes often did not complete, and a gateway back from one was
/// silent to its peers until WireGuard retried 5 s later.
fn clamped(mut secret: [u8; 32]) -> [u8; 32] {
    secret[0] &= 248;
    secret[31] &= 127;
    secret[31] |= 64;
    secret
}

/// Sets `iface`'s private key and listen port; its peers stay as they are,
/// and so do their sessions when the key is the one the device has.
pub fn set_key_and_port(iface: &str, secret: [u8; 32], port: u16) -> Result<(), GenlError> {
    let secret = clamped(secret);
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

#[cfg(test)]
mod tests {
    use boringtun::x25519::{PublicKey, StaticSecret};

    #[test]
    fn the_clamped_secret_is_the_same_key_and_what_the_kernel_holds() {
        let raw = [0xffu8; 32];
        let c = super::clamped(raw);
        assert_eq!(c[0] & 7, 0, "low bits cleared");
        assert_eq!(c[31] & 0xc0, 0x40, "top bit cleared, next set");
        assert_eq!(super::clamped(c), c, "clamping twice changes nothing");
        let public = |s: [u8; 32]| PublicKey::from(&StaticSecret::from(s)).to_bytes();
        assert_eq!(public(c), public(raw), "clamping does not change the key");
    }
}
