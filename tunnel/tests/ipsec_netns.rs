//! The IPsec backend between real network namespaces on a kernel with
//! ESP (the kernel lab's Debian 6.1; the build machines' kernel has none,
//! so these are `#[ignore]`d there and `cargo xtask kernel-lab` runs them).
//! Four nodes a, b, c, d on one underlay switch, each with a "pod" prefix
//! on a dummy device; d holds a different mesh secret. Discovery's part is
//! played by the test.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use meshgate_tunnel::backend::Backend;
use meshgate_tunnel::ipsec::keys::generation_of;
use meshgate_tunnel::ipsec::{xfrm, IpsecConfig, IpsecDevice, Offload, IF_ID};
use meshgate_tunnel::{routes, PeerChange, PeerConfig};

const NODES: [&str; 4] = ["a", "b", "c", "d"];

mod support;

use support::{in_ns, ip, Netns};

fn require_esp() {
    let ok = Path::new("/sys/module/esp4").exists()
        || Command::new("modprobe")
            .args(["-q", "esp4"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok && Path::new("/sys/module/esp4").exists(),
        "needs a kernel with ESP (esp4): runs in the kernel lab (cargo xtask kernel-lab)"
    );
}

fn write_secret(path: &Path, generation: u8, fill: u8) {
    let b64 = base64::engine::general_purpose::STANDARD.encode([fill; 32]);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{generation} aes-gcm-128 {b64}\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct Node {
    ns: String,
    name: String,
    underlay: String,
    tunnel: String,
    pod: String,
    dev: Arc<IpsecDevice>,
}

impl Node {
    fn peer(&self) -> PeerConfig {
        PeerConfig {
            name: self.name.clone(),
            public_key: base64::engine::general_purpose::STANDARD.encode([0u8; 32]),
            endpoint: format!("{}:51820", self.underlay).parse().unwrap(),
            allowed_ips: vec![
                format!("{}/24", self.pod).parse().unwrap(),
                format!("{}/32", self.tunnel).parse().unwrap(),
            ],
            keepalive_ms: None,
            tunnel_ip: Some(self.tunnel.parse().unwrap()),
        }
    }

    fn add(&self, other: &Node) {
        let (dev, peer, me) = (self.dev.clone(), other.peer(), self.tunnel.clone());
        in_ns(&self.ns, move || {
            dev.apply(&PeerChange::Add(peer.clone())).unwrap();
            for net in &peer.allowed_ips {
                routes::add_route("mgi0", &net.trunc(), Some(me.parse().unwrap())).unwrap();
            }
        });
    }
}

fn ping(ns: &str, from: &str, to: &str, count: u32, interval: &str) -> (u32, u32) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-W", "1", "-I", from,
        ])
        .args(["-i", interval, "-c", &count.to_string(), to])
        .output()
        .unwrap();
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ping(text: &str) -> (u32, u32) {
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
    let nums: Vec<u32> = line
        .split(',')
        .take(2)
        .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

fn xfrm_stat(ns: &str, field: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/xfrm_stat"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().parse().unwrap_or(0)))
}

fn capture(ns: &str, file: &Path) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", ns, "tcpdump", "-i", "eth0", "-n", "-U", "-w",
        ])
        .arg(file)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "tcpdump did not start in {ns}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Stops a capture with SIGINT, so tcpdump writes what it still holds (a
/// SIGKILL lost the last packets under the kernel lab's emulated CPU).
fn stop(mut tcpdump: Child) {
    // SAFETY: a signal to our own child (`ip netns exec` execs tcpdump).
    unsafe {
        libc::kill(tcpdump.id() as i32, libc::SIGINT);
    }
    let _ = tcpdump.wait();
}

/// The capture as tcpdump prints it (for a failure's message).
fn listing(file: &Path) -> String {
    let out = Command::new("tcpdump")
        .args(["-n", "-tt", "-r"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(file: &Path, filter: &str) -> usize {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .arg(filter)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn setup(id: u32, dir: &Path) -> (Netns, Vec<Node>, PathBuf) {
    let sw = format!("mgi-{id}-sw");
    let mut guard = Netns(vec![sw.clone()]);
    ip(&["netns", "add", &sw]);
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &sw, "link", "set", "br0", "up"]);
    let shared = dir.join("mesh-secret");
    let wrong = dir.join("wrong-secret");
    write_secret(&shared, 1, 7);
    write_secret(&wrong, 1, 9);
    let mut nodes = Vec::new();
    for (i, n) in NODES.iter().enumerate() {
        let ns = format!("mgi-{id}-{n}");
        guard.0.push(ns.clone());
        ip(&["netns", "add", &ns]);
        let port = format!("p{i}");
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        let underlay = format!("198.18.9.{}", i + 1);
        let tunnel = format!("100.64.9.{}", i + 1);
        let pod = format!("10.9.{}.1", i + 1);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{underlay}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "add", "pod0", "type", "dummy"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{pod}/24"),
            "dev",
            "pod0",
        ]);
        ip(&["-n", &ns, "link", "set", "pod0", "up"]);
        let cfg = IpsecConfig {
            me: format!("c1/{n}"),
            underlay_ip: underlay.parse().unwrap(),
            secret_file: if *n == "d" {
                wrong.clone()
            } else {
                shared.clone()
            },
        };
        let t = tunnel.clone();
        let dev = in_ns(&ns, move || {
            let dev = IpsecDevice::start("mgi0", cfg).unwrap();
            routes::configure_interface("mgi0", t.parse().unwrap(), 1400).unwrap();
            Arc::new(dev)
        });
        nodes.push(Node {
            ns,
            name: format!("c1/{n}"),
            underlay,
            tunnel,
            pod,
            dev,
        });
    }
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                a.add(b);
            }
        }
    }
    (guard, nodes, shared)
}

#[test]
#[ignore = "needs a kernel with ESP (esp4): runs in the kernel lab (cargo xtask kernel-lab)"]
fn ipsec_carries_every_pair_only_as_esp_rotates_without_loss_and_rejects_a_wrong_key() {
    require_esp();
    let dir = tempfile::tempdir().unwrap();
    let (_guard, nodes, secret) = setup(std::process::id(), dir.path());
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);

    // Every pair of a, b, c, from pod address to pod address, as ESP only.
    let pcap = dir.path().join("a.pcap");
    let tcpdump = capture(&a.ns, &pcap);
    for x in [a, b, c] {
        for y in [a, b, c] {
            if x.name != y.name {
                let (sent, got) = ping(&x.ns, &x.pod, &y.pod, 3, "0.2");
                assert_eq!((sent, got), (3, 3), "{} -> {} over IPsec", x.name, y.name);
            }
        }
    }
    // tcpdump may lag behind (the kernel lab's emulated CPU): its last
    // packets are waited for, up to 5 s, before it is stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&pcap, "esp") < 24 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300)); // tcpdump's last writes
    stop(tcpdump);
    let esp = count(&pcap, "esp");
    let clear = count(&pcap, "net 10.9.0.0/16 or net 100.64.9.0/24");
    assert!(
        esp >= 24,
        "a's underlay saw only {esp} ESP packets for 24 pings through a; the capture:\n{}",
        listing(&pcap)
    );
    assert_eq!(
        clear, 0,
        "{clear} packets with pod or tunnel addresses in clear on a's underlay"
    );

    // veth has no ESP offload: the kernel fell back to software, and says so.
    let offload = in_ns(&a.ns, {
        let dev = a.dev.clone();
        move || {
            let _ = dev.stats();
            dev.offload()
        }
    });
    assert!(
        matches!(&offload, Offload::Software { device, .. } if device == "eth0"),
        "offload: {offload}"
    );

    // d holds a different secret: its ESP fails authentication at a.
    let before = xfrm_stat(&a.ns, "XfrmInStateProtoError");
    let (sent, got) = ping(&d.ns, &d.pod, &a.pod, 3, "0.2");
    assert_eq!((sent, got), (3, 0), "a peer with the wrong key got through");
    if let (Some(x), Some(y)) = (before, xfrm_stat(&a.ns, "XfrmInStateProtoError")) {
        assert!(
            y >= x + 3,
            "a did not count d's packets as failing authentication ({x} -> {y})"
        );
    }

    // Rotation under a 10 ms ping stream, a to b: nothing lost.
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &a.ns, "ping", "-n", "-q", "-W", "1", "-I", &a.pod,
        ])
        .args(["-i", "0.01", "-c", "1000", &b.pod])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    write_secret(&secret, 2, 8);
    let out = ping.wait_with_output().unwrap();
    let (sent, got) = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sent, 1000);
    assert_eq!(
        sent - got,
        0,
        "the rotation lost {} of {sent} pings",
        sent - got
    );
    // Done: only generation 2 SAs left, and traffic still flows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gens: Vec<u8> = in_ns(&a.ns, || {
            xfrm::dump_sas(IF_ID)
                .unwrap()
                .iter()
                .map(|s| generation_of(s.spi))
                .collect()
        });
        let (g, rotating) = a.dev.generation();
        if g == 2 && !rotating && gens.iter().all(|g| *g == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's rotation did not finish: sending under {g}, rotating {rotating}, SA generations {gens:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ping_pair(a, c), (3, 3), "a -> c after the rotation");
}

fn ping_pair(x: &Node, y: &Node) -> (u32, u32) {
    ping(&x.ns, &x.pod, &y.pod, 3, "0.2")
}
