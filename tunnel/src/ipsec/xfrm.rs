//! The kernel's IPsec tables over XFRM netlink (netlink-packet-xfrm): the
//! security associations (ESP, tunnel mode, rfc4106(gcm(aes))) and the
//! policies that send a peer's prefixes through them. Everything carries
//! the XFRM interface's `if_id`, so only traffic routed into that device
//! is encrypted, and only ESP arriving for it is let in.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP};
use netlink_packet_xfrm::nlas::{AlgAead, UserOffloadDev, UserTemplate, XfrmAttrs};
use netlink_packet_xfrm::policy::{
    DelGetMessage as PolicyDelGetMessage, ModifyMessage as PolicyModifyMessage,
};
use netlink_packet_xfrm::state::{
    DelGetMessage as StateDelGetMessage, GetDumpMessage as StateGetDumpMessage,
    ModifyMessage as StateModifyMessage,
};
use netlink_packet_xfrm::{
    Address, Id, Selector, UserPolicyId, UserPolicyInfo, UserSaId, UserSaInfo, XfrmMessage,
    IPPROTO_ESP, XFRM_MODE_TUNNEL, XFRM_OFFLOAD_INBOUND, XFRM_POLICY_ALLOW, XFRM_POLICY_FWD,
    XFRM_POLICY_IN, XFRM_POLICY_OUT,
};
use netlink_sys::constants::NETLINK_XFRM;

use crate::nlsock::{request, NlError};

const AF_INET: u16 = libc::AF_INET as u16;
/// The AEAD the SAs use; its ICV is 16 bytes (128 bits).
const AEAD: &str = "rfc4106(gcm(aes))";
const ICV_BITS: u32 = 128;
/// Replay window (packets) of inbound SAs.
const REPLAY_WINDOW: u8 = 32;

/// One security association: ESP from `src` to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sa {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    /// Which generation's policies pick it (outbound); 0 inbound.
    pub reqid: u32,
    /// The key then the 4-byte salt.
    pub key: Vec<u8>,
    pub if_id: u32,
    /// Ask the device with this index to do the crypto (`dir in` when
    /// `inbound`); the kernel falls back to software when it cannot.
    pub offload: Option<(u32, bool)>,
}

/// What the kernel holds of one SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaState {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    pub bytes: u64,
    pub packets: u64,
    /// The device doing its crypto, if offloaded.
    pub offload_dev: Option<u32>,
}

/// Which way a policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    Out,
    In,
    Fwd,
}

impl Dir {
    const fn code(self) -> u8 {
        match self {
            Dir::Out => XFRM_POLICY_OUT,
            Dir::In => XFRM_POLICY_IN,
            Dir::Fwd => XFRM_POLICY_FWD,
        }
    }
}

/// A policy: traffic to (out) or from (in, fwd) `net` goes through ESP
/// between `local` and `remote`, with SAs of `reqid` (0: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub dir: Dir,
    pub net: Ipv4Net,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub reqid: u32,
    pub if_id: u32,
    pub priority: u32,
}

fn addr(ip: Ipv4Addr) -> Address {
    Address::from_ipv4(&ip)
}

fn selector(dir: Dir, net: Ipv4Net) -> Selector {
    let mut s = Selector::default();
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let n = IpAddr::V4(net.network());
    match dir {
        Dir::Out => {
            s.source_prefix(&any, 0);
            s.destination_prefix(&n, net.prefix_len());
        }
        Dir::In | Dir::Fwd => {
            s.source_prefix(&n, net.prefix_len());
            s.destination_prefix(&any, 0);
        }
    }
    s.family = AF_INET;
    s
}

/// The add-SA message (pure, for tests).
pub fn sa_message(sa: &Sa) -> XfrmMessage {
    let mut name = [0u8; 64];
    name[..AEAD.len()].copy_from_slice(AEAD.as_bytes());
    let info = UserSaInfo {
        selector: Selector {
            family: AF_INET,
            ..Default::default()
        },
        id: Id {
            daddr: addr(sa.dst),
            spi: sa.spi,
            proto: IPPROTO_ESP,
        },
        saddr: addr(sa.src),
        reqid: sa.reqid,
        family: AF_INET,
        mode: XFRM_MODE_TUNNEL,
        replay_window: REPLAY_WINDOW,
        ..Default::default()
    };
    let mut nlas = vec![
        XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name: name,
            alg_key_len: (sa.key.len() * 8) as u32,
            alg_icv_len: ICV_BITS,
            alg_key: sa.key.clone(),
        }),
        XfrmAttrs::IfId(sa.if_id),
    ];
    if let Some((ifindex, inbound)) = sa.offload {
        nlas.push(XfrmAttrs::OffloadDevice(UserOffloadDev {
            ifindex: ifindex as i32,
            flags: if inbound { XFRM_OFFLOAD_INBOUND } else { 0 },
        }));
    }
    XfrmMessage::AddSa(StateModifyMessage {
        user_sa_info: info,
        nlas,
    })
}

/// The add-or-replace policy message (pure, for tests).
pub fn policy_message(p: &Policy) -> XfrmMessage {
    let info = UserPolicyInfo {
        selector: selector(p.dir, p.net),
        priority: p.priority,
        direction: p.dir.code(),
        action: XFRM_POLICY_ALLOW,
        ..Default::default()
    };
    let (src, dst) = match p.dir {
        Dir::Out => (p.local, p.remote),
        Dir::In | Dir::Fwd => (p.remote, p.local),
    };
    let tmpl = UserTemplate {
        id: Id {
            daddr: addr(dst),
            spi: 0,
            proto: IPPROTO_ESP,
        },
        family: AF_INET,
        saddr: addr(src),
        reqid: p.reqid,
        mode: XFRM_MODE_TUNNEL,
        aalgos: u32::MAX,
        ealgos: u32::MAX,
        calgos: u32::MAX,
        ..Default::default()
    };
    XfrmMessage::UpdatePolicy(PolicyModifyMessage {
        user_policy_info: info,
        nlas: vec![XfrmAttrs::Template(vec![tmpl]), XfrmAttrs::IfId(p.if_id)],
    })
}

fn send(msg: XfrmMessage, flags: u16, what: &str) -> Result<Vec<XfrmMessage>, NlError> {
    let replies = request(NETLINK_XFRM, NetlinkMessage::from(msg), flags, what)?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r.payload {
            NetlinkPayload::InnerMessage(m) => Some(m),
            _ => None,
        })
        .collect())
}

/// Installs `sa`; one that exists already (same dst, SPI) stays as it is.
pub fn add_sa(sa: &Sa) -> Result<(), NlError> {
    let what = format!(
        "adding the ESP SA {}->{} spi {:#010x}",
        sa.src, sa.dst, sa.spi
    );
    match send(sa_message(sa), 0, &what) {
        Err(e) if e.source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

/// Removes the SA to `dst` with `spi`; one already gone is fine.
pub fn delete_sa(dst: Ipv4Addr, spi: u32, if_id: u32) -> Result<(), NlError> {
    let msg = XfrmMessage::DeleteSa(StateDelGetMessage {
        user_sa_id: UserSaId {
            daddr: addr(dst),
            spi,
            family: AF_INET,
            proto: IPPROTO_ESP,
        },
        nlas: vec![XfrmAttrs::IfId(if_id)],
    });
    match send(
        msg,
        0,
        &format!("removing the ESP SA to {dst} spi {spi:#010x}"),
    ) {
        Err(e) if e.source.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// Every ESP SA of `if_id` the kernel holds.
pub fn dump_sas(if_id: u32) -> Result<Vec<SaState>, NlError> {
    let msg = XfrmMessage::GetDumpSa(StateGetDumpMessage { nlas: vec![] });
    let replies = send(msg, NLM_F_DUMP, "listing the ESP SAs")?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            XfrmMessage::AddSa(s) | XfrmMessage::UpdateSa(s) => Some(s),
            _ => None,
        })
        .filter(|s| {
            s.user_sa_info.id.proto == IPPROTO_ESP
                && s.nlas
                    .iter()
                    .any(|a| matches!(a, XfrmAttrs::IfId(i) if *i == if_id))
        })
        .map(|s| SaState {
            src: s.user_sa_info.saddr.to_ipv4(),
            dst: s.user_sa_info.id.daddr.to_ipv4(),
            spi: s.user_sa_info.id.spi,
            bytes: s.user_sa_info.lifetime_cur.bytes,
            packets: s.user_sa_info.lifetime_cur.packets,
            offload_dev: s.nlas.iter().find_map(|a| match a {
                XfrmAttrs::OffloadDevice(o) => Some(o.ifindex as u32),
                _ => None,
            }),
        })
        .collect())
}

/// Installs or replaces `p` (a replace is atomic: no packet sees no policy).
pub fn set_policy(p: &Policy) -> Result<(), NlError> {
    send(
        policy_message(p),
        0,
        &format!("setting the IPsec {:?} policy for {}", p.dir, p.net),
    )
    .map(drop)
}

/// Removes the `dir` policy for `net` of `if_id`; one already gone is fine.
pub fn delete_policy(dir: Dir, net: Ipv4Net, if_id: u32) -> Result<(), NlError> {
    let msg = XfrmMessage::DeletePolicy(PolicyDelGetMessage {
        user_policy_id: UserPolicyId {
            selector: selector(dir, net),
            index: 0,
            direction: dir.code(),
        },
        nlas: vec![XfrmAttrs::IfId(if_id)],
    });
    match send(
        msg,
        0,
        &format!("removing the IPsec {dir:?} policy for {net}"),
    ) {
        Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use netlink_packet_core::Emitable;

    fn bytes(m: &XfrmMessage) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_sa_message_carries_the_aead_key_spi_and_offload_request() {
        let sa = Sa {
            src: "198.18.1.10".parse().unwrap(),
            dst: "198.18.1.11".parse().unwrap(),
            spi: 0x1234_5678,
            reqid: 3,
            key: (0u8..20).collect(),
            if_id: 28_007,
            offload: Some((4, true)),
        };
        let m = sa_message(&sa);
        let b = bytes(&m);
        assert!(find(&b, b"rfc4106(gcm(aes))"));
        assert!(find(&b, &(0u8..20).collect::<Vec<_>>()), "key + salt");
        assert!(
            find(&b, &0x1234_5678u32.to_be_bytes()),
            "SPI in network order"
        );
        assert!(find(&b, &[198, 18, 1, 11]) && find(&b, &[198, 18, 1, 10]));
        let XfrmMessage::AddSa(s) = m else {
            panic!("not an add")
        };
        assert_eq!(s.user_sa_info.mode, XFRM_MODE_TUNNEL);
        assert!(s.nlas.iter().any(|a| matches!(
            a,
            XfrmAttrs::OffloadDevice(o) if o.ifindex == 4 && o.flags == XFRM_OFFLOAD_INBOUND
        )));
        assert!(s.nlas.contains(&XfrmAttrs::IfId(28_007)));
    }

    #[test]
    fn policies_select_the_peer_prefix_on_the_right_side() {
        let net: Ipv4Net = "10.1.1.0/24".parse().unwrap();
        let p = |dir| Policy {
            dir,
            net,
            local: "198.18.1.10".parse().unwrap(),
            remote: "198.18.1.11".parse().unwrap(),
            reqid: 2,
            if_id: 9,
            priority: 100,
        };
        let XfrmMessage::UpdatePolicy(out) = policy_message(&p(Dir::Out)) else {
            panic!()
        };
        assert_eq!(out.user_policy_info.selector.prefixlen_d, 24);
        assert_eq!(out.user_policy_info.selector.prefixlen_s, 0);
        assert_eq!(out.user_policy_info.direction, XFRM_POLICY_OUT);
        let Some(XfrmAttrs::Template(t)) = out.nlas.first() else {
            panic!()
        };
        assert_eq!(t[0].id.daddr.to_ipv4().to_string(), "198.18.1.11");
        assert_eq!(t[0].saddr.to_ipv4().to_string(), "198.18.1.10");
        assert_eq!(t[0].reqid, 2);
        let XfrmMessage::UpdatePolicy(inp) = policy_message(&p(Dir::Fwd)) else {
            panic!()
        };
        assert_eq!(inp.user_policy_info.selector.prefixlen_s, 24);
        assert_eq!(inp.user_policy_info.direction, XFRM_POLICY_FWD);
        let Some(XfrmAttrs::Template(t)) = inp.nlas.first() else {
            panic!()
        };
        assert_eq!(
            t[0].id.daddr.to_ipv4().to_string(),
            "198.18.1.10",
            "ESP comes to us"
        );
    }
}
