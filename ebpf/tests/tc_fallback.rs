//! The tc clsact attach mode, the kernels before 6.6 (no TCX) get it: cls_bpf
//! filters in direct-action mode at fixed slots, programs replaced in place
//! across restarts with no packet left without a program, records moved
//! between modes without a gap, everything detached on removal (root only,
//! real packets). Forced with `AttachChoice::Tc` so it runs on TCX kernels
//! too; on a kernel without TCX (the kernel lab's 6.1) it is the default.

#[path = "support/world.rs"]
mod world;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use aya::programs::TcAttachType::Ingress;
use meshgate_ebpf::{
    AttachChoice, AttachMode, Attachment, Datapath, Direction, Error, Hook, PolicyRule, Proto,
    Reason,
};
use world::*;

/// B admits A on UDP 7000 only; sockets for the stream.
fn with_policy(w: &mut OneNode) -> (UdpSocket, UdpSocket, UdpSocket) {
    let (a, b) = (w.a.addr, w.b.addr);
    let dp = w.dp();
    dp.maps.policy.select(ID_B, true, false).expect("select");
    dp.maps
        .policy
        .allow(&PolicyRule {
            local_identity: ID_B,
            remote_identity: Some(ID_A),
            port: Some(7000),
            proto: Proto::Udp,
            direction: Direction::Ingress,
        })
        .expect("allow");
    let allowed = w.b.ns.udp_bind(b, 7000);
    let denied = w.b.ns.udp_bind(b, 7001);
    let from = w.a.ns.udp_bind(a, 0);
    assert!(udp_passes(&from, &allowed, SocketAddrV4::new(b, 7000)));
    assert!(!udp_passes(&from, &denied, SocketAddrV4::new(b, 7001)));
    (from, allowed, denied)
}

/// The one bpf filter on `iface`'s ingress, checked to be ours at its slot.
fn our_filter(w: &OneNode, iface: &str) -> TcFilter {
    let filters = tc_filters(&w.node, iface, Ingress);
    let [f] = filters.as_slice() else {
        panic!("expected exactly one tc filter on {iface}, found {filters:?}");
    };
    let (pref, handle) = Hook::FromPod.tc_slot();
    assert_eq!((f.pref, f.handle), (pref, handle), "{f:?}");
    assert_eq!(f.name, "mg_from_pod", "{f:?}");
    assert!(f.direct_action, "{f:?}");
    f.clone()
}

fn assert_no_gap(c: &StreamCount, what: &str) {
    assert!(c.sent > 50, "{what}: the stream barely ran: {c:?}");
    assert_eq!(
        c.leaked, 0,
        "{what}: {} of {} denied datagrams got through, so packets went without a program",
        c.leaked, c.sent
    );
    assert_eq!(c.ok, c.sent, "{what}: allowed datagrams lost: {c:?}");
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn tc_mode_replaces_programs_in_place_under_traffic_and_detaches_cleanly() {
    let mut w = OneNode::with(AttachChoice::Tc);
    assert_eq!(w.dp().attach_mode(), AttachMode::Tc);
    let (from, allowed, denied) = with_policy(&mut w);
    let mut prog = our_filter(&w, "mgebpfa").prog_id;
    assert_eq!(
        tcx_programs(&w.node, "mgebpfa", Ingress),
        Vec::<u32>::new(),
        "nothing attached by TCX in tc mode"
    );

    // Three agent restarts under a 2 ms stream: the filter outlives the
    // loader and each new load swaps its program into the same filter.
    let stream = Stream::start(&from, &allowed, &denied);
    std::thread::sleep(Duration::from_millis(100));
    for round in 0..3 {
        drop(w.dp.take());
        let f = our_filter(&w, "mgebpfa");
        assert_eq!(
            f.prog_id, prog,
            "round {round}: the filter stays while no loader runs"
        );
        let report = w.load();
        assert!(report.created.is_empty(), "round {round}: {report:?}");
        assert!(report.failed.is_empty(), "round {round}: {report:?}");
        assert_eq!(
            report.replaced.iter().cloned().collect::<BTreeSet<_>>(),
            OneNode::desired(),
            "round {round}"
        );
        let f = our_filter(&w, "mgebpfa");
        assert_ne!(
            f.prog_id, prog,
            "round {round}: the new load's program is in the filter"
        );
        prog = f.prog_id;
        our_filter(&w, "mgebpfb");
        std::thread::sleep(Duration::from_millis(100));
    }
    let count = stream.finish();
    assert_no_gap(&count, "3 restarts in tc mode");
    let drops = w.dp().maps.drops.get(Reason::PolicyIngress).expect("c");
    assert!(
        drops.packets >= count.sent as u64,
        "every denied datagram dropped and counted: {drops:?}, {count:?}"
    );

    // Detached: reconcile to nothing deletes the filters and the records.
    let node = &w.node;
    let dp = w.dp.as_mut().expect("dp");
    let report = node
        .run(|| dp.reconcile(&BTreeSet::new()))
        .expect("reconcile");
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert_eq!(
        tc_filters(&w.node, "mgebpfa", Ingress),
        vec![],
        "filter deleted"
    );
    assert_eq!(
        w.dp().pinned_attachments().expect("records"),
        BTreeSet::new()
    );
    assert!(
        udp_passes(&from, &denied, SocketAddrV4::new(w.b.addr, 7001)),
        "with no filter left, nothing enforces the policy"
    );

    // Attached again (records made anew).
    let report = w.load();
    assert_eq!(report.created.len(), 2, "{report:?}");
    our_filter(&w, "mgebpfa");
    // The interface goes and comes back with the same name: the record is
    // stale, the kernel has no filter there, so the next attach creates one.
    w.node.ip(&["link", "del", "mgebpfb"]);
    let b2 = Pod::new(&w.node, "b2", "mgebpfb", Ipv4Addr::new(10, 77, 0, 5));
    let node = &w.node;
    let dp = w.dp.as_mut().expect("dp");
    let report = node.run(|| dp.attach(&Attachment::new("mgebpfb", Hook::FromPod)));
    assert_eq!(
        report.expect("re-attach"),
        meshgate_ebpf::AttachOutcome::Created
    );
    our_filter(&w, "mgebpfb");

    // Removing the pin directory deletes the filters it records, too.
    drop(w.dp.take());
    let pins = w.pins.0.clone();
    w.node
        .run(|| meshgate_ebpf::remove_pin_dir(&pins))
        .expect("remove the pin dir");
    assert!(!pins.exists());
    assert_eq!(tc_filters(&w.node, "mgebpfa", Ingress), vec![]);
    assert_eq!(tc_filters(&w.node, "mgebpfb", Ingress), vec![]);
    drop(b2);
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn switching_the_attach_mode_moves_attachments_without_a_gap() {
    require_root();
    let pins = PinDir::new();
    let probe = node("probe");
    let tcx = probe.run(|| Datapath::load_with(&pins.0, AttachChoice::Tcx));
    let tcx_missing = match tcx {
        Ok(dp) => {
            assert_eq!(dp.attach_mode(), AttachMode::Tcx);
            false
        }
        Err(e @ Error::TcxMissing { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("Linux 6.6") && msg.contains("unset"), "{msg}");
            assert_eq!(
                probe.run(|| {
                    Datapath::load_with(&pins.0, AttachChoice::Auto)
                        .expect("auto")
                        .attach_mode()
                }),
                AttachMode::Tc,
                "auto falls back to tc"
            );
            true
        }
        Err(e) => panic!("loading with TCX: {e}"),
    };
    if tcx_missing {
        return; // no TCX to migrate from on this kernel (tc was checked above)
    }

    let mut w = OneNode::with(AttachChoice::Tcx);
    let (from, allowed, denied) = with_policy(&mut w);
    assert_eq!(tcx_programs(&w.node, "mgebpfa", Ingress).len(), 1);
    let stream = Stream::start(&from, &allowed, &denied);
    std::thread::sleep(Duration::from_millis(100));
    // TCX -> tc: the filter is made, then the link is unpinned.
    drop(w.dp.take());
    w.choice = AttachChoice::Tc;
    let report = w.load();
    assert_eq!(report.created.len(), 2, "{report:?}");
    std::thread::sleep(Duration::from_millis(100));
    let count = stream.finish();
    // Creating the clsact qdisc (there was none under TCX) has the kernel
    // graft it with the device's queues deactivated for a moment: a packet
    // leaving B's veth then can be lost (seen: 1 of ~250). Lost, never
    // unfiltered; with the qdisc made beforehand nothing is lost.
    assert!(count.sent > 50, "the stream barely ran: {count:?}");
    assert_eq!(
        count.leaked, 0,
        "TCX -> tc: packets went without a program: {count:?}"
    );
    assert!(
        count.ok + 3 >= count.sent,
        "TCX -> tc: more allowed datagrams lost than a qdisc graft explains: {count:?}"
    );
    assert_eq!(tcx_programs(&w.node, "mgebpfa", Ingress), Vec::<u32>::new());
    our_filter(&w, "mgebpfa");
    // tc -> TCX: the link is made, then the filter is deleted.
    let stream = Stream::start(&from, &allowed, &denied);
    std::thread::sleep(Duration::from_millis(100));
    drop(w.dp.take());
    w.choice = AttachChoice::Tcx;
    let report = w.load();
    assert_eq!(report.created.len(), 2, "{report:?}");
    std::thread::sleep(Duration::from_millis(100));
    let count = stream.finish();
    assert_no_gap(&count, "tc -> TCX");
    assert_eq!(tcx_programs(&w.node, "mgebpfa", Ingress).len(), 1);
    assert_eq!(tc_filters(&w.node, "mgebpfa", Ingress), vec![]);
    assert_eq!(
        w.dp().pinned_attachments().expect("records"),
        OneNode::desired()
    );
}
