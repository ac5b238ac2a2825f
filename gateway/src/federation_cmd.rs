//! `meshgate federation`: what a discovery imports from remote clusters
//! (its `FederationStatus`): per remote, connected or not, what is imported
//! and what was rejected, by reason.

use anyhow::{anyhow, Context};
use clap::Args;
use meshgate_model::pb;

#[derive(Debug, Args)]
pub struct FederationArgs {
    #[command(flatten)]
    pub client: crate::nodes_cmd::DiscoveryClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: FederationArgs) -> anyhow::Result<()> {
    let tls = args.client.tls()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let status = runtime.block_on(crate::nodes_cmd::first_answer(
        &args.client.discovery,
        tls.as_ref(),
        "with its federation status",
        |mut client, url| {
            let tls = tls.as_ref();
            async move {
                client
                    .federation_status(pb::FederationStatusRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| {
                        anyhow!(
                            "federation status refused: {}",
                            meshgate_model::client::explain_status(&s, &url, tls)
                        )
                    })
            }
        },
    ))?;
    let out = if args.json {
        serde_json::to_string_pretty(&to_json(&status)).context("encoding the status")?
    } else {
        table(&status)
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{}", out.trim_end());
    }
    Ok(())
}

fn to_json(s: &pb::FederationStatusResponse) -> serde_json::Value {
    let remotes: Vec<serde_json::Value> = s
        .remotes
        .iter()
        .map(|r| {
            let rejected: std::collections::BTreeMap<&str, u64> =
                r.rejected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            serde_json::json!({
                "name": r.name, "url": r.url, "cluster_id": r.cluster_id,
                "connected": r.connected, "nodes": r.nodes, "endpoints": r.endpoints,
                "identities": r.identities, "rejected": rejected,
                "last_error": r.last_error, "disconnected_ms": r.disconnected_ms,
            })
        })
        .collect();
    serde_json::json!({"cluster": s.cluster, "cluster_id": s.cluster_id, "remotes": remotes})
}

fn table(s: &pb::FederationStatusResponse) -> String {
    let mut out = format!("cluster {} (id {})\n", s.cluster, s.cluster_id);
    if s.remotes.is_empty() {
        out.push_str("no remotes (start discovery with --remote NAME=URL)\n");
        return out;
    }
    out.push_str(
        "REMOTE   ID   STATE         NODES  ENDPOINTS  IDENTITIES  REJECTED                URL\n",
    );
    for r in &s.remotes {
        let state = if r.connected {
            "connected".to_string()
        } else if r.disconnected_ms > 0 {
            format!("down {}s", r.disconnected_ms / 1000)
        } else {
            "down".to_string()
        };
        let mut rejected: Vec<String> =
            r.rejected.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rejected.sort();
        let rejected = if rejected.is_empty() {
            "-".to_string()
        } else {
            rejected.join(",")
        };
        let id = if r.cluster_id == 0 {
            "-".to_string()
        } else {
            r.cluster_id.to_string()
        };
        out.push_str(&format!(
            "{:<8} {:<4} {:<13} {:<6} {:<10} {:<11} {:<23} {}\n",
            r.name, id, state, r.nodes, r.endpoints, r.identities, rejected, r.url
        ));
        if !r.last_error.is_empty() {
            out.push_str(&format!("         last error: {}\n", r.last_error));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_rejections_and_errors() {
        let s = pb::FederationStatusResponse {
            cluster: "c1".into(),
            cluster_id: 1,
            remotes: vec![pb::RemoteStatus {
                name: "c3".into(),
                url: "http://198.18.3.2:7100".into(),
                cluster_id: 0,
                connected: false,
                nodes: 0,
                endpoints: 0,
                identities: 0,
                rejected: [("cluster_id".to_string(), 1)].into(),
                last_error: "remote c3 claims cluster id 1".into(),
                disconnected_ms: 0,
            }],
        };
        let t = table(&s);
        assert!(
            t.contains("cluster_id=1") && t.contains("last error: remote c3"),
            "{t}"
        );
        assert_eq!(to_json(&s)["remotes"][0]["rejected"]["cluster_id"], 1);
    }
}
