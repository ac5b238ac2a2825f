//! `meshgate services`: this cluster's services as a discovery merged them,
//! global ones with backends from every cluster that shares them.

use anyhow::{anyhow, Context};
use clap::Args;
use meshgate_model::pb;

use crate::nodes_cmd::DiscoveryClientArgs;

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub client: DiscoveryClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn ports(s: &pb::GlobalService) -> String {
    s.ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

/// The table: one block per service, one line per backend and port.
pub fn render(services: &[pb::GlobalService]) -> String {
    let mut out = String::new();
    for s in services {
        out.push_str(&format!(
            "{}/{}  {}  affinity {}{}  ports {}  backends {}{}\n",
            s.namespace,
            s.name,
            if s.global { "global" } else { "local" },
            s.affinity,
            if s.shared { "" } else { "  (not shared)" },
            ports(s),
            s.backends.len(),
            if s.vip.is_empty() {
                String::new()
            } else {
                format!("  vip {}", s.vip)
            }
        ));
        for b in &s.backends {
            for p in &s.ports {
                out.push_str(&format!("  {}:{} ({})\n", b.ip, p.port, b.cluster));
            }
        }
    }
    out
}

pub fn run(args: ServicesArgs) -> anyhow::Result<()> {
    let tls = args.client.tls()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let resp = runtime.block_on(crate::nodes_cmd::first_answer(
        &args.client.discovery,
        tls.as_ref(),
        "with its services",
        |mut client, url| {
            let tls = tls.as_ref();
            async move {
                client
                    .services(pb::ServicesRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| {
                        anyhow!(
                            "listing services failed: {}",
                            meshgate_model::client::explain_status(&s, &url, tls)
                        )
                    })
            }
        },
    ))?;
    let out = if args.json {
        let rows: Vec<serde_json::Value> = resp
            .services
            .iter()
            .map(|s| {
                serde_json::json!({
                    "namespace": s.namespace, "name": s.name, "global": s.global,
                    "shared": s.shared, "affinity": s.affinity,
                    "ports": s.ports.iter().map(|p| serde_json::json!({
                        "name": p.name, "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                    "backends": s.backends.iter().map(|b| serde_json::json!({
                        "ip": b.ip, "cluster": b.cluster, "node": b.node, "name": b.name})).collect::<Vec<_>>(),
                    "vip": (!s.vip.is_empty()).then_some(&s.vip),
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "cluster": resp.cluster, "services": rows
        }))
        .context("encoding services")?
    } else {
        render(&resp.services)
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{}", out.trim_end());
    }
    Ok(())
}
