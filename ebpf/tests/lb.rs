//! Service load balancing in `from_pod`, with real packets (root only): a
//! client pod's TCP and UDP to a VIP reach a backend chosen by affinity and
//! the replies come back from the VIP; a backend taken out of the set gets
//! no new connection while an existing one keeps its backend.
//!
//! Every pod is on one node; whether a backend counts as "this cluster's"
//! is the flag the agent writes, which is all the datapath looks at.

#[path = "support/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use meshgate_ebpf::{Affinity, Attachment, Backend, Datapath, Frontend, Hook, IpcacheEntry};
use meshgate_ebpf::{Proto, Reason};
use world::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// One node, a client pod and three backend pods, from_pod on every veth.
struct LbWorld {
    dp: Option<Datapath>,
    _pins: PinDir,
    client: Pod,
    backends: Vec<Pod>,
    _node: Netns,
}

impl LbWorld {
    fn new() -> Self {
        require_root();
        let node = node("lbnode");
        let client = Pod::new(&node, "cl", "mglbc", Ipv4Addr::new(10, 77, 0, 2));
        let backends: Vec<Pod> = (0..3u8)
            .map(|i| {
                Pod::new(
                    &node,
                    &format!("b{i}"),
                    &format!("mglbb{i}"),
                    Ipv4Addr::new(10, 77, 0, 10 + i),
                )
            })
            .collect();
        let pins = PinDir::new();
        let pin_path = pins.0.clone();
        let ifaces: Vec<String> = std::iter::once(client.host_if.clone())
            .chain(backends.iter().map(|b| b.host_if.clone()))
            .collect();
        let mut dp = node.run(|| {
            let mut dp = Datapath::load(&pin_path).unwrap_or_else(|e| panic!("loading: {e}"));
            let desired = ifaces
                .iter()
                .map(|i| Attachment::new(i, Hook::FromPod))
                .collect();
            dp.reconcile(&desired)
                .unwrap_or_else(|e| panic!("reconcile: {e}"));
            dp
        });
        let pods = std::iter::once(&client).chain(backends.iter());
        for (i, p) in pods.enumerate() {
            let ifindex = node.ifindex(&p.host_if);
            dp.maps
                .ipcache
                .upsert(p.addr, 32, IpcacheEntry::local(ID_A + i as u32, ifindex))
                .expect("ipcache");
        }
        Self {
            dp: Some(dp),
            _pins: pins,
            client,
            backends,
            _node: node,
        }
    }

    fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("loaded")
    }

    fn backend(&self, i: usize, port: u16, local: bool) -> Backend {
        Backend {
            addr: self.backends[i].addr,
            port,
            local,
        }
    }

    fn set(&mut self, fe: Frontend, affinity: Affinity, backends: &[Backend]) {
        self.dp()
            .maps
            .lb
            .set(&fe, affinity, backends, std::time::Instant::now())
            .unwrap_or_else(|e| panic!("setting {fe}: {e}"));
    }
}

impl LbWorld {
    /// `set`, then every earlier flow of `fe` forgotten: a new client socket
    /// may get an ephemeral port an earlier flow used, and that flow's entry
    /// would take it to the earlier backend (see the UDP stickiness test).
    fn set_fresh(&mut self, fe: Frontend, affinity: Affinity, backends: &[Backend]) {
        self.set(fe, affinity, backends);
        let all: Vec<Backend> = (0..self.backends.len())
            .map(|i| self.backend(i, backends.first().map_or(0, |b| b.port), true))
            .collect();
        self.dp().maps.lb.forget(&fe, &all).expect("forget");
    }
}

fn udp(port: u16) -> Frontend {
    Frontend {
        vip: VIP,
        port,
        proto: Proto::Udp,
    }
}

/// One "connection" per call: a new client socket sends to VIP:port; the
/// backend that receives it answers from its own socket. Returns the index
/// of the backend and the source address of the answer as the client saw it.
fn udp_exchange(client: &Pod, servers: &[UdpSocket], vip_port: u16) -> Option<(usize, SocketAddr)> {
    let sock = client.ns.udp_bind(client.addr, 0);
    let token = unique("lb");
    sock.send_to(token.as_bytes(), SocketAddrV4::new(VIP, vip_port))
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        for (i, s) in servers.iter().enumerate() {
            match s.recv_from(&mut buf) {
                Ok((n, from)) if &buf[..n] == token.as_bytes() => {
                    assert_eq!(
                        from,
                        SocketAddr::V4(SocketAddrV4::new(
                            client.addr,
                            sock.local_addr().expect("addr").port()
                        )),
                        "the backend must see the client's own address (no SNAT)"
                    );
                    s.send_to(format!("reply-{i}").as_bytes(), from)
                        .expect("reply");
                    let (n, src) = sock.recv_from(&mut buf).ok()?;
                    assert_eq!(&buf[..n], format!("reply-{i}").as_bytes());
                    return Some((i, src));
                }
                _ => {}
            }
        }
    }
    None
}

/// UDP servers on every backend pod, non-blocking so one loop polls them all.
fn udp_servers(w: &LbWorld, port: u16) -> Vec<UdpSocket> {
    w.backends
        .iter()
        .map(|b| {
            let s = b.ns.udp_bind(b.addr, port);
            s.set_read_timeout(Some(Duration::from_millis(5)))
                .expect("timeout");
            s
        })
        .collect()
}

/// Backend index -> connections served, over `n` new connections.
fn spread(w: &LbWorld, servers: &[UdpSocket], vip_port: u16, n: usize) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    for k in 0..n {
        let (i, src) = udp_exchange(&w.client, servers, vip_port)
            .unwrap_or_else(|| panic!("connection {k} to {VIP}:{vip_port} got no answer"));
        assert_eq!(
            src,
            SocketAddr::V4(SocketAddrV4::new(VIP, vip_port)),
            "the reply must come from the VIP"
        );
        *seen.entry(i).or_insert(0) += 1;
    }
    seen
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn tcp_and_udp_to_a_vip_reach_a_backend_and_replies_come_from_the_vip() {
    let mut w = LbWorld::new();
    let tcp = Frontend {
        vip: VIP,
        port: 80,
        proto: Proto::Tcp,
    };
    let b1 = w.backend(1, 8080, true);
    w.set(tcp, Affinity::None, &[b1]);
    w.set(udp(53), Affinity::None, &[w.backend(1, 5353, true)]);

    // TCP: connect to the VIP, a real exchange with the backend listening on 8080.
    let listener = w.backends[1].ns.tcp_listen(w.backends[1].addr, 8080);
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(b"pong!").expect("write");
        (peer, buf)
    });
    let mut c = w
        .client
        .ns
        .tcp_connect(VIP, 80)
        .expect("TCP connect to the VIP (SYN translated, SYN-ACK translated back)");
    assert_eq!(
        c.peer_addr().expect("peer"),
        SocketAddr::V4(SocketAddrV4::new(VIP, 80))
    );
    c.write_all(b"ping!").expect("write");
    let mut buf = [0u8; 5];
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    c.read_exact(&mut buf).expect("the backend's answer");
    assert_eq!(&buf, b"pong!");
    let (peer, got) = server.join().expect("server");
    assert_eq!(&got, b"ping!");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(w.client.addr));

    // A bigger transfer: checksums stay right over many segments.
    let listener = w.backends[1].ns.tcp_listen(w.backends[1].addr, 8080);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read");
        all.len()
    });
    let mut c = w.client.ns.tcp_connect(VIP, 80).expect("second connect");
    let payload = vec![0x5au8; 1 << 20];
    c.write_all(&payload).expect("1 MiB to the VIP");
    drop(c);
    assert_eq!(server.join().expect("server"), 1 << 20);

    // UDP, with its checksum.
    let servers = udp_servers(&w, 5353);
    let (i, src) = udp_exchange(&w.client, &servers, 53).expect("UDP via the VIP");
    assert_eq!(i, 1);
    assert_eq!(src, SocketAddr::V4(SocketAddrV4::new(VIP, 53)));

    let conns = w.dp().maps.lb.connections().expect("connections");
    assert!(
        conns.iter().any(|c| c.frontend == tcp
            && c.backend == w.backends[1].addr
            && c.backend_port == 8080
            && c.client == w.client.addr),
        "{conns:?}"
    );
    assert_eq!(conns.len(), 3, "two TCP and one UDP connection: {conns:?}");
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn affinity_picks_local_or_remote_backends_and_falls_back() {
    let mut w = LbWorld::new();
    let servers = udp_servers(&w, 7000);
    let (b0, b1, b2) = (
        w.backend(0, 7000, true),
        w.backend(1, 7000, false),
        w.backend(2, 7000, false),
    );

    w.set_fresh(udp(70), Affinity::Local, &[b1, b0, b2]);
    let seen = spread(&w, &servers, 70, 30);
    assert_eq!(
        seen,
        BTreeMap::from([(0, 30)]),
        "local: only the local backend"
    );

    w.set_fresh(udp(70), Affinity::Remote, &[b0, b1, b2]);
    let seen = spread(&w, &servers, 70, 30);
    assert!(
        !seen.contains_key(&0) && seen.len() == 2,
        "remote: both remote backends and never the local one: {seen:?}"
    );

    w.set_fresh(udp(70), Affinity::None, &[b0, b1, b2]);
    let seen = spread(&w, &servers, 70, 60);
    assert_eq!(seen.len(), 3, "none: every backend: {seen:?}");
    eprintln!("affinity none over 60 connections: {seen:?}");

    // The local backend gone: local affinity falls back to the others.
    w.set_fresh(udp(70), Affinity::Local, &[b1, b2]);
    let seen = spread(&w, &servers, 70, 30);
    assert!(!seen.contains_key(&0), "{seen:?}");
    // No remote backend: remote affinity takes the local one.
    w.set_fresh(udp(70), Affinity::Remote, &[b0]);
    assert_eq!(spread(&w, &servers, 70, 10), BTreeMap::from([(0, 10)]));

    let svc = &w.dp().maps.lb.services().expect("services")[&udp(70)];
    assert_eq!(svc.affinity, Affinity::Remote);
    assert_eq!(svc.backends, vec![b0]);
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_removed_backend_gets_no_new_connection_and_an_empty_set_is_a_counted_drop() {
    let mut w = LbWorld::new();
    let servers = udp_servers(&w, 7100);
    let (b0, b1) = (w.backend(0, 7100, true), w.backend(1, 7100, true));
    let tcp = Frontend {
        vip: VIP,
        port: 81,
        proto: Proto::Tcp,
    };
    w.set(udp(71), Affinity::None, &[b0, b1]);
    w.set(tcp, Affinity::None, &[w.backend(0, 9000, true)]);

    // A TCP connection established to backend 0.
    let listener = w.backends[0].ns.tcp_listen(w.backends[0].addr, 9000);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 1];
        let mut n = 0;
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).expect("echo");
            n += 1;
        }
        n
    });
    let mut c = w.client.ns.tcp_connect(VIP, 81).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let echo = |c: &mut std::net::TcpStream| {
        let mut b = [0u8; 1];
        c.write_all(b"x").expect("write");
        c.read_exact(&mut b).expect("echo through the VIP");
    };
    echo(&mut c);

    // Backend 0 leaves both sets.
    let started = Instant::now();
    w.set(udp(71), Affinity::None, &[b1]);
    // As the agent does for UDP: flows to the departed backend are forgotten.
    w.dp().maps.lb.forget(&udp(71), &[b0]).expect("forget");
    w.set(tcp, Affinity::None, &[w.backend(1, 9000, true)]);
    let update = started.elapsed();
    let seen = spread(&w, &servers, 71, 30);
    assert_eq!(seen, BTreeMap::from([(1, 30)]), "backend 0 was removed");
    // The established connection keeps its backend.
    echo(&mut c);
    drop(c);
    assert_eq!(server.join().expect("server"), 2);
    eprintln!("backend set rewritten in {update:?}");

    // No backend at all: new connections are dropped and counted.
    let before = w
        .dp()
        .maps
        .drops
        .get(Reason::NoServiceBackend)
        .expect("counter")
        .packets;
    w.set(udp(71), Affinity::Local, &[]);
    assert!(udp_exchange(&w.client, &servers, 71).is_none());
    let after = w
        .dp()
        .maps
        .drops
        .get(Reason::NoServiceBackend)
        .expect("counter")
        .packets;
    assert_eq!(after, before + 1, "no-service-backend counted");

    // Replaced backend sets stay readable for a grace time (a program may
    // have read the frontend just before the switch), then are reaped.
    let t0 = std::time::Instant::now();
    let grace = meshgate_ebpf::maps::RETIRE_GRACE;
    let b1 = w.backend(1, 9000, true);
    let lb = &mut w.dp().maps.lb;
    lb.reap(t0 + grace)
        .expect("reap what earlier steps retired");
    assert_eq!(lb.retired(), 0);
    lb.set(&udp(71), Affinity::Local, &[b1], t0).expect("set");
    assert_eq!(lb.retired(), 1, "the replaced set is retired, not deleted");
    assert_eq!(
        lb.reap(t0 + grace / 2).expect("reap"),
        0,
        "not before the grace"
    );
    assert_eq!(lb.services().expect("services")[&udp(71)].backends, [b1]);
    assert_eq!(lb.reap(t0 + grace).expect("reap"), 1, "reaped after it");
    assert_eq!(lb.retired(), 0);

    // Removing the frontend: the VIP is no longer translated; stale slots
    // of older revisions are gone.
    assert!(w.dp().maps.lb.remove(&udp(71)).expect("remove"));
    assert!(!w.dp().maps.lb.remove(&udp(71)).expect("remove again"));
    assert_eq!(
        w.dp().maps.lb.gc().expect("gc"),
        0,
        "no stale backend slots"
    );
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn policy_judges_the_chosen_backend_not_the_vip() {
    let mut w = LbWorld::new();
    let servers = udp_servers(&w, 7200);
    let client_id = ID_A;
    let (id_b0, id_b1) = (ID_A + 1, ID_A + 2);
    let dp = w.dp();
    // Both backends select ingress policy; only b1 allows the client on udp/7200.
    dp.maps.policy.select(id_b0, true, false).expect("select");
    dp.maps.policy.select(id_b1, true, false).expect("select");
    dp.maps
        .policy
        .allow(&meshgate_ebpf::PolicyRule {
            local_identity: id_b1,
            remote_identity: Some(client_id),
            port: Some(7200),
            proto: Proto::Udp,
            direction: meshgate_ebpf::Direction::Ingress,
        })
        .expect("allow");
    dp.maps.events.drain();

    w.set(udp(72), Affinity::None, &[w.backend(0, 7200, true)]);
    assert!(
        udp_exchange(&w.client, &servers, 72).is_none(),
        "b0 does not allow the client: the VIP must not get around that"
    );
    let b0 = w.backends[0].addr;
    let ev = wait_event(w.dp(), |e| e.reason == Some(Reason::PolicyIngress))
        .expect("a policy-ingress event");
    assert_eq!(
        (ev.dst, ev.dport, ev.dst_identity),
        (b0, 7200, id_b0),
        "the drop names the backend, not the VIP"
    );

    w.set(udp(72), Affinity::None, &[w.backend(1, 7200, true)]);
    let (i, src) = udp_exchange(&w.client, &servers, 72).expect("b1 allows the client");
    assert_eq!(i, 1);
    assert_eq!(src, SocketAddr::V4(SocketAddrV4::new(VIP, 72)));
}

/// Sends one datagram from `sock` to VIP:port; which server got it.
fn udp_from(sock: &UdpSocket, servers: &[UdpSocket], vip_port: u16) -> Option<usize> {
    let token = unique("lbs");
    sock.send_to(token.as_bytes(), SocketAddrV4::new(VIP, vip_port))
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        for (i, s) in servers.iter().enumerate() {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                if &buf[..n] == token.as_bytes() {
                    s.send_to(b"r", from).expect("reply");
                    let (_, src) = sock.recv_from(&mut buf).ok()?;
                    assert_eq!(src, SocketAddr::V4(SocketAddrV4::new(VIP, vip_port)));
                    return Some(i);
                }
            }
        }
    }
    None
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_udp_flow_sticks_to_its_backend_until_the_departed_backend_is_forgotten() {
    let mut w = LbWorld::new();
    let servers = udp_servers(&w, 7300);
    let (b0, b1) = (w.backend(0, 7300, true), w.backend(1, 7300, true));
    w.set(udp(73), Affinity::None, &[b0]);
    let sock = w.client.ns.udp_bind(w.client.addr, 0);
    assert_eq!(udp_from(&sock, &servers, 73), Some(0));
    w.set(udp(73), Affinity::None, &[b1]);
    // Same 5-tuple: the flow keeps its backend.
    assert_eq!(udp_from(&sock, &servers, 73), Some(0));
    let forgotten = w.dp().maps.lb.forget(&udp(73), &[b0]).expect("forget");
    assert_eq!(forgotten, 1);
    assert_eq!(
        udp_from(&sock, &servers, 73),
        Some(1),
        "after forget, the flow picks from the current set"
    );
    assert_eq!(w.dp().maps.lb.connections().expect("conns").len(), 1);
}

/// A TCP connection from `port` of the client (bound first, SO_REUSEADDR)
/// to VIP:vip_port; returns what the server sent until it closed.
fn tcp_from_port(client: &Pod, port: u16, vip_port: u16) -> std::io::Result<Vec<u8>> {
    use std::os::fd::FromRawFd;
    let addr = client.addr;
    client.ns.run(|| {
        // SAFETY: plain socket calls on a descriptor this function owns;
        // every sockaddr is fully initialised.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let stream = std::net::TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                sin_zero: [0; 8],
            };
            let local = sin(addr, port);
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let remote = sin(VIP, vip_port);
            if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut stream = stream;
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut got = Vec::new();
            stream.read_to_end(&mut got)?;
            Ok(got)
        }
    })
}

#[test]
#[ignore = "needs root (bpf, network namespaces): cargo xtask test runs it"]
fn a_new_tcp_connection_reusing_a_client_port_picks_a_current_backend() {
    let mut w = LbWorld::new();
    let fe = Frontend {
        vip: VIP,
        port: 84,
        proto: Proto::Tcp,
    };
    let mut servers = Vec::new();
    for i in 0..2 {
        let listener = w.backends[i].ns.tcp_listen(w.backends[i].addr, 9400);
        servers.push(std::thread::spawn(move || {
            // Answer with the backend's index, then close first (the client
            // side then leaves no TIME_WAIT that would block the port).
            while let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(format!("b{i}").as_bytes());
            }
        }));
    }
    w.set(fe, Affinity::None, &[w.backend(0, 9400, true)]);
    assert_eq!(tcp_from_port(&w.client, 40404, 84).expect("first"), b"b0");
    // b0 leaves; the same client port connects again: its SYN must not
    // follow the old connection's entry to b0.
    w.set(fe, Affinity::None, &[w.backend(1, 9400, true)]);
    assert_eq!(
        tcp_from_port(&w.client, 40404, 84).expect("second, same client port"),
        b"b1"
    );
}
