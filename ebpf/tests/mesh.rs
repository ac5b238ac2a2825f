//! The VXLAN path between two nodes: `to_mesh` puts the sender's identity
//! in the VNI, `from_mesh` takes the identity from the VNI (never from the
//! source address) and enforces the destination's ingress policy.
//!
//! This is a unit-level test of the eBPF programs: the VXLAN packets cross a
//! plain veth underlay, outside WireGuard, so that the capture can read the
//! VNI. In the product they travel inside WireGuard.

#[path = "support/mesh_world.rs"]
mod mesh_world;
#[path = "support/world.rs"]
mod world;

use std::net::Ipv4Addr;
use std::time::Duration;

use aya::programs::TcAttachType;
use mesh_world::*;
use meshgate_ebpf::{Datapath, Direction, IpcacheEntry, Point, PolicyRule, Proto, Reason};
use world::*;

struct TwoNodes {
    dp1: Option<Datapath>,
    dp2: Option<Datapath>,
    _pins1: PinDir,
    _pins2: PinDir,
    a: Pod,
    c: Pod,
    b: Pod,
    n1: Netns,
    n2: Netns,
}

const UL1: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const UL2: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

impl TwoNodes {
    fn new() -> Self {
        require_root();
        let n1 = node("n1");
        let n2 = node("n2");
        n1.ip(&[
            "link", "add", "mgebpful", "type", "veth", "peer", "name", "mgebpful", "netns",
            &n2.name,
        ]);
        n1.ip(&["addr", "add", "192.168.77.1/24", "dev", "mgebpful"]);
        n2.ip(&["addr", "add", "192.168.77.2/24", "dev", "mgebpful"]);
        n1.ip(&["link", "set", "mgebpful", "up"]);
        n2.ip(&["link", "set", "mgebpful", "up"]);
        let a = Pod::new(&n1, "a", "mgebpfa", Ipv4Addr::new(10, 78, 1, 2));
        let c = Pod::new(&n1, "c", "mgebpfc", Ipv4Addr::new(10, 78, 1, 3));
        let b = Pod::new(&n2, "b", "mgebpfb", Ipv4Addr::new(10, 78, 2, 2));
        vxlan(&n1, &["10.78.2.0/24"]);
        vxlan(&n2, &["10.78.1.0/24"]);
        let pins1 = PinDir::new();
        let pins2 = PinDir::new();
        let mut dp1 = load_mesh_node(&n1, &pins1, &["mgebpfa", "mgebpfc"]);
        let mut dp2 = load_mesh_node(&n2, &pins2, &["mgebpfb"]);

        let ipc1 = &mut dp1.maps.ipcache;
        ipc1.upsert(a.addr, 32, IpcacheEntry::local(ID_A, n1.ifindex("mgebpfa")))
            .expect("ipcache");
        ipc1.upsert(c.addr, 32, IpcacheEntry::local(ID_C, n1.ifindex("mgebpfc")))
            .expect("ipcache");
        ipc1.upsert(b.addr, 32, IpcacheEntry::remote(ID_B, UL2))
            .expect("ipcache");
        let ipc2 = &mut dp2.maps.ipcache;
        ipc2.upsert(b.addr, 32, IpcacheEntry::local(ID_B, n2.ifindex("mgebpfb")))
            .expect("ipcache");
        // The whole of node 1's pod CIDR as A's identity: were node 2 to take
        // the identity from the source address, C would pass as A.
        ipc2.upsert(
            Ipv4Addr::new(10, 78, 1, 0),
            24,
            IpcacheEntry::remote(ID_A, UL1),
        )
        .expect("ipcache");
        Self {
            dp1: Some(dp1),
            dp2: Some(dp2),
            _pins1: pins1,
            _pins2: pins2,
            a,
            c,
            b,
            n1,
            n2,
        }
    }
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn to_mesh_sends_the_sender_identity_as_vni_and_from_mesh_enforces_it() {
    let mut w = TwoNodes::new();
    let dp2 = w.dp2.as_mut().expect("dp2");
    dp2.maps.policy.select(ID_B, true, false).expect("select");
    dp2.maps
        .policy
        .allow(&PolicyRule {
            local_identity: ID_B,
            remote_identity: Some(ID_A),
            port: None,
            proto: Proto::Icmp,
            direction: Direction::Ingress,
        })
        .expect("allow");
    dp2.maps.events.drain();

    let cap = Capture::start(&w.n2, "mgebpful");
    assert!(w.a.ns.ping(w.b.addr), "A (node 1) -> B (node 2) over VXLAN");
    assert!(
        !w.c.ns.ping(w.b.addr),
        "C -> B must be dropped by node 2: C's identity (in the VNI) is not allowed"
    );
    std::thread::sleep(Duration::from_millis(100));
    let packets: Vec<Vxlan> = cap.frames().iter().filter_map(|f| parse_vxlan(f)).collect();
    drop(cap);

    let from = |src: Ipv4Addr| packets.iter().filter(move |p| p.inner_src == src);
    assert!(
        from(w.a.addr).count() >= 1,
        "A's packet on the underlay: {packets:?}"
    );
    assert!(
        from(w.a.addr).all(|p| p.vni == ID_A && p.inner_dst == w.b.addr),
        "every VXLAN packet from A carries VNI = A's identity {ID_A:#x}: {packets:?}"
    );
    assert!(
        from(w.b.addr).count() >= 1 && from(w.b.addr).all(|p| p.vni == ID_B),
        "B's reply carries VNI = B's identity {ID_B:#x}: {packets:?}"
    );
    assert!(
        from(w.c.addr).count() >= 1 && from(w.c.addr).all(|p| p.vni == ID_C),
        "C's packet carries VNI = C's identity {ID_C:#x}: {packets:?}"
    );

    let dp2 = w.dp2.as_mut().expect("dp2");
    let ev = wait_event(dp2, |e| e.reason == Some(Reason::PolicyIngress))
        .expect("node 2 reports the dropped packet from C");
    assert_eq!(ev.point, Some(Point::FromMesh));
    assert_eq!((ev.src, ev.dst), (w.c.addr, w.b.addr));
    assert_eq!(
        ev.src_identity, ID_C,
        "the source identity comes from the VNI, not from node 2's ipcache (which says {ID_A:#x})"
    );
    assert!(
        dp2.maps
            .drops
            .get(Reason::PolicyIngress)
            .expect("c")
            .packets
            >= 1
    );

    // Node 1 tracked A's flow and let B's reply in through from_mesh.
    let dp1 = w.dp1.as_mut().expect("dp1");
    assert_eq!(dp1.maps.drops.all().expect("drops"), Default::default());
    let tcx = attached_programs(&w.n1, "mgebpfvx", TcAttachType::Egress);
    assert_eq!(tcx.len(), 1, "to_mesh on the VXLAN egress");
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn to_mesh_drops_what_has_no_tunnel_endpoint() {
    let mut w = TwoNodes::new();
    let dp1 = w.dp1.as_mut().expect("dp1");
    dp1.maps.ipcache.remove(w.b.addr, 32).expect("remove");
    assert!(!w.a.ns.ping(w.b.addr));
    let dp1 = w.dp1.as_mut().expect("dp1");
    let ev = wait_event(dp1, |e| e.reason == Some(Reason::NoTunnelEndpoint))
        .expect("a no-tunnel-endpoint event");
    assert_eq!(ev.point, Some(Point::ToMesh));
    assert_eq!(
        ev.src_identity, ID_A,
        "the identity comes from the skb mark"
    );
    let _ = &w.n2;
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn strict_mode_drops_pod_traffic_to_a_remote_node_that_would_leave_unencrypted() {
    let mut w = TwoNodes::new();
    let vx = w.n1.ifindex("mgebpfvx");
    let dp1 = w.dp1.as_mut().expect("dp1");
    dp1.maps.config.set_strict(Some(vx)).expect("strict on");
    assert!(w.a.ns.ping(w.b.addr), "through the mesh device: allowed");

    // Node 1's route to node 2's pods now bypasses the mesh device.
    w.n1.ip(&[
        "route",
        "replace",
        "10.78.2.0/24",
        "via",
        "192.168.77.2",
        "dev",
        "mgebpful",
    ]);
    let dp1 = w.dp1.as_mut().expect("dp1");
    dp1.maps.events.drain();
    assert!(
        !w.a.ns.ping(w.b.addr),
        "strict mode: A -> B would leave by the underlay in clear and must be dropped"
    );
    let dp1 = w.dp1.as_mut().expect("dp1");
    assert!(
        dp1.maps
            .drops
            .get(Reason::StrictUnencrypted)
            .expect("c")
            .packets
            >= 1
    );
    let ev = wait_event(dp1, |e| e.reason == Some(Reason::StrictUnencrypted))
        .expect("a strict-unencrypted event");
    assert_eq!(
        (ev.src, ev.dst, ev.point),
        (w.a.addr, w.b.addr, Some(Point::FromPod))
    );

    // Without strict mode the same packet leaves in clear (what strict mode prevents).
    dp1.maps.config.set_strict(None).expect("strict off");
    assert!(w.a.ns.ping(w.b.addr), "strict off: the clear path works");
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_remote_nodes_own_traffic_is_remote_node_on_the_receiving_node() {
    let mut w = TwoNodes::new();
    let dp2 = w.dp2.as_mut().expect("dp2");
    dp2.maps.policy.select(ID_B, true, false).expect("select");
    dp2.maps.events.drain();
    // Node 1's own stack: to_mesh sends VNI host (1); node 2 is not that host.
    let ping = |w: &TwoNodes| {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &w.n1.name, "ping", "-c1", "-W1", "-n", "-q",
            ])
            .args(["-I", &UL1.to_string(), &w.b.addr.to_string()])
            .output()
            .expect("ping")
            .status
            .success()
    };
    assert!(!ping(&w), "B selects ingress and allows nothing");
    let dp2 = w.dp2.as_mut().expect("dp2");
    let ev = wait_event(dp2, |e| e.reason == Some(Reason::PolicyIngress))
        .expect("node 2 reports the drop");
    assert_eq!((ev.point, ev.src), (Some(Point::FromMesh), UL1));
    assert_eq!(
        ev.src_identity,
        meshgate_ebpf::identity::REMOTE_NODE,
        "another node's stack is remote-node here"
    );
    // fromEntities: remote-node.
    dp2.maps
        .policy
        .allow(&PolicyRule {
            local_identity: ID_B,
            remote_identity: Some(meshgate_ebpf::identity::REMOTE_NODE),
            port: None,
            proto: Proto::Any,
            direction: Direction::Ingress,
        })
        .expect("allow");
    assert!(ping(&w), "remote-node is allowed: node 1's stack reaches B");
}
