//! `meshgate discovery`: runs the discovery server until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct DiscoveryArgs {
    /// Address and port to serve gRPC on.
    #[arg(long, default_value = "0.0.0.0:7100")]
    pub listen: SocketAddr,
    /// Name of the cluster this discovery serves.
    #[arg(long)]
    pub cluster: String,
    /// Cluster ID, 1..=255, unique in the mesh.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub cluster_id: u8,
    /// Where the embedded store keeps its state.
    #[arg(long, default_value = "/var/lib/meshgate-discovery")]
    pub state_dir: PathBuf,
    /// Where the cluster's state lives: `embedded` (state.redb in
    /// --state-dir) or `etcd://HOST:PORT[,HOST:PORT...]`, shared by several
    /// discovery replicas of the cluster.
    #[arg(long, default_value = "embedded")]
    pub store: meshgate_discovery::store::StoreChoice,
    /// This cluster's pod CIDRs (its podCIDR): IPv4, host bits zero, none
    /// overlapping another. Repeatable or comma-separated. A node may then
    /// register only pod CIDRs inside them, and they are announced to
    /// agents and remote clusters as this cluster's, so strict mode and
    /// departed-node protection cover the whole range. Without it nodes'
    /// pod CIDRs are not checked, this cluster announces none, and strict
    /// mode and departed-node protection only cover nodes' own CIDRs.
    #[arg(
        long = "pod-cidr",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = parse_pod_cidr
    )]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// How the mesh encrypts: wireguard (the default) or ipsec. Nodes that
    /// register with another are refused: a mesh mixes no encryption.
    #[arg(long, default_value = "wireguard")]
    pub encryption: meshgate_model::model::Encryption,
    /// Seconds after which a node that stopped renewing its lease is removed.
    #[arg(long, default_value_t = 10.0)]
    pub lease_ttl: f64,
    /// A remote cluster to import nodes, endpoints and identities from:
    /// NAME=http://IP:PORT (NAME is its cluster name). Repeatable.
    #[arg(long = "remote", value_name = "NAME=URL")]
    pub remotes: Vec<meshgate_discovery::federation::RemoteConfig>,
    /// Seconds a remote's state is kept after its connection broke.
    #[arg(long, default_value_t = 60.0)]
    pub remote_timeout: f64,
    /// A YAML list of this cluster's services (name, namespace, ports,
    /// selector, annotations, export); global ones are merged across clusters.
    #[arg(long)]
    pub services: Option<PathBuf>,
    /// Where this cluster's services come from: `files` (the default:
    /// --services) or `kubernetes`: every Service with a selector and MCS's
    /// ServiceExports, watched from the API (a change of definitions gives
    /// every watcher a fresh snapshot), and the remote clusters of the
    /// MeshgateRemoteClusters, linked beside --remote at run time.
    #[arg(long, default_value = "files", value_parser = ["files", "kubernetes"])]
    pub inventory: String,
    /// With --inventory kubernetes: the kubeconfig to reach the API with
    /// (default: KUBECONFIG, ~/.kube/config, then the pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This discovery's TLS certificate (PEM); with --tls-key and
    /// --client-ca, gRPC is served over mutual TLS only.
    #[arg(long, requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires_all = ["tls_cert", "client_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The CA that clients' certificates must chain to (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub client_ca: Option<PathBuf>,
}

fn parse_pod_cidr(value: &str) -> Result<ipnet::IpNet, meshgate_model::cidrs::CidrError> {
    meshgate_model::cidrs::parse_pod_cidr(value)
}

pub fn run(args: DiscoveryArgs) -> anyhow::Result<()> {
    if !(args.lease_ttl > 0.0 && args.lease_ttl < 86_400.0) {
        anyhow::bail!(
            "--lease-ttl {} is out of range: give seconds between 0 and 86400",
            args.lease_ttl
        );
    }
    if !(args.remote_timeout > 0.0 && args.remote_timeout <= 86_400.0) {
        anyhow::bail!(
            "--remote-timeout {} is out of range: give seconds between 0 and 86400",
            args.remote_timeout
        );
    }
    meshgate_model::cidrs::validate(&args.pod_cidrs)
        .map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
    if args.store == meshgate_discovery::store::StoreChoice::Embedded {
        std::fs::create_dir_all(&args.state_dir)
            .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    }
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            meshgate_model::tls::ServerTls::from_files(cert, key, ca)
                .context("loading discovery's TLS files")?,
        ),
        _ => None,
    };
    let kubernetes = args.inventory == "kubernetes";
    if kubernetes && args.services.is_some() {
        anyhow::bail!(
            "--services is read from the Kubernetes API with --inventory kubernetes: leave \
             --services out, or use --inventory files"
        );
    }
    if !kubernetes && args.kubeconfig.is_some() {
        anyhow::bail!(
            "--kubeconfig is for --inventory kubernetes (add it, or leave --kubeconfig out)"
        );
    }
    let services = match &args.services {
        Some(path) => crate::services_file::load(path)?,
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // The first lists stand where the file is read: served from the start.
        let (services, feeds) = if kubernetes {
            let client = meshgate_k8s::client(args.kubeconfig.as_deref()).await?;
            let mut watched = crate::discovery_kube::start(&client);
            let (first, remotes) = watched.first().await;
            let (tx, rx) = tokio::sync::watch::channel(first.clone());
            let (rtx, rrx) = tokio::sync::watch::channel(remotes);
            watched.follow(tx, rtx);
            let feeds = meshgate_discovery::server::Feeds {
                services: Some(rx),
                remotes: Some(rrx),
            };
            (first, feeds)
        } else {
            (services, meshgate_discovery::server::Feeds::default())
        };
        let cfg = meshgate_discovery::server::ServerConfig {
            listen: args.listen,
            cluster: args.cluster,
            cluster_id: args.cluster_id,
            state_dir: args.state_dir,
            lease_ttl: Duration::from_secs_f64(args.lease_ttl),
            federation: meshgate_discovery::federation::FederationConfig {
                remotes: args.remotes,
                remote_timeout: Duration::from_secs_f64(args.remote_timeout),
            },
            services,
            pod_cidrs: args.pod_cidrs,
            encryption: args.encryption,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        meshgate_discovery::server::serve_on_with_feeds(
            cfg,
            tls,
            args.store,
            listener,
            feeds,
            shutdown_signal(),
        )
        .await
        .context("discovery server failed")
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("discovery shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DiscoveryArgs,
    }

    fn parse(extra: &[&str]) -> Result<DiscoveryArgs, String> {
        let mut argv = vec!["discovery", "--cluster", "c1", "--cluster-id", "1"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn store_defaults_to_embedded_and_takes_etcd() {
        use meshgate_discovery::store::StoreChoice;
        assert_eq!(
            parse(&[]).ok().map(|a| a.store),
            Some(StoreChoice::Embedded)
        );
        assert_eq!(
            parse(&["--store", "etcd://127.0.0.1:2379"])
                .ok()
                .map(|a| a.store),
            Some(StoreChoice::Etcd {
                endpoints: vec!["127.0.0.1:2379".into()],
                compaction: Default::default(),
            })
        );
    }

    #[test]
    fn pod_cidrs_are_repeatable_or_comma_separated_and_checked() {
        let cidrs = |a: &DiscoveryArgs| {
            a.pod_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(parse(&[]).map(|a| cidrs(&a)), Ok(vec![]));
        assert_eq!(
            parse(&[
                "--pod-cidr",
                "10.1.0.0/16,10.11.0.0/16",
                "--pod-cidr",
                "10.21.0.0/16"
            ])
            .map(|a| cidrs(&a)),
            Ok(vec![
                "10.1.0.0/16".to_string(),
                "10.11.0.0/16".to_string(),
                "10.21.0.0/16".to_string()
            ])
        );
        let Err(e) = parse(&["--pod-cidr", "10.1.0.5/16"]) else {
            panic!("host bits must be refused");
        };
        assert!(
            e.contains("--pod-cidr") && e.contains("use 10.1.0.0/16"),
            "{e}"
        );
        let Err(e) = parse(&["--pod-cidr", "fd00::/64"]) else {
            panic!("IPv6 must be refused");
        };
        assert!(e.contains("not IPv4"), "{e}");
    }

    #[test]
    fn a_bad_store_names_the_accepted_forms() {
        let Err(e) = parse(&["--store", "zk://10.0.0.1:2181"]) else {
            panic!("zk:// must be refused");
        };
        assert!(
            e.contains("--store") && e.contains("embedded") && e.contains("etcd://HOST:PORT"),
            "{e}"
        );
    }
}
