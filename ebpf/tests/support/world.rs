//! Test worlds for the datapath: network namespaces and veths named
//! `mgebpf*`, pin directories under `/sys/fs/bpf/meshgate-test-*`, all
//! removed on drop (also when the test panics), and helpers to send real
//! packets from inside the namespaces.
#![allow(dead_code)] // each test file uses a part

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use meshgate_ebpf::remove_pin_dir;

/// Panics unless root: these tests need the bpf syscall and namespaces, and
/// must fail loudly rather than pass without running.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the meshgate-ebpf datapath tests load eBPF programs and build network namespaces: \
         run them as root (e.g. `sudo -E cargo test -p meshgate-ebpf`)"
    );
    // Once per process: parallel tests must not mount it twice.
    static MOUNTED: std::sync::Once = std::sync::Once::new();
    MOUNTED.call_once(|| {
        meshgate_ebpf::bpffs::ensure_mounted(Path::new("/sys/fs/bpf"))
            .unwrap_or_else(|e| panic!("no bpf filesystem at /sys/fs/bpf: {e}"));
        remove_leftovers_of_dead_runs();
    });
}

/// A name unique on this machine for this run: `<tag><pid>-<counter>`.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}-{n}", std::process::id())
}

/// The pid in a name made by [`unique`] after `prefix`, if that process is gone.
fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what test processes killed before their guards ran left behind:
/// `mgebpf-<pid>-*` namespaces and `/sys/fs/bpf/meshgate-test-<pid>-*` pin
/// directories whose process no longer exists. Nothing else is touched.
fn remove_leftovers_of_dead_runs() {
    let list = run(Command::new("ip").args(["netns", "list"]));
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if dead_owner(ns, "mgebpf-") {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead_owner(&name, "meshgate-test-") {
                let _ = remove_pin_dir(&e.path());
            }
        }
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// A pin directory `/sys/fs/bpf/meshgate-test-<unique>`, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/meshgate-test-{}",
            unique("p")
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = remove_pin_dir(&self.0) {
            eprintln!("cleanup: removing {}: {e}", self.0.display());
        }
    }
}

/// A network namespace `mgebpf-<unique>-<role>`, deleted on drop with
/// everything in it (veths go with it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name = format!("mgebpf-{}-{role}", unique(""));
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // The mesh is IPv4 only; keep IPv6 autoconfiguration out of the counters.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made
    /// there stay in it when handed back.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: a valid namespace fd; setns affects only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    pub fn ifindex(&self, iface: &str) -> u32 {
        let c = CString::new(iface).expect("interface name");
        // SAFETY: valid NUL-terminated string.
        let idx = self.run(|| unsafe { libc::if_nametoindex(c.as_ptr()) });
        assert_ne!(idx, 0, "no interface {iface} in {}", self.name);
        idx
    }

    /// One ping; true if answered within a second.
    pub fn ping(&self, dst: Ipv4Addr) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.name, "ping", "-c1", "-W1", "-n", "-q",
            ])
            .arg(dst.to_string())
            .output()
            .unwrap_or_else(|e| panic!("ping: {e} (is iputils-ping installed?)"))
            .status
            .success()
    }

    pub fn udp_bind(&self, addr: Ipv4Addr, port: u16) -> UdpSocket {
        let s = self
            .run(|| UdpSocket::bind(SocketAddrV4::new(addr, port)))
            .unwrap_or_else(|e| panic!("udp bind {addr}:{port} in {}: {e}", self.name));
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        s
    }

    pub fn tcp_listen(&self, addr: Ipv4Addr, port: u16) -> TcpListener {
        self.run(|| TcpListener::bind(SocketAddrV4::new(addr, port)))
            .unwrap_or_else(|e| panic!("tcp listen {addr}:{port} in {}: {e}", self.name))
    }

    /// Loads an nftables ruleset (`nft -f -`) in this namespace; its tables
    /// go with the namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft: {e} (is nftables installed?)"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("writing the ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft -f - in {} failed ({}): {}\n{ruleset}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn tcp_connect(&self, dst: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
        self.run(|| {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(dst, port).into(),
                Duration::from_millis(1500),
            )
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("cleanup: ip netns del {} failed: {out:?}", self.name);
        }
    }
}

/// Sends one datagram from `from` (a socket in the sender's namespace) and
/// says whether `to` received it.
pub fn udp_passes(from: &UdpSocket, to: &UdpSocket, dst: SocketAddrV4) -> bool {
    let token = unique("t");
    from.send_to(token.as_bytes(), dst).expect("send");
    let mut buf = [0u8; 256];
    loop {
        match to.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == token.as_bytes() => return true,
            Ok(_) => continue, // an older datagram
            Err(_) => return false,
        }
    }
}

/// A pod: its own namespace with `eth0` (address `addr`/32, default route
/// through the node) whose peer `host_if` lives in the node namespace.
pub struct Pod {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub host_if: String,
}

/// The node-side address every pod uses as its gateway.
pub const POD_GW: &str = "169.254.1.1";

impl Pod {
    pub fn new(node: &Netns, role: &str, host_if: &str, addr: Ipv4Addr) -> Self {
        let ns = Netns::new(role);
        node.ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        let a = addr.to_string();
        ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", POD_GW, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", POD_GW, "dev", "eth0"]);
        node.ip(&["addr", "add", &format!("{POD_GW}/32"), "dev", host_if]);
        node.ip(&["link", "set", host_if, "up"]);
        node.ip(&[
            "route",
            "add",
            &format!("{a}/32"),
            "dev",
            host_if,
            "scope",
            "link",
        ]);
        Self {
            ns,
            addr,
            host_if: host_if.to_owned(),
        }
    }
}

/// A veth pair between two namespaces, `a_if` (address `a_addr`, with its
/// prefix length) in `a` and `b_if` (`b_addr`) in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A node namespace with IP forwarding on.
pub fn node(role: &str) -> Netns {
    let n = Netns::new(role);
    n.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    n
}

pub const ID_A: u32 = (1 << 16) | 256;
pub const ID_B: u32 = (1 << 16) | 257;
pub const ID_C: u32 = (1 << 16) | 258;

/// One node with pods A (10.77.0.2) and B (10.77.0.3), the datapath loaded
/// in the node namespace, `from_pod` on both host-side veths and A and B in
/// the ipcache. No policy: everything is allowed.
pub struct OneNode {
    // Field order is drop order: datapath first, then pins, then namespaces.
    pub dp: Option<meshgate_ebpf::Datapath>,
    /// How [`OneNode::load`] attaches (`MESHGATE_TC_ATTACH` unless given).
    pub choice: meshgate_ebpf::AttachChoice,
    pub pins: PinDir,
    pub a: Pod,
    pub b: Pod,
    pub node: Netns,
}

/// The attach mode asked for by `MESHGATE_TC_ATTACH` (so the whole suite
/// runs in tc mode on a TCX kernel with `MESHGATE_TC_ATTACH=tc`).
pub fn env_choice() -> meshgate_ebpf::AttachChoice {
    meshgate_ebpf::AttachChoice::from_env().unwrap_or_else(|e| panic!("{e}"))
}

impl OneNode {
    pub fn new() -> Self {
        Self::with(env_choice())
    }

    /// [`OneNode::new`], attaching as `choice` says.
    pub fn with(choice: meshgate_ebpf::AttachChoice) -> Self {
        require_root();
        let node = node("node");
        let a = Pod::new(&node, "a", "mgebpfa", Ipv4Addr::new(10, 77, 0, 2));
        let b = Pod::new(&node, "b", "mgebpfb", Ipv4Addr::new(10, 77, 0, 3));
        let pins = PinDir::new();
        let mut w = Self {
            dp: None,
            choice,
            pins,
            a,
            b,
            node,
        };
        w.load();
        let (ia, ib) = (w.node.ifindex("mgebpfa"), w.node.ifindex("mgebpfb"));
        let (addr_a, addr_b) = (w.a.addr, w.b.addr);
        let dp = w.dp();
        dp.maps
            .ipcache
            .upsert(addr_a, 32, meshgate_ebpf::IpcacheEntry::local(ID_A, ia))
            .expect("ipcache A");
        dp.maps
            .ipcache
            .upsert(addr_b, 32, meshgate_ebpf::IpcacheEntry::local(ID_B, ib))
            .expect("ipcache B");
        w
    }

    /// Loads the datapath (reusing pins) and reconciles to from_pod on both veths.
    pub fn load(&mut self) -> meshgate_ebpf::ReconcileReport {
        let pins = self.pins.0.clone();
        let choice = self.choice;
        let (dp, report) = self.node.run(|| {
            let mut dp = meshgate_ebpf::Datapath::load_with(&pins, choice)
                .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
            let report = dp
                .reconcile(&Self::desired())
                .unwrap_or_else(|e| panic!("reconcile: {e}"));
            (dp, report)
        });
        self.dp = Some(dp);
        report
    }

    pub fn desired() -> std::collections::BTreeSet<meshgate_ebpf::Attachment> {
        ["mgebpfa", "mgebpfb"]
            .into_iter()
            .map(|i| meshgate_ebpf::Attachment::new(i, meshgate_ebpf::Hook::FromPod))
            .collect()
    }

    pub fn dp(&mut self) -> &mut meshgate_ebpf::Datapath {
        self.dp.as_mut().expect("datapath loaded")
    }

    /// Programs attached to the ingress of `iface` in the node namespace
    /// (by TCX or tc).
    pub fn attached_programs(&self, iface: &str) -> Vec<u32> {
        attached_programs(&self.node, iface, aya::programs::TcAttachType::Ingress)
    }
}

/// The ids of the programs attached to `side` of `iface` in `ns`: TCX links
/// (where the kernel has TCX), then tc filters.
pub fn attached_programs(ns: &Netns, iface: &str, side: aya::programs::TcAttachType) -> Vec<u32> {
    let mut ids = tcx_programs(ns, iface, side);
    ids.extend(tc_filters(ns, iface, side).into_iter().map(|f| f.prog_id));
    ids
}

/// Programs attached by TCX; none on a kernel without TCX.
pub fn tcx_programs(ns: &Netns, iface: &str, side: aya::programs::TcAttachType) -> Vec<u32> {
    ns.run(|| {
        match aya::programs::SchedClassifier::query_tcx(iface, side) {
            Ok((_, progs)) => progs.iter().map(|p| p.id()).collect(),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                Vec::new() // no TCX in this kernel
            }
            Err(e) => panic!("query_tcx {iface}: {e}"),
        }
    })
}

/// A bpf tc filter as `tc filter show` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub pref: u16,
    pub handle: u32,
    pub name: String,
    pub direct_action: bool,
    pub prog_id: u32,
}

/// The bpf filters on `side` of `iface` in `ns` (`tc filter show`).
pub fn tc_filters(ns: &Netns, iface: &str, side: aya::programs::TcAttachType) -> Vec<TcFilter> {
    let side = match side {
        aya::programs::TcAttachType::Egress => "egress",
        _ => "ingress",
    };
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "tc", "filter", "show", "dev", iface, side,
        ])
        .output()
        .unwrap_or_else(|e| panic!("tc filter show: {e} (is iproute2 installed?)"));
    // No clsact qdisc: tc says so and lists nothing.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_tc_filter)
        .collect()
}

/// One line of `tc filter show`: `filter protocol all pref 28007 bpf chain 0
/// handle 0x1 mg_from_pod direct-action not_in_hw id 42 tag ... jited`.
fn parse_tc_filter(line: &str) -> Option<TcFilter> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    words.contains(&"bpf").then_some(())?;
    let handle = after("handle")?;
    let handle = u32::from_str_radix(handle.trim_start_matches("0x"), 16).ok()?;
    Some(TcFilter {
        pref: after("pref")?.parse().ok()?,
        handle,
        name: after(after("handle")?)?.to_owned(),
        direct_action: words.contains(&"direct-action"),
        prog_id: after("id")?.parse().ok()?,
    })
}

/// Waits up to a second for an event matching `pred` on the ring buffer.
pub fn wait_event(
    dp: &mut meshgate_ebpf::Datapath,
    pred: impl Fn(&meshgate_ebpf::FlowEvent) -> bool,
) -> Option<meshgate_ebpf::FlowEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        for ev in dp.maps.events.drain() {
            if pred(&ev) {
                return Some(ev);
            }
            seen.push(ev);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("events seen instead: {seen:#?}");
    None
}

/// A steady UDP stream from a pod to two ports of another (one allowed, one
/// denied by policy), counted on threads, to show that no packet goes
/// without a program while programs are replaced: with no program on the
/// veth, nothing enforces the policy and the denied port receives.
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<usize>,
    ok: std::thread::JoinHandle<usize>,
    leaked: std::thread::JoinHandle<usize>,
}

/// What a [`Stream`] counted: rounds sent (one datagram to each port).
#[derive(Debug)]
pub struct StreamCount {
    pub sent: usize,
    pub ok: usize,
    pub leaked: usize,
}

impl Stream {
    pub fn start(from: &UdpSocket, allowed: &UdpSocket, denied: &UdpSocket) -> Self {
        use std::sync::atomic::AtomicBool;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let dst = |s: &UdpSocket| match s.local_addr().expect("local addr") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not IPv4: {other}"),
        };
        let (to_ok, to_no) = (dst(allowed), dst(denied));
        let ok = count_received(allowed, b"gap-ok", stop.clone());
        let leaked = count_received(denied, b"gap-no", stop.clone());
        let sender = {
            let stop = stop.clone();
            let s = from.try_clone().expect("clone");
            std::thread::spawn(move || {
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    s.send_to(b"gap-ok", to_ok).expect("send");
                    s.send_to(b"gap-no", to_no).expect("send");
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                sent
            })
        };
        Self {
            stop,
            sender,
            ok,
            leaked,
        }
    }

    pub fn finish(self) -> StreamCount {
        self.stop.store(true, Ordering::Relaxed);
        StreamCount {
            sent: self.sender.join().expect("sender"),
            ok: self.ok.join().expect("receiver"),
            leaked: self.leaked.join().expect("receiver"),
        }
    }
}

/// Counts, on a thread (so the socket buffer never fills), datagrams on `s`
/// whose payload starts with `prefix`, until `stop` is set and `s` is quiet.
pub fn count_received(
    s: &UdpSocket,
    prefix: &'static [u8],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let s = s.try_clone().expect("clone");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0;
        loop {
            match s.recv_from(&mut buf) {
                Ok((len, _)) if buf[..len].starts_with(prefix) => n += 1,
                Ok(_) => {}
                Err(_) if stop.load(Ordering::Relaxed) => return n,
                Err(_) => {}
            }
        }
    })
}
