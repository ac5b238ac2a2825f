//! The agent's link to discovery: register and report this node's
//! endpoints, watch the stream of node, endpoint and identity changes, renew
//! the lease. When discovery is unreachable the agent keeps its last known
//! peers and ipcache and retries with backoff; nothing is torn down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use meshgate_discovery::client::{connect_with, explain_status, DiscoveryClient};
use meshgate_discovery::pb;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::ipcache;
use super::mesh::{refresh, set_tunnel_ip};
use super::Agent;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

fn this_node(agent: &Agent) -> pb::Node {
    let cfg = &agent.cfg;
    pb::Node {
        name: cfg.node.clone(),
        cluster: cfg.cluster.clone(),
        cluster_id: u32::from(cfg.cluster_id),
        underlay_ip: cfg.underlay_ip.to_string(),
        listen_port: u32::from(cfg.listen_port),
        wg_public_key: agent.key().public().to_base64(),
        pod_cidrs: vec![cfg.pod_cidr.trunc().to_string()],
        tunnel_ip: String::new(),
        roles: cfg.roles.clone(),
    }
}

/// A refused call's message; TLS failures (a refused certificate shows on
/// the first call) are explained.
fn why(agent: &Agent, status: &tonic::Status) -> String {
    explain_status(status, &agent.cfg.discovery, agent.cfg.tls.as_ref())
}

/// Runs forever: one session with discovery after another.
pub async fn run(agent: Arc<Agent>) {
    let mut backoff = BACKOFF_START;
    loop {
        let result = session(&agent, &mut backoff).await;
        agent.mesh().discovery_connected = false;
        if let Err(e) = result {
            warn!(
                discovery = %agent.cfg.discovery,
                error = %format!("{e:#}"),
                retry_in_ms = backoff.as_millis() as u64,
                "discovery unreachable; keeping the last known peers"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn register(
    agent: &Agent,
    client: &mut DiscoveryClient<Channel>,
) -> anyhow::Result<Duration> {
    let req = pb::RegisterRequest {
        node: Some(this_node(agent)),
    };
    let resp = tokio::time::timeout(CALL_TIMEOUT, client.register(req))
        .await
        .context("register timed out")?
        .map_err(|s| anyhow!("discovery refused the registration: {}", why(agent, &s)))?
        .into_inner();
    let node = resp.node.context("register answer has no node")?;
    let ip: Ipv4Addr = node
        .tunnel_ip
        .parse()
        .with_context(|| format!("discovery gave an invalid tunnel ip {:?}", node.tunnel_ip))?;
    set_tunnel_ip(agent, ip)?;
    let ttl = Duration::from_millis(u64::from(resp.lease_ttl_ms.max(300)));
    info!(tunnel_ip = %ip, lease_ms = ttl.as_millis() as u64, "registered with discovery");
    report_endpoints(agent, client).await;
    Ok(ttl)
}

/// Reports this node's endpoints (the full set). A refusal is logged, not
/// fatal: the mesh keeps working without them.
async fn report_endpoints(agent: &Agent, client: &mut DiscoveryClient<Channel>) {
    let req = pb::ReportEndpointsRequest {
        node: agent.cfg.node.clone(),
        cluster: agent.cfg.cluster.clone(),
        endpoints: agent.endpoints.clone(),
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.report_endpoints(req)).await {
        Ok(Ok(resp)) => {
            let n = resp.into_inner().endpoints.len();
            info!(endpoints = n, "endpoints reported");
        }
        Ok(Err(s)) => warn!(error = %why(agent, &s), "discovery refused this node's endpoints"),
        Err(_) => {
            warn!("reporting endpoints timed out; they are sent again on the next registration")
        }
    }
}

/// Applies an event to the ipcache and writes `ipcache.json` if it changed.
fn update_ipcache(agent: &Agent, event: &pb::watch_event::Event) {
    let mut cache = agent.ipcache();
    match cache.apply(event) {
        Ok(true) => {
            if let Err(e) = ipcache::save(&agent.cfg.state_dir, &cache) {
                warn!(error = %format!("{e:#}"), "writing the ipcache failed");
            }
        }
        Ok(false) => {}
        Err(problem) => warn!(%problem, "ignoring an unusable ipcache record"),
    }
}

/// Applies an event to the services and writes `services.json` if they changed.
fn update_services(agent: &Agent, event: &pb::watch_event::Event) {
    let mut services = agent.services();
    match services.apply(event) {
        Ok(true) => {
            if let Err(e) = super::services::save(&agent.cfg.state_dir, &services) {
                warn!(error = %format!("{e:#}"), "writing the services failed");
            }
        }
        Ok(false) => {}
        Err(problem) => warn!(%problem, "ignoring an unusable service record"),
    }
}

async fn session(agent: &Agent, backoff: &mut Duration) -> anyhow::Result<()> {
    let mut client = connect_with(&agent.cfg.discovery, agent.cfg.tls.as_ref()).await?;
    let ttl = register(agent, &mut client).await?;
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await
        .map_err(|s| anyhow!("watch refused: {}", why(agent, &s)))?
        .into_inner();
    agent.mesh().discovery_connected = true;
    *backoff = BACKOFF_START;
    let mut nodes: BTreeMap<String, pb::Node> = BTreeMap::new();
    let mut have_snapshot = false;
    let mut renew = tokio::time::interval(ttl / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            msg = stream.message() => {
                let event = msg
                    .map_err(|s| anyhow!("watch stream broke: {}", why(agent, &s)))?
                    .ok_or_else(|| anyhow!("discovery closed the watch stream"))?;
                if let Some(e) = &event.event {
                    update_ipcache(agent, e);
                    update_services(agent, e);
                }
                let node_event = matches!(
                    event.event,
                    Some(pb::watch_event::Event::Snapshot(_))
                        | Some(pb::watch_event::Event::Upserted(_))
                        | Some(pb::watch_event::Event::Removed(_))
                );
                if !node_event {
                    super::datapath::sync(agent);
                }
                match event.event {
                    Some(pb::watch_event::Event::Snapshot(s)) => {
                        nodes = s.nodes.into_iter().map(|n| (format!("{}/{}", n.cluster, n.name), n)).collect();
                        have_snapshot = true;
                        debug!(nodes = nodes.len(), revision = s.revision, "snapshot");
                    }
                    Some(pb::watch_event::Event::Upserted(u)) => {
                        if let Some(n) = u.node {
                            nodes.insert(format!("{}/{}", n.cluster, n.name), n);
                        }
                    }
                    Some(pb::watch_event::Event::Removed(r)) => {
                        nodes.remove(&format!("{}/{}", r.cluster, r.name));
                        info!(node = %r.name, cluster = %r.cluster, reason = r.reason, "node left");
                    }
                    // ipcache only: applied above, peers unchanged
                    Some(pb::watch_event::Event::EndpointUpserted(_))
                    | Some(pb::watch_event::Event::EndpointRemoved(_))
                    | Some(pb::watch_event::Event::IdentityAdded(_))
                    | Some(pb::watch_event::Event::ServiceUpdated(_))
                    | None => continue,
                }
                if have_snapshot {
                    *agent.nodes() = Some(nodes.clone());
                    refresh(agent);
                    super::datapath::sync(agent);
                }
            }
            _ = renew.tick() => {
                let req = pb::RenewRequest { name: agent.cfg.node.clone(), cluster: agent.cfg.cluster.clone() };
                match tokio::time::timeout(CALL_TIMEOUT, client.renew(req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                        info!("discovery forgot this node; registering again");
                        register(agent, &mut client).await?;
                    }
                    Ok(Err(s)) => return Err(anyhow!("lease renewal failed: {}", why(agent, &s))),
                    Err(_) => return Err(anyhow!("lease renewal timed out")),
                }
            }
            _ = agent.reregister.notified() => {
                register(agent, &mut client).await?;
            }
        }
    }
}

/// Tells discovery this node leaves, so peers drop it at once.
pub async fn deregister(agent: &Agent) -> anyhow::Result<()> {
    let mut client = connect_with(&agent.cfg.discovery, agent.cfg.tls.as_ref()).await?;
    client
        .deregister(pb::DeregisterRequest {
            name: agent.cfg.node.clone(),
            cluster: agent.cfg.cluster.clone(),
        })
        .await
        .map_err(|s| anyhow!("deregistration refused: {}", why(agent, &s)))?;
    info!("deregistered from discovery");
    Ok(())
}
