//! CIDR rules, the world entity and ICMP types in the datapath, with real
//! packets between a pod and a "world" namespace behind the node (root
//! only): world ipcache entries give their CIDR identity to policy by
//! longest prefix, never apply to a mesh pod address, and `to_pod` judges
//! what reaches a pod from outside the mesh.

#[path = "support/world.rs"]
mod world;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use meshgate_ebpf::{
    icmp_type_port, identity, Attachment, Direction, FlowEvent, FqdnEntry, FqdnPorts, Hook,
    IpcacheEntry, Point, PolicyRule, Proto, Reason, Verdict,
};
use world::*;

/// CIDR identities as the agent gives them (node-local, 0x100..=0xffff).
const CIDR_24: u32 = 0x100; // 198.51.100.0/24
const CIDR_EXCEPT: u32 = 0x101; // 198.51.100.128/25 (an `except`)
const CIDR_OTHER: u32 = 0x102; // 203.0.113.0/24
const CIDR_TEN: u32 = 0x103; // 10.0.0.0/8, over the mesh's 10.77.0.0/16

const W_LOW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const W_HIGH: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const W_OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const W_TEN: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const W_BARE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7); // no ipcache entry

/// [`OneNode`] (pods A and B in 10.77.0.0/16, the mesh CIDR) plus a world
/// namespace behind the node with the addresses above.
struct WorldNode {
    w: OneNode,
    world: Netns,
}

impl WorldNode {
    fn new() -> Self {
        let mut w = OneNode::new();
        let world = Netns::new("world");
        veth(
            &w.node,
            "mgebpfw",
            "198.51.100.1/24",
            &world,
            "eth0",
            "198.51.100.2/24",
        );
        world.ip(&["addr", "add", "198.51.100.200/24", "dev", "eth0"]);
        for a in [W_OTHER, W_TEN, W_BARE] {
            world.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
            w.node
                .ip(&["route", "add", &format!("{a}/32"), "via", "198.51.100.2"]);
        }
        world.ip(&["route", "add", "10.77.0.0/16", "via", "198.51.100.1"]);
        let dp = w.dp();
        dp.maps
            .mesh_cidrs
            .set(Ipv4Addr::new(10, 77, 0, 0), 16, 1)
            .expect("mesh cidr");
        for (net, len, id) in [
            (Ipv4Addr::new(198, 51, 100, 0), 24, CIDR_24),
            (Ipv4Addr::new(198, 51, 100, 128), 25, CIDR_EXCEPT),
            (Ipv4Addr::new(203, 0, 113, 0), 24, CIDR_OTHER),
            (Ipv4Addr::new(10, 0, 0, 0), 8, CIDR_TEN),
        ] {
            dp.maps
                .ipcache
                .upsert(net, len, IpcacheEntry::world(id))
                .expect("world entry");
        }
        Self { w, world }
    }

    /// Also `to_pod` on both pods' host-side veths.
    fn with_to_pod() -> Self {
        let mut s = Self::new();
        let mut desired = OneNode::desired();
        for i in ["mgebpfa", "mgebpfb"] {
            desired.insert(Attachment::new(i, Hook::ToPod));
        }
        let dp = s.w.dp.as_mut().expect("dp");
        let report =
            s.w.node
                .run(|| dp.reconcile(&desired))
                .unwrap_or_else(|e| panic!("reconcile: {e}"));
        assert!(report.failed.is_empty(), "{report:?}");
        s
    }

    fn egress(&mut self, remote: Option<u32>, port: Option<u16>, proto: Proto, v: Verdict) {
        let rule = PolicyRule {
            local_identity: ID_A,
            remote_identity: remote,
            port,
            proto,
            direction: Direction::Egress,
        };
        self.w.dp().maps.policy.set(&rule, v).expect("policy entry");
    }

    fn clear(&mut self) {
        let dp = self.w.dp();
        for (r, _) in dp.maps.policy.rules().expect("rules") {
            dp.maps.policy.remove(&r).expect("remove");
        }
        dp.maps.conntrack.clear().expect("ct clear");
        dp.maps.events.drain();
    }

    /// The drop event of a packet from A to `dst`, if there is one.
    fn dropped_to(&mut self, dst: Ipv4Addr) -> Option<FlowEvent> {
        wait_event(self.w.dp(), |e| {
            e.dst == dst && e.verdict == Some(Verdict::Deny)
        })
    }
}

/// One ping from `ns` with source `src`; true if answered.
fn ping_from(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "ping", "-c1", "-W1", "-n", "-q", "-I",
        ])
        .arg(src.to_string())
        .arg(dst.to_string())
        .output()
        .unwrap_or_else(|e| panic!("ping: {e}"))
        .status
        .success()
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn cidr_rules_match_by_longest_prefix_with_except_and_deny_over_allow() {
    let mut s = WorldNode::new();
    s.w.dp()
        .maps
        .policy
        .select(ID_A, false, true)
        .expect("select");
    // toCIDRSet 198.51.100.0/24 except 198.51.100.128/25: the except prefix
    // is a longer entry whose identity the rule does not select.
    s.egress(Some(CIDR_24), None, Proto::Any, Verdict::Allow);
    assert!(
        s.w.a.ns.ping(W_LOW),
        "A -> 198.51.100.2 is in the allowed /24"
    );
    assert!(
        !s.w.a.ns.ping(W_HIGH),
        "A -> 198.51.100.200 is in the except /25: dropped"
    );
    let ev = s
        .dropped_to(W_HIGH)
        .expect("a drop event for the except address");
    assert_eq!(ev.reason, Some(Reason::PolicyEgress));
    assert_eq!(
        (ev.src_identity, ev.dst_identity),
        (ID_A, CIDR_EXCEPT),
        "the longest prefix gives the identity"
    );
    assert!(
        !s.w.a.ns.ping(W_OTHER),
        "203.0.113.5: no rule names its prefix"
    );
    let ev = s.dropped_to(W_OTHER).expect("drop event");
    assert_eq!(ev.dst_identity, CIDR_OTHER);

    // Deny over allow: everything allowed, 203.0.113.0/24 denied.
    s.clear();
    s.egress(None, None, Proto::Any, Verdict::Allow);
    s.egress(Some(CIDR_OTHER), None, Proto::Any, Verdict::Deny);
    assert!(s.w.a.ns.ping(W_HIGH), "allowed by the allow-all rule");
    let a_sock = s.w.a.ns.udp_bind(s.w.a.addr, 0);
    let w_sock = s.world.udp_bind(W_OTHER, 7100);
    assert!(
        !udp_passes(&a_sock, &w_sock, SocketAddrV4::new(W_OTHER, 7100)),
        "the deny on 203.0.113.0/24 wins over the allow-all"
    );
    let ev = s.dropped_to(W_OTHER).expect("drop event");
    assert_eq!(ev.reason, Some(Reason::PolicyDeny));
    let w_low = s.world.udp_bind(W_LOW, 7100);
    assert!(udp_passes(&a_sock, &w_low, SocketAddrV4::new(W_LOW, 7100)));
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_cidr_entry_never_applies_to_a_mesh_pod_address() {
    let mut s = WorldNode::new();
    s.w.dp()
        .maps
        .policy
        .select(ID_A, false, true)
        .expect("select");
    // toCIDR 10.0.0.0/8, which covers the mesh's 10.77.0.0/16.
    s.egress(Some(CIDR_TEN), None, Proto::Any, Verdict::Allow);
    assert!(s.w.a.ns.ping(W_TEN), "10.99.0.1 is a world address in 10/8");
    let (b, a) = (s.w.b.addr, s.w.a.addr);
    let b_sock = s.w.b.ns.udp_bind(b, 7200);
    let a_sock = s.w.a.ns.udp_bind(a, 0);
    assert!(
        !udp_passes(&a_sock, &b_sock, SocketAddrV4::new(b, 7200)),
        "pod B is in 10/8 but a CIDR rule does not select pods"
    );
    assert_eq!(s.dropped_to(b).expect("drop event").dst_identity, ID_B);
    // An address of the mesh CIDR with no pod (departed, not learnt yet)
    // keeps world's meaning: not the CIDR identity.
    let gone = Ipv4Addr::new(10, 77, 0, 9);
    a_sock
        .send_to(b"x", SocketAddrV4::new(gone, 7200))
        .expect("send");
    let ev = s.dropped_to(gone).expect("drop event");
    assert_eq!(
        (ev.reason, ev.dst_identity),
        (Some(Reason::PolicyEgress), identity::WORLD)
    );
    // User space sees the same longest-prefix entry the datapath ignores there.
    assert_eq!(
        s.w.dp().maps.ipcache.lookup(gone).expect("lookup"),
        Some(IpcacheEntry::world(CIDR_TEN))
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn world_entries_stay_world_for_fqdn_admission() {
    let mut s = WorldNode::new();
    s.w.dp()
        .maps
        .policy
        .select(ID_A, false, true)
        .expect("select");
    // toEntities: world as the datapath sees it: identity 2 (no entry). The
    // agent gives CIDR identities the world label too, so the same rule
    // gives them entries as well (tested in the agent).
    s.egress(Some(identity::WORLD), None, Proto::Any, Verdict::Allow);
    assert!(s.w.a.ns.ping(W_BARE), "192.0.2.7 has no entry: world");
    assert!(
        !s.w.a.ns.ping(W_OTHER),
        "203.0.113.5 is CIDR identity 0x102 here"
    );
    // A DNS answer admits a world address that has a CIDR entry: FQDN
    // admission treats it as the world address it is.
    let entry = FqdnEntry {
        expires_ns: meshgate_ebpf::monotonic_ns() + 60_000_000_000,
        ports: FqdnPorts::Any,
    };
    s.w.dp()
        .maps
        .fqdn
        .set(ID_A, W_OTHER, &entry)
        .expect("fqdn entry");
    assert!(
        s.w.a.ns.ping(W_OTHER),
        "the DNS proxy's answer admits 203.0.113.5 despite its CIDR entry"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn icmp_rules_match_the_type_and_replies_pass_by_conntrack() {
    let mut s = WorldNode::new();
    s.w.dp()
        .maps
        .policy
        .select(ID_A, false, true)
        .expect("select");
    // icmps: [{fields: [{type: 8}]}] towards 198.51.100.0/24.
    s.egress(
        Some(CIDR_24),
        Some(icmp_type_port(8)),
        Proto::Icmp,
        Verdict::Allow,
    );
    assert!(
        s.w.a.ns.ping(W_LOW),
        "echo request (type 8) is allowed; the echo reply passes by conntrack"
    );
    let a_sock = s.w.a.ns.udp_bind(s.w.a.addr, 0);
    let w_sock = s.world.udp_bind(W_LOW, 7300);
    assert!(
        !udp_passes(&a_sock, &w_sock, SocketAddrV4::new(W_LOW, 7300)),
        "an ICMP rule allows no UDP"
    );
    // Only type 13 (timestamp): echo requests are dropped.
    s.clear();
    s.egress(
        Some(CIDR_24),
        Some(icmp_type_port(13)),
        Proto::Icmp,
        Verdict::Allow,
    );
    assert!(!s.w.a.ns.ping(W_LOW), "type 8 is not type 13");
    let ev = s.dropped_to(W_LOW).expect("drop event");
    assert_eq!((ev.reason, ev.proto), (Some(Reason::PolicyEgress), 1));
    // Any ICMP type (proto only), and any protocol, still match ICMP.
    s.clear();
    s.egress(Some(CIDR_24), None, Proto::Icmp, Verdict::Allow);
    assert!(s.w.a.ns.ping(W_LOW), "proto-only ICMP entry");
    s.clear();
    s.egress(Some(CIDR_24), None, Proto::Any, Verdict::Allow);
    assert!(s.w.a.ns.ping(W_LOW), "any-protocol entry");
    // A deny of echo requests wins over an allow of all ICMP.
    s.egress(Some(CIDR_24), None, Proto::Icmp, Verdict::Allow);
    s.egress(
        Some(CIDR_24),
        Some(icmp_type_port(8)),
        Proto::Icmp,
        Verdict::Deny,
    );
    assert!(!s.w.a.ns.ping(W_LOW), "the type-8 deny wins");
    assert_eq!(
        s.dropped_to(W_LOW).expect("drop event").reason,
        Some(Reason::PolicyDeny)
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn to_pod_enforces_ingress_from_cidrs_and_the_world_but_not_twice() {
    let mut s = WorldNode::with_to_pod();
    let a = s.w.a.addr;
    // Nothing selects A yet: the world reaches it.
    assert!(
        ping_from(&s.world, W_LOW, a),
        "no policy: world -> A passes"
    );
    let dp = s.w.dp();
    dp.maps.policy.select(ID_A, true, false).expect("select");
    dp.maps.events.drain();
    assert!(
        !ping_from(&s.world, W_LOW, a),
        "A selects ingress: 198.51.100.2 -> A is dropped"
    );
    let ev = wait_event(s.w.dp(), |e| e.dst == a && e.verdict == Some(Verdict::Deny))
        .expect("a drop event at to_pod");
    assert_eq!(ev.point, Some(Point::ToPod));
    assert_eq!(ev.reason, Some(Reason::PolicyIngress));
    assert_eq!((ev.src_identity, ev.dst_identity), (CIDR_24, ID_A));
    // fromCIDR 198.51.100.0/24 except 198.51.100.128/25, ICMP echo only.
    let rule = |remote: u32, port: Option<u16>, proto: Proto| PolicyRule {
        local_identity: ID_A,
        remote_identity: Some(remote),
        port,
        proto,
        direction: Direction::Ingress,
    };
    let dp = s.w.dp();
    dp.maps
        .policy
        .allow(&rule(CIDR_24, Some(icmp_type_port(8)), Proto::Icmp))
        .expect("allow");
    assert!(
        ping_from(&s.world, W_LOW, a),
        "fromCIDR allows 198.51.100.2"
    );
    assert!(
        !ping_from(&s.world, W_HIGH, a),
        "198.51.100.200 is in the except /25"
    );
    assert!(
        !ping_from(&s.world, W_BARE, a),
        "192.0.2.7 is world (2), not selected"
    );
    s.w.dp()
        .maps
        .policy
        .allow(&rule(identity::WORLD, None, Proto::Any))
        .expect("allow world");
    assert!(ping_from(&s.world, W_BARE, a), "fromEntities: world");
    // A's own flows to the world come back by conntrack although A's
    // ingress allows nothing from 203.0.113.0/24.
    assert!(s.w.a.ns.ping(W_OTHER), "A -> 203.0.113.5 and its reply");
    // Judged once: B -> A is from_pod's verdict (A's ingress allows B), not
    // judged again as world by to_pod; the node's own stack passes.
    s.w.dp()
        .maps
        .policy
        .allow(&rule(ID_B, None, Proto::Any))
        .expect("allow B");
    assert!(s.w.b.ns.ping(a), "B -> A, allowed by A's ingress policy");
    assert!(s.w.node.ping(a), "the node's own stack reaches its pods");
}
