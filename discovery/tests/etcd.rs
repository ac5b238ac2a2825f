//! Two discovery replicas of one cluster on a real etcd (started on
//! loopback, on free ports, with a temporary data dir, killed on drop).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{next, pb_node, watch};
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::model::{Event, Snapshot, WatchItem};
use meshgate_discovery::server::{serve_on, ServerConfig};
use meshgate_discovery::store::StoreChoice;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Streaming;

const ETCD: &str = "/usr/bin/etcd";

/// A real etcd on loopback; killed and its data dir removed on drop.
struct Etcd {
    child: Child,
    client: SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd on free ports; tries other ports when one was taken in
    /// the meantime (tests run in parallel).
    fn start() -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: these tests run a real etcd. Install it with `cargo xtask deps` \
             (or `apt-get install etcd-server`); `cargo xtask test` installs it itself"
        );
        let mut last_log = String::new();
        for _ in 0..5 {
            match Etcd::try_start() {
                Ok(etcd) => return etcd,
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start (5 tries on free ports); last log:\n{last_log}");
    }

    fn try_start() -> Result<Etcd, String> {
        // On tmpfs when there is one: etcd syncs every write, which a busy
        // disk makes slow.
        let dir = match Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm").unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        let (cport, pport) = (free_port(), free_port());
        let client: SocketAddr = format!("127.0.0.1:{cport}").parse().unwrap();
        let peer = format!("http://127.0.0.1:{pport}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "etcdtest"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("etcdtest={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        let mut etcd = Etcd {
            child,
            client,
            _dir: dir,
        };
        let t = Instant::now();
        // Ours answers etcd's /version (another test's server may hold the port).
        while !answers_as_etcd(client) {
            let exited = etcd.child.try_wait().ok().flatten().is_some();
            if exited || t.elapsed() > Duration::from_secs(15) {
                return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if etcd.child.try_wait().ok().flatten().is_some() {
            return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        Ok(etcd)
    }

    fn store(&self) -> StoreChoice {
        format!("etcd://{}", self.client).parse().unwrap()
    }
}

/// Whether `addr` answers `GET /version` as etcd does.
fn answers_as_etcd(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    if c.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body.contains("etcdserver")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Replica {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), meshgate_discovery::Error>>,
}

impl Replica {
    async fn start(store: StoreChoice, ttl: Duration) -> Replica {
        Replica::start_as(store, ttl, 1).await
    }

    /// A replica of cluster `c1` that believes its ID is `cluster_id`.
    async fn start_as(store: StoreChoice, ttl: Duration, cluster_id: u8) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let cfg = ServerConfig {
            listen: addr,
            cluster: "c1".into(),
            cluster_id,
            state_dir: "/nonexistent-etcd-store-is-used".into(),
            lease_ttl: ttl,
            services: Vec::new(),
            federation: Default::default(),
            pod_cidrs: Vec::new(),
            encryption: Default::default(),
        };
        let task = tokio::spawn(serve_on(cfg, None, store, listener, async {
            let _ = stop_rx.await;
        }));
        Replica {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> DiscoveryClient<Channel> {
        let t = Instant::now();
        loop {
            match connect(&format!("http://{}", self.addr)).await {
                Ok(c) => return c,
                Err(e) if t.elapsed() > Duration::from_secs(5) => panic!("connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Kills the replica: its server task is aborted, as if the process died.
    fn kill(mut self) {
        self.stop.take();
        self.task.abort();
    }
}

async fn register(c: &mut DiscoveryClient<Channel>, node: pb::Node) -> pb::Node {
    c.register(pb::RegisterRequest { node: Some(node) })
        .await
        .expect("register")
        .into_inner()
        .node
        .unwrap()
}

async fn snapshot_of(c: &mut DiscoveryClient<Channel>) -> Snapshot {
    let mut s = watch(c).await;
    match next(&mut s, Duration::from_secs(3)).await {
        WatchItem::Snapshot(s) => s,
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    }
}

/// Waits for an upsert of `name` on `stream`, skipping other events.
async fn wait_upsert(stream: &mut Streaming<pb::WatchEvent>, name: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(stream, left).await {
            WatchItem::Event(Event::Upserted { node, revision }) if node.name == name => {
                return revision
            }
            WatchItem::Snapshot(s) if s.nodes.iter().any(|n| n.name == name) => return s.revision,
            _ => {}
        }
    }
}

fn endpoint(ip: &str, app: &str) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        name: format!("{app}-pod"),
        labels: [("app".to_string(), app.to_string())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_state_allocate_uniquely_and_survive_one_dying() {
    let etcd = Etcd::start();
    let ttl = Duration::from_millis(1500);
    let a = Replica::start(etcd.store(), ttl).await;
    let b = Replica::start(etcd.store(), ttl).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    // A node registered at A appears in B's watch, and one registered at B
    // in A's; tunnel IPs are not handed out twice.
    let mut wa = watch(&mut ca).await;
    let mut wb = watch(&mut cb).await;
    let n1 = register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    wait_upsert(&mut wb, "n1").await;
    let n2 = register(&mut cb, pb_node("n2", "10.1.1.0/24", 2)).await;
    wait_upsert(&mut wa, "n2").await;
    assert_ne!(n1.tunnel_ip, n2.tunnel_ip);

    // Both allocate identities at once, through different replicas: every
    // label set gets one ID, no ID is given to two label sets, and both
    // replicas agree.
    for round in 0..6u32 {
        let (ra, rb) = tokio::join!(
            ca.report_endpoints(pb::ReportEndpointsRequest {
                node: "n1".into(),
                cluster: "c1".into(),
                endpoints: (0..=round)
                    .map(|i| endpoint(&format!("10.1.0.{}", 10 + i), &format!("a{i}")))
                    .collect(),
            }),
            cb.report_endpoints(pb::ReportEndpointsRequest {
                node: "n2".into(),
                cluster: "c1".into(),
                endpoints: (0..=round)
                    .map(|i| endpoint(&format!("10.1.1.{}", 10 + i), &format!("b{i}")))
                    .collect(),
            }),
        );
        ra.expect("report at A");
        rb.expect("report at B");
    }
    // Each replica's watchers got every endpoint, whichever replica took
    // the report, in increasing revisions.
    for (replica, stream) in [("A", &mut wa), ("B", &mut wb)] {
        let mut seen = BTreeSet::new();
        let mut last = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < 12 {
            let left = deadline.saturating_duration_since(Instant::now());
            let WatchItem::Event(event) = next(stream, left).await else {
                panic!("{replica}: a second snapshot on a healthy watch");
            };
            assert!(
                event.revision() > last,
                "{replica}: revision {} after {last}: {event:?}",
                event.revision()
            );
            last = event.revision();
            if let Event::EndpointUpserted { endpoint, .. } = event {
                seen.insert(endpoint.ip);
            }
        }
    }
    let (sa, sb) = (snapshot_of(&mut ca).await, snapshot_of(&mut cb).await);
    let ids = |s: &Snapshot| -> BTreeMap<u32, String> {
        s.identities
            .iter()
            .map(|i| (i.id, i.labels.get("app").cloned().unwrap_or_default()))
            .collect()
    };
    assert_eq!(ids(&sa), ids(&sb), "the replicas disagree on identities");
    let apps: BTreeSet<String> = ids(&sa).into_values().collect();
    assert_eq!(apps.len(), 12, "one identity per label set: {:?}", ids(&sa));
    assert_eq!(ids(&sa).len(), 12, "no label set twice: {:?}", ids(&sa));
    assert_eq!(sa.endpoints.len(), 12);
    assert_eq!(sb.endpoints.len(), 12);

    // n1 renews only at B; A must not expire it (its lease is 1.5 s).
    let t = Instant::now();
    while t.elapsed() < ttl * 3 {
        for name in ["n1", "n2"] {
            cb.renew(pb::RenewRequest {
                name: name.into(),
                cluster: "c1".into(),
            })
            .await
            .expect("renew at B");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sa = snapshot_of(&mut ca).await;
    let names: Vec<&str> = sa.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"], "A expired a node renewed at B");

    // A dies; B goes on serving, and its watchers get later changes.
    a.kill();
    let n3 = register(&mut cb, pb_node("n3", "10.1.3.0/24", 3)).await;
    wait_upsert(&mut wb, "n3").await;
    assert!(![n1.tunnel_ip, n2.tunnel_ip].contains(&n3.tunnel_ip));
    // Nobody renews any more: B expires all three.
    let t = Instant::now();
    loop {
        let s = snapshot_of(&mut cb).await;
        if s.nodes.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < ttl * 4,
            "B did not expire unrenewed nodes: {:?}",
            s.nodes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Their lease keys went with them.
    let mut kv = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    let leases = kv
        .get(
            "/meshgate/c1/lease/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let left: Vec<String> = leases
        .kvs()
        .iter()
        .map(|k| String::from_utf8_lossy(k.key()).into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "lease keys of removed nodes stayed: {left:?}"
    );
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_later_loads_the_shared_state() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(10);
    let a = Replica::start(etcd.store(), ttl).await;
    let mut ca = a.client().await;
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    let b = Replica::start(etcd.store(), ttl).await;
    let mut cb = b.client().await;
    let s = snapshot_of(&mut cb).await;
    assert_eq!(s.nodes.len(), 1, "{s:?}");
    // Its first change does not overwrite A's.
    register(&mut cb, pb_node("n2", "10.1.1.0/24", 2)).await;
    let s = snapshot_of(&mut ca).await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"]);
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gone_refuses_changes_and_keeps_watchers_served() {
    let mut etcd = Etcd::start();
    let a = Replica::start(etcd.store(), Duration::from_secs(10)).await;
    let mut ca = a.client().await;
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    let mut w = watch(&mut ca).await;
    next(&mut w, Duration::from_secs(2)).await;
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    let err = ca
        .register(pb::RegisterRequest {
            node: Some(pb_node("n2", "10.1.1.0/24", 2)),
        })
        .await
        .expect_err("a change without etcd must be refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("etcd"), "{err}");
    // Nothing half-applied: the last state is still served, without n2.
    let s = snapshot_of(&mut ca).await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1"]);
    a.kill();
}

#[tokio::test]
async fn unreachable_etcd_at_start_is_a_clear_error() {
    let port = free_port();
    let store: StoreChoice = format!("etcd://127.0.0.1:{port}").parse().unwrap();
    let r = Replica::start(store, Duration::from_secs(10)).await;
    let err = tokio::time::timeout(Duration::from_secs(15), r.task)
        .await
        .expect("discovery did not give up on an unreachable etcd within 15 s")
        .unwrap()
        .expect_err("must fail without etcd")
        .to_string();
    assert!(
        err.contains(&format!("etcd://127.0.0.1:{port}")) && err.contains("etcd-server"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_is_compacted_and_replicas_keep_following() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(30);
    // Small figures, so that a test makes it compact with few writes.
    const COMPACT_EVERY: u32 = 50;
    const KEEP_REVISIONS: i64 = 20;
    let store = match etcd.store() {
        StoreChoice::Etcd { endpoints, .. } => StoreChoice::Etcd {
            endpoints,
            compaction: meshgate_discovery::store::Compaction {
                every: COMPACT_EVERY,
                keep: KEEP_REVISIONS,
            },
        },
        other => other,
    };
    let a = Replica::start(store.clone(), ttl).await;
    let b = Replica::start(store, ttl).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    // Every renewal is a write; enough of them make A compact all but the
    // last KEEP_REVISIONS revisions, the first state write among them.
    let writes = 2 * COMPACT_EVERY + 10;
    for _ in 0..writes {
        ca.renew(pb::RenewRequest {
            name: "n1".into(),
            cluster: "c1".into(),
        })
        .await
        .expect("renew");
    }
    let mut kv = etcd_client::Client::connect([format!("http://{}", etcd.client)], None)
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        let old = kv
            .get(
                "/meshgate/c1/state",
                Some(etcd_client::GetOptions::new().with_revision(2)),
            )
            .await;
        match old {
            Err(e) if e.to_string().contains("compacted") => break,
            other => assert!(
                t.elapsed() < Duration::from_secs(5),
                "revision 2 was not compacted after {writes} writes (keeping {KEEP_REVISIONS}): {:?}",
                other.map(|r| r.header().map(|h| h.revision()))
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B still follows A's changes, and A B's.
    let mut wb = watch(&mut cb).await;
    register(&mut ca, pb_node("n2", "10.1.1.0/24", 2)).await;
    wait_upsert(&mut wb, "n2").await;
    let mut wa = watch(&mut ca).await;
    register(&mut cb, pb_node("n3", "10.1.2.0/24", 3)).await;
    wait_upsert(&mut wa, "n3").await;
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_take_the_shared_state_refuses_changes_instead_of_overwriting() {
    let etcd = Etcd::start();
    let ttl = Duration::from_secs(30);
    // Misconfigured: the same cluster name with another cluster ID.
    let a = Replica::start(etcd.store(), ttl).await;
    let b = Replica::start_as(etcd.store(), ttl, 2).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    register(&mut ca, pb_node("n1", "10.1.0.0/24", 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = pb_node("n2", "10.1.1.0/24", 2);
    other.cluster_id = 2;
    let err = cb
        .register(pb::RegisterRequest { node: Some(other) })
        .await
        .expect_err("B cannot take A's state, so it must not write over it");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    // A's state is intact.
    let s = snapshot_of(&mut ca).await;
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1"]);
    register(&mut ca, pb_node("n3", "10.1.3.0/24", 3)).await;
    a.kill();
    b.kill();
}
