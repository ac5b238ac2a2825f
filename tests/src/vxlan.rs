//! Reading VXLAN packets out of a pcap file (written by [`crate::Capture`]),
//! to check the identity the eBPF datapath puts in the VNI.

use std::net::Ipv4Addr;
use std::path::Path;

/// One VXLAN packet: outer addresses, VNI and inner IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub vni: u32,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Parses an IPv4 packet carrying VXLAN to `port`; `None` for anything else.
pub fn parse_ipv4_vxlan(ip: &[u8], port: u16) -> Option<VxlanPacket> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let vx = &udp[8..];
    // VXLAN header (8), inner Ethernet (14), inner IPv4 (20).
    if vx.len() < 8 + 14 + 20 || vx[0] & 0x08 == 0 || vx[8 + 12..8 + 14] != [0x08, 0x00] {
        return None;
    }
    let inner = &vx[8 + 14..];
    Some(VxlanPacket {
        outer_src: ipv4(&ip[12..16]),
        outer_dst: ipv4(&ip[16..20]),
        vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        inner_src: ipv4(&inner[12..16]),
        inner_dst: ipv4(&inner[16..20]),
    })
}

/// Every VXLAN packet (to UDP `port`) in a pcap file. Panics on a file that
/// is not pcap or has a link type this reader does not know.
pub fn read_pcap_vxlan(path: &Path, port: u16) -> Vec<VxlanPacket> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(data.len() >= 24, "{} is not a pcap file", path.display());
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => panic!("{} is not a pcap file (magic {magic:#x})", path.display()),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    // Bytes before the IP header: Ethernet, Linux cooked v1/v2, or raw IP.
    let skip = match u32_at(&data, 20) {
        1 => 14,
        113 => 16,
        276 => 20,
        12 | 101 | 228 => 0,
        other => panic!("{}: link type {other} not handled", path.display()),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(&data, at + 8) as usize;
        let start = at + 16;
        let Some(frame) = data.get(start..start + len) else {
            break;
        };
        if let Some(p) = frame.get(skip..).and_then(|ip| parse_ipv4_vxlan(ip, port)) {
            out.push(p);
        }
        at = start + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_vxlan_packet_and_ignores_others() {
        let mut p = vec![0u8; 20 + 8 + 8 + 14 + 20];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p[22..24].copy_from_slice(&4789u16.to_be_bytes());
        p[28] = 0x08;
        p[32..35].copy_from_slice(&[0x01, 0x01, 0x02]);
        p[36 + 12..36 + 14].copy_from_slice(&[0x08, 0x00]);
        p[50 + 12..50 + 16].copy_from_slice(&[10, 1, 0, 10]);
        p[50 + 16..50 + 20].copy_from_slice(&[10, 1, 1, 11]);
        let v = parse_ipv4_vxlan(&p, 4789).expect("a VXLAN packet");
        assert_eq!(v.vni, 0x01_0102);
        assert_eq!(v.inner_src, Ipv4Addr::new(10, 1, 0, 10));
        assert_eq!(v.outer_dst, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(parse_ipv4_vxlan(&p, 4790), None);
        p[9] = 6;
        assert_eq!(parse_ipv4_vxlan(&p, 4789), None);
    }
}
