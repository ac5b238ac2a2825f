//! Identity policy, conntrack, drop counters and flow events, with real
//! packets between pods in network namespaces (root only).

#[path = "support/world.rs"]
mod world;

use std::io::{Read, Write};
use std::net::SocketAddrV4;

use meshgate_ebpf::{Direction, Point, PolicyRule, Proto, Reason, Verdict};
use world::*;

fn ingress_rule(local: u32, remote: u32, port: u16, proto: Proto) -> PolicyRule {
    PolicyRule {
        local_identity: local,
        remote_identity: Some(remote),
        port: Some(port),
        proto,
        direction: Direction::Ingress,
    }
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn allowed_flow_passes_denied_flow_is_dropped_counted_and_reported() {
    let mut w = OneNode::new();
    let (a, b) = (w.a.addr, w.b.addr);
    let b_sock = w.b.ns.udp_bind(b, 7000);
    let b_denied = w.b.ns.udp_bind(b, 7001);
    let a_sock = w.a.ns.udp_bind(a, 0);

    // No policy selects anyone: everything passes.
    assert!(w.a.ns.ping(b), "A -> B ping without policy");
    assert!(udp_passes(&a_sock, &b_denied, SocketAddrV4::new(b, 7001)));

    // B selects ingress policy; only A on UDP 7000 is allowed.
    let dp = w.dp();
    dp.maps.policy.select(ID_B, true, false).expect("select");
    dp.maps
        .policy
        .allow(&ingress_rule(ID_B, ID_A, 7000, Proto::Udp))
        .expect("allow");
    dp.maps.events.drain();
    let before = dp.maps.drops.get(Reason::PolicyIngress).expect("counter");

    assert!(
        udp_passes(&a_sock, &b_sock, SocketAddrV4::new(b, 7000)),
        "A -> B udp/7000 is allowed by B's ingress rule"
    );
    assert!(
        !udp_passes(&a_sock, &b_denied, SocketAddrV4::new(b, 7001)),
        "A -> B udp/7001 must be dropped: no rule allows it"
    );
    assert!(!w.a.ns.ping(b), "ICMP is not allowed either");

    let dp = w.dp();
    let after = dp.maps.drops.get(Reason::PolicyIngress).expect("counter");
    assert!(
        after.packets >= before.packets + 2,
        "policy-ingress drops went {before:?} -> {after:?}"
    );
    assert!(after.bytes > before.bytes);
    let ev = wait_event(dp, |e| {
        e.reason == Some(Reason::PolicyIngress) && e.dport == 7001
    })
    .expect("a flow event for the dropped udp/7001 datagram");
    assert_eq!(ev.verdict, Some(Verdict::Deny));
    assert_eq!(ev.point, Some(Point::FromPod));
    assert_eq!((ev.src, ev.dst), (a, b));
    assert_eq!((ev.src_identity, ev.dst_identity), (ID_A, ID_B));
    assert_eq!(ev.proto, 17);
    assert_eq!(ev.ifindex, w.node.ifindex("mgebpfa"));

    // Removing what is not there says so.
    let dp = w.dp();
    assert!(!dp
        .maps
        .policy
        .remove(&ingress_rule(ID_B, ID_C, 1, Proto::Tcp))
        .expect("remove"));
    assert!(!dp
        .maps
        .ipcache
        .remove(std::net::Ipv4Addr::new(10, 99, 0, 1), 32)
        .expect("remove"));
    assert_eq!(
        dp.maps
            .ipcache
            .lookup(std::net::Ipv4Addr::new(10, 99, 0, 1))
            .expect("lookup"),
        None
    );

    // An explicit deny beats an allow.
    dp.maps.conntrack.clear().expect("ct clear");
    dp.maps
        .policy
        .allow(&PolicyRule {
            local_identity: ID_B,
            remote_identity: None,
            port: None,
            proto: Proto::Any,
            direction: Direction::Ingress,
        })
        .expect("allow all");
    dp.maps
        .policy
        .set(&ingress_rule(ID_B, ID_A, 7000, Proto::Udp), Verdict::Deny)
        .expect("deny");
    assert!(!udp_passes(&a_sock, &b_sock, SocketAddrV4::new(b, 7000)));
    assert!(udp_passes(&a_sock, &b_denied, SocketAddrV4::new(b, 7001)));
    assert!(
        w.dp()
            .maps
            .drops
            .get(Reason::PolicyDeny)
            .expect("counter")
            .packets
            >= 1,
        "the deny rule's drop is counted as policy-deny"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn conntrack_admits_replies_but_not_unsolicited_reverse_traffic() {
    let mut w = OneNode::new();
    let (a, b) = (w.a.addr, w.b.addr);
    // A selects ingress with no rule: nothing may open a flow towards A.
    // B allows A on TCP 8080 and UDP 7000.
    let dp = w.dp();
    dp.maps.policy.select(ID_A, true, false).expect("select A");
    dp.maps.policy.select(ID_B, true, false).expect("select B");
    for (port, proto) in [(8080, Proto::Tcp), (7000, Proto::Udp)] {
        dp.maps
            .policy
            .allow(&ingress_rule(ID_B, ID_A, port, proto))
            .expect("allow");
    }

    // TCP: the handshake's SYN-ACK and the server's reply reach A only through conntrack.
    let listener = w.b.ns.tcp_listen(b, 8080);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("server read");
        s.write_all(b"pong").expect("server write");
    });
    let mut c =
        w.a.ns
            .tcp_connect(b, 8080)
            .expect("A connects to B:8080 (allowed; the SYN-ACK is a conntrack reply)");
    c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    c.write_all(b"ping").expect("client write");
    let mut reply = [0u8; 4];
    c.read_exact(&mut reply)
        .expect("the reply from B reaches A");
    assert_eq!(&reply, b"pong");
    server.join().expect("server");

    // UDP: B answers A from port 7000; the answer passes, a new flow B -> A does not.
    let b_sock = w.b.ns.udp_bind(b, 7000);
    let a_sock = w.a.ns.udp_bind(a, 40000);
    let a_other = w.a.ns.udp_bind(a, 40001);
    assert!(udp_passes(&a_sock, &b_sock, SocketAddrV4::new(b, 7000)));
    assert!(
        udp_passes(&b_sock, &a_sock, SocketAddrV4::new(a, 40000)),
        "B's reply to A's flow passes A's ingress policy through conntrack"
    );
    let dp = w.dp();
    dp.maps.events.drain();
    let before = dp.maps.drops.get(Reason::PolicyIngress).expect("counter");
    assert!(
        !udp_passes(&b_sock, &a_other, SocketAddrV4::new(a, 40001)),
        "B -> A:40001 is not a reply to anything: A's ingress policy drops it"
    );
    let b_tcp_client = w.b.ns.tcp_connect(a, 9000);
    assert!(b_tcp_client.is_err(), "B cannot open TCP to A");
    let dp = w.dp();
    let after = dp.maps.drops.get(Reason::PolicyIngress).expect("counter");
    assert!(after.packets > before.packets, "{before:?} -> {after:?}");
    let ev = wait_event(dp, |e| {
        e.reason == Some(Reason::PolicyIngress) && e.dport == 40001
    })
    .expect("a flow event for the unsolicited datagram");
    assert_eq!((ev.src_identity, ev.dst_identity), (ID_B, ID_A));

    let flows = dp.maps.conntrack.entries().expect("ct");
    assert!(
        flows
            .iter()
            .any(|f| f.src == a && f.dst == b && f.dport == 8080 && f.proto == 6),
        "the TCP flow is tracked: {flows:?}"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn unknown_and_spoofed_sources_are_dropped() {
    let mut w = OneNode::new();
    let b = w.b.addr;
    // A sends from B's address (the ipcache ties it to B's veth) and from an
    // address no endpoint has, to an address outside A's namespace.
    w.a.ns.ip(&["addr", "add", "10.77.0.3/32", "dev", "eth0"]);
    w.a.ns.ip(&["addr", "add", "10.77.0.9/32", "dev", "eth0"]);
    let spoofer = w.a.ns.udp_bind(b, 5555);
    let unknown = w.a.ns.udp_bind(std::net::Ipv4Addr::new(10, 77, 0, 9), 0);
    let sink = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 77, 0, 50), 7000);
    spoofer.send_to(b"x", sink).expect("send");
    unknown.send_to(b"y", sink).expect("send");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let dp = w.dp();
    assert!(dp.maps.drops.get(Reason::SourceSpoofed).expect("c").packets >= 1);
    assert!(dp.maps.drops.get(Reason::UnknownSource).expect("c").packets >= 1);
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn ten_thousand_policy_entries_load_and_lookups_are_unchanged() {
    let mut w = OneNode::new();
    let b = w.b.addr;
    let b_allowed = w.b.ns.udp_bind(b, 7000);
    let b_denied = w.b.ns.udp_bind(b, 7001);
    let a_sock = w.a.ns.udp_bind(w.a.addr, 0);
    let dp = w.dp();
    dp.maps.policy.select(ID_B, true, false).expect("select");
    dp.maps
        .policy
        .allow(&ingress_rule(ID_B, ID_A, 7000, Proto::Udp))
        .expect("allow");
    let check = |w: &mut OneNode, phase: &str| {
        w.dp().maps.conntrack.clear().expect("ct");
        assert!(
            udp_passes(&a_sock, &b_allowed, SocketAddrV4::new(b, 7000)),
            "{phase}: udp/7000 allowed"
        );
        assert!(
            !udp_passes(&a_sock, &b_denied, SocketAddrV4::new(b, 7001)),
            "{phase}: udp/7001 dropped"
        );
    };
    check(&mut w, "before the 10,000 entries");

    let started = std::time::Instant::now();
    let dp = w.dp();
    for i in 0..10_000u32 {
        // Other identities, and A on other ports: none of them allows udp/7001.
        let rule = if i % 2 == 0 {
            ingress_rule(ID_B, 0x2_0000 + i, 7001, Proto::Udp)
        } else {
            ingress_rule(ID_B, ID_A, 10_000 + i as u16, Proto::Tcp)
        };
        dp.maps.policy.allow(&rule).expect("insert");
    }
    let took = started.elapsed();
    assert!(
        dp.maps.policy.len() >= 10_001,
        "{} entries",
        dp.maps.policy.len()
    );
    eprintln!("10,000 policy entries inserted in {took:?}");
    check(&mut w, "after the 10,000 entries");
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn every_drop_is_either_an_event_or_counted_as_a_lost_event() {
    let mut w = OneNode::new();
    let b = w.b.addr;
    let a_sock = w.a.ns.udp_bind(w.a.addr, 0);
    let dp = w.dp();
    dp.maps.policy.select(ID_B, true, false).expect("select");
    dp.maps.events.drain();
    let drops_before = dp.maps.drops.get(Reason::PolicyIngress).expect("c").packets;
    let lost_before = dp.maps.drops.events_lost().expect("lost");

    // More drops than the 256 KiB ring buffer holds events, with nobody reading.
    const SENT: u64 = 7000;
    for _ in 0..SENT {
        a_sock
            .send_to(b"x", SocketAddrV4::new(b, 7001))
            .expect("send");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let dp = w.dp();
    let drops = dp.maps.drops.get(Reason::PolicyIngress).expect("c").packets - drops_before;
    let lost = dp.maps.drops.events_lost().expect("lost") - lost_before;
    let events = dp
        .maps
        .events
        .drain()
        .iter()
        .filter(|e| e.reason == Some(Reason::PolicyIngress))
        .count() as u64;
    assert_eq!(drops, SENT, "every datagram dropped and counted");
    assert!(
        lost > 0,
        "the ring buffer overflowed ({events} events read)"
    );
    assert_eq!(
        events + lost,
        drops,
        "events read ({events}) + events lost ({lost}) = drops ({drops})"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn wildcard_rules_and_egress_policy_match_as_documented() {
    let mut w = OneNode::new();
    let b = w.b.addr;
    let target = w.b.ns.udp_bind(b, 7001);
    let a_sock = w.a.ns.udp_bind(w.a.addr, 0);
    let rule = |local, remote, port, proto, direction| PolicyRule {
        local_identity: local,
        remote_identity: remote,
        port,
        proto,
        direction,
    };
    use Direction::{Egress, Ingress};
    // (selected: (identity, ingress, egress), rule, passes, reason if dropped)
    let cases = [
        (
            (ID_B, true, false),
            rule(ID_B, Some(ID_A), None, Proto::Udp, Ingress),
            true,
            None,
        ),
        (
            (ID_B, true, false),
            rule(ID_B, None, Some(7001), Proto::Udp, Ingress),
            true,
            None,
        ),
        (
            (ID_B, true, false),
            rule(ID_B, None, None, Proto::Udp, Ingress),
            true,
            None,
        ),
        (
            (ID_B, true, false),
            rule(ID_B, Some(ID_A), None, Proto::Tcp, Ingress),
            false,
            Some(Reason::PolicyIngress),
        ),
        (
            (ID_B, true, false),
            rule(ID_B, Some(ID_C), None, Proto::Any, Ingress),
            false,
            Some(Reason::PolicyIngress),
        ),
        (
            (ID_B, true, false),
            rule(ID_B, Some(ID_A), Some(7001), Proto::Udp, Egress),
            false,
            Some(Reason::PolicyIngress),
        ),
        (
            (ID_A, false, true),
            rule(ID_A, Some(ID_B), Some(7001), Proto::Udp, Egress),
            true,
            None,
        ),
        (
            (ID_A, false, true),
            rule(ID_A, Some(ID_B), Some(7000), Proto::Udp, Egress),
            false,
            Some(Reason::PolicyEgress),
        ),
        (
            (ID_A, false, true),
            rule(ID_A, None, None, Proto::Any, Egress),
            true,
            None,
        ),
        (
            (ID_A, false, false),
            rule(ID_A, Some(ID_B), Some(7001), Proto::Udp, Egress),
            true,
            None,
        ),
    ];
    for (i, ((sel_id, ing, eg), r, passes, reason)) in cases.into_iter().enumerate() {
        let dp = w.dp();
        dp.maps.conntrack.clear().expect("ct");
        dp.maps.policy.select(sel_id, ing, eg).expect("select");
        dp.maps.policy.allow(&r).expect("allow");
        let before = reason.map(|r| dp.maps.drops.get(r).expect("c").packets);
        let got = udp_passes(&a_sock, &target, SocketAddrV4::new(b, 7001));
        assert_eq!(
            got, passes,
            "case {i}: selected {sel_id:#x} ({ing}, {eg}), rule {r:?}"
        );
        let dp = w.dp();
        if let (Some(reason), Some(before)) = (reason, before) {
            let after = dp.maps.drops.get(reason).expect("c").packets;
            assert!(after > before, "case {i}: counted as {reason}");
        }
        dp.maps.policy.remove(&r).expect("remove");
        dp.maps
            .policy
            .select(sel_id, false, false)
            .expect("unselect");
    }
}
