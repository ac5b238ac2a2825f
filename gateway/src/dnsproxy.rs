//! `meshgate dnsproxy`: the per-node DNS proxy, its own process.
//!
//! The datapath lets pods' DNS (UDP and TCP port 53, to any server) through
//! to the host, where the nft rule of [`host`] DNATs it here. Each query is
//! decided from the source pod's identity (the pinned ipcache) by
//! [`meshgate_egress::dnsproxy::decide`]; allowed ones go upstream, and the
//! addresses of the answer are written into the pinned maps (`mg_fqdn`,
//! and `mg_egress` for FQDN egress gateways) before the pod gets it.
//!
//! It needs the agent only through files it already wrote: the policy file
//! (re-read when it changes) and the pins. So DNS keeps working while the
//! agent is down. A new proxy takes over the old one's sockets
//! ([`handoff`]), so a restart loses no query.

mod events;
mod handoff;
use meshgate_agent::dns_steering as host;
mod metrics;
mod mmsg;
mod policy_file;
mod pool;
mod serve;
mod upstream;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use meshgate_ebpf::Maps;
use meshgate_egress::dnsproxy::decide::{Decider, RefuseWith};
use meshgate_egress::dnsproxy::state::ProxyPolicy;
use tracing::{info, warn};

pub use events::{observe_socket, DnsEvent};

pub use host::{LISTEN, PORT};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RefuseArg {
    Refused,
    Nxdomain,
}

/// `meshgate dnsproxy`.
#[derive(Debug, Args)]
pub struct DnsProxyArgs {
    /// The policy file the agent writes (`<agent state dir>/dnsproxy-policy.json`).
    #[arg(long)]
    pub policy: PathBuf,
    /// The agent's `--bpf-pin-dir` (the maps are pinned under `maps/`).
    #[arg(long, default_value = "/sys/fs/bpf/meshgate")]
    pub bpf_pin_dir: PathBuf,
    /// Where allowed queries go: IP:PORT of the upstream DNS server.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// Directory for the control and observe sockets.
    #[arg(long, default_value = "/var/lib/meshgate")]
    pub state_dir: PathBuf,
    /// The proxy's address (put on `lo`); pods' DNS is DNATed to it.
    #[arg(long, default_value_t = LISTEN)]
    pub listen: Ipv4Addr,
    #[arg(long, default_value_t = PORT)]
    pub port: u16,
    /// Answered addresses stay reachable at least this many seconds, whatever their TTL.
    #[arg(long, default_value_t = 60)]
    pub min_ttl: u32,
    /// What a query for a name the pod may not look up gets.
    #[arg(long, value_enum, default_value = "refused")]
    pub refuse_with: RefuseArg,
    /// How long to wait for the upstream before answering SERVFAIL.
    #[arg(long, default_value_t = 1500)]
    pub upstream_timeout_ms: u64,
    /// Serve Prometheus metrics on this address (off unless given).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Remove the steering (nft table, address) and exit.
    #[arg(long)]
    pub uninstall: bool,
}

/// (identity, address) -> (expiry, ports) of the mg_fqdn entries written.
pub(crate) type Written = std::collections::HashMap<(u32, Ipv4Addr), (u64, Vec<(u8, u16)>)>;

/// What the serving tasks share.
pub(crate) struct Core {
    pub upstream: SocketAddr,
    pub upstream_timeout: Duration,
    pub pool: pool::UdpPool<serve::Waiting>,
    /// What this process wrote into mg_fqdn: (identity, address) ->
    /// (expiry, ports), so an answer that extends nothing costs no syscall.
    pub written: Mutex<Written>,
    /// Pod address -> (identity, when read): see [`serve::IDENTITY_FRESH`].
    pub identities: Mutex<std::collections::HashMap<Ipv4Addr, (u32, std::time::Instant)>>,
    pub decider: RwLock<Arc<Decider>>,
    pub maps: Mutex<Maps>,
    pub metrics: metrics::Metrics,
    pub events: events::Events,
    /// Queries being answered (a stopping proxy waits for them).
    pub inflight: AtomicU64,
}

pub fn run(args: DnsProxyArgs) -> anyhow::Result<ExitCode> {
    if args.uninstall {
        host::uninstall(args.listen)?;
        return Ok(ExitCode::SUCCESS);
    }
    // One thread: a query's work is short, and on a node the proxy shares
    // the cores with the pods it serves (measured by `cargo xtask bench
    // dns` beside two worker threads).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(main(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn main(args: DnsProxyArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let refuse_with = match args.refuse_with {
        RefuseArg::Refused => RefuseWith::Refused,
        RefuseArg::Nxdomain => RefuseWith::NxDomain,
    };
    let mut policy_file = policy_file::PolicyFile::new(&args.policy);
    let policy = policy_file.first().unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "no policy yet: every query is answered SERVFAIL until the agent writes it");
        ProxyPolicy::default()
    });
    let maps = open_maps(&args.bpf_pin_dir.join("maps")).await;
    let core = Arc::new(Core {
        upstream: args.upstream,
        upstream_timeout: Duration::from_millis(args.upstream_timeout_ms),
        pool: pool::UdpPool::new(args.upstream)
            .await
            .with_context(|| format!("opening sockets to the upstream {}", args.upstream))?,
        written: Mutex::default(),
        identities: Mutex::default(),
        decider: RwLock::new(Arc::new(Decider::new(policy, refuse_with, args.min_ttl))),
        maps: Mutex::new(maps),
        metrics: metrics::Metrics::default(),
        events: events::Events::default(),
        inflight: AtomicU64::new(0),
    });
    host::install(args.listen, args.port)?;

    let control = args.state_dir.join("dnsproxy.sock");
    let (sockets, predecessor) = match handoff::request(&control)? {
        Some((s, stream)) => {
            info!("took over the sockets of the running proxy");
            (s, Some(stream))
        }
        None => (bind(args.listen, args.port)?, None),
    };
    let serving = serve::start(core.clone(), &sockets)?;
    if let Some(stream) = predecessor {
        handoff::confirm(stream)?;
    }
    info!(listen = %args.listen, port = args.port, upstream = %args.upstream, "DNS proxy serving");

    tokio::spawn(watch_policy(core.clone(), policy_file));
    tokio::spawn(serve::collect_expired(core.clone()));
    tokio::spawn(events::serve(core.clone(), observe_socket(&args.state_dir)));
    if let Some(addr) = args.metrics_addr {
        let c = core.clone();
        let render = move || metrics::render(&c);
        meshgate_agent::metrics::spawn_server(addr, Arc::new(render)).await?;
    }

    // Until a successor has our sockets, or we are told to stop.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = handoff::serve(&control, &sockets);
        let _ = tx.send(r);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        r = rx => match r {
            Ok(Ok(())) => info!("a successor serves now: stopping"),
            Ok(Err(e)) => warn!(error = %format!("{e:#}"), "control socket failed: stopping"),
            Err(_) => {}
        },
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: stopping"),
    }
    serving.stop();
    // Queries in flight are finished (their answers sent) before we go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while core.inflight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn bind(listen: Ipv4Addr, port: u16) -> anyhow::Result<handoff::Sockets> {
    let udp = std::net::UdpSocket::bind((listen, port))
        .with_context(|| format!("binding UDP {listen}:{port} (is another DNS server there?)"))?;
    let tcp = std::net::TcpListener::bind((listen, port))
        .with_context(|| format!("binding TCP {listen}:{port} (is another DNS server there?)"))?;
    Ok(handoff::Sockets { udp, tcp })
}

/// Opens the pinned maps, waiting for the agent to have made them.
async fn open_maps(dir: &Path) -> Maps {
    let mut last_log = None::<tokio::time::Instant>;
    loop {
        match Maps::open_pinned(dir) {
            Ok(m) => return m,
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(dir = %dir.display(), error = %e, "waiting for the agent's pinned maps");
                    last_log = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Re-reads the policy file when it changes (the agent replaces it by
/// rename), from what `file`'s first read saw.
async fn watch_policy(core: Arc<Core>, mut file: policy_file::PolicyFile) {
    loop {
        tokio::time::sleep(policy_file::POLL).await;
        let Some(read) = file.changed() else {
            continue;
        };
        match read {
            Ok(policy) => {
                let mut d = core.decider.write().unwrap_or_else(|e| e.into_inner());
                info!(
                    revision = policy.revision,
                    identities = policy.identities.len(),
                    egress = policy.egress.len(),
                    "policy read"
                );
                // A new decider: its name index is built from the policy.
                *d = Arc::new(Decider::new(policy, d.refuse_with, d.min_ttl));
            }
            Err(e) => warn!(error = %format!("{e:#}"), "keeping the previous policy"),
        }
    }
}
