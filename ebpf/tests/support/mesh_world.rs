//! Nodes joined by VXLAN for the datapath tests (mesh.rs, egress.rs): the
//! mesh device `mgebpfvx` (VXLAN collect_md, as `mg-vx0` in the product,
//! here over a plain veth underlay outside WireGuard so that a capture can
//! read the VNI), a loader that attaches from_pod, to_mesh and from_mesh, a
//! raw capture of the underlay, and a TCP/UDP server that says which source
//! address it saw. Everything lives in the namespaces of `world.rs`, so it
//! goes with them.
#![allow(dead_code)] // each test file uses a part

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_ebpf::{Attachment, Datapath, Hook};

use crate::world::{unique, Netns, PinDir};

pub const VXLAN_PORT: u16 = 4789;

/// A raw AF_PACKET capture on one interface, in a background thread.
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str) -> Self {
        let ifindex = ns.ifindex(iface);
        let fd = ns.run(|| {
            // SAFETY: plain socket creation; checked below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW,
                    i32::from((libc::ETH_P_ALL as u16).to_be()),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is ours; the sockaddr is fully initialised.
            unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                sll.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    fd,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            fd
        });
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (s, f) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: buf is valid for its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    f.lock().expect("frames").push(buf[..n as usize].to_vec());
                }
            }
            // SAFETY: closing our own fd once.
            unsafe { libc::close(fd) };
        });
        Self {
            stop,
            frames,
            thread: Some(thread),
        }
    }

    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().expect("frames").clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A VXLAN packet seen on the underlay: VNI and the inner IPv4 addresses.
#[derive(Debug)]
pub struct Vxlan {
    pub vni: u32,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
}

pub fn parse_vxlan(frame: &[u8]) -> Option<Vxlan> {
    // Ethernet, IPv4, UDP to 4789, VXLAN (8 bytes), inner Ethernet, inner IPv4.
    if frame.len() < 14 + 20 + 8 + 8 + 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 {
        return None;
    }
    let udp = &ip[ihl..];
    if u16::from_be_bytes([udp[2], udp[3]]) != VXLAN_PORT {
        return None;
    }
    let vx = &udp[8..];
    assert_eq!(vx[0] & 0x08, 0x08, "VXLAN I flag (valid VNI) set");
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    let inner = &vx[8 + 14..];
    Some(Vxlan {
        vni,
        inner_src: Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
        inner_dst: Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
    })
}

/// The mesh device of a test node: `mgebpfvx`, VXLAN collect_md without
/// ARP, with a route into it for each of `remote_cidrs`.
pub fn vxlan(node: &Netns, remote_cidrs: &[&str]) {
    node.ip(&[
        "link", "add", "mgebpfvx", "type", "vxlan", "external", "dstport", "4789",
    ]);
    node.ip(&["link", "set", "mgebpfvx", "arp", "off", "up"]);
    for cidr in remote_cidrs {
        node.ip(&["route", "add", cidr, "dev", "mgebpfvx", "scope", "link"]);
    }
}

/// Loads the datapath in `node` and attaches from_pod to each of `pods`
/// (host-side veths) and to_mesh and from_mesh to `mgebpfvx`.
pub fn load_mesh_node(node: &Netns, pins: &PinDir, pods: &[&str]) -> Datapath {
    node.run(|| {
        let mut dp = Datapath::load(&pins.0).unwrap_or_else(|e| panic!("load: {e}"));
        let mut desired: std::collections::BTreeSet<_> = pods
            .iter()
            .map(|p| Attachment::new(*p, Hook::FromPod))
            .collect();
        desired.insert(Attachment::new("mgebpfvx", Hook::ToMesh));
        desired.insert(Attachment::new("mgebpfvx", Hook::FromMesh));
        let report = dp
            .reconcile(&desired)
            .unwrap_or_else(|e| panic!("reconcile: {e}"));
        assert!(report.failed.is_empty(), "attachments failed: {report:?}");
        dp
    })
}

/// A server in one namespace that answers every TCP connection with the
/// source address it saw (then closes), and every UDP datagram with the
/// datagram followed by a space and the source address it saw. Stops on drop.
pub struct PeerEcho {
    pub tcp_port: u16,
    pub udp_port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    pub fn start(ns: &Netns, tcp_port: u16, udp_port: u16) -> Self {
        let tcp = ns.tcp_listen(Ipv4Addr::UNSPECIFIED, tcp_port);
        tcp.set_nonblocking(true).expect("nonblocking");
        let udp = ns.udp_bind(Ipv4Addr::UNSPECIFIED, udp_port);
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            Self::serve_tcp(tcp, stop.clone()),
            Self::serve_udp(udp, stop.clone()),
        ];
        Self {
            tcp_port,
            udp_port,
            stop,
            threads,
        }
    }

    fn serve_tcp(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    fn serve_udp(socket: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let mut reply = buf[..n].to_vec();
                    reply.extend_from_slice(format!(" {}", peer.ip()).as_bytes());
                    let _ = socket.send_to(&reply, peer);
                }
            }
        })
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `dst:port` (a [`PeerEcho`]) and returns the source
/// address the server saw, or the connection's error.
pub fn tcp_seen_as(ns: &Netns, dst: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut conn = ns.tcp_connect(dst, port)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut seen = String::new();
    conn.read_to_string(&mut seen)?;
    Ok(seen)
}

/// Sends one datagram from `socket` to `dst` (a [`PeerEcho`]) and returns the
/// source address the server saw, or `None` if no answer came in time.
pub fn udp_seen_as(socket: &UdpSocket, dst: SocketAddrV4) -> Option<String> {
    let token = unique("e");
    socket.send_to(token.as_bytes(), dst).expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 512];
    while std::time::Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(seen) = reply.strip_prefix(&format!("{token} ")) {
                    return Some(seen.to_owned());
                }
            }
            Err(_) => continue,
        }
    }
    None
}
