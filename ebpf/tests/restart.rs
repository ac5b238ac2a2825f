//! Pinning: state and enforcement survive the loader going away and coming
//! back, re-attaching has no unfiltered gap, reconcile removes what is no
//! longer wanted (root only, real packets).

#[path = "support/world.rs"]
mod world;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshgate_ebpf::{
    Attachment, Datapath, Direction, Error, Hook, IpcacheEntry, Maps, PolicyRule, Proto, Reason,
    Verdict,
};
use world::*;

fn allow_a_udp_7000() -> PolicyRule {
    PolicyRule {
        local_identity: ID_B,
        remote_identity: Some(ID_A),
        port: Some(7000),
        proto: Proto::Udp,
        direction: Direction::Ingress,
    }
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn pinned_state_survives_a_reload_and_enforcement_has_no_gap() {
    let mut w = OneNode::new();
    let (a, b) = (w.a.addr, w.b.addr);
    let dp = w.dp();
    dp.maps.policy.select(ID_B, true, false).expect("select");
    dp.maps.policy.allow(&allow_a_udp_7000()).expect("allow");
    let b_allowed = w.b.ns.udp_bind(b, 7000);
    let b_denied = w.b.ns.udp_bind(b, 7001);
    let a_sock = w.a.ns.udp_bind(a, 0);
    assert!(udp_passes(&a_sock, &b_allowed, SocketAddrV4::new(b, 7000)));
    assert!(!udp_passes(&a_sock, &b_denied, SocketAddrV4::new(b, 7001)));
    let progs_before = w.attached_programs("mgebpfa");
    assert_eq!(progs_before.len(), 1, "from_pod attached once");
    let drops_before = w.dp().maps.drops.get(Reason::PolicyIngress).expect("c");

    // A steady stream to an allowed and a denied port, across the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = count_received(&b_allowed, b"gap-ok", stop.clone());
    let leaked = count_received(&b_denied, b"gap-no", stop.clone());
    let sender = {
        let stop = stop.clone();
        let s = a_sock.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                s.send_to(b"gap-ok", SocketAddrV4::new(b, 7000))
                    .expect("send");
                s.send_to(b"gap-no", SocketAddrV4::new(b, 7001))
                    .expect("send");
                sent += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(100));

    // The agent goes away: its Datapath is dropped, the pins stay.
    drop(w.dp.take());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        w.attached_programs("mgebpfa"),
        progs_before,
        "the filter stays attached while no loader runs"
    );
    // The pinned maps can be opened alone (as the DNS proxy would).
    let maps = Maps::open_pinned(&w.pins.0.join("maps")).expect("open pinned maps");
    assert_eq!(
        maps.ipcache.lookup(a).expect("lookup"),
        Some(IpcacheEntry::local(ID_A, w.node.ifindex("mgebpfa")))
    );
    drop(maps);

    // It comes back: same pins, new programs swapped into the live links.
    let report = w.load();
    assert!(report.created.is_empty(), "nothing re-created: {report:?}");
    assert_eq!(
        report.replaced.iter().cloned().collect::<BTreeSet<_>>(),
        OneNode::desired()
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");

    let ok = ok.join().expect("receiver");
    let leaked = leaked.join().expect("receiver");
    assert_eq!(
        leaked, 0,
        "{leaked} of {sent} denied datagrams got through during the restart"
    );
    assert_eq!(ok, sent, "allowed datagrams lost during the restart");

    let progs_after = w.attached_programs("mgebpfa");
    assert_eq!(
        progs_after.len(),
        1,
        "still exactly one program on the veth"
    );
    assert_ne!(
        progs_after, progs_before,
        "the new load's program is the one attached"
    );

    // State kept: ipcache, policy and counters are the same maps.
    let dp = w.dp();
    assert!(dp.maps.ipcache.lookup(b).expect("lookup").is_some());
    assert_eq!(
        dp.maps.policy.get(&allow_a_udp_7000()).expect("get"),
        Some(Verdict::Allow)
    );
    let drops_after = dp.maps.drops.get(Reason::PolicyIngress).expect("c");
    assert!(
        drops_after.packets >= drops_before.packets + sent as u64,
        "every denied datagram counted across the restart: {drops_before:?} -> {drops_after:?}, {sent} sent"
    );
    // And enforcement goes on with the new programs.
    assert!(udp_passes(&a_sock, &b_allowed, SocketAddrV4::new(b, 7000)));
    assert!(!udp_passes(&a_sock, &b_denied, SocketAddrV4::new(b, 7001)));
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn reconcile_detaches_interfaces_no_longer_desired_and_removes_stale_pins() {
    let mut w = OneNode::new();
    let c = Pod::new(&w.node, "c", "mgebpfc", Ipv4Addr::new(10, 77, 0, 4));
    let mut desired = OneNode::desired();
    desired.insert(Attachment::new("mgebpfc", Hook::FromPod));
    let node = &w.node;
    let dp = w.dp.as_mut().expect("dp");
    let report = node.run(|| dp.reconcile(&desired)).expect("reconcile");
    assert_eq!(
        report.created,
        vec![Attachment::new("mgebpfc", Hook::FromPod)]
    );
    assert_eq!(report.replaced.len(), 2);
    assert_eq!(w.attached_programs("mgebpfc").len(), 1);

    // B's address unknown to the ipcache: from_pod on B's veth drops its packets.
    let b = w.b.addr;
    w.dp().maps.ipcache.remove(b, 32).expect("remove");
    assert!(
        !w.b.ns.ping(w.a.addr),
        "B's source is unknown while filtered"
    );
    assert!(
        w.dp()
            .maps
            .drops
            .get(Reason::UnknownSource)
            .expect("c")
            .packets
            >= 1
    );

    // A map pin this build does not know (left by an older version).
    let maps_dir = w.pins.0.join("maps");
    aya::maps::MapData::from_pin(maps_dir.join("mg_ct"))
        .expect("open mg_ct")
        .pin(maps_dir.join("mg_old_map"))
        .expect("pin a stale map");
    // C's veth disappears while attached (its pod was deleted).
    drop(c);

    let only_a: BTreeSet<_> = [Attachment::new("mgebpfa", Hook::FromPod)].into();
    let mut with_missing = only_a.clone();
    with_missing.insert(Attachment::new("mgebpfgone", Hook::FromPod));
    let node = &w.node;
    let dp = w.dp.as_mut().expect("dp");
    let report = node.run(|| dp.reconcile(&with_missing)).expect("reconcile");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0.iface, "mgebpfgone");
    assert!(report.failed[0]
        .1
        .contains("no network interface named mgebpfgone"));
    assert_eq!(
        report.removed,
        vec![
            Attachment::new("mgebpfb", Hook::FromPod),
            Attachment::new("mgebpfc", Hook::FromPod)
        ]
    );
    assert_eq!(
        report.replaced,
        vec![Attachment::new("mgebpfa", Hook::FromPod)]
    );
    assert_eq!(report.stale_pins, vec![maps_dir.join("mg_old_map")]);
    assert!(!maps_dir.join("mg_old_map").exists());
    assert_eq!(
        w.attached_programs("mgebpfb"),
        Vec::<u32>::new(),
        "detached from B's veth"
    );
    assert_eq!(w.attached_programs("mgebpfa").len(), 1, "A's stays");
    assert_eq!(w.dp().pinned_attachments().expect("pins"), only_a);
    assert!(
        w.b.ns.ping(w.a.addr),
        "with nothing on B's veth, its packets are no longer filtered"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_pinned_map_of_another_layout_is_refused_with_the_fix() {
    require_root();
    let pins = PinDir::new();
    // Pin a hash map of the policy layout where mg_ct (an LRU hash of another layout) belongs.
    let dp = Datapath::load(&pins.0).expect("load");
    let maps_dir = pins.0.join("maps");
    drop(dp);
    std::fs::remove_file(maps_dir.join("mg_ct")).expect("unpin mg_ct");
    aya::maps::MapData::from_pin(maps_dir.join("mg_policy"))
        .expect("open")
        .pin(maps_dir.join("mg_ct"))
        .expect("pin");
    match Datapath::load(&pins.0) {
        Err(e @ Error::PinnedMapMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("mg_ct") && msg.contains("Remove it"), "{msg}");
        }
        Err(e) => panic!("expected PinnedMapMismatch, got {e}"),
        Ok(_) => panic!("a pinned map of another layout was reused"),
    }
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn attaching_to_a_missing_interface_says_so() {
    require_root();
    let pins = PinDir::new();
    let node = node("none");
    let err = node
        .run(|| {
            let mut dp = Datapath::load(&pins.0).expect("load");
            dp.attach(&Attachment::new("mgebpfnope", Hook::FromPod))
        })
        .expect_err("no such interface");
    assert!(
        matches!(&err, Error::NoSuchInterface { iface } if iface == "mgebpfnope"),
        "{err}"
    );
}
