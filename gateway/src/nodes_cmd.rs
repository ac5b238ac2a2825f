//! `meshgate nodes`: lists the nodes a discovery knows, from its watch
//! snapshot (what every agent of the cluster is told).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use meshgate_model::client::DiscoveryClient;
use meshgate_model::pb;
use meshgate_model::tls::ClientTls;
use tonic::transport::Channel;

/// Asks the replicas of `--discovery` in turn (`ask` gets a client and the
/// URL, and explains a refusal with them): the first answer wins; when none
/// answers, the error names every replica and why.
pub async fn first_answer<T, F, Fut>(
    discovery: &str,
    tls: Option<&ClientTls>,
    what: &str,
    mut ask: F,
) -> anyhow::Result<T>
where
    F: FnMut(DiscoveryClient<Channel>, String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let urls = meshgate_agent::config::discovery_urls(discovery)?;
    let mut failures = Vec::new();
    for url in &urls {
        let answer = async {
            let client = meshgate_model::client::connect_with(url, tls).await?;
            tokio::time::timeout(CALL_TIMEOUT, ask(client, url.clone()))
                .await
                .with_context(|| format!("no answer within {} s", CALL_TIMEOUT.as_secs()))?
        };
        match answer.await {
            Ok(v) => return Ok(v),
            Err(e) if urls.len() == 1 => return Err(e),
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    bail!(
        "no replica of discovery answered {what}:\n  {}",
        failures.join("\n  ")
    )
}

/// How a command-line client reaches discovery, with or without TLS.
#[derive(Debug, Args)]
pub struct DiscoveryClientArgs {
    /// Discovery endpoint, e.g. https://198.18.1.2:7100; several replicas
    /// comma-separated (the first that answers is asked).
    #[arg(long)]
    pub discovery: String,
    /// The mesh CA (PEM): talk to an https:// discovery over TLS.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate signed by the mesh CA (an agent's will do).
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name on discovery's certificate, discovery.<cluster>.meshgate.
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

/// How long one replica has to answer before the next is asked.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl DiscoveryClientArgs {
    /// The TLS settings these flags ask for (None for http://).
    pub fn tls(&self) -> anyhow::Result<Option<meshgate_model::tls::ClientTls>> {
        if self.tls_ca.is_some() && self.tls_server_name.is_none() {
            bail!("--tls-ca needs --tls-server-name (discovery.<cluster>.meshgate): this command does not know the cluster");
        }
        let urls = meshgate_agent::config::discovery_urls(&self.discovery)?;
        meshgate_agent::config::client_tls(
            &urls[0],
            "",
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_server_name.clone(),
        )
    }
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: DiscoveryClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: NodesArgs) -> anyhow::Result<()> {
    let tls = args.client.tls()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let nodes = runtime.block_on(first_answer(
        &args.client.discovery,
        tls.as_ref(),
        "with its nodes",
        |mut client, url| {
            let tls = tls.as_ref();
            async move {
                let why = |s: &tonic::Status| meshgate_model::client::explain_status(s, &url, tls);
                let req = pb::WatchRequest::default();
                let mut stream = meshgate_model::client::watch(&mut client, req)
                    .await
                    .map_err(|s| anyhow!("watch refused: {}", why(&s)))?;
                let first = stream
                    .message()
                    .await
                    .map_err(|s| anyhow!("watch failed: {}", why(&s)))?;
                match first.and_then(|e| e.event) {
                    Some(pb::watch_event::Event::Snapshot(s)) => Ok(s.nodes),
                    _ => Err(anyhow!("discovery did not start the watch with a snapshot")),
                }
            }
        },
    ))?;
    let mut out = String::new();
    if args.json {
        let rows: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name, "cluster": n.cluster, "cluster_id": n.cluster_id,
                    "underlay_ip": n.underlay_ip, "listen_port": n.listen_port,
                    "public_key": n.wg_public_key, "tunnel_ip": n.tunnel_ip,
                    "pod_cidrs": n.pod_cidrs, "roles": n.roles,
                })
            })
            .collect();
        out = serde_json::to_string_pretty(&rows).context("encoding nodes")?;
    } else {
        out.push_str(
            "CLUSTER  NODE          UNDERLAY         TUNNEL IP       POD CIDRS        KEY\n",
        );
        for n in &nodes {
            out.push_str(&format!(
                "{:<8} {:<13} {:<16} {:<15} {:<16} {}\n",
                n.cluster,
                n.name,
                format!("{}:{}", n.underlay_ip, n.listen_port),
                n.tunnel_ip,
                n.pod_cidrs.join(","),
                n.wg_public_key.chars().take(8).collect::<String>()
            ));
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{}", out.trim_end());
    }
    Ok(())
}
