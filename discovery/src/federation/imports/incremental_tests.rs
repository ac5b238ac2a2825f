#![allow(clippy::unwrap_used)]
//! [`Imports::apply`] (one event judged) against [`Imports::update`] (the
//! whole view judged again) on random event sequences from three remotes
//! that claim overlapping CIDRs, bad records and each other's IDs, while
//! local nodes come and go: the events, new rejections, counts, status and
//! imported state must be the same after every event.

use super::*;
use crate::alloc::tunnel_ip;
use crate::federation::RemoteConfig;
use crate::pb;
use crate::pb::watch_event::Event as E;
use crate::test_support::key;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

const REMOTES: [(&str, u8); 3] = [("c2", 2), ("c3", 3), ("c4", 4)];

fn cidr(rng: &mut Rng) -> String {
    if rng.one_in(8) {
        format!("10.{}.0.0/16", rng.below(4))
    } else {
        format!("10.{}.{}.0/24", rng.below(4), rng.below(3))
    }
}

fn random_node(rng: &mut Rng, cluster: &str, id: u8) -> pb::Node {
    let k = 1 + rng.below(5) as u32;
    let (cluster, id) = match rng.below(30) {
        0 => ("c9".to_string(), id),
        1 => (cluster.to_string(), id + 1),
        _ => (cluster.to_string(), id),
    };
    let tunnel = if rng.one_in(30) {
        tunnel_ip(1, k)
    } else {
        tunnel_ip(id, k)
    };
    pb::Node {
        name: format!("n{k}"),
        cluster,
        cluster_id: u32::from(id),
        underlay_ip: format!("198.18.{id}.{k}"),
        listen_port: 51820,
        wg_public_key: if rng.one_in(40) {
            "nope".into()
        } else {
            key(u8::try_from(k).unwrap() + 10 * id)
        },
        pod_cidrs: vec![cidr(rng)],
        tunnel_ip: tunnel.unwrap().to_string(),
        roles: vec![],
        encryption: Default::default(),
        labels: Default::default(),
        addresses: Default::default(),
    }
}

fn random_endpoint(rng: &mut Rng, cluster: &str, id: u8) -> pb::Endpoint {
    let identity = if rng.one_in(20) {
        1 << 16 | 256
    } else {
        u32::from(id) << 16 | 256
    };
    let ip = format!("10.{}.{}.{}", rng.below(4), rng.below(3), 1 + rng.below(3));
    // Now and then an IP not written as discovery writes it (refused,
    // while the same address written right may be imported): a second key
    // for one address.
    let ip = match rng.below(30) {
        0 => format!(" {ip}"),
        1 => format!("::FFFF:{ip}"),
        2 => format!("::ffff:{ip}"),
        _ => ip,
    };
    pb::Endpoint {
        ip,
        name: "pod".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        node: format!("n{}", 1 + rng.below(5)),
        cluster: if rng.one_in(25) { "c9" } else { cluster }.into(),
        identity,
    }
}

fn random_snapshot(rng: &mut Rng, cluster: &str, id: u8) -> pb::Snapshot {
    let claimed_id = match rng.below(12) {
        0 => 1,
        1 => REMOTES[rng.below(3)].1,
        _ => id,
    };
    pb::Snapshot {
        revision: 1,
        nodes: (0..rng.below(5))
            .map(|_| random_node(rng, cluster, id))
            .collect(),
        endpoints: (0..rng.below(8))
            .map(|_| random_endpoint(rng, cluster, id))
            .collect(),
        identities: vec![pb::Identity {
            id: u32::from(id) << 16 | 256,
            labels: [("app".to_string(), "web".to_string())].into(),
        }],
        cluster: cluster.into(),
        cluster_id: u32::from(claimed_id),
        ..Default::default()
    }
}

/// One random event for a remote's view (a snapshot when `fresh`).
fn random_event(rng: &mut Rng, view: &RemoteView, cluster: &str, id: u8, fresh: bool) -> E {
    if fresh || rng.one_in(25) {
        return E::Snapshot(random_snapshot(rng, cluster, id));
    }
    match rng.below(9) {
        0..=2 => E::Upserted(pb::NodeUpserted {
            revision: 2,
            node: Some(random_node(rng, cluster, id)),
        }),
        3 => {
            // Held or released, a node's key is `cluster/name`.
            let (cluster, name) = match view
                .nodes
                .keys()
                .nth(rng.below(view.nodes.len().max(1)))
                .and_then(|k| k.split_once('/'))
            {
                Some((c, n)) => (c.to_string(), n.to_string()),
                None => (cluster.to_string(), "n1".to_string()),
            };
            E::Removed(pb::NodeRemoved {
                revision: 2,
                name,
                cluster,
                reason: 1,
            })
        }
        4..=6 => E::EndpointUpserted(pb::EndpointUpserted {
            revision: 2,
            endpoint: Some(random_endpoint(rng, cluster, id)),
        }),
        7 => {
            // A released endpoint was imported: of the view's cluster.
            let held = view
                .endpoints
                .iter()
                .nth(rng.below(view.endpoints.len().max(1)));
            let (ip, node, cluster) = match held {
                Some((ip, Some(e))) => (ip.clone(), e.node.clone(), e.cluster.clone()),
                Some((ip, None)) => (
                    ip.clone(),
                    view.node_of(ip).unwrap().to_string(),
                    view.cluster.clone(),
                ),
                None => {
                    let e = random_endpoint(rng, cluster, id);
                    (e.ip, e.node, e.cluster)
                }
            };
            E::EndpointRemoved(pb::EndpointRemoved {
                revision: 2,
                ip,
                node,
                cluster,
            })
        }
        _ => E::IdentityAdded(pb::IdentityAdded {
            revision: 2,
            identity: Some(pb::Identity {
                id: if rng.one_in(3) {
                    5 << 16 | 300
                } else {
                    u32::from(id) << 16 | 257
                },
                labels: [("app".to_string(), "db".to_string())].into(),
            }),
        }),
    }
}

fn random_local(rng: &mut Rng) -> Vec<Node> {
    (0..rng.below(3))
        .map(|k| {
            let p = pb::Node {
                name: format!("l{k}"),
                cluster: "c1".into(),
                cluster_id: 1,
                underlay_ip: format!("198.18.1.{}", k + 1),
                listen_port: 51820,
                wg_public_key: key(200 + u8::try_from(k).unwrap()),
                pod_cidrs: vec![cidr(rng)],
                tunnel_ip: tunnel_ip(1, 1 + k as u32).unwrap().to_string(),
                roles: vec![],
                encryption: Default::default(),
                labels: Default::default(),
                addresses: Default::default(),
            };
            Node::try_from(p).unwrap()
        })
        .collect()
}

fn rejected(u: &Update) -> Vec<(String, RejectReason)> {
    let mut v: Vec<(String, RejectReason)> = u
        .new_rejections
        .iter()
        .map(|r| (r.key.clone(), r.reason))
        .collect();
    v.sort();
    v
}

#[test]
fn judging_one_event_equals_judging_the_whole_view_on_random_sequences() {
    let configs: Vec<RemoteConfig> = REMOTES
        .iter()
        .map(|(n, id)| format!("{n}=http://198.18.{id}.2:7100").parse().unwrap())
        .collect();
    for seed in 1..=30u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491));
        let mut one = Imports::new(&configs);
        let mut whole = Imports::new(&configs);
        // Each side releases what it imported from its own copy of the view.
        let mut views: Vec<Option<RemoteView>> = vec![None, None, None];
        let mut whole_views: Vec<Option<RemoteView>> = vec![None, None, None];
        let mut local = random_local(&mut rng);
        for step in 0..400u64 {
            let now = step * 10;
            if rng.one_in(40) {
                local = random_local(&mut rng);
            }
            let r = rng.below(3);
            let (name, id) = REMOTES[r];
            if rng.one_in(60) {
                // The link breaks: the next session starts with a snapshot.
                one.disconnected(name, "broken".into(), now);
                whole.disconnected(name, "broken".into(), now);
                views[r] = None;
                whole_views[r] = None;
                if rng.one_in(2) {
                    let t = now + 100;
                    assert_eq!(one.expire(t, 50), whole.expire(t, 50), "seed {seed} {step}");
                }
                continue;
            }
            let event = match &views[r] {
                Some(v) => random_event(&mut rng, v, name, id, false),
                None => random_event(&mut rng, &RemoteView::default(), name, id, true),
            };
            let touched = match &mut views[r] {
                Some(v) => v.apply(event.clone()),
                slot => {
                    let E::Snapshot(s) = event.clone() else {
                        unreachable!()
                    };
                    *slot = Some(RemoteView::from_snapshot(s));
                    Touched::All
                }
            };
            let touched_whole = match &mut whole_views[r] {
                Some(v) => v.apply(event),
                slot => {
                    let E::Snapshot(s) = event else {
                        unreachable!()
                    };
                    *slot = Some(RemoteView::from_snapshot(s));
                    Touched::All
                }
            };
            assert_eq!(touched, touched_whole, "seed {seed} step {step}: touched");
            let view = views[r].as_mut().unwrap();
            let view_whole = whole_views[r].as_mut().unwrap();
            let refs: Vec<&Node> = local.iter().collect();
            let l = Local {
                cluster: "c1",
                cluster_id: 1,
                pod_cidrs: &[],
                nodes: &refs,
            };
            let a = one.apply(name, view, &touched, &l, now);
            let b = whole.update(name, view_whole, &l, now);
            let at = format!("seed {seed} step {step} remote {name} touched {touched:?}");
            assert_eq!(a.events, b.events, "{at}: events");
            assert_eq!(rejected(&a), rejected(&b), "{at}: new rejections");
            if a.services.is_some() {
                assert_eq!(a.services, b.services, "{at}: services");
            }
            assert_eq!(one.status(now), whole.status(now), "{at}: status");
            assert_eq!(one.cidrs, whole.cidrs, "{at}: CIDR index");
            // The same records released (imported as sent) on both sides.
            assert_eq!(view, view_whole, "{at}: view");
            for (n, ra) in &one.remotes {
                let rb = &whole.remotes[n];
                assert_eq!(ra.nodes, rb.nodes, "{at}: nodes of {n}");
                assert_eq!(ra.endpoints, rb.endpoints, "{at}: endpoints of {n}");
                assert_eq!(ra.identities, rb.identities, "{at}: identities of {n}");
                assert_eq!(ra.rejected_keys, rb.rejected_keys, "{at}: rejected of {n}");
            }
        }
    }
}
