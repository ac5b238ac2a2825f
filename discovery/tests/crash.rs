//! A discovery on the embedded store killed with SIGKILL while changes
//! pour in, at random points, then started again on the same state dir:
//! it holds every change it acknowledged, and opens without error.
//!
//! The discovery runs in a process of its own (this test run again with
//! [`STATE_DIR_ENV`] set, which makes it [`serve`]), so the kill is a real
//! one.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

mod common;

use common::pb_node;
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::server::{serve_on, ServerConfig};
use meshgate_discovery::store::StoreChoice;
use tonic::transport::Channel;

const STATE_DIR_ENV: &str = "MESHGATE_CRASH_TEST_STATE_DIR";
const LISTENING: &str = "crash-test discovery listening on ";

/// Serves as the discovery on `dir`, until killed: what the test runs in
/// its child process.
async fn serve(dir: String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ServerConfig {
        listen: addr,
        cluster: "c1".into(),
        cluster_id: 1,
        state_dir: dir.into(),
        lease_ttl: Duration::from_secs(600),
        services: Vec::new(),
        federation: Default::default(),
        pod_cidrs: Vec::new(),
        encryption: Default::default(),
    };
    // The parent reads where to connect from this line.
    #[allow(clippy::print_stdout)]
    {
        println!("{LISTENING}{addr}");
    }
    serve_on(
        cfg,
        None,
        StoreChoice::Embedded,
        listener,
        std::future::pending(),
    )
    .await
    .unwrap();
}

/// The discovery process on `dir`, and where it listens.
fn start(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "churn_then_sigkill_keeps_every_acknowledged_change",
            "--include-ignored",
            "--nocapture",
        ])
        .env(STATE_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in out.by_ref() {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix(LISTENING) {
            // The rest is read (and dropped) so that the child never
            // writes into a closed pipe.
            std::thread::spawn(move || out.for_each(drop));
            return (child, addr.trim().parse().unwrap());
        }
    }
    let status = child.wait().unwrap();
    panic!("the discovery process ended ({status}) before it listened (state dir {dir:?})");
}

async fn client(addr: SocketAddr) -> DiscoveryClient<Channel> {
    let t = Instant::now();
    loop {
        match connect(&format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) if t.elapsed() > Duration::from_secs(10) => panic!("connect {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A small xorshift, seeded from the clock: each run kills at other points
/// (the seed is printed, and named in a failure).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the discovery acknowledged: node name → (tunnel IP, endpoint IPs).
type Acked = BTreeMap<String, (String, Vec<String>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_then_sigkill_keeps_every_acknowledged_change() {
    if let Ok(dir) = std::env::var(STATE_DIR_ENV) {
        return serve(dir).await;
    }
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Acked::new();
    let (mut next_node, mut changes) = (0u32, 0u32);
    let mut in_flight = InFlight::None;
    for round in 0..10 {
        let (mut child, addr) = start(dir.path());
        let mut c = client(addr).await;
        // What the runs before acknowledged is all there.
        check(
            &mut c,
            &mut acked,
            std::mem::take(&mut in_flight),
            seed,
            round,
        )
        .await;
        // Changes pour in (new nodes, endpoints changed on earlier ones),
        // one after another, until a SIGKILL 50 to 800 ms in, whatever is
        // in flight then.
        let killed = Arc::new(AtomicBool::new(false));
        let after = Duration::from_millis(50 + rng.below(750));
        let killer = {
            let killed = killed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(after);
                killed.store(true, Ordering::SeqCst);
                child.kill().unwrap();
                child.wait().unwrap();
            })
        };
        loop {
            let sent;
            let done = if next_node < 200 && (acked.is_empty() || rng.below(2) == 0) {
                let n = next_node;
                let name = format!("n{n}");
                let key = u8::try_from(n + 1).unwrap();
                let node = pb_node(&name, &format!("10.1.{n}.0/24"), key);
                sent = InFlight::Register;
                c.register(pb::RegisterRequest { node: Some(node) })
                    .await
                    .map(|r| {
                        next_node += 1;
                        let ip = r.into_inner().node.unwrap().tunnel_ip;
                        acked.insert(name, (ip, Vec::new()));
                    })
            } else {
                let names: Vec<String> = acked.keys().cloned().collect();
                let name = names[rng.below(names.len() as u64) as usize].clone();
                let n: u32 = name[1..].parse().unwrap();
                let count = 1 + rng.below(20) as u32;
                let ips: Vec<String> = (0..count).map(|i| format!("10.1.{n}.{}", 10 + i)).collect();
                let req = pb::ReportEndpointsRequest {
                    node: name.clone(),
                    cluster: "c1".into(),
                    endpoints: ips
                        .iter()
                        .enumerate()
                        .map(|(i, ip)| pb::Endpoint {
                            ip: ip.clone(),
                            name: format!("p{i}"),
                            labels: [("app".to_string(), format!("a{}", i % 4))].into(),
                            ..Default::default()
                        })
                        .collect(),
                };
                sent = InFlight::Endpoints(name.clone(), ips.clone());
                c.report_endpoints(req).await.map(|_| {
                    if let Some(entry) = acked.get_mut(&name) {
                        entry.1 = ips;
                    }
                })
            };
            match done {
                Ok(()) => changes += 1,
                // The kill: what was in flight is not acknowledged; it may
                // or may not have been kept.
                Err(_) if killed.load(Ordering::SeqCst) => {
                    in_flight = sent;
                    break;
                }
                Err(e) => {
                    panic!("seed {seed} round {round}: a change refused before the kill: {e}")
                }
            }
        }
        killer.join().unwrap();
    }
    let (mut child, addr) = start(dir.path());
    let mut c = client(addr).await;
    check(&mut c, &mut acked, in_flight, seed, 10).await;
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "crash test: {changes} changes acknowledged over 10 kills, {} nodes",
        acked.len()
    );
    assert!(changes > 50, "too few changes to mean anything: {changes}");
}

/// The change that was in flight at a kill.
#[derive(Default)]
enum InFlight {
    #[default]
    None,
    Register,
    Endpoints(String, Vec<String>),
}

/// The discovery at `c` holds every acknowledged node with its tunnel IP
/// and last acknowledged endpoints; the change in flight at the kill is
/// there whole or not at all (and is taken as acknowledged when there).
async fn check(
    c: &mut DiscoveryClient<Channel>,
    acked: &mut Acked,
    in_flight: InFlight,
    seed: u64,
    round: u32,
) {
    let mut w = common::watch(c).await;
    let s = match common::next(&mut w, Duration::from_secs(5)).await {
        meshgate_discovery::model::WatchItem::Snapshot(s) => s,
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    };
    match in_flight {
        InFlight::None => {}
        // Registered anyway: registered again next round (same name and key).
        InFlight::Register => {}
        InFlight::Endpoints(name, ips) => {
            let mut held: Vec<String> = s
                .endpoints
                .iter()
                .filter(|e| e.node == name)
                .map(|e| e.ip.to_string())
                .collect();
            held.sort();
            let mut sent = ips.clone();
            sent.sort();
            if held == sent {
                if let Some(entry) = acked.get_mut(&name) {
                    entry.1 = ips;
                }
            }
        }
    }
    for (name, (ip, eps)) in acked.iter() {
        let node = s.nodes.iter().find(|n| &n.name == name).unwrap_or_else(|| {
            panic!("seed {seed} round {round}: acknowledged node {name} lost after SIGKILL")
        });
        assert_eq!(
            node.tunnel_ip.map(|t| t.to_string()).as_deref(),
            Some(ip.as_str()),
            "seed {seed} round {round}: {name}'s tunnel IP"
        );
        let mut held: Vec<String> = s
            .endpoints
            .iter()
            .filter(|e| &e.node == name)
            .map(|e| e.ip.to_string())
            .collect();
        let mut want = eps.clone();
        held.sort();
        want.sort();
        assert_eq!(
            held, want,
            "seed {seed} round {round}: {name}'s acknowledged endpoints"
        );
    }
}
