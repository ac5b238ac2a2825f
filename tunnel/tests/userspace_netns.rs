//! The userspace WireGuard device between two real network namespaces:
//! real handshakes, real crypto, a TUN device per side. Discovery's part is
//! played by the test (it hands each side the other's key and address).
//!
//! Needs root (network namespaces, TUN): `#[ignore]`d for unprivileged
//! runs, run by `cargo xtask test`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use meshgate_tunnel::backend::Backend;
use meshgate_tunnel::tun::{Tun, WantOffloads};
use meshgate_tunnel::userspace::{UserspaceDevice, UserspaceOptions};
use meshgate_tunnel::{routes, NodeKey, PeerChange, PeerConfig};

mod support;

use support::{in_ns, ip, Netns};

fn peer(name: &str, key: &NodeKey, underlay: &str, tunnel: &str) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        public_key: key.public().to_base64(),
        endpoint: format!("{underlay}:51820").parse().unwrap(),
        allowed_ips: vec![format!("{tunnel}/32").parse().unwrap()],
        keepalive_ms: None,
        tunnel_ip: None,
    }
}

fn start(ns: &str, key: &NodeKey, me: &str, other: PeerConfig) -> UserspaceDevice {
    let key = key.clone();
    let me = me.to_string();
    in_ns(ns, move || {
        let dev = UserspaceDevice::start("mgt0", &key, 51820).unwrap();
        routes::configure_interface("mgt0", me.parse().unwrap(), 1420).unwrap();
        dev.apply(&PeerChange::Add(other.clone())).unwrap();
        routes::add_route("mgt0", &other.allowed_ips[0], Some(me.parse().unwrap())).unwrap();
        dev
    })
}

fn ping(ns: &str, to: &str, count: u32, interval: &str) -> (u32, u32) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-W",
            "1",
            "-i",
            interval,
            "-c",
            &count.to_string(),
            to,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u32> = line
        .split(',')
        .take(2)
        .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[test]
#[ignore = "needs root (network namespaces, TUN): cargo xtask test runs it"]
fn two_devices_handshake_carry_traffic_rotate_without_loss_and_forget_a_removed_peer() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (_guard, a, b) = two_nodes("", 250);

    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let peer_b = peer("t/b", &kb, "198.18.250.2", "100.64.250.2");
    let dev_a = start(&a, &ka, "100.64.250.1", peer_b.clone());
    let peer_a = peer("t/a", &ka, "198.18.250.1", "100.64.250.1");
    let dev_b = start(&b, &kb, "100.64.250.2", peer_a.clone());

    assert_eq!(
        ping(&a, "100.64.250.2", 3, "0.1"),
        (3, 3),
        "no traffic through the tunnel"
    );
    assert!(dev_a.stats()[0].last_handshake_age_ms.is_some());
    assert!(dev_b.stats()[0].rx_bytes > 0);

    // Rotate a's key during a continuous ping; b learns the new key as it
    // would from discovery, a moment later.
    let pinger = {
        let a = a.clone();
        std::thread::spawn(move || ping(&a, "100.64.250.2", 400, "0.01"))
    };
    std::thread::sleep(Duration::from_millis(800));
    let ka2 = NodeKey::generate();
    let rotated = std::time::Instant::now();
    dev_a.rotate_key(&ka2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let peer_a2 = peer("t/a", &ka2, "198.18.250.1", "100.64.250.1");
    dev_b
        .apply(&PeerChange::Update {
            old: peer_a.clone(),
            new: peer_a2.clone(),
        })
        .unwrap();
    let (sent, received) = pinger.join().unwrap();
    assert_eq!((sent, received), (400, 400), "key rotation lost packets");
    assert_eq!(dev_b.stats()[0].public_key, ka2.public().to_base64());
    // The new session is the one in use: b's handshake with a is younger
    // than the rotation.
    let since = rotated.elapsed().as_millis() as u64;
    let age = dev_b.stats()[0].last_handshake_age_ms.unwrap();
    assert!(
        age < since,
        "b's handshake with a is {age} ms old, the rotation {since} ms"
    );
    let age = dev_a.stats()[0].last_handshake_age_ms.unwrap();
    assert!(
        age < since,
        "a's handshake with b is {age} ms old, the rotation {since} ms"
    );

    // A removed peer gets nothing through any more.
    dev_b.apply(&PeerChange::Remove(peer_a2)).unwrap();
    assert!(dev_b.stats().is_empty());
    assert_eq!(
        ping(&a, "100.64.250.2", 3, "0.1").1,
        0,
        "traffic passed a removed peer"
    );

    dev_a.shutdown(true).unwrap();
    dev_b.shutdown(true).unwrap();
}

#[test]
#[ignore = "needs root (network namespaces, TUN): cargo xtask test runs it"]
fn keepalives_keep_the_receive_age_low_and_silence_shows_within_a_second() {
    let (_guard, a, b) = two_nodes("k", 251);

    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    // Only a sends keepalives (every 100 ms).
    let mut peer_b = peer("t/b", &kb, "198.18.251.2", "100.64.251.2");
    peer_b.keepalive_ms = Some(100);
    let dev_a = start(&a, &ka, "100.64.251.1", peer_b);
    let dev_b = start(
        &b,
        &kb,
        "100.64.251.2",
        peer("t/a", &ka, "198.18.251.1", "100.64.251.1"),
    );
    assert_eq!(ping(&a, "100.64.251.2", 2, "0.1"), (2, 2));
    std::thread::sleep(Duration::from_millis(1500));
    let b_hears_a = dev_b.stats()[0].last_rx_age_ms.unwrap();
    let a_hears_b = dev_a.stats()[0].last_rx_age_ms.unwrap();
    assert!(
        b_hears_a < 400,
        "b last heard a {b_hears_a} ms ago despite keepalives"
    );
    assert!(
        a_hears_b > 1000,
        "a heard b {a_hears_b} ms ago, but b sends nothing"
    );

    // Cut the link: a's silence shows at b.
    ip(&["-n", &a, "link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_millis(1000));
    let silent = dev_b.stats()[0].last_rx_age_ms.unwrap();
    assert!(
        silent >= 900,
        "b heard a {silent} ms ago with the link down"
    );

    dev_a.shutdown(true).unwrap();
    dev_b.shutdown(true).unwrap();
}

/// Two namespaces `mgt-<pid>-<tag>a` and `…b` joined by a veth pair on
/// 198.18.`net`.0/24 (a is .1, b is .2); the guard deletes them.
/// Needs root.
fn two_nodes(tag: &str, net: u8) -> (Netns, String, String) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
    let id = std::process::id();
    let (a, b) = (format!("mgt-{id}-{tag}a"), format!("mgt-{id}-{tag}b"));
    let guard = Netns(vec![a.clone(), b.clone()]);
    for ns in [&a, &b] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", "eth0", "netns", &a, "type", "veth", "peer", "name", "eth0", "netns", &b,
    ]);
    for (ns, host) in [(&a, 1), (&b, 2)] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("198.18.{net}.{host}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }
    (guard, a, b)
}

/// One restart's handover in namespace `ns`, as the agent does it: the old
/// device steers, a standby device of the other generation attaches and
/// handshakes, takes over, and the old one lets go after the grace.
fn hand_over(
    ns: &str,
    old: UserspaceDevice,
    key: &NodeKey,
    generation: u8,
    other: &PeerConfig,
) -> UserspaceDevice {
    assert!(old.begin_handoff(), "a multi-queue device hands over");
    let (key, other) = (key.clone(), other.clone());
    let new = in_ns(ns, move || {
        let opts = UserspaceOptions {
            generation,
            standby: true,
        };
        let dev = UserspaceDevice::start_with("mgt0", &key, 51820, opts).unwrap();
        dev.apply(&PeerChange::Add(other)).unwrap();
        dev
    });
    let start = Instant::now();
    while !new.sessions_ready() && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(new.sessions_ready(), "no session with the peer within 3 s");
    new.activate().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    old.release_tx();
    old.shutdown(false).unwrap();
    new
}

/// [`hand_over`] while `ns` pings b's tunnel address every 10 ms: not one
/// ping may be lost.
fn hand_over_under_ping(
    ns: &str,
    old: UserspaceDevice,
    key: &NodeKey,
    generation: u8,
    other: &PeerConfig,
) -> UserspaceDevice {
    let to = other.allowed_ips[0].addr().to_string();
    let pinger = {
        let ns = ns.to_string();
        std::thread::spawn(move || ping(&ns, &to, 150, "0.01"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let new = hand_over(ns, old, key, generation, other);
    assert_eq!(
        pinger.join().unwrap(),
        (150, 150),
        "the handover to generation {generation} lost pings"
    );
    new
}

#[test]
#[ignore = "needs root (network namespaces, TUN): cargo xtask test runs it"]
fn a_new_tun_queue_gets_nothing_until_it_takes_over_across_two_handovers() {
    let (_guard, a, b) = two_nodes("h", 252);
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let peer_b = peer("t/b", &kb, "198.18.252.2", "100.64.252.2");
    let dev_a = start(&a, &ka, "100.64.252.1", peer_b.clone());
    let dev_b = start(
        &b,
        &kb,
        "100.64.252.2",
        peer("t/a", &ka, "198.18.252.1", "100.64.252.1"),
    );
    assert_eq!(ping(&a, "100.64.252.2", 3, "0.1"), (3, 3));

    // A first handover, under a steady ping: it leaves the kernel steering
    // to the second queue, which the next newcomer will be.
    let dev_a = hand_over_under_ping(&a, dev_a, &ka, 1, &peer_b);

    // The second: the moment a new process opens its queue, before it can
    // step aside, is held open here while pings flow. Every one must still
    // go through the old process's queue.
    assert!(dev_a.begin_handoff());
    let joining = in_ns(&a, || {
        Tun::attach_with("mgt0", WantOffloads::default()).unwrap()
    });
    assert!(joining.multi_queue());
    let held = ping(&a, "100.64.252.2", 30, "0.02");
    joining.set_queue_enabled(false).unwrap();
    drop(joining);
    assert_eq!(
        held,
        (30, 30),
        "pings went to a newly opened TUN queue that reads nothing"
    );
    let dev_a = hand_over_under_ping(&a, dev_a, &ka, 0, &peer_b);

    dev_a.shutdown(true).unwrap();
    dev_b.shutdown(true).unwrap();
}
