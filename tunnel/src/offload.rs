//! TUN offloads without I/O: the `virtio_net_hdr` that prefixes every
//! packet on a TUN queue opened with `IFF_VNET_HDR`, splitting the kernel's
//! TCP and UDP super-packets into wire-sized segments (what TSO/USO
//! hardware would do), and coalescing received TCP segments back into
//! super-packets (GRO) so the kernel takes a burst in one write.
//!
//! The I/O is in [`crate::tun`] (the ioctls) and [`crate::userspace`] (the
//! loops). IPv4 only, as the rest of the mesh.

/// Length of the legacy `virtio_net_hdr` (what `TUNSETVNETHDRSZ` defaults to).
pub const VNET_HDR_LEN: usize = 10;
/// The largest IPv4 packet, and so the largest super-packet.
pub const MAX_PACKET: usize = 65_535;
/// The most segments a coalesced packet holds (the kernel's GRO limit).
pub const MAX_SEGMENTS: usize = 64;

/// `flags`: the checksum at `csum_start + csum_offset` is to be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the packet's checksums are known good.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// The `virtio_net_hdr` in front of each packet (little-endian fields, as
/// the kernel's TUN uses on little-endian hosts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Why a packet from the TUN device could not be turned into segments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("packet too short for its headers ({0} bytes)")]
    Short(usize),
    #[error("super-packet of GSO type {0} is not one this device asked for")]
    UnknownGso(u8),
    #[error("IPv6 super-packet (the mesh is IPv4 only)")]
    Ipv6,
    #[error("super-packet with GSO size 0")]
    ZeroGsoSize,
    #[error("checksum offset {start}+{offset} outside a {len}-byte packet")]
    BadCsumOffset {
        start: usize,
        offset: usize,
        len: usize,
    },
}

/// Adds `data` to a running ones'-complement sum (not folded).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let w = u64::from_be_bytes(tail);
    let (s, carry) = acc.overflowing_add(w);
    s + u64::from(carry)
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 pseudo-header's sum for a transport segment of `len` bytes.
fn pseudo_sum(ip: &[u8], proto: u8, len: usize) -> u64 {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&ip[12..20]);
    p[9] = proto;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

/// Rewrites an IPv4 header's checksum.
fn ipv4_checksum(ip: &mut [u8], ihl: usize) {
    ip[10] = 0;
    ip[11] = 0;
    let c = !fold(sum(&ip[..ihl], 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Computes the full transport checksum of an IPv4 packet into its field.
fn transport_checksum(pkt: &mut [u8], ihl: usize, proto: u8) {
    let at = ihl + if proto == PROTO_TCP { 16 } else { 6 };
    pkt[at] = 0;
    pkt[at + 1] = 0;
    let seg_len = pkt.len() - ihl;
    let mut c = !fold(sum(&pkt[ihl..], pseudo_sum(pkt, proto, seg_len)));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn ihl_of(pkt: &[u8]) -> Result<usize, SplitError> {
    if pkt.len() < 20 {
        return Err(SplitError::Short(pkt.len()));
    }
    if pkt[0] >> 4 == 6 {
        return Err(SplitError::Ipv6);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return Err(SplitError::Short(pkt.len()));
    }
    Ok(ihl)
}

/// Turns one packet read from the TUN device (after its vnet header) into
/// wire-sized IPv4 packets, each handed to `emit`; `scratch` holds each
/// segment while `emit` runs. A plain packet whose checksum the kernel left
/// to us is completed in place. Returns how many packets were emitted.
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SplitError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(hdr, pkt)?;
            }
            emit(pkt);
            Ok(1)
        }
        GSO_TCPV4 => split_tcp(hdr, pkt, scratch, emit),
        GSO_UDP_L4 => split_udp(hdr, pkt, scratch, emit),
        GSO_TCPV6 => Err(SplitError::Ipv6),
        other => Err(SplitError::UnknownGso(other)),
    }
}

/// Finishes a partial checksum: the field holds the pseudo-header's sum,
/// the rest is summed from `csum_start`.
fn complete_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), SplitError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > pkt.len() {
        return Err(SplitError::BadCsumOffset {
            start,
            offset: usize::from(hdr.csum_offset),
            len: pkt.len(),
        });
    }
    let c = !fold(sum(&pkt[start..], 0));
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// One segment of a super-packet into `seg`: the headers, then `chunk`,
/// with the IPv4 total length, `id` and header checksum set (the
/// transport header is the caller's to finish).
fn start_segment(seg: &mut Vec<u8>, headers: &[u8], chunk: &[u8], id: u16, ihl: usize) {
    seg.clear();
    seg.extend_from_slice(headers);
    seg.extend_from_slice(chunk);
    let total = seg.len() as u16;
    seg[2..4].copy_from_slice(&total.to_be_bytes());
    seg[4..6].copy_from_slice(&id.to_be_bytes());
    ipv4_checksum(seg, ihl);
}

fn split_tcp(
    hdr: &VnetHdr,
    pkt: &[u8],
    seg: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SplitError> {
    let ihl = ihl_of(pkt)?;
    if pkt.len() < ihl + 20 {
        return Err(SplitError::Short(pkt.len()));
    }
    let thl = usize::from(pkt[ihl + 12] >> 4) * 4;
    let hl = ihl + thl;
    if thl < 20 || pkt.len() < hl {
        return Err(SplitError::Short(pkt.len()));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SplitError::ZeroGsoSize);
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let flags = pkt[ihl + 13];
    let payload = &pkt[hl..];
    let count = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let first = i == 0;
        let last = i + 1 == count;
        start_segment(seg, &pkt[..hl], chunk, id.wrapping_add(i as u16), ihl);
        let s = seq.wrapping_add((i * mss) as u32);
        seg[ihl + 4..ihl + 8].copy_from_slice(&s.to_be_bytes());
        let mut f = flags;
        if !last {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if !first {
            f &= !TCP_CWR;
        }
        seg[ihl + 13] = f;
        transport_checksum(seg, ihl, PROTO_TCP);
        emit(seg);
    }
    if payload.is_empty() {
        // A header-only "super-packet": send it as it is.
        seg.clear();
        seg.extend_from_slice(pkt);
        transport_checksum(seg, ihl, PROTO_TCP);
        emit(seg);
    }
    Ok(count)
}

fn split_udp(
    hdr: &VnetHdr,
    pkt: &[u8],
    seg: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SplitError> {
    let ihl = ihl_of(pkt)?;
    let hl = ihl + 8;
    if pkt.len() < hl {
        return Err(SplitError::Short(pkt.len()));
    }
    let size = usize::from(hdr.gso_size);
    if size == 0 {
        return Err(SplitError::ZeroGsoSize);
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let payload = &pkt[hl..];
    let mut count = 0;
    for (i, chunk) in payload.chunks(size).enumerate() {
        start_segment(seg, &pkt[..hl], chunk, id.wrapping_add(i as u16), ihl);
        let udp_len = (8 + chunk.len()) as u16;
        seg[ihl + 4..ihl + 6].copy_from_slice(&udp_len.to_be_bytes());
        transport_checksum(seg, ihl, PROTO_UDP);
        emit(seg);
        count += 1;
    }
    Ok(count)
}

/// The parts of a TCP/IPv4 segment that decide whether it joins a group.
struct TcpSeg {
    ihl: usize,
    hl: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn tcp_seg(pkt: &[u8]) -> Option<TcpSeg> {
    if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != PROTO_TCP {
        return None;
    }
    // Fragments never coalesce (MF set or an offset).
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if total != pkt.len() {
        return None;
    }
    let ihl = 20;
    let thl = usize::from(pkt[ihl + 12] >> 4) * 4;
    let hl = ihl + thl;
    if thl < 20 || pkt.len() <= hl {
        return None;
    }
    let flags = pkt[ihl + 13];
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(TcpSeg {
        ihl,
        hl,
        seq: u32::from_be_bytes([pkt[24], pkt[25], pkt[26], pkt[27]]),
        flags,
        payload: pkt.len() - hl,
    })
}

/// One packet to write to the TUN device: `buf` holds the vnet header and
/// the packet (a coalesced group or a single packet).
struct Group {
    buf: Vec<u8>,
    /// Segments in it; 0 for a packet that never coalesces.
    segments: usize,
    gso_size: usize,
    next_seq: u32,
    hl: usize,
    closed: bool,
}

/// Coalesces a batch of received IPv4 packets into as few TUN writes as
/// it can, keeping each flow's order. Buffers are reused across batches.
#[derive(Default)]
pub struct Coalescer {
    groups: Vec<Group>,
    used: usize,
    /// Without it every packet is written alone (GRO off).
    merge: bool,
}

impl Coalescer {
    /// A coalescer; with `merge` false it only prefixes vnet headers.
    pub fn new(merge: bool) -> Coalescer {
        Coalescer {
            merge,
            ..Coalescer::default()
        }
    }

    /// Drops the last batch's packets (keeping the buffers).
    pub fn clear(&mut self) {
        self.used = 0;
    }

    fn take(&mut self) -> &mut Group {
        if self.used == self.groups.len() {
            self.groups.push(Group {
                buf: Vec::with_capacity(MAX_PACKET + VNET_HDR_LEN),
                segments: 0,
                gso_size: 0,
                next_seq: 0,
                hl: 0,
                closed: true,
            });
        }
        let g = &mut self.groups[self.used];
        self.used += 1;
        g.buf.clear();
        g.buf.resize(VNET_HDR_LEN, 0);
        g
    }

    /// Adds one packet of the batch.
    pub fn push(&mut self, pkt: &[u8]) {
        let Some(seg) = tcp_seg(pkt).filter(|_| self.merge) else {
            if pkt.len() >= 24 && pkt[0] == 0x45 && pkt[9] == PROTO_TCP {
                // A SYN, FIN, RST or bare ACK of a flow: later segments of
                // the flow must not jump ahead of it.
                for g in &mut self.groups[..self.used] {
                    if g.segments > 0 && same_flow(&g.buf[VNET_HDR_LEN..], pkt) {
                        g.closed = true;
                    }
                }
            }
            let g = self.take();
            g.buf.extend_from_slice(pkt);
            g.segments = 0;
            g.closed = true;
            return;
        };
        // The newest open group of this flow, if any.
        let open = self.groups[..self.used]
            .iter()
            .rposition(|g| g.segments > 0 && same_flow(&g.buf[VNET_HDR_LEN..], pkt));
        if let Some(i) = open {
            let g = &mut self.groups[i];
            if !g.closed && joins(g, &g.buf[VNET_HDR_LEN..], pkt, &seg) {
                g.buf.extend_from_slice(&pkt[seg.hl..]);
                g.segments += 1;
                g.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                if seg.flags & TCP_PSH != 0 {
                    g.buf[VNET_HDR_LEN + seg.ihl + 13] |= TCP_PSH;
                    g.closed = true;
                }
                if seg.payload < g.gso_size
                    || g.segments == MAX_SEGMENTS
                    || g.buf.len() - VNET_HDR_LEN + g.gso_size > MAX_PACKET
                {
                    g.closed = true;
                }
                return;
            }
            // Order within the flow: nothing joins the older group now.
            g.closed = true;
        }
        let g = self.take();
        g.buf.extend_from_slice(pkt);
        g.segments = 1;
        g.gso_size = seg.payload;
        g.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        g.hl = seg.hl;
        g.closed = seg.flags & TCP_PSH != 0 || seg.payload + seg.hl + seg.payload > MAX_PACKET;
    }

    /// The batch's packets in write order, each with its vnet header set:
    /// a group as a TCPv4 super-packet with a partial checksum, anything
    /// else as a plain packet whose checksums WireGuard's authentication
    /// vouches for (as kernel WireGuard marks them).
    pub fn finish(&mut self) -> impl Iterator<Item = &[u8]> {
        for g in &mut self.groups[..self.used] {
            let mut hdr = VnetHdr {
                flags: F_DATA_VALID,
                ..VnetHdr::default()
            };
            if g.segments > 1 {
                let pkt = &mut g.buf[VNET_HDR_LEN..];
                let total = pkt.len() as u16;
                pkt[2..4].copy_from_slice(&total.to_be_bytes());
                ipv4_checksum(pkt, 20);
                let partial = fold(pseudo_sum(pkt, PROTO_TCP, pkt.len() - 20));
                pkt[36..38].copy_from_slice(&partial.to_be_bytes());
                hdr = VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_TCPV4,
                    hdr_len: g.hl as u16,
                    gso_size: g.gso_size as u16,
                    csum_start: 20,
                    csum_offset: 16,
                };
            }
            hdr.write(&mut g.buf[..VNET_HDR_LEN]);
        }
        self.groups[..self.used].iter().map(|g| g.buf.as_slice())
    }
}

fn same_flow(a: &[u8], b: &[u8]) -> bool {
    // Addresses (12..20) and ports (20..24).
    a[12..24] == b[12..24]
}

/// Whether `pkt` continues group `g` (whose first packet is `first`).
fn joins(g: &Group, first: &[u8], pkt: &[u8], seg: &TcpSeg) -> bool {
    seg.hl == g.hl
        && seg.seq == g.next_seq
        && seg.payload <= g.gso_size
        // TOS, DF and TTL alike.
        && first[1] == pkt[1]
        && first[6] & 0x40 == pkt[6] & 0x40
        && first[8] == pkt[8]
        // ACK number and options alike (the window may differ).
        && first[28..32] == pkt[28..32]
        && first[40..g.hl] == pkt[40..seg.hl]
        && first[20 + 13] & TCP_PSH == 0
}

#[cfg(test)]
#[path = "offload_tests.rs"]
mod tests;
