//! The mesh core on a virtual clock: no tunnel, no netlink, no sleep.
//! Time is an `Instant` the test moves; the tunnel's receive ages are
//! what the test says the peers sent.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use meshgate_model::pb;
use meshgate_tunnel::{NodeKey, PeerChange};

use super::*;
use crate::liveness::{DEAD_AFTER, RETURN_HOLD};

fn me(name: &str) -> Facts {
    Facts {
        name: format!("c1/{name}"),
        cluster: "c1".into(),
        gateway: false,
        encryption: Encryption::default(),
    }
}

/// A node record; `n` picks its underlay (198.18.<cluster>.n), pod CIDR
/// (10.<cluster>.n.0/24) and tunnel IP (100.64.<cluster>.n).
fn node(cluster: u8, name: &str, n: u8, roles: &[&str]) -> pb::Node {
    pb::Node {
        name: name.into(),
        cluster: format!("c{cluster}"),
        cluster_id: u32::from(cluster),
        underlay_ip: format!("198.18.{cluster}.{n}"),
        listen_port: 51820,
        wg_public_key: NodeKey::generate().public().to_base64(),
        pod_cidrs: vec![format!("10.{cluster}.{n}.0/24")],
        tunnel_ip: format!("100.64.{cluster}.{n}"),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        encryption: String::new(),
        labels: Default::default(),
        addresses: Default::default(),
    }
}

fn records(nodes: &[pb::Node]) -> Input {
    Input::Nodes(Arc::new(
        nodes
            .iter()
            .map(|n| (format!("{}/{}", n.cluster, n.name), n.clone()))
            .collect(),
    ))
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Performs the core's effects as the shell would, every peer change
/// succeeding unless `fails` says so; returns them.
fn drive(core: &mut MeshCore, now: Instant, fails: impl Fn(&PeerChange) -> bool) -> Vec<Effect> {
    let mut seen = Vec::new();
    while let Some(e) = core.poll_effect() {
        if let Effect::ApplyPeer(change) = &e {
            let answer = if fails(change) {
                Input::PeerFailed(change.clone())
            } else {
                Input::PeerApplied(change.clone())
            };
            core.handle(answer, now);
        }
        seen.push(e);
    }
    seen
}

fn ok(core: &mut MeshCore, now: Instant) -> Vec<Effect> {
    drive(core, now, |_| false)
}

fn peer_changes(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ApplyPeer(PeerChange::Add(p)) => Some(format!("add {}", p.name)),
            Effect::ApplyPeer(PeerChange::Update { new, .. }) => {
                Some(format!("update {}", new.name))
            }
            Effect::ApplyPeer(PeerChange::Remove(p)) => Some(format!("remove {}", p.name)),
            _ => None,
        })
        .collect()
}

/// The peer that carries `ip` now.
fn carrier(core: &MeshCore, ip: &str) -> Option<String> {
    let ip: Ipv4Addr = ip.parse().unwrap();
    core.peers()
        .values()
        .find(|p| p.allowed_ips.iter().any(|n| n.contains(&ip)))
        .map(|p| p.name.clone())
}

#[test]
fn a_snapshot_peers_every_other_node_routes_their_prefixes_and_saves_what_was_applied() {
    let t0 = Instant::now();
    let mut core = MeshCore::new(me("n1"), t0);
    // Before any snapshot: nothing is decided, whatever the tunnel says.
    core.handle(Input::TunnelRx(BTreeMap::new()), t0);
    assert!(ok(&mut core, t0).is_empty());

    let mut bad = node(1, "n3", 3, &[]);
    bad.wg_public_key = "short".into();
    let nodes = [node(1, "n1", 1, &[]), node(1, "n2", 2, &[]), bad];
    core.handle(records(&nodes), t0);
    let effects = ok(&mut core, t0);
    assert_eq!(peer_changes(&effects), ["add c1/n2"], "{effects:?}");
    let problems: Vec<&Vec<String>> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Problems(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(
        problems.len() == 1 && problems[0].len() == 1 && problems[0][0].contains("c1/n3"),
        "{problems:?}"
    );
    let routes: Vec<Ipv4Net> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::AddRoute { net, src } => {
                assert_eq!(*src, None, "no tunnel address yet");
                Some(*net)
            }
            _ => None,
        })
        .collect();
    assert_eq!(routes, [net("10.1.2.0/24"), net("100.64.1.2/32")]);
    match effects.last() {
        Some(Effect::Save(saved)) => {
            assert_eq!(saved.peers.keys().collect::<Vec<_>>(), ["c1/n2"])
        }
        other => panic!("the last effect is the save, after every change: {other:?}"),
    }

    // The same records again: nothing to do, and the problem is not
    // reported twice.
    core.handle(records(&nodes), t0 + Duration::from_secs(1));
    let again = ok(&mut core, t0 + Duration::from_secs(1));
    assert!(again.is_empty(), "{again:?}");
    // Without cluster gateways and with nothing to retry, no wake-up.
    assert_eq!(core.poll_timeout(), None);

    // n2 leaves: its peer and its routes go, and the save says so.
    core.handle(records(&nodes[..1]), t0 + Duration::from_secs(2));
    let gone = ok(&mut core, t0 + Duration::from_secs(2));
    assert_eq!(peer_changes(&gone), ["remove c1/n2"]);
    let removed: Vec<Ipv4Net> = gone
        .iter()
        .filter_map(|e| match e {
            Effect::RemoveRoute(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(removed, [net("10.1.2.0/24"), net("100.64.1.2/32")]);
    assert!(
        matches!(gone.last(), Some(Effect::Save(s)) if s.peers.is_empty()),
        "{gone:?}"
    );
}

#[test]
fn a_failed_change_is_retried_after_two_seconds_and_not_on_every_input() {
    let t0 = Instant::now();
    let mut core = MeshCore::new(me("n1"), t0);
    let nodes = [node(1, "n1", 1, &[]), node(1, "n2", 2, &[])];
    core.handle(records(&nodes), t0);
    let first = drive(&mut core, t0, |_| true);
    assert_eq!(peer_changes(&first), ["add c1/n2"]);
    assert!(
        matches!(first.last(), Some(Effect::Save(s)) if s.peers.is_empty()),
        "the save holds what the tunnel has: nothing yet: {first:?}"
    );
    assert_eq!(core.poll_timeout(), Some(t0 + RETRY));

    // Inputs before the retry is due ask for nothing again.
    for ms in [100, 500, 1_999] {
        let t = t0 + Duration::from_millis(ms);
        core.handle(records(&nodes), t);
        core.handle(Input::TunnelRx(BTreeMap::new()), t);
        let effects = ok(&mut core, t);
        assert!(peer_changes(&effects).is_empty(), "at {ms} ms: {effects:?}");
    }
    // Due: tried again, and it works this time.
    let t = t0 + RETRY;
    core.handle(Input::TunnelRx(BTreeMap::new()), t);
    let retry = ok(&mut core, t);
    assert_eq!(peer_changes(&retry), ["add c1/n2"]);
    assert_eq!(core.peers().keys().collect::<Vec<_>>(), ["c1/n2"]);
    assert!(
        matches!(retry.last(), Some(Effect::Save(s)) if s.peers.len() == 1),
        "{retry:?}"
    );
    assert_eq!(core.poll_timeout(), None, "nothing left to retry");
}

/// c1 (this node's, no gateways) reaches c2's ordinary node w through
/// c2's active gateway, g1 or g2.
#[test]
fn a_silent_cluster_gateway_is_replaced_within_a_second_and_taken_back_only_after_it_settles() {
    let t0 = Instant::now();
    let mut core = MeshCore::new(me("n1"), t0);
    let gw = "cluster-gateway";
    let nodes = [
        node(1, "n1", 1, &[]),
        node(2, "g1", 1, &[gw]),
        node(2, "g2", 2, &[gw]),
        node(2, "w", 3, &[]),
    ];
    let w_pods = "10.2.3.7";
    // The tunnel as the test plays it: when each gateway was last heard.
    let mut heard: BTreeMap<&str, Option<Instant>> =
        BTreeMap::from([("c2/g1", Some(t0)), ("c2/g2", Some(t0))]);
    let ages = |heard: &BTreeMap<&str, Option<Instant>>, now: Instant| {
        heard
            .iter()
            .map(|(n, at)| {
                let age = at.map(|at| now.duration_since(at).as_millis() as u64);
                (n.to_string(), age)
            })
            .collect::<BTreeMap<String, Option<u64>>>()
    };
    core.handle(Input::TunnelRx(ages(&heard, t0)), t0);
    core.handle(records(&nodes), t0);
    let start = ok(&mut core, t0);
    assert!(
        start.contains(&Effect::GatewayChosen {
            cluster: "c2".into(),
            from: None,
            to: "c2/g1".into()
        }),
        "{start:?}"
    );
    assert_eq!(carrier(&core, w_pods).as_deref(), Some("c2/g1"));
    assert_eq!(core.gateways()[0].active, "c2/g1");
    // With gateways in the mesh the core asks for the tunnel every tick.
    assert_eq!(core.poll_timeout(), Some(t0 + LIVENESS_TICK));

    // Run the shell's loop on the virtual clock: at every wake-up the
    // tunnel is read. Both gateways keep talking until g1 falls silent.
    let mut now = t0;
    let silent_at = t0 + Duration::from_secs(3);
    let back_at = t0 + Duration::from_secs(6);
    let mut switched = None;
    let mut returned = None;
    let mut chosen = Vec::new();
    while now < t0 + Duration::from_secs(10) {
        now = core
            .poll_timeout()
            .expect("ticks while gateways are in the mesh");
        heard.insert("c2/g2", Some(now));
        if now < silent_at || now >= back_at {
            heard.insert("c2/g1", Some(now));
        }
        core.handle(Input::TunnelRx(ages(&heard, now)), now);
        for e in ok(&mut core, now) {
            if let Effect::GatewayChosen { to, .. } = &e {
                chosen.push((to.clone(), now));
            }
        }
        let c = carrier(&core, w_pods);
        if switched.is_none() && c.as_deref() == Some("c2/g2") {
            switched = Some(now);
        }
        if switched.is_some() && returned.is_none() && c.as_deref() == Some("c2/g1") {
            returned = Some(now);
        }
    }
    let switched = switched.expect("w's traffic moves to g2");
    // The last tick g1 was heard at.
    let last_heard = silent_at - LIVENESS_TICK;
    let after = switched.duration_since(last_heard);
    assert!(
        after > DEAD_AFTER && after <= DEAD_AFTER + LIVENESS_TICK,
        "moved {after:?} after g1 was last heard (dead after {DEAD_AFTER:?})"
    );
    let returned = returned.expect("w's traffic goes back to g1, first by name, once it is up");
    let held = returned.duration_since(back_at);
    assert!(
        held >= RETURN_HOLD && held <= RETURN_HOLD + LIVENESS_TICK * 2,
        "taken back {held:?} after g1 spoke again (held for {RETURN_HOLD:?})"
    );
    let order: Vec<&str> = chosen.iter().map(|(g, _)| g.as_str()).collect();
    assert_eq!(order, ["c2/g2", "c2/g1"], "one move each way: {chosen:?}");
}

#[test]
fn a_resume_puts_back_the_last_peers_and_a_new_tunnel_address_re_sources_every_route() {
    let t0 = Instant::now();
    // What the last agent left.
    let mut first = MeshCore::new(me("n1"), t0);
    let nodes = [node(1, "n1", 1, &[]), node(1, "n2", 2, &[])];
    first.handle(Input::TunnelIp("100.64.1.1".parse().unwrap()), t0);
    first.handle(records(&nodes), t0);
    let saved = match ok(&mut first, t0).pop() {
        Some(Effect::Save(s)) => s,
        other => panic!("{other:?}"),
    };

    let mut core = MeshCore::new(me("n1"), t0);
    core.handle(Input::Resume(saved), t0);
    let resumed = ok(&mut core, t0);
    assert_eq!(
        resumed.first(),
        Some(&Effect::SetAddress("100.64.1.1".parse().unwrap()))
    );
    assert_eq!(peer_changes(&resumed), ["add c1/n2"]);
    assert!(resumed.iter().any(|e| matches!(e,
        Effect::AddRoute { net: n, src: Some(s) } if *n == net("10.1.2.0/24") && s.to_string() == "100.64.1.1")));

    // Discovery's snapshot says the same: nothing is touched.
    core.handle(records(&nodes), t0);
    let same = ok(&mut core, t0);
    assert!(same.is_empty(), "{same:?}");
    // Discovery gives the same address: nothing either.
    core.handle(Input::TunnelIp("100.64.1.1".parse().unwrap()), t0);
    assert!(ok(&mut core, t0).is_empty());

    // A new address: the interface gets it, every route its new source.
    let b: Ipv4Addr = "100.64.1.9".parse().unwrap();
    core.handle(Input::TunnelIp(b), t0);
    let moved = ok(&mut core, t0);
    assert_eq!(moved[0], Effect::SetAddress(b));
    let resourced: Vec<Ipv4Net> = moved[1..]
        .iter()
        .map(|e| match e {
            Effect::AddRoute { net, src } => {
                assert_eq!(*src, Some(b));
                *net
            }
            other => panic!("only routes follow the address: {other:?}"),
        })
        .collect();
    assert_eq!(resourced, [net("10.1.2.0/24"), net("100.64.1.2/32")]);

    // Setting a third address fails: the core goes back to b, and asks
    // again when discovery gives it again.
    let c: Ipv4Addr = "100.64.1.10".parse().unwrap();
    core.handle(Input::TunnelIp(c), t0);
    ok(&mut core, t0);
    core.handle(Input::TunnelIpFailed(c), t0);
    assert_eq!(core.tunnel_ip(), Some(b));
    core.handle(Input::TunnelIp(c), t0);
    assert_eq!(ok(&mut core, t0)[0], Effect::SetAddress(c));
}

#[test]
fn an_egress_gateway_keeps_every_peer_alive_faster() {
    let t0 = Instant::now();
    let mut core = MeshCore::new(me("n1"), t0);
    core.handle(records(&[node(1, "n1", 1, &[]), node(1, "n2", 2, &[])]), t0);
    ok(&mut core, t0);
    assert_eq!(core.peers()["c1/n2"].keepalive_ms, None);
    core.handle(Input::EgressGateway(true), t0);
    let effects = ok(&mut core, t0);
    assert_eq!(peer_changes(&effects), ["update c1/n2"]);
    assert_eq!(
        core.peers()["c1/n2"].keepalive_ms,
        Some(crate::liveness::EGRESS_KEEPALIVE_MS)
    );
    // Said again: nothing changes.
    core.handle(Input::EgressGateway(true), t0);
    assert!(ok(&mut core, t0).is_empty());
}
