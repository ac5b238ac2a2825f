//! Root tier: the lab's DNS server in a namespace of its own, at the
//! scenario's `dns.server`, with the records the lab writes from a
//! scenario, queried with dig over UDP and TCP. It runs `meshgate lab
//! dns-server` when a meshgate binary is at hand (`MESHGATE_BIN`, or
//! target/{release,debug}/meshgate), else the same server on a thread
//! that entered the namespace.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use meshgate_lab::plan::Plan;
use meshgate_lab::Scenario;

const SCENARIO: &str = r#"
name: dnstest
datapath: ebpf
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes: [{name: n1}]
dns:
  records:
    api.example.com: [203.0.113.10]
    short.example.com: {addresses: [203.0.113.11], ttl: 2}
    www.example.com: {cname: api.example.com}
    alias.example.com: {cname: www.example.com, ttl: 7}
    many.example.com: {range: 198.18.0.1, count: 1000}
    rotate.example.com: {range: 198.18.8.1, count: 64, rotate: true}
"#;

/// A namespace with the server's address on `lo`, and whatever serves in
/// it; both gone on drop, even when the test panics.
struct Guard {
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A server thread dies with the test process; its sockets with
        // the namespace.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn meshgate_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MESHGATE_BIN") {
        return Some(PathBuf::from(p));
    }
    let targets = [
        std::env::var("CARGO_TARGET_DIR").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")),
    ];
    targets
        .into_iter()
        .flatten()
        .flat_map(|t| ["release", "debug"].map(|p| t.join(p).join("meshgate")))
        .find(|p| p.is_file())
}

/// Serves the records on a thread that entered `ns`.
fn serve_in_namespace(ns: &str, listen: std::net::SocketAddr, records: PathBuf) {
    let ns = ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a namespace fd we hold.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let zone = meshgate_lab::dns_server::load(&records).expect("records load");
        let sockets = meshgate_lab::dns_server::bind(listen).expect("bind in the namespace");
        tx.send(()).expect("report bound");
        let _ = meshgate_lab::dns_server::serve(std::sync::Arc::new(zone), sockets);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the server thread bound its sockets");
}

struct Dig<'a> {
    ns: &'a str,
    server: String,
}

impl Dig<'_> {
    /// `dig @server ARGS` in the namespace: its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.ns, "dig"])
            .arg(format!("@{}", self.server))
            .args(["+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("dig runs (cargo xtask deps installs bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The answer section's records as `(name, ttl, type, data)`.
    fn answer(&self, args: &[&str]) -> Vec<(String, u32, String, String)> {
        let mut all = vec!["+noall", "+answer"];
        all.extend_from_slice(args);
        self.run(&all)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5).then(|| {
                    (
                        f[0].to_string(),
                        f[1].parse().unwrap_or(u32::MAX),
                        f[3].to_string(),
                        f[4].to_string(),
                    )
                })
            })
            .collect()
    }

    /// The `;; ->>HEADER<<-` and `;; flags:` lines.
    fn header(&self, args: &[&str]) -> String {
        let mut all = vec!["+noall", "+comments"];
        all.extend_from_slice(args);
        self.run(&all)
            .lines()
            .filter(|l| l.contains("HEADER") || l.starts_with(";; flags:"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
#[ignore = "needs root (ip netns) and dig: cargo xtask test runs it"]
fn dns_server_answers_dig_over_udp_and_tcp() {
    assert!(is_root(), "run as root (cargo xtask test does)");
    let ns = format!("mg-dnstest-{}", std::process::id());
    let dir = std::env::temp_dir().join(&ns);
    let mut guard = Guard {
        ns: ns.clone(),
        dir: dir.clone(),
        child: None,
    };
    let plan =
        Plan::new(&Scenario::parse("dnstest.yaml", SCENARIO).expect("scenario")).expect("plan");
    let dns = plan.dns.expect("a dns plan");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let records = dir.join("records.json");
    std::fs::write(&records, serde_json::to_string(&dns.records).expect("json"))
        .expect("records file");

    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/32", dns.server),
        "dev",
        "lo",
    ]);
    let listen = std::net::SocketAddr::from((dns.server, 53));
    match meshgate_bin() {
        Some(bin) => {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&bin)
                .args([
                    "lab",
                    "dns-server",
                    "--listen",
                    &listen.to_string(),
                    "--records",
                ])
                .arg(&records)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {} lab dns-server: {e}", bin.display()));
            guard.child = Some(child);
        }
        None => serve_in_namespace(&ns, listen, records),
    }

    let dig = Dig {
        ns: &ns,
        server: dns.server.to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = dig.answer(&["api.example.com"]);
        if !got.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the DNS server within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A records with their TTLs, over UDP and TCP.
    for tcp in [&[][..], &["+tcp"][..]] {
        let mut args = vec!["api.example.com"];
        args.extend_from_slice(tcp);
        assert_eq!(
            dig.answer(&args),
            [(
                "api.example.com.".into(),
                30,
                "A".into(),
                "203.0.113.10".into()
            )],
            "{tcp:?}"
        );
        let mut args = vec!["short.example.com"];
        args.extend_from_slice(tcp);
        assert_eq!(dig.answer(&args)[0].1, 2, "short.example.com's TTL {tcp:?}");
    }
    // The CNAME chain, then the address.
    assert_eq!(
        dig.answer(&["alias.example.com"]),
        [
            (
                "alias.example.com.".into(),
                7,
                "CNAME".into(),
                "www.example.com.".into()
            ),
            (
                "www.example.com.".into(),
                30,
                "CNAME".into(),
                "api.example.com.".into()
            ),
            (
                "api.example.com.".into(),
                30,
                "A".into(),
                "203.0.113.10".into()
            ),
        ]
    );
    // NXDOMAIN; AAAA of a known name: NOERROR without answers.
    let h = dig.header(&["nope.example.com"]);
    assert!(h.contains("status: NXDOMAIN"), "{h}");
    let h = dig.header(&["api.example.com", "AAAA"]);
    assert!(
        h.contains("status: NOERROR") && h.contains("ANSWER: 0"),
        "{h}"
    );
    // 1,000 addresses: truncated over UDP (dig +ignore shows the TC
    // flag), complete when dig retries over TCP by itself, and over TCP.
    let h = dig.header(&["+ignore", "many.example.com"]);
    assert!(h.contains(" tc") && h.contains("ANSWER: 0"), "{h}");
    let h = dig.header(&["+ignore", "+noedns", "many.example.com"]);
    assert!(h.contains(" tc"), "without EDNS too: {h}");
    for args in [&["many.example.com"][..], &["+tcp", "many.example.com"][..]] {
        let got = dig.answer(args);
        assert_eq!(got.len(), 1000, "{args:?}");
        assert_eq!(got[0].3, "198.18.0.1");
        assert_eq!(got[999].3, "198.18.3.232");
    }
    // Rotation: each answer the next single address, over UDP and TCP
    // alike (one counter).
    let seen: Vec<String> = (0..4)
        .map(|i| {
            let args: &[&str] = if i % 2 == 0 {
                &["rotate.example.com"]
            } else {
                &["+tcp", "rotate.example.com"]
            };
            let got = dig.answer(args);
            assert_eq!(got.len(), 1, "{got:?}");
            got[0].3.clone()
        })
        .collect();
    let first: std::net::Ipv4Addr = seen[0].parse().expect("an address");
    for (k, s) in seen.iter().enumerate() {
        let want = std::net::Ipv4Addr::from(u32::from(first) + k as u32);
        assert_eq!(s, &want.to_string(), "rotation {seen:?}");
    }
}

/// Tears a lab world down even when the test panics.
struct WorldGuard {
    name: String,
    file: PathBuf,
    child: Option<Child>,
}

impl Drop for WorldGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = meshgate_lab::down(Some(&self.name)) {
            eprintln!("cleanup of world {} failed: {e}", self.name);
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
#[ignore = "needs root (network namespaces, veth, nft) and dig: cargo xtask test runs it"]
fn dns_world_gives_pods_a_resolv_conf_and_a_reachable_server() {
    assert!(is_root(), "run as root (cargo xtask test does)");
    let world = format!("dn{}", std::process::id() % 1_000_000);
    let file = std::env::temp_dir().join(format!("mg-lab-{world}.yaml"));
    std::fs::write(
        &file,
        SCENARIO
            .replace("name: dnstest", &format!("name: {world}"))
            .replace(
                "nodes: [{name: n1}]",
                "nodes: [{name: n1, pods: [{name: a}, {name: b}]}]",
            ),
    )
    .expect("write scenario");
    let mut guard = WorldGuard {
        name: world.clone(),
        file: file.clone(),
        child: None,
    };
    let plan = meshgate_lab::build_world_only(&file)
        .unwrap_or_else(|e| panic!("building world {world} failed: {e}"));
    let dns = plan.dns.clone().expect("a dns plan");
    let pods = [format!("mg-{world}-c1-p-a"), format!("mg-{world}-c1-p-b")];
    for pod in &pods {
        let conf = std::fs::read_to_string(format!("/etc/netns/{pod}/resolv.conf"))
            .unwrap_or_else(|e| panic!("{pod} has no resolv.conf: {e}"));
        assert!(conf.contains("nameserver 10.96.0.10\n"), "{pod}: {conf}");
        // `ip netns exec` bind-mounts it over /etc/resolv.conf.
        let seen = Command::new("ip")
            .args(["netns", "exec", pod, "cat", "/etc/resolv.conf"])
            .output()
            .expect("ip netns exec runs");
        assert_eq!(String::from_utf8_lossy(&seen.stdout), conf, "{pod}");
    }
    assert!(dns.records_file().is_file(), "no records file");

    // The server as the lab starts it, in its namespace.
    let listen = std::net::SocketAddr::from((dns.server, 53));
    match meshgate_bin() {
        Some(bin) => {
            let child = Command::new("ip")
                .args(["netns", "exec", &dns.netns])
                .arg(&bin)
                .args(dns.server_args())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {} lab dns-server: {e}", bin.display()));
            guard.child = Some(child);
        }
        None => serve_in_namespace(&dns.netns, listen, dns.records_file()),
    }
    // A pod reaches it across its node (masqueraded), over UDP and TCP.
    let dig = Dig {
        ns: &pods[0],
        server: dns.server.to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig.answer(&["api.example.com"]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pod a got no answer from the DNS server at {listen} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dig.answer(&["+tcp", "many.example.com"]).len(), 1000);
    let node = Dig {
        ns: &format!("mg-{world}-c1-n-n1"),
        server: dns.server.to_string(),
    };
    assert_eq!(node.answer(&["www.example.com"]).len(), 2, "from the node");

    drop(guard);
    for pod in &pods {
        assert!(
            !std::path::Path::new(&format!("/etc/netns/{pod}")).exists(),
            "down left /etc/netns/{pod}"
        );
    }
}
