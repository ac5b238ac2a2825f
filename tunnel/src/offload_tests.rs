use super::*;
use proptest::prelude::*;

const SRC: [u8; 4] = [10, 9, 1, 2];
const DST: [u8; 4] = [10, 9, 2, 2];
const TCP_SYN: u8 = 0x02;

/// A TCP/IPv4 packet carrying `payload` at `seq`, with valid checksums, and
/// `opts` (a multiple of 4 bytes) as TCP options.
fn tcp(seq: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    let thl = 20 + opts.len();
    let mut p = vec![0u8; 20 + thl];
    p[0] = 0x45;
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = PROTO_TCP;
    p[12..16].copy_from_slice(&SRC);
    p[16..20].copy_from_slice(&DST);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&7u32.to_be_bytes());
    p[32] = ((thl / 4) as u8) << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&502u16.to_be_bytes());
    p[40..40 + opts.len()].copy_from_slice(opts);
    p.extend_from_slice(payload);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    ipv4_checksum(&mut p, 20);
    transport_checksum(&mut p, 20, PROTO_TCP);
    p
}

/// The kernel's view of a TSO super-packet: headers of the first segment,
/// the whole payload, and a partial checksum (the pseudo-header's sum).
fn super_packet(seq: u32, flags: u8, opts: &[u8], payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
    let mut p = tcp(seq, flags, opts, payload);
    let partial = fold(pseudo_sum(&p, PROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: (40 + opts.len()) as u16,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

fn checksums_valid(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0xf) * 4;
    let ip_ok = fold(sum(&p[..ihl], 0)) == 0xffff;
    let l4 = fold(sum(&p[ihl..], pseudo_sum(p, p[9], p.len() - ihl))) == 0xffff;
    ip_ok && l4
}

fn split_all(hdr: &VnetHdr, pkt: &mut [u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    split(hdr, pkt, &mut scratch, |s| out.push(s.to_vec())).expect("split");
    out
}

fn payload_of(p: &[u8]) -> &[u8] {
    let hl = 20 + usize::from(p[32] >> 4) * 4;
    &p[hl..]
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr {
        flags: 1,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1368,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut b = [0u8; VNET_HDR_LEN];
    h.write(&mut b);
    assert_eq!(VnetHdr::parse(&b), Some(h));
    assert_eq!(VnetHdr::parse(&b[..9]), None);
}

#[test]
fn tso_split_makes_valid_wire_segments() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let (hdr, mut p) = super_packet(
        1000,
        TCP_ACK | TCP_PSH,
        &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        &data,
        1388,
    );
    let segs = split_all(&hdr, &mut p);
    assert_eq!(segs.len(), 4, "5000 bytes at MSS 1388");
    for (i, s) in segs.iter().enumerate() {
        assert!(checksums_valid(s), "segment {i} has a bad checksum");
        assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
        let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
        assert_eq!(seq, 1000 + (i as u32) * 1388);
        let psh = s[33] & TCP_PSH != 0;
        assert_eq!(psh, i == 3, "PSH only on the last segment");
        assert_eq!(
            u16::from_be_bytes([s[4], s[5]]),
            i as u16,
            "IP ids count up"
        );
    }
    let joined: Vec<u8> = segs.iter().flat_map(|s| payload_of(s).to_vec()).collect();
    assert_eq!(joined, data);
}

#[test]
fn plain_packet_with_partial_checksum_is_completed() {
    let mut p = tcp(1, TCP_ACK, &[], b"hello");
    let partial = fold(pseudo_sum(&p, PROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let segs = split_all(&hdr, &mut p);
    assert_eq!(segs.len(), 1);
    assert!(checksums_valid(&segs[0]));
}

#[test]
fn udp_super_packet_splits_into_datagrams() {
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[8] = 64;
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&SRC);
    p[16..20].copy_from_slice(&DST);
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&6000u16.to_be_bytes());
    p.extend_from_slice(&data);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: 28,
        gso_size: 1200,
        csum_start: 20,
        csum_offset: 6,
    };
    let segs = split_all(&hdr, &mut p);
    assert_eq!(
        segs.iter().map(|s| s.len() - 28).collect::<Vec<_>>(),
        [1200, 1200, 600]
    );
    for s in &segs {
        assert!(checksums_valid(s));
        assert_eq!(
            usize::from(u16::from_be_bytes([s[24], s[25]])),
            s.len() - 20
        );
    }
}

#[test]
fn bad_super_packets_are_errors_not_panics() {
    let hdr = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 1000,
        ..VnetHdr::default()
    };
    let mut scratch = Vec::new();
    for len in [0, 10, 20, 39] {
        let mut p = vec![0x45u8; len];
        assert!(
            split(&hdr, &mut p, &mut scratch, |_| {}).is_err(),
            "{len} bytes"
        );
    }
    let mut v6 = vec![0x60u8; 80];
    assert_eq!(
        split(&hdr, &mut v6, &mut scratch, |_| {}),
        Err(SplitError::Ipv6)
    );
    let (mut h, mut p) = super_packet(0, TCP_ACK, &[], &[1; 100], 0);
    assert_eq!(
        split(&h, &mut p, &mut scratch, |_| {}),
        Err(SplitError::ZeroGsoSize)
    );
    h.gso_type = 9;
    assert_eq!(
        split(&h, &mut p, &mut scratch, |_| {}),
        Err(SplitError::UnknownGso(9))
    );
    let mut short = tcp(0, TCP_ACK, &[], b"x");
    let bad = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 40,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert!(matches!(
        split(&bad, &mut short, &mut scratch, |_| {}),
        Err(SplitError::BadCsumOffset { .. })
    ));
}

fn coalesce(pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut c = Coalescer::new(true);
    for p in pkts {
        c.push(p);
    }
    c.finish()
        .map(|b| {
            (
                VnetHdr::parse(b).expect("header"),
                b[VNET_HDR_LEN..].to_vec(),
            )
        })
        .collect()
}

#[test]
fn consecutive_segments_coalesce_into_one_write() {
    let segs: Vec<Vec<u8>> = (0..5u32)
        .map(|i| tcp(100 + i * 1000, TCP_ACK, &[], &[i as u8; 1000]))
        .collect();
    let out = coalesce(&segs);
    assert_eq!(out.len(), 1);
    let (h, p) = &out[0];
    assert_eq!(
        (h.gso_type, h.gso_size, h.flags),
        (GSO_TCPV4, 1000, F_NEEDS_CSUM)
    );
    assert_eq!(p.len(), 40 + 5000);
    assert_eq!(fold(sum(&p[..20], 0)), 0xffff, "IP checksum");
    // The field holds the pseudo-header's sum: completing it gives a valid packet.
    let mut done = p.clone();
    complete_checksum(h, &mut done).expect("complete");
    assert!(checksums_valid(&done));
}

#[test]
fn what_may_not_coalesce_stays_apart_and_in_order() {
    let a = tcp(0, TCP_ACK, &[], &[1; 1000]);
    let gap = tcp(5000, TCP_ACK, &[], &[2; 1000]);
    let syn = tcp(6000, TCP_SYN, &[], &[]);
    let after = tcp(1000, TCP_ACK, &[], &[3; 1000]);
    let other_opts = tcp(1000, TCP_ACK, &[1, 1, 1, 1], &[4; 1000]);
    let out = coalesce(&[a.clone(), gap.clone(), syn.clone(), after.clone()]);
    assert_eq!(out.len(), 4, "a gap and a SYN break the run");
    assert_eq!(out[0].1, a);
    assert_eq!(out[1].1, gap);
    assert_eq!(out[2].1, syn);
    assert_eq!(
        out[3].1, after,
        "a segment after the SYN does not join the group before it"
    );
    assert!(out
        .iter()
        .all(|(h, _)| h.gso_type == GSO_NONE && h.flags == F_DATA_VALID));
    assert_eq!(
        coalesce(&[a.clone(), other_opts]).len(),
        2,
        "options differ"
    );
    let psh = tcp(0, TCP_ACK | TCP_PSH, &[], &[1; 1000]);
    assert_eq!(
        coalesce(&[psh, after.clone()]).len(),
        2,
        "nothing joins after PSH"
    );
    let short = tcp(0, TCP_ACK, &[], &[1; 500]);
    assert_eq!(
        coalesce(&[short, tcp(500, TCP_ACK, &[], &[1; 500])]).len(),
        1
    );
    let short = tcp(500, TCP_ACK, &[], &[1; 400]);
    assert_eq!(
        coalesce(&[
            tcp(0, TCP_ACK, &[], &[1; 500]),
            short,
            tcp(900, TCP_ACK, &[], &[1; 500])
        ])
        .len(),
        2,
        "a shorter segment ends its group"
    );
}

#[test]
fn interleaved_flows_coalesce_separately() {
    let mut b = tcp(0, TCP_ACK, &[], &[9; 800]);
    b[20..22].copy_from_slice(&40001u16.to_be_bytes());
    let mut b2 = tcp(800, TCP_ACK, &[], &[9; 800]);
    b2[20..22].copy_from_slice(&40001u16.to_be_bytes());
    let out = coalesce(&[
        tcp(0, TCP_ACK, &[], &[1; 800]),
        b,
        tcp(800, TCP_ACK, &[], &[1; 800]),
        b2,
    ]);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|(h, p)| h.gso_type == GSO_TCPV4 && p.len() == 40 + 1600));
}

#[test]
fn groups_stop_at_the_size_limits() {
    let segs: Vec<Vec<u8>> = (0..100u32)
        .map(|i| tcp(i * 100, TCP_ACK, &[], &[1; 100]))
        .collect();
    let out = coalesce(&segs);
    assert_eq!(
        out.iter()
            .map(|(_, p)| (p.len() - 40) / 100)
            .collect::<Vec<_>>(),
        [64, 36]
    );
    let big: Vec<Vec<u8>> = (0..60u32)
        .map(|i| tcp(i * 1400, TCP_ACK, &[], &[1; 1400]))
        .collect();
    let out = coalesce(&big);
    assert!(out.iter().all(|(_, p)| p.len() <= MAX_PACKET));
    assert_eq!(
        out.iter().map(|(_, p)| p.len() - 40).sum::<usize>(),
        60 * 1400
    );
}

proptest! {
    /// Split, then coalesce: the receiver's kernel sees the sender's bytes,
    /// in order, whatever the MSS, options and stream.
    #[test]
    fn split_then_coalesce_gives_back_the_stream(
        data in proptest::collection::vec(any::<u8>(), 1..20_000),
        mss in 88u16..1460,
        seq in any::<u32>(),
        ts in any::<bool>(),
        cut in 1usize..20_000,
    ) {
        let opts: &[u8] = if ts { &[1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8] } else { &[] };
        // Two super-packets back to back, as two TUN reads would give.
        let cut = cut.min(data.len());
        let mut wire = Vec::new();
        let mut next = seq;
        for part in [&data[..cut], &data[cut..]] {
            if part.is_empty() {
                continue;
            }
            let (hdr, mut p) = super_packet(next, TCP_ACK, opts, part, mss);
            next = next.wrapping_add(part.len() as u32);
            for s in split_all(&hdr, &mut p) {
                prop_assert!(checksums_valid(&s));
                prop_assert!(s.len() <= 40 + opts.len() + usize::from(mss));
                wire.push(s);
            }
        }
        let mut stream = Vec::new();
        let mut expect_seq = seq;
        for (h, mut p) in coalesce(&wire) {
            prop_assert_eq!(u32::from_be_bytes([p[24], p[25], p[26], p[27]]), expect_seq);
            if h.gso_type == GSO_TCPV4 {
                complete_checksum(&h, &mut p).expect("complete");
            }
            prop_assert!(checksums_valid(&p));
            let pl = payload_of(&p).to_vec();
            expect_seq = expect_seq.wrapping_add(pl.len() as u32);
            stream.extend_from_slice(&pl);
        }
        prop_assert_eq!(stream, data);
    }

    /// Arbitrary bytes never panic the split or the coalescer.
    #[test]
    fn garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        gso_type in 0u8..8,
        gso_size in any::<u16>(),
        flags in 0u8..4,
        csum_start in 0u16..256,
        csum_offset in 0u16..64,
    ) {
        let hdr = VnetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
        let mut p = bytes.clone();
        let mut scratch = Vec::new();
        let _ = split(&hdr, &mut p, &mut scratch, |_| {});
        let mut c = Coalescer::new(true);
        c.push(&bytes);
        c.push(&bytes);
        prop_assert_eq!(c.finish().count(), 2);
    }
}
