//! FQDN policy and DNS steering, end to end through the real programs: pods
//! A and B on one node (world.rs's `OneNode`) whose egress policy allows
//! them nothing, an "external" namespace behind the node with servers on a
//! world address, and `mg_fqdn` entries / the DNS proxy flag written as the
//! node's DNS proxy writes them (through the typed maps).
//!
//! ```text
//!   A 10.77.0.2 --+                203.0.113.1      203.0.113.10
//!                 +-- node ------------------------------------ ext (servers)
//!   B 10.77.0.3 --+   (DNS "proxy": 169.254.1.1:5353, reached by an nft DNAT
//!                      of port 53 by the pod's mark, as the proxy installs it)
//! ```

#[path = "support/mesh_world.rs"]
mod mesh_world;
#[path = "support/world.rs"]
mod world;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_world::{tcp_seen_as, udp_seen_as, PeerEcho};
use meshgate_ebpf::{
    identity, monotonic_ns, Datapath, Direction, EgressRoute, FqdnEntry, FqdnPorts, Point,
    PolicyRule, Proto, Reason, Verdict, MARK_MAGIC,
};
use world::*;

/// The world address the servers listen on.
const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
/// PeerEcho on both protocols, for the port restriction test.
const OTHER_PORT: u16 = 7002;
const ANY_PROTO_PORT: u16 = 7003;
/// A TCP server that keeps the connection and echoes lines.
const ECHO_PORT: u16 = 7100;
/// A resolver address the pods send DNS to (world; nothing routes it).
const RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// Where the node's "DNS proxy" listens.
const PROXY_ADDR: &str = "169.254.1.1";
const PROXY_PORT: u16 = 5353;

const MINUTE_NS: u64 = 60_000_000_000;

struct FqdnWorld {
    // Field order is drop order: servers first, then the node and its pods
    // (datapath, pins, namespaces), then the external namespace.
    _servers: Vec<PeerEcho>,
    _echo: TcpEcho,
    w: OneNode,
    ext: Netns,
}

impl FqdnWorld {
    /// A and B select egress policy without a rule: nothing of the world is
    /// allowed to them.
    fn new() -> Self {
        let mut w = OneNode::new();
        let ext = Netns::new("ext");
        veth(
            &w.node,
            "mgebpfx",
            "203.0.113.1/24",
            &ext,
            "mgebpfx",
            "203.0.113.10/24",
        );
        ext.ip(&["route", "add", "10.77.0.0/24", "via", "203.0.113.1"]);
        let servers = vec![
            PeerEcho::start(&ext, TCP_PORT, UDP_PORT),
            PeerEcho::start(&ext, OTHER_PORT, OTHER_PORT),
            PeerEcho::start(&ext, ANY_PROTO_PORT, ANY_PROTO_PORT),
        ];
        let echo = TcpEcho::start(&ext, ECHO_PORT);
        let policy = &mut w.dp().maps.policy;
        policy.select(ID_A, false, true).expect("select A");
        policy.select(ID_B, false, true).expect("select B");
        Self {
            _servers: servers,
            _echo: echo,
            w,
            ext,
        }
    }

    fn dp(&mut self) -> &mut Datapath {
        self.w.dp()
    }

    fn set(&mut self, identity: u32, addr: Ipv4Addr, expires_ns: u64, ports: FqdnPorts) {
        self.dp()
            .maps
            .fqdn
            .set(identity, addr, &FqdnEntry { expires_ns, ports })
            .unwrap_or_else(|e| panic!("mg_fqdn {identity:#x} -> {addr}: {e}"));
    }

    /// A new UDP flow (fresh socket) from pod A or B to `dst`: the address
    /// the server saw, or `None` if no answer came.
    fn udp(&self, pod: &Pod, dst: Ipv4Addr, port: u16) -> Option<String> {
        let s = pod.ns.udp_bind(pod.addr, 0);
        udp_seen_as(&s, SocketAddrV4::new(dst, port))
    }

    fn tcp(&self, pod: &Pod, dst: Ipv4Addr, port: u16) -> bool {
        match tcp_seen_as(&pod.ns, dst, port) {
            Ok(seen) => {
                assert_eq!(seen, pod.addr.to_string(), "the server saw the pod");
                true
            }
            Err(_) => false,
        }
    }

    fn drops(&self, reason: Reason) -> u64 {
        let dp = self.w.dp.as_ref().expect("datapath");
        dp.maps.drops.get(reason).expect("counter").packets
    }

    /// Waits up to a second for the drop counter of `reason` to pass `before`.
    fn wait_drop(&self, reason: Reason, before: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let n = self.drops(reason);
            if n > before || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP server that keeps each connection and echoes it line by line.
struct TcpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpEcho {
    fn start(ns: &Netns, port: u16) -> Self {
        let listener: TcpListener = ns.tcp_listen(Ipv4Addr::UNSPECIFIED, port);
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let mut out = conn.try_clone().expect("clone");
                            for line in BufReader::new(conn).lines() {
                                let Ok(line) = line else { return };
                                if writeln!(out, "{line}").is_err() {
                                    return;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One line through an established echo connection: true if it came back.
fn echoed(conn: &mut BufReader<TcpStream>, token: &str) -> bool {
    if writeln!(conn.get_mut(), "{token}").is_err() {
        return false;
    }
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(n) if n > 0 => line.trim_end() == token,
        _ => false,
    }
}

fn world_rule(local: u32, port: u16, proto: Proto) -> PolicyRule {
    PolicyRule {
        local_identity: local,
        remote_identity: None,
        port: Some(port),
        proto,
        direction: Direction::Egress,
    }
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_resolved_address_is_reachable_by_its_identity_only() {
    let mut f = FqdnWorld::new();
    let before = f.drops(Reason::PolicyEgress);
    assert_eq!(
        f.udp(&f.w.a, EXT, UDP_PORT),
        None,
        "no entry: egress policy drops"
    );
    assert!(f.wait_drop(Reason::PolicyEgress, before) > before);

    let expires = monotonic_ns() + MINUTE_NS;
    f.set(ID_A, EXT, expires, FqdnPorts::Any);
    assert_eq!(
        f.udp(&f.w.a, EXT, UDP_PORT).as_deref(),
        Some("10.77.0.2"),
        "A may reach the address the proxy resolved for it"
    );
    assert!(f.tcp(&f.w.a, EXT, TCP_PORT), "TCP too (any port)");
    assert!(f.w.a.ns.ping(EXT), "and ICMP (any protocol)");
    let ev = wait_event(f.dp(), |e| {
        e.dst == EXT && e.dport == TCP_PORT && e.verdict == Some(Verdict::Allow)
    })
    .expect("an allow event for the admitted flow");
    assert_eq!(
        (ev.src, ev.src_identity, ev.dst_identity, ev.point),
        (
            Ipv4Addr::new(10, 77, 0, 2),
            ID_A,
            identity::WORLD,
            Some(Point::FromPod)
        )
    );

    // B has no entry.
    f.dp().maps.events.drain();
    assert_eq!(f.udp(&f.w.b, EXT, UDP_PORT), None, "B has no entry");
    let b = f.w.b.addr;
    let ev = wait_event(f.dp(), |e| e.src == b && e.dst == EXT).expect("B's drop event");
    assert_eq!(
        (ev.reason, ev.src_identity),
        (Some(Reason::PolicyEgress), ID_B)
    );

    // An entry is for world addresses only: one for pod B's address does not
    // open A's egress policy to B.
    f.set(ID_A, f.w.b.addr, expires, FqdnPorts::Any);
    let b_sock = f.w.b.ns.udp_bind(f.w.b.addr, 7009);
    let a_sock = f.w.a.ns.udp_bind(f.w.a.addr, 0);
    assert!(
        !udp_passes(&a_sock, &b_sock, SocketAddrV4::new(f.w.b.addr, 7009)),
        "a pod address is judged by policy alone"
    );

    // An explicit deny rule wins over the entry.
    let deny = world_rule(ID_A, UDP_PORT, Proto::Udp);
    f.dp().maps.policy.set(&deny, Verdict::Deny).expect("deny");
    let denied = f.drops(Reason::PolicyDeny);
    assert_eq!(f.udp(&f.w.a, EXT, UDP_PORT), None, "deny wins");
    assert!(f.wait_drop(Reason::PolicyDeny, denied) > denied);
    assert!(f.dp().maps.policy.remove(&deny).expect("remove deny"));

    // Read back, list, remove.
    let fqdn = &mut f.w.dp.as_mut().expect("datapath").maps.fqdn;
    assert_eq!(
        fqdn.get(ID_A, EXT).expect("get"),
        Some(FqdnEntry {
            expires_ns: expires,
            ports: FqdnPorts::Any
        })
    );
    assert_eq!(fqdn.get(ID_B, EXT).expect("get"), None);
    let mut entries = fqdn.entries().expect("entries");
    entries.sort_by_key(|(id, addr, _)| (*id, *addr));
    let addrs: Vec<(u32, Ipv4Addr)> = entries.iter().map(|(i, a, _)| (*i, *a)).collect();
    assert_eq!(
        addrs,
        vec![(ID_A, Ipv4Addr::new(10, 77, 0, 3)), (ID_A, EXT)]
    );
    assert!(fqdn.remove(ID_A, EXT).expect("remove"));
    assert!(!fqdn.remove(ID_A, EXT).expect("remove again"));
    assert_eq!(
        f.udp(&f.w.a, EXT, UDP_PORT),
        None,
        "removed: a new flow is dropped"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_new_flow_needs_an_unexpired_entry_but_a_live_flow_outlasts_it() {
    let mut f = FqdnWorld::new();
    f.set(ID_A, EXT, monotonic_ns() + MINUTE_NS, FqdnPorts::Any);

    let conn =
        f.w.a
            .ns
            .tcp_connect(EXT, ECHO_PORT)
            .unwrap_or_else(|e| panic!("A -> {EXT}:{ECHO_PORT} with an entry: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut conn = BufReader::new(conn);
    assert!(echoed(&mut conn, "before"), "the connection works");
    let udp = f.w.a.ns.udp_bind(f.w.a.addr, 0);
    let udp_dst = SocketAddrV4::new(EXT, UDP_PORT);
    assert!(udp_seen_as(&udp, udp_dst).is_some(), "the UDP flow works");

    // The name's TTL runs out.
    let expires = monotonic_ns() + 200_000_000;
    f.set(ID_A, EXT, expires, FqdnPorts::Any);
    let deadline = Instant::now() + Duration::from_secs(5);
    while monotonic_ns() <= expires {
        assert!(Instant::now() < deadline, "CLOCK_MONOTONIC does not move");
        std::thread::sleep(Duration::from_millis(20));
    }

    let before = f.drops(Reason::PolicyEgress);
    assert_eq!(
        f.udp(&f.w.a, EXT, UDP_PORT),
        None,
        "expired: a new UDP flow is dropped"
    );
    assert!(!f.tcp(&f.w.a, EXT, TCP_PORT), "and a new TCP connection");
    assert!(
        f.wait_drop(Reason::PolicyEgress, before) > before,
        "as policy-egress"
    );
    assert!(
        echoed(&mut conn, "after"),
        "the established TCP connection keeps working (its conntrack entry is live)"
    );
    assert!(udp_seen_as(&udp, udp_dst).is_some(), "the UDP flow too");
    let entry = f.dp().maps.fqdn.get(ID_A, EXT).expect("get");
    assert_eq!(
        entry.map(|e| e.expires_ns),
        Some(expires),
        "the expired entry is still there until its writer removes it"
    );

    // Renewed (the proxy answered the name again): new flows pass again.
    f.set(ID_A, EXT, monotonic_ns() + MINUTE_NS, FqdnPorts::Any);
    assert!(
        f.tcp(&f.w.a, EXT, TCP_PORT),
        "renewed: new connections pass"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn only_the_ports_of_an_entry_are_admitted() {
    let mut f = FqdnWorld::new();
    let expires = monotonic_ns() + MINUTE_NS;
    // Every server answers while any port is admitted.
    f.set(ID_A, EXT, expires, FqdnPorts::Any);
    let a = &f.w.a;
    assert!(f.tcp(a, EXT, OTHER_PORT) && f.udp(a, EXT, UDP_PORT).is_some());

    f.set(
        ID_A,
        EXT,
        expires,
        FqdnPorts::Only(vec![(6, TCP_PORT), (0, ANY_PROTO_PORT)]),
    );
    let before = f.drops(Reason::PolicyEgress);
    let a = &f.w.a;
    assert!(f.tcp(a, EXT, TCP_PORT), "tcp/{TCP_PORT} is listed");
    assert!(
        f.tcp(a, EXT, ANY_PROTO_PORT),
        "any protocol on {ANY_PROTO_PORT}"
    );
    assert!(
        f.udp(a, EXT, ANY_PROTO_PORT).is_some(),
        "any protocol on {ANY_PROTO_PORT}: UDP too"
    );
    assert!(!f.tcp(a, EXT, OTHER_PORT), "tcp/{OTHER_PORT} is not listed");
    assert_eq!(
        f.udp(a, EXT, UDP_PORT),
        None,
        "udp/{UDP_PORT} is not listed"
    );
    assert_eq!(
        f.udp(a, EXT, TCP_PORT),
        None,
        "{TCP_PORT} is listed for TCP only"
    );
    assert!(!a.ns.ping(EXT), "nor is ICMP");
    assert!(f.wait_drop(Reason::PolicyEgress, before) >= before + 3);

    // Port 0: any port of the protocol.
    f.set(ID_A, EXT, expires, FqdnPorts::Only(vec![(17, 0)]));
    let a = &f.w.a;
    assert!(f.udp(a, EXT, UDP_PORT).is_some(), "any UDP port");
    assert!(f.udp(a, EXT, OTHER_PORT).is_some(), "any UDP port");
    assert!(!f.tcp(a, EXT, TCP_PORT), "no TCP port");
    assert_eq!(
        f.dp()
            .maps
            .fqdn
            .get(ID_A, EXT)
            .expect("get")
            .map(|e| e.ports),
        Some(FqdnPorts::Only(vec![(17, 0)]))
    );

    // More than the datapath holds is refused, and changes nothing.
    let err = f
        .dp()
        .maps
        .fqdn
        .set(
            ID_A,
            EXT,
            &FqdnEntry {
                expires_ns: expires,
                ports: FqdnPorts::Only((1..=9).map(|p| (6, p)).collect()),
            },
        )
        .expect_err("9 ports");
    assert!(err.to_string().contains("at most 8"), "{err}");
    assert!(
        f.udp(&f.w.a, EXT, UDP_PORT).is_some(),
        "the entry is unchanged"
    );
    let _ = &f.ext;
}

/// The node's side of DNS steering, as the proxy installs it: DNAT of port
/// 53 from pod A (by its mark) to the proxy's address, and the "proxy", a
/// server there that says which source it saw.
fn dns_proxy(f: &FqdnWorld) -> PeerEcho {
    let m = format!("{:#010x}", MARK_MAGIC | ID_A);
    f.w.node.nft(&format!(
        "table ip mgtest_dns {{\n\
         \tchain pre {{\n\
         \t\ttype nat hook prerouting priority dstnat;\n\
         \t\tmeta mark {m} udp dport 53 dnat to {PROXY_ADDR}:{PROXY_PORT}\n\
         \t\tmeta mark {m} tcp dport 53 dnat to {PROXY_ADDR}:{PROXY_PORT}\n\
         \t}}\n\
         }}\n"
    ));
    PeerEcho::start(&f.w.node, PROXY_PORT, PROXY_PORT)
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn with_the_dns_proxy_flag_pod_dns_reaches_the_node_without_egress_policy() {
    let mut f = FqdnWorld::new();
    let _proxy = dns_proxy(&f);
    // A route steers all of A's world traffic to a gateway: DNS must not be
    // steered (its mark must stay the pod's for the DNAT rule).
    let a = f.w.a.addr;
    f.dp()
        .maps
        .egress
        .set(
            a,
            "0.0.0.0/0".parse().expect("cidr"),
            &EgressRoute {
                excluded: false,
                snat_index: 0,
                gateways: vec![Ipv4Addr::new(192, 168, 99, 1)],
                fqdn_tag: 0,
                gateway_only: false,
            },
        )
        .expect("route");
    assert!(!f.dp().maps.config.dns_proxy().expect("flag"));

    // Without the flag: egress policy drops DNS as anything else.
    let before = f.drops(Reason::PolicyEgress);
    assert_eq!(f.udp(&f.w.a, RESOLVER, 53), None, "UDP DNS dropped");
    assert!(!f.tcp(&f.w.a, RESOLVER, 53), "TCP DNS dropped");
    assert!(f.wait_drop(Reason::PolicyEgress, before) >= before + 2);

    f.dp().maps.config.set_dns_proxy(true).expect("set flag");
    assert!(f.dp().maps.config.dns_proxy().expect("flag"));
    f.dp().maps.events.drain();
    assert_eq!(
        f.udp(&f.w.a, RESOLVER, 53).as_deref(),
        Some("10.77.0.2"),
        "UDP DNS reaches the node's proxy"
    );
    assert!(
        f.tcp(&f.w.a, RESOLVER, 53),
        "TCP DNS reaches the node's proxy"
    );
    let ev = wait_event(f.dp(), |e| {
        e.dst == RESOLVER && e.dport == 53 && e.proto == 17
    })
    .expect("an event for the DNS flow");
    assert_eq!(
        (ev.verdict, ev.src_identity, ev.dst_identity),
        (Some(Verdict::Allow), ID_A, identity::WORLD),
        "recorded as an allowed flow"
    );
    let ct = f.dp().maps.conntrack.entries().expect("conntrack");
    assert!(
        ct.iter()
            .any(|c| c.dst == RESOLVER && c.dport == 53 && c.proto == 6),
        "the TCP DNS flow is tracked: {ct:?}"
    );
    assert!(
        f.dp().maps.egress.flows().expect("flows").is_empty(),
        "DNS was not steered to a gateway"
    );

    // Other ports are still judged by egress policy.
    let before = f.drops(Reason::PolicyEgress);
    assert_eq!(f.udp(&f.w.a, RESOLVER, 54), None);
    assert!(f.wait_drop(Reason::PolicyEgress, before) > before);

    // A local pod's ingress policy still holds: B takes nothing in.
    f.dp()
        .maps
        .policy
        .select(ID_B, true, true)
        .expect("select B");
    let before = f.drops(Reason::PolicyIngress);
    assert_eq!(f.udp(&f.w.a, f.w.b.addr, 53), None);
    assert!(
        f.wait_drop(Reason::PolicyIngress, before) > before,
        "DNS to a local pod is dropped by its ingress policy"
    );

    // The flag cleared (the proxy stopped): dropped by policy again.
    f.dp().maps.config.set_dns_proxy(false).expect("clear flag");
    let before = f.drops(Reason::PolicyEgress);
    assert_eq!(f.udp(&f.w.a, RESOLVER, 53), None);
    assert!(f.wait_drop(Reason::PolicyEgress, before) > before);
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn the_dns_proxy_flag_leaves_strict_mode_and_other_flags_alone() {
    let mut f = FqdnWorld::new();
    let config = &mut f.dp().maps.config;
    config.set_strict(Some(42)).expect("strict");
    config.set_dns_proxy(true).expect("dns");
    config
        .set_tunnel_ip(Some(Ipv4Addr::new(100, 64, 0, 1)))
        .expect("tunnel ip");
    let c = config.get().expect("config");
    assert_eq!((c.flags, c.mesh_ifindex), (0x3, 42));
    config.set_strict(None).expect("strict off");
    assert!(config.dns_proxy().expect("dns"), "strict off keeps DNS");
    config.set_dns_proxy(false).expect("dns off");
    assert_eq!(config.get().expect("config").flags, 0);
    assert_eq!(
        config.tunnel_ip().expect("tunnel ip"),
        Some(Ipv4Addr::new(100, 64, 0, 1))
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn another_process_opens_mg_fqdn_through_the_pins() {
    let mut f = FqdnWorld::new();
    let maps_dir = f.w.pins.0.join("maps");
    let mut maps = meshgate_ebpf::Maps::open_pinned(&maps_dir)
        .unwrap_or_else(|e| panic!("open_pinned {}: {e}", maps_dir.display()));
    maps.fqdn
        .set(
            ID_A,
            EXT,
            &FqdnEntry {
                expires_ns: monotonic_ns() + MINUTE_NS,
                ports: FqdnPorts::Only(vec![(17, UDP_PORT)]),
            },
        )
        .expect("set through the pin");
    maps.config
        .set_dns_proxy(true)
        .expect("flag through the pin");
    assert!(
        f.udp(&f.w.a, EXT, UDP_PORT).is_some(),
        "the entry written through the pin admits the flow"
    );
    assert!(f.dp().maps.config.dns_proxy().expect("flag"));
    assert_eq!(f.dp().maps.fqdn.entries().expect("entries").len(), 1);
}
