//! The userspace WireGuard datapath with its offloads (issue 14): TUN
//! super-packets split and encrypted into UDP GSO sends, UDP GRO batches
//! decrypted and coalesced for the kernel. These check that every byte
//! still arrives intact and in order, pod to pod through the lab's real
//! path, for full-size, fragmented, TCP, UDP-GSO and mixed traffic at once.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshgate_e2e::netns::{spawn_in, Pattern};
use meshgate_e2e::{one_cluster, parse_ping, World};

const BLOCK: usize = 64 * 1024;

fn ping(world: &World, from: &str, to: &str, args: &[&str]) -> meshgate_e2e::PingStats {
    let mut argv = vec!["ping", "-n", "-q", "-W", "2"];
    argv.extend_from_slice(args);
    argv.push(to);
    let out = world.in_ns(&world.pod_ns("c1", from), &argv);
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

fn pod_mtu(world: &World, pod: &str) -> usize {
    let out = world.in_ns(
        &world.pod_ns("c1", pod),
        &["cat", "/sys/class/net/eth0/mtu"],
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `blocks` 64 KiB blocks of a seeded stream over one TCP connection; the
/// receiver checks every byte. Returns the receiver's handle (bytes checked).
fn tcp_transfer(
    world: &World,
    from: &str,
    to: &str,
    port: u16,
    seed: u64,
    blocks: usize,
) -> (std::thread::JoinHandle<usize>, std::thread::JoinHandle<()>) {
    let ip: Ipv4Addr = world.ip(&format!("c1/{to}")).parse().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = spawn_in(&world.pod_ns("c1", to), move || {
        let l = TcpListener::bind(SocketAddr::from((ip, port))).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut want = Pattern::new(seed);
        let mut expect = vec![0u8; BLOCK];
        let mut got = vec![0u8; BLOCK];
        for b in 0..blocks {
            c.read_exact(&mut got).unwrap_or_else(|e| {
                panic!("TCP {seed}: block {b} of {blocks} did not arrive: {e}")
            });
            want.fill(&mut expect);
            if got != expect {
                let at = got.iter().zip(&expect).position(|(a, b)| a != b).unwrap();
                panic!("TCP {seed}: block {b} differs from the sent stream at byte {at}");
            }
        }
        blocks * BLOCK
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = spawn_in(&world.pod_ns("c1", from), move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5))
                .unwrap();
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; BLOCK];
        for _ in 0..blocks {
            p.fill(&mut buf);
            c.write_all(&buf).unwrap();
        }
    });
    (server, client)
}

/// Datagrams of `size` bytes sent as UDP GSO super-packets (`UDP_SEGMENT`,
/// 40 datagrams a send): each carries its number and a pattern from it.
/// Returns (received intact, sent); a damaged datagram fails the test.
fn udp_gso_transfer(
    world: &World,
    from: &str,
    to: &str,
    port: u16,
    sends: usize,
) -> (usize, usize) {
    const SIZE: usize = 1200;
    const PER_SEND: usize = 40;
    let ip: Ipv4Addr = world.ip(&format!("c1/{to}")).parse().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = spawn_in(&world.pod_ns("c1", to), move || {
        let s = UdpSocket::bind(SocketAddr::from((ip, port))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 2048];
        let mut expect = vec![0u8; SIZE - 8];
        let mut seen = std::collections::BTreeSet::new();
        let mut quiet_since: Option<Instant> = None;
        loop {
            match s.recv(&mut buf) {
                Ok(n) => {
                    quiet_since = None;
                    assert_eq!(n, SIZE, "a datagram of {n} bytes, not {SIZE}");
                    let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    Pattern::new(seq + 1).fill(&mut expect);
                    assert!(buf[8..n] == expect[..], "datagram {seq} arrived damaged");
                    seen.insert(seq);
                }
                Err(_) => {
                    if done_rx.try_recv().is_ok() || quiet_since.is_some() {
                        let t = *quiet_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_secs(1) {
                            return seen.len();
                        }
                    }
                }
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client = spawn_in(&world.pod_ns("c1", from), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let seg: libc::c_int = SIZE as libc::c_int;
        // SAFETY: setsockopt with one int.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&seg as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        let mut buf = vec![0u8; SIZE * PER_SEND];
        for send in 0..sends {
            for (i, d) in buf.chunks_mut(SIZE).enumerate() {
                let seq = (send * PER_SEND + i) as u64;
                d[..8].copy_from_slice(&seq.to_le_bytes());
                Pattern::new(seq + 1).fill(&mut d[8..]);
            }
            s.send_to(&buf, SocketAddr::from((ip, port))).unwrap();
            // Paced: about 50 MB/s, so loss means damage, not congestion.
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    client.join().unwrap();
    done_tx.send(()).unwrap();
    (server.join().unwrap(), sends * PER_SEND)
}

#[test]
fn offloads_carry_full_size_fragmented_tcp_udp_and_mixed_traffic_intact() {
    let world = World::up("e2e-offload", &one_cluster("e2e-offload", 2));
    // The offloads are on, as probed (USO needs Linux 6.2; this lab's
    // kernels all have it, the kernel lab's 6.1 does not run this test).
    for node in ["n1", "n2"] {
        let st = world.status("c1", node);
        assert_eq!(st.backend, "userspace");
        let off = st
            .offloads
            .unwrap_or_else(|| panic!("{node}: status.json has no offloads"));
        assert!(off.tun_tso && off.tun_gro && off.udp_gro, "{node}: {off:?}");
        assert!(off.udp_gso_segments > 1, "{node}: no UDP GSO: {off:?}");
        assert!(off.tun_uso, "{node}: no TUN USO on this kernel: {off:?}");
    }
    let b = world.ip("c1/n2-a");

    // Full-size packets with DF, and fragmented ones, cross whole.
    let mtu = pod_mtu(&world, "n1-a");
    let full = (mtu - 28).to_string();
    let p = ping(
        &world,
        "n1-a",
        &b,
        &["-c", "20", "-i", "0.05", "-M", "do", "-s", &full],
    );
    assert_eq!(p.lost(), 0, "full-size ({mtu}-byte) pings with DF: {p:?}");
    let p = ping(
        &world,
        "n1-a",
        &b,
        &["-c", "20", "-i", "0.05", "-s", "8000"],
    );
    assert_eq!(p.lost(), 0, "8000-byte pings, fragmented at the pod: {p:?}");

    // TCP super-packets one way, alone: 64 MiB, every byte checked.
    let (rx, tx) = tcp_transfer(&world, "n1-a", "n2-a", 7001, 11, 1024);
    tx.join().unwrap();
    assert_eq!(rx.join().unwrap(), 1024 * BLOCK);

    // UDP super-packets (the sender's UDP GSO) alone.
    let (got, sent) = udp_gso_transfer(&world, "n1-b", "n2-b", 7002, 500);
    assert!(
        got * 100 >= sent * 98,
        "UDP GSO datagrams: {got} of {sent} arrived (every one intact)"
    );

    // Mixed at once: TCP both ways, UDP GSO, and pings, on both nodes.
    let (rx1, tx1) = tcp_transfer(&world, "n1-a", "n2-a", 7003, 21, 256);
    let (rx2, tx2) = tcp_transfer(&world, "n2-b", "n1-b", 7004, 22, 256);
    let pinger = {
        let ns = world.pod_ns("c1", "n2-a");
        let to = world.ip("c1/n1-a");
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-n", "-q", "-c", "100", "-i", "0.02", "-W", "2",
                    "-s", "3000",
                ])
                .arg(&to)
                .output()
                .unwrap()
        })
    };
    let (got, sent) = udp_gso_transfer(&world, "n1-b", "n2-b", 7005, 200);
    tx1.join().unwrap();
    tx2.join().unwrap();
    assert_eq!(rx1.join().unwrap(), 256 * BLOCK);
    assert_eq!(rx2.join().unwrap(), 256 * BLOCK);
    let p = parse_ping(&String::from_utf8_lossy(&pinger.join().unwrap().stdout));
    assert!(p.received > 0, "pings amid the mixed load: {p:?}");
    assert!(
        got * 100 >= sent * 90,
        "UDP GSO datagrams amid TCP both ways: {got} of {sent} arrived (every one intact)"
    );
}

#[test]
fn five_agent_restarts_in_a_row_lose_no_ping_and_keep_an_iperf3_stream_going() {
    let world = World::up("e2e-handover", &one_cluster("e2e-handover", 2));
    let to = world.ip("c1/n2-a");
    let iperf_to = world.ip("c1/n2-b");
    let mut server = world.spawn_in_ns(
        &world.pod_ns("c1", "n2-b"),
        &["iperf3", "-s", "-1", "-B", &iperf_to],
    );
    let listening = meshgate_e2e::wait_until(Duration::from_secs(10), || {
        let out = world.in_ns(
            &world.pod_ns("c1", "n2-b"),
            &["ss", "-ltnH", "sport = :5201"],
        );
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    assert!(listening.is_some(), "iperf3 server did not listen");
    let iperf = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-b"),
        &["iperf3", "-c", &iperf_to, "-t", "12", "-i", "1", "-J"],
    );
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "1000", "-i", "0.01", "-W", "1", &to,
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    // Both ends in turn: the restarted agent's sending (its TUN queue) and
    // receiving (its sessions) are both handed over.
    for (i, node) in ["n2", "n1", "n2", "n1", "n2"].into_iter().enumerate() {
        let before = world.status("c1", node).pid;
        let said = world.lab("restart", &format!("c1/{node}"));
        assert!(
            said.contains("handed over"),
            "restart {i} of {node} did not hand over: {said}"
        );
        let after = world.status("c1", node).pid;
        let mut st = after;
        let new = meshgate_e2e::wait_until(Duration::from_secs(10), || {
            st = world.status("c1", node).pid;
            st != before
        });
        assert!(
            new.is_some(),
            "restart {i}: {node} still reports pid {before} ({after})"
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    let out = ping.wait_with_output().unwrap();
    let p = parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(p.sent, 1000);
    assert_eq!(
        p.lost(),
        0,
        "five agent restarts during a 10 ms ping stream lost {} of {} pings",
        p.lost(),
        p.sent
    );
    let out = iperf.wait_with_output().unwrap();
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        json.get("error").is_none(),
        "iperf3 failed across the restarts: {json}"
    );
    let rates: Vec<f64> = json["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap())
        .collect();
    assert!(rates.len() >= 11, "iperf3 intervals: {rates:?}");
    assert!(
        rates.iter().all(|r| *r > 1e8),
        "an iperf3 second across the restarts carried under 100 Mbit/s: {rates:?}"
    );
}
