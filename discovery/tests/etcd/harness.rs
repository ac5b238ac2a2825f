//! A real etcd and discovery replicas on it, for the etcd tests.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{next, watch};
use meshgate_discovery::client::{connect, pb, DiscoveryClient};
use meshgate_discovery::model::{Event, Snapshot, WatchItem};
use meshgate_discovery::server::{serve_on, ServerConfig};
use meshgate_discovery::store::StoreChoice;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Streaming;

pub const ETCD: &str = "/usr/bin/etcd";

/// A real etcd on loopback; killed and its data dir removed on drop.
pub struct Etcd {
    pub child: Child,
    pub client: SocketAddr,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd on free ports; tries other ports when one was taken in
    /// the meantime (tests run in parallel).
    pub fn start() -> Etcd {
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

    pub fn store(&self) -> StoreChoice {
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

pub struct Replica {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), meshgate_discovery::Error>>,
}

impl Replica {
    pub async fn start(store: StoreChoice, ttl: Duration) -> Replica {
        Replica::start_as(store, ttl, 1).await
    }

    /// A replica of cluster `c1` that believes its ID is `cluster_id`.
    pub async fn start_as(store: StoreChoice, ttl: Duration, cluster_id: u8) -> Replica {
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

    pub async fn client(&self) -> DiscoveryClient<Channel> {
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
    pub fn kill(mut self) {
        self.stop.take();
        self.task.abort();
    }
}

pub async fn register(c: &mut DiscoveryClient<Channel>, node: pb::Node) -> pb::Node {
    c.register(pb::RegisterRequest { node: Some(node) })
        .await
        .expect("register")
        .into_inner()
        .node
        .unwrap()
}

pub async fn snapshot_of(c: &mut DiscoveryClient<Channel>) -> Snapshot {
    let mut s = watch(c).await;
    match next(&mut s, Duration::from_secs(3)).await {
        WatchItem::Snapshot(s) => s,
        other => panic!("first watch event must be a snapshot, got {other:?}"),
    }
}

/// Waits for an upsert of `name` on `stream`, skipping other events.
pub async fn wait_upsert(stream: &mut Streaming<pb::WatchEvent>, name: &str) -> u64 {
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

pub fn endpoint(ip: &str, app: &str) -> pb::Endpoint {
    pb::Endpoint {
        ip: ip.into(),
        name: format!("{app}-pod"),
        labels: [("app".to_string(), app.to_string())].into(),
        ..Default::default()
    }
}

/// A TCP relay to etcd that the test can cut (every connection dropped,
/// new ones refused) and heal: a replica behind it is cut off from etcd
/// as by a network partition.
pub struct Relay {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_rx.clone();
                if *cut_rx.borrow() {
                    continue; // dropped: refused while cut
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { addr, cut, task }
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn heal(&self) {
        let _ = self.cut.send(false);
    }

    /// `store`, reaching etcd through this relay.
    pub fn store(&self, store: &StoreChoice) -> StoreChoice {
        match store {
            StoreChoice::Etcd { compaction, .. } => StoreChoice::Etcd {
                endpoints: vec![self.addr.to_string()],
                compaction: *compaction,
            },
            other => other.clone(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
