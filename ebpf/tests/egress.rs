//! Egress gateways, end to end through the real programs: a pod on node A
//! whose traffic to the world an egress route selects is steered through
//! the mesh (VXLAN, VNI = the pod's identity) to gateway node B (or C),
//! which marks it for SNAT; the SNAT and the routing by mark are set up here
//! as the agent does them (ip rules, nftables). A TCP/UDP server in an
//! "external" namespace says which source address it saw.
//!
//! ```text
//!            192.168.77.0/24                 eg0 203.0.113.50 -- .10
//!   pod -- A ---------------- B (gateway) ---------------------------- ext
//!          | 192.168.78.0/24                eg0 198.18.0.50  -- .10    |
//!          +----------------- C (gateway) ---------------------------- +
//!          | 198.51.100.1 -------------------------------- 198.51.100.10
//! ```
//!
//! A reaches the external network directly only through 198.51.100.0/24
//! (the excluded CIDR); everything else of the world leaves through a
//! gateway or not at all.

#[path = "support/mesh_world.rs"]
mod mesh_world;
#[path = "support/world.rs"]
mod world;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use mesh_world::*;
use meshgate_ebpf::{
    identity, monotonic_ns, Datapath, EgressFlow, EgressRoute, FqdnEntry, FqdnPorts, IpcacheEntry,
    Point, Reason, Verdict, MARK_EGRESS, MARK_SNAT,
};
use world::*;

/// A's address on the A–B underlay: its tunnel IP as B knows it.
const UL_A_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const UL_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// A's address on the A–C underlay.
const UL_A_C: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 1);
const UL_C: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 2);
/// The external server, behind B's egress interface.
const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EGRESS_IP_B: &str = "203.0.113.50";
const EGRESS_IP_C: &str = "198.18.0.50";
/// The external server on A's direct link: the excluded CIDR.
const EXT_DIRECT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;

/// The agent's routing table for steered traffic on a source node, and for
/// SNAT index 1 on a gateway.
const TABLE_STEER: &str = "28009";
const TABLE_SNAT1: &str = "28010";

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("cidr")
}

fn route(snat_index: u8, gateways: &[Ipv4Addr]) -> EgressRoute {
    EgressRoute {
        excluded: false,
        snat_index,
        gateways: gateways.to_vec(),
        fqdn_tag: 0,
        gateway_only: false,
    }
}

fn mark(m: u32) -> String {
    format!("{m:#010x}")
}

/// On a gateway: what the agent does for an egress IP with SNAT index
/// `index`: traffic marked `MARK_SNAT | index` is routed out of `dev` by
/// `table` and SNATed to `egress_ip`.
fn gateway_snat(node: &Netns, index: u8, table: &str, dev: &str, via: &str, egress_ip: &str) {
    let m = mark(MARK_SNAT | u32::from(index));
    node.ip(&["rule", "add", "fwmark", &m, "lookup", table]);
    node.ip(&[
        "route", "add", "default", "via", via, "dev", dev, "table", table,
    ]);
    node.nft(&format!(
        "table ip meshgate_egress_{index} {{\n\
         \tchain post {{\n\
         \t\ttype nat hook postrouting priority srcnat;\n\
         \t\tmeta mark {m} snat to {egress_ip}\n\
         \t}}\n\
         }}\n"
    ));
}

struct EgressWorld {
    // Field order is drop order: datapaths and the server first, then pins,
    // then the namespaces (which take links, rules, routes and nft tables).
    dp_a: Datapath,
    dp_b: Datapath,
    dp_c: Datapath,
    _echo: PeerEcho,
    _pins: [PinDir; 3],
    pod: Pod,
    ext: Netns,
    a: Netns,
    b: Netns,
    c: Netns,
}

impl EgressWorld {
    fn new() -> Self {
        require_root();
        let a = node("a");
        let b = node("b");
        let c = node("c");
        let ext = Netns::new("ext");
        veth(
            &a,
            "mgebpful",
            "192.168.77.1/24",
            &b,
            "mgebpful",
            "192.168.77.2/24",
        );
        veth(
            &a,
            "mgebpfuc",
            "192.168.78.1/24",
            &c,
            "mgebpfuc",
            "192.168.78.2/24",
        );
        veth(
            &b,
            "eg0",
            "203.0.113.50/24",
            &ext,
            "mgebpfxb",
            "203.0.113.10/24",
        );
        veth(
            &c,
            "eg0",
            "198.18.0.50/24",
            &ext,
            "mgebpfxc",
            "198.18.0.10/24",
        );
        veth(
            &a,
            "mgebpfxa",
            "198.51.100.1/24",
            &ext,
            "mgebpfxa",
            "198.51.100.10/24",
        );
        ext.ip(&["route", "add", "10.78.1.0/24", "via", "198.51.100.1"]);
        // The server answers from EXT on C's link too (UDP replies take the
        // route's source), as one internet host reached by two gateways.
        ext.ip(&[
            "route",
            "replace",
            "198.18.0.0/24",
            "dev",
            "mgebpfxc",
            "src",
            "203.0.113.10",
        ]);
        let pod = Pod::new(&a, "pod", "mgebpfa", POD_A);
        vxlan(&a, &[]);
        vxlan(&b, &["10.78.1.0/24"]);
        vxlan(&c, &["10.78.1.0/24"]);

        // Source node: steered traffic goes into the mesh device.
        let steer = format!("{}/{}", mark(MARK_EGRESS), mark(0xff00_0000));
        a.ip(&["rule", "add", "fwmark", &steer, "lookup", TABLE_STEER]);
        a.ip(&[
            "route",
            "add",
            "default",
            "dev",
            "mgebpfvx",
            "scope",
            "link",
            "table",
            TABLE_STEER,
        ]);
        // Gateways: SNAT index 1 is each one's egress IP.
        gateway_snat(&b, 1, TABLE_SNAT1, "eg0", "203.0.113.10", EGRESS_IP_B);
        gateway_snat(&c, 1, TABLE_SNAT1, "eg0", "198.18.0.10", EGRESS_IP_C);

        let pins = [PinDir::new(), PinDir::new(), PinDir::new()];
        let mut dp_a = load_mesh_node(&a, &pins[0], &["mgebpfa"]);
        let mut dp_b = load_mesh_node(&b, &pins[1], &[]);
        let mut dp_c = load_mesh_node(&c, &pins[2], &[]);
        for (dp, tunnel_ip) in [(&mut dp_a, UL_A_B), (&mut dp_b, UL_B), (&mut dp_c, UL_C)] {
            dp.maps
                .config
                .set_tunnel_ip(Some(tunnel_ip))
                .expect("tunnel ip");
            dp.maps
                .mesh_cidrs
                .set(Ipv4Addr::new(10, 78, 0, 0), 16, 1)
                .expect("mesh cidr");
        }
        dp_a.maps
            .ipcache
            .upsert(POD_A, 32, IpcacheEntry::local(ID_A, a.ifindex("mgebpfa")))
            .expect("ipcache");
        dp_b.maps
            .ipcache
            .upsert(POD_A, 32, IpcacheEntry::remote(ID_A, UL_A_B))
            .expect("ipcache");
        dp_c.maps
            .ipcache
            .upsert(POD_A, 32, IpcacheEntry::remote(ID_A, UL_A_C))
            .expect("ipcache");

        // The policy: A's pod to anywhere but 198.51.100.0/24, through B.
        let eg = &mut dp_a.maps.egress;
        eg.set(POD_A, net("0.0.0.0/0"), &route(0, &[UL_B]))
            .expect("route");
        eg.set(
            POD_A,
            net("198.51.100.0/24"),
            &EgressRoute {
                excluded: true,
                snat_index: 0,
                gateways: vec![],
                fqdn_tag: 0,
                gateway_only: false,
            },
        )
        .expect("excluded");
        // Each gateway has the route for the external network, with its SNAT index.
        for (dp, gw) in [(&mut dp_b, UL_B), (&mut dp_c, UL_C)] {
            dp.maps
                .egress
                .set(POD_A, net("203.0.113.0/24"), &route(1, &[gw]))
                .expect("gateway route");
        }

        let echo = PeerEcho::start(&ext, TCP_PORT, UDP_PORT);
        Self {
            dp_a,
            dp_b,
            dp_c,
            _echo: echo,
            _pins: pins,
            pod,
            ext,
            a,
            b,
            c,
        }
    }

    fn flows(&self) -> Vec<EgressFlow> {
        self.dp_a.maps.egress.flows().expect("flows")
    }

    /// The gateway A's datapath holds for the UDP flow from `sport` to the server.
    fn udp_gateway(&self, sport: u16) -> Option<Ipv4Addr> {
        self.flows()
            .into_iter()
            .find(|f| f.sport == sport && f.dport == UDP_PORT && f.proto == 17)
            .map(|f| f.gateway)
    }

    fn pod_udp(&self) -> (UdpSocket, u16) {
        let s = self.pod.ns.udp_bind(POD_A, 0);
        let port = s.local_addr().expect("addr").port();
        (s, port)
    }

    fn set_a(&mut self, gateways: &[Ipv4Addr]) {
        self.dp_a
            .maps
            .egress
            .set(POD_A, net("0.0.0.0/0"), &route(0, gateways))
            .expect("route");
    }
}

fn egress_ip_of(gateway: Ipv4Addr) -> &'static str {
    match gateway {
        UL_B => EGRESS_IP_B,
        UL_C => EGRESS_IP_C,
        other => panic!("{other} is not a gateway of this world"),
    }
}

/// Waits up to a second for the drop counter of `reason` to reach 1.
fn wait_dropped(dp: &Datapath, reason: Reason) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let n = dp.maps.drops.get(reason).expect("counter").packets;
        if n >= 1 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_selected_pod_leaves_through_the_gateway_with_its_egress_ip() {
    let mut w = EgressWorld::new();
    let cap = Capture::start(&w.b, "mgebpful");
    let seen = tcp_seen_as(&w.pod.ns, EXT, TCP_PORT)
        .unwrap_or_else(|e| panic!("pod -> {EXT}:{TCP_PORT} through gateway B: {e}"));
    assert_eq!(seen, EGRESS_IP_B, "the server sees B's egress IP");

    // On the underlay: the pod's packets carry its identity, the replies
    // (de-SNATed on B, forwarded from eg0) the world's.
    let deadline = Instant::now() + Duration::from_secs(1);
    let packets = loop {
        let packets: Vec<Vxlan> = cap.frames().iter().filter_map(|f| parse_vxlan(f)).collect();
        let replies = packets.iter().filter(|p| p.inner_src == EXT).count();
        if replies >= 2 || Instant::now() >= deadline {
            break packets;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(cap);
    let to_ext: Vec<&Vxlan> = packets.iter().filter(|p| p.inner_dst == EXT).collect();
    let from_ext: Vec<&Vxlan> = packets.iter().filter(|p| p.inner_src == EXT).collect();
    assert!(
        !to_ext.is_empty() && to_ext.iter().all(|p| p.vni == ID_A && p.inner_src == POD_A),
        "A -> B: VNI = the pod's identity {ID_A:#x}: {packets:?}"
    );
    assert!(
        !from_ext.is_empty()
            && from_ext
                .iter()
                .all(|p| p.vni == identity::WORLD && p.inner_dst == POD_A),
        "B -> A: replies from the world carry VNI = WORLD: {packets:?}"
    );

    let flows = w.flows();
    let flow = flows
        .iter()
        .find(|f| f.daddr == EXT && f.dport == TCP_PORT && f.proto == 6)
        .unwrap_or_else(|| panic!("A holds the flow's gateway: {flows:?}"));
    assert_eq!((flow.saddr, flow.gateway), (POD_A, UL_B));
    assert!(flow.last_seen_ns > 0);

    // B accepted it as egress traffic of A's pod: the identity came in the VNI.
    let ev = wait_event(&mut w.dp_b, |e| {
        e.dst == EXT && e.point == Some(Point::FromMesh) && e.verdict == Some(Verdict::Allow)
    })
    .expect("B's flow event for the accepted egress flow");
    assert_eq!(
        (ev.src, ev.src_identity, ev.dst_identity),
        (POD_A, ID_A, identity::WORLD),
        "B's event names the pod's identity: {ev:?}"
    );
    let ev = wait_event(&mut w.dp_a, |e| {
        e.dst == EXT && e.point == Some(Point::FromPod)
    })
    .expect("A's flow event");
    assert_eq!(ev.verdict, Some(Verdict::Allow));
    assert_eq!(ev.dst_identity, identity::WORLD);
    for (node, dp) in [("A", &w.dp_a), ("B", &w.dp_b), ("C", &w.dp_c)] {
        assert_eq!(
            dp.maps.drops.all().expect("drops"),
            Default::default(),
            "no drops on {node}"
        );
    }
    assert_eq!(
        w.dp_b.maps.egress.routes().expect("routes"),
        vec![(POD_A, net("203.0.113.0/24"), route(1, &[UL_B]))]
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn an_excluded_cidr_is_left_alone() {
    let w = EgressWorld::new();
    let seen = tcp_seen_as(&w.pod.ns, EXT_DIRECT, TCP_PORT)
        .unwrap_or_else(|e| panic!("pod -> {EXT_DIRECT} on A's direct link: {e}"));
    assert_eq!(
        seen,
        POD_A.to_string(),
        "not steered, not SNATed: the server sees the pod's own address"
    );
    let flows = w.flows();
    assert!(
        flows.iter().all(|f| f.daddr != EXT_DIRECT),
        "no gateway chosen for the excluded CIDR: {flows:?}"
    );
    assert_eq!(
        w.dp_b.maps.drops.all().expect("drops"),
        Default::default(),
        "nothing reached B"
    );
    let routes = w.dp_a.maps.egress.routes().expect("routes");
    assert!(
        routes.contains(&(
            POD_A,
            net("198.51.100.0/24"),
            EgressRoute {
                excluded: true,
                snat_index: 0,
                gateways: vec![],
                fqdn_tag: 0,
                gateway_only: false,
            }
        )),
        "{routes:?}"
    );
    assert_eq!(routes.len(), 2, "{routes:?}");
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_route_without_gateways_drops_rather_than_leave_unsnated() {
    let mut w = EgressWorld::new();
    w.set_a(&[]);
    let result = tcp_seen_as(&w.pod.ns, EXT, TCP_PORT);
    assert!(result.is_err(), "no gateway: no connection, got {result:?}");
    assert!(
        wait_dropped(&w.dp_a, Reason::NoEgressGateway) >= 1,
        "counted as no-egress-gateway: {:?}",
        w.dp_a.maps.drops.all()
    );
    let ev = wait_event(&mut w.dp_a, |e| e.reason == Some(Reason::NoEgressGateway))
        .expect("a no-egress-gateway event");
    assert_eq!(
        (ev.src, ev.dst, ev.point, ev.src_identity),
        (POD_A, EXT, Some(Point::FromPod), ID_A)
    );
    assert!(w.flows().iter().all(|f| f.daddr != EXT), "{:?}", w.flows());
    // The excluded CIDR still goes its own way.
    assert_eq!(
        tcp_seen_as(&w.pod.ns, EXT_DIRECT, TCP_PORT).expect("excluded"),
        POD_A.to_string()
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn flows_keep_their_gateway_while_it_is_listed_and_spread_over_the_gateways() {
    let mut w = EgressWorld::new();
    let dst = SocketAddrV4::new(EXT, UDP_PORT);
    let (s, port) = w.pod_udp();
    assert_eq!(udp_seen_as(&s, dst).as_deref(), Some(EGRESS_IP_B));
    assert_eq!(w.udp_gateway(port), Some(UL_B));

    // C joins ahead of B: the flow stays on B.
    w.set_a(&[UL_C, UL_B]);
    for _ in 0..3 {
        assert_eq!(
            udp_seen_as(&s, dst).as_deref(),
            Some(EGRESS_IP_B),
            "B is still listed: the flow keeps it"
        );
    }
    assert_eq!(w.udp_gateway(port), Some(UL_B));

    // B leaves: the flow picks again, and C is all there is.
    w.set_a(&[UL_C]);
    assert_eq!(udp_seen_as(&s, dst).as_deref(), Some(EGRESS_IP_C));
    assert_eq!(w.udp_gateway(port), Some(UL_C));

    // Two gateways: new flows spread by their hash, each stays where it went.
    w.set_a(&[UL_B, UL_C]);
    let flows: Vec<(UdpSocket, u16)> = (0..24).map(|_| w.pod_udp()).collect();
    let mut picked = Vec::new();
    for (s, port) in &flows {
        let seen = udp_seen_as(s, dst).unwrap_or_else(|| panic!("flow from port {port}"));
        let gw = w
            .udp_gateway(*port)
            .unwrap_or_else(|| panic!("no gateway for port {port}: {:?}", w.flows()));
        assert_eq!(
            seen,
            egress_ip_of(gw),
            "the flow left by the gateway A chose"
        );
        picked.push(gw);
    }
    let on_b = picked.iter().filter(|g| **g == UL_B).count();
    assert!(
        on_b > 0 && on_b < picked.len(),
        "24 flows over two gateways use both ({on_b} on B): {picked:?}"
    );
    for ((s, port), gw) in flows.iter().zip(&picked) {
        assert_eq!(
            udp_seen_as(s, dst).as_deref(),
            Some(egress_ip_of(*gw)),
            "port {port} stays on {gw}"
        );
        assert_eq!(w.udp_gateway(*port), Some(*gw));
    }
    // The first flow was on C, still listed: it stayed.
    assert_eq!(w.udp_gateway(port), Some(UL_C));
    assert_eq!(w.dp_a.maps.drops.all().expect("drops"), Default::default());
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_gateway_drops_world_traffic_it_has_no_route_for() {
    let mut w = EgressWorld::new();
    // A steers all of the world to B; B is a gateway for 203.0.113.0/24 only.
    let (s, _) = w.pod_udp();
    let elsewhere = Ipv4Addr::new(192, 0, 2, 1);
    assert_eq!(
        udp_seen_as(&s, SocketAddrV4::new(elsewhere, UDP_PORT)),
        None
    );
    assert!(
        wait_dropped(&w.dp_b, Reason::EgressNotGateway) >= 1,
        "B counts egress-not-gateway: {:?}",
        w.dp_b.maps.drops.all()
    );
    let ev = wait_event(&mut w.dp_b, |e| e.reason == Some(Reason::EgressNotGateway))
        .expect("B's egress-not-gateway event");
    assert_eq!(
        (ev.src, ev.dst, ev.point, ev.src_identity),
        (POD_A, elsewhere, Some(Point::FromMesh), ID_A)
    );
    assert_eq!(
        w.dp_a.maps.drops.all().expect("drops"),
        Default::default(),
        "A steered it without a drop"
    );
    // The route B has still works.
    assert_eq!(
        udp_seen_as(&s, SocketAddrV4::new(EXT, UDP_PORT)).as_deref(),
        Some(EGRESS_IP_B)
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_pod_on_a_gateway_is_snated_on_its_own_node() {
    let mut w = EgressWorld::new();
    // A is the gateway for 198.51.100.0/24, egress IP 198.51.100.1 (index 2).
    gateway_snat(
        &w.a,
        2,
        "28011",
        "mgebpfxa",
        "198.51.100.10",
        "198.51.100.1",
    );
    w.dp_a
        .maps
        .egress
        .set(POD_A, net("198.51.100.0/24"), &route(2, &[UL_A_B]))
        .expect("route");
    assert_eq!(
        tcp_seen_as(&w.pod.ns, EXT_DIRECT, TCP_PORT).expect("through A's own egress IP"),
        "198.51.100.1"
    );
    assert!(w
        .flows()
        .iter()
        .any(|f| f.daddr == EXT_DIRECT && f.gateway == UL_A_B));

    // This node chosen but no SNAT index here: dropped, never sent unSNATed.
    w.dp_a
        .maps
        .egress
        .set(POD_A, net("198.51.100.0/24"), &route(0, &[UL_A_B]))
        .expect("route");
    let result = tcp_seen_as(&w.pod.ns, EXT_DIRECT, TCP_PORT);
    assert!(result.is_err(), "{result:?}");
    assert!(wait_dropped(&w.dp_a, Reason::NoEgressGateway) >= 1);
    let _ = (&w.ext, &w.b, &w.c);
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn an_fqdn_route_steers_like_a_cidr_route_and_keeps_its_tag() {
    let mut w = EgressWorld::new();
    // A destinationFQDNs policy as the DNS proxy writes it: the pod's egress
    // policy allows it nothing, the proxy resolved EXT for it (mg_fqdn) and
    // wrote a /32 route through C tagged with the policy; on C the /32 route
    // (also tagged) replaces the /24 one.
    let tagged = |snat_index: u8, gateway: Ipv4Addr| EgressRoute {
        fqdn_tag: 0x0abc,
        gateway_only: false,
        ..route(snat_index, &[gateway])
    };
    let ext32 = net("203.0.113.10/32");
    w.dp_a
        .maps
        .policy
        .select(ID_A, false, true)
        .expect("select");
    w.dp_a
        .maps
        .fqdn
        .set(
            ID_A,
            EXT,
            &FqdnEntry {
                expires_ns: monotonic_ns() + 60_000_000_000,
                ports: FqdnPorts::Only(vec![(6, TCP_PORT)]),
            },
        )
        .expect("fqdn entry");
    w.dp_a
        .maps
        .egress
        .set(POD_A, ext32, &tagged(0, UL_C))
        .expect("fqdn route");
    // C, the gateway, never saw the answer: it SNATs the pod's traffic by
    // a gateway-only wildcard route (what its planner gives for a source on
    // another node), which only from_mesh uses.
    assert!(w
        .dp_c
        .maps
        .egress
        .remove(POD_A, net("203.0.113.0/24"))
        .expect("remove"));
    let wildcard = EgressRoute {
        gateway_only: true,
        ..route(1, &[])
    };
    w.dp_c
        .maps
        .egress
        .set(POD_A, net("0.0.0.0/0"), &wildcard)
        .expect("gateway's wildcard route");

    let seen = tcp_seen_as(&w.pod.ns, EXT, TCP_PORT)
        .unwrap_or_else(|e| panic!("pod -> {EXT}:{TCP_PORT} by the FQDN route: {e}"));
    assert_eq!(
        seen, EGRESS_IP_C,
        "the /32 FQDN route (through C) wins over 0.0.0.0/0 (through B)"
    );
    assert!(w
        .flows()
        .iter()
        .any(|f| f.daddr == EXT && f.dport == TCP_PORT && f.gateway == UL_C));

    let mut routes = w.dp_a.maps.egress.routes().expect("routes");
    routes.sort_by_key(|(s, d, _)| (*s, *d));
    let tags: Vec<(Ipv4Net, u16)> = routes.iter().map(|(_, d, r)| (*d, r.fqdn_tag)).collect();
    assert_eq!(
        tags,
        vec![
            (net("0.0.0.0/0"), 0),
            (net("198.51.100.0/24"), 0),
            (ext32, 0x0abc),
        ],
        "the tag reads back; CIDR routes have none"
    );
    assert_eq!(
        w.dp_c.maps.egress.routes().expect("routes"),
        vec![(POD_A, net("0.0.0.0/0"), wildcard)],
        "gateway_only reads back"
    );
    for (node, dp) in [("A", &w.dp_a), ("C", &w.dp_c)] {
        assert_eq!(
            dp.maps.drops.all().expect("drops"),
            Default::default(),
            "no drops on {node}"
        );
    }

    // The route does not admit anything by itself: a port the entry does not
    // list is dropped by policy before any steering.
    let (s, _) = w.pod_udp();
    assert_eq!(udp_seen_as(&s, SocketAddrV4::new(EXT, UDP_PORT)), None);
    assert!(wait_dropped(&w.dp_a, Reason::PolicyEgress) >= 1);
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_gateway_only_route_never_steers_the_pods_own_traffic() {
    let mut w = EgressWorld::new();
    // Where the excluded route was, a gateway-only one: from_pod must not
    // steer by it (nor drop for want of gateways); the pod leaves as itself.
    w.dp_a
        .maps
        .egress
        .set(
            POD_A,
            net("198.51.100.0/24"),
            &EgressRoute {
                gateway_only: true,
                ..route(1, &[])
            },
        )
        .expect("route");
    let seen = tcp_seen_as(&w.pod.ns, EXT_DIRECT, TCP_PORT)
        .unwrap_or_else(|e| panic!("pod -> {EXT_DIRECT}: {e}"));
    assert_eq!(seen, POD_A.to_string(), "not steered, not SNATed");
    assert!(w.flows().iter().all(|f| f.daddr != EXT_DIRECT));
    assert_eq!(
        w.dp_a.maps.drops.all().expect("drops"),
        Default::default(),
        "nothing dropped"
    );
}
