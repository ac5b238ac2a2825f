//! The agent's link to discovery: register and report this node's
//! endpoints, watch the stream of node, endpoint and identity changes, renew
//! the lease. When discovery is unreachable the agent keeps its last known
//! peers and ipcache and retries with backoff; nothing is torn down.
//!
//! With several discovery replicas (`--discovery URL,URL,...`) the agent
//! talks to one; when that session breaks (connection, watch, a refused or
//! timed-out renewal) it moves to the next at once and registers there.
//! Backoff grows only after every replica failed in a row.
//!
//! The decisions (which replica, when, registering again, renewing the
//! lease, failing over) are the state machine of [`super::session`]; this
//! file is its shell: it performs each effect and answers with what came
//! of it, and applies the watch stream's events.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use meshgate_model::client::{connect_with, explain_status, DiscoveryClient};
use meshgate_model::pb;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::ipcache;
use super::mesh::{refresh, set_tunnel_ip};
use super::session::{Effect, Input, Session};
use super::Agent;

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
        encryption: cfg.encryption.as_str().to_string(),
        labels: agent
            .node_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        addresses: super::addresses::to_pb(&agent.addresses()),
    }
}

/// A refused call's message; TLS failures (a refused certificate shows on
/// the first call) are explained.
fn why(agent: &Agent, url: &str, status: &tonic::Status) -> String {
    explain_status(status, url, agent.cfg.tls.as_ref())
}

/// Runs forever: the session's effects performed one after another, the
/// watch stream's events applied, the agent's requests to register or
/// report again handed to the session.
pub async fn run(agent: Arc<Agent>) {
    let mut session = Session::new(agent.cfg.discovery.clone(), Instant::now());
    let mut link = Link::default();
    loop {
        while let Some(effect) = session.poll_effect() {
            if let Some(input) = perform(&agent, &mut link, effect).await {
                session.handle(input, Instant::now());
            }
        }
        agent.mesh().discovery_connected = session.connected();
        let wake = session.poll_timeout();
        tokio::select! {
            input = next_event(&agent, &mut link) => session.handle(input, Instant::now()),
            _ = sleep_until(wake) => session.handle_timeout(Instant::now()),
            _ = agent.reregister.notified() => session.handle(Input::ReregisterWanted, Instant::now()),
            _ = agent.report.notified() => session.handle(Input::ReportWanted, Instant::now()),
        }
    }
}

/// The connection and watch stream of the session in progress, and the
/// node records its stream brought.
#[derive(Default)]
struct Link {
    url: String,
    client: Option<DiscoveryClient<Channel>>,
    stream: Option<meshgate_model::client::WatchStream>,
    nodes: BTreeMap<String, pb::Node>,
    have_snapshot: bool,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Performs one effect; what came of it, if the session waits for that.
async fn perform(agent: &Agent, link: &mut Link, effect: Effect) -> Option<Input> {
    match effect {
        Effect::Connect { url } => {
            link.url.clone_from(&url);
            Some(match connect_with(&url, agent.cfg.tls.as_ref()).await {
                Ok(c) => {
                    link.client = Some(c);
                    Input::Connected
                }
                Err(e) => Input::ConnectFailed(format!("{e:#}")),
            })
        }
        Effect::Register => {
            let client = link.client.as_mut()?;
            Some(match register(agent, &link.url, client).await {
                Ok(lease_ttl) => Input::Registered { lease_ttl },
                Err(e) => Input::RegisterFailed(format!("{e:#}")),
            })
        }
        Effect::Report => {
            let client = link.client.as_mut()?;
            report_endpoints(agent, &link.url, client).await;
            None
        }
        Effect::Watch => {
            let client = link.client.as_mut()?;
            let req = pb::WatchRequest {
                local_only: false,
                backend_deltas: true,
                snapshot_parts: true,
            };
            Some(match meshgate_model::client::watch(client, req).await {
                Ok(s) => {
                    link.stream = Some(s);
                    link.nodes.clear();
                    link.have_snapshot = false;
                    Input::Watching
                }
                Err(s) => {
                    Input::WatchFailed(format!("watch refused: {}", why(agent, &link.url, &s)))
                }
            })
        }
        Effect::Renew => {
            let client = link.client.as_mut()?;
            let req = pb::RenewRequest {
                name: agent.cfg.node.clone(),
                cluster: agent.cfg.cluster.clone(),
            };
            Some(
                match tokio::time::timeout(CALL_TIMEOUT, client.renew(req)).await {
                    Ok(Ok(_)) => Input::Renewed,
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                        info!("discovery forgot this node; registering again");
                        Input::RenewNotFound
                    }
                    Ok(Err(s)) => Input::RenewFailed(format!(
                        "lease renewal failed: {}",
                        why(agent, &link.url, &s)
                    )),
                    Err(_) => Input::RenewFailed("lease renewal timed out".into()),
                },
            )
        }
        Effect::EndSession {
            url,
            reason,
            retry_in,
            next,
        } => {
            link.client = None;
            link.stream = None;
            agent.mesh().discovery_connected = false;
            warn!(
                discovery = %url,
                error = %reason,
                next = %next,
                retry_in_ms = retry_in.as_millis() as u64,
                "discovery unreachable; keeping the last known peers"
            );
            None
        }
    }
}

/// Waits for the watch stream's next message and applies it; returns only
/// when the stream broke (or its state could not be applied). With no
/// stream, never returns.
async fn next_event(agent: &Agent, link: &mut Link) -> Input {
    loop {
        let Some(stream) = link.stream.as_mut() else {
            return std::future::pending().await;
        };
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Input::StreamBroke("discovery closed the watch stream".into()),
            Err(s) => {
                return Input::StreamBroke(format!(
                    "watch stream broke: {}",
                    why(agent, &link.url, &s)
                ))
            }
        };
        if let Err(e) = apply(agent, link, event) {
            return Input::StreamBroke(format!("{e:#}"));
        }
    }
}

/// Applies one watch event: the ipcache, the services, the nodes (then
/// the peers and the datapath).
fn apply(agent: &Agent, link: &mut Link, event: pb::WatchEvent) -> anyhow::Result<()> {
    if let Some(e) = &event.event {
        update_ipcache(agent, e);
        update_services(agent, e)?;
        if matches!(
            e,
            pb::watch_event::Event::Snapshot(_) | pb::watch_event::Event::MeshCidrs(_)
        ) {
            // Plain datapath: rare, and a few `ip` calls at most.
            super::unreachable::sync(agent);
        }
    }
    let node_event = matches!(
        event.event,
        Some(pb::watch_event::Event::Snapshot(_))
            | Some(pb::watch_event::Event::Upserted(_))
            | Some(pb::watch_event::Event::Removed(_))
    );
    if !node_event {
        super::datapath::kick(agent);
    }
    match event.event {
        Some(pb::watch_event::Event::Snapshot(s)) => {
            link.nodes = s
                .nodes
                .into_iter()
                .map(|n| (format!("{}/{}", n.cluster, n.name), n))
                .collect();
            link.have_snapshot = true;
            debug!(nodes = link.nodes.len(), revision = s.revision, "snapshot");
        }
        Some(pb::watch_event::Event::Upserted(u)) => {
            if let Some(n) = u.node {
                link.nodes.insert(format!("{}/{}", n.cluster, n.name), n);
            }
        }
        Some(pb::watch_event::Event::Removed(r)) => {
            link.nodes.remove(&format!("{}/{}", r.cluster, r.name));
            info!(node = %r.name, cluster = %r.cluster, reason = r.reason, "node left");
        }
        // ipcache only: applied above, peers unchanged
        Some(pb::watch_event::Event::EndpointUpserted(_))
        | Some(pb::watch_event::Event::EndpointRemoved(_))
        | Some(pb::watch_event::Event::IdentityAdded(_))
        | Some(pb::watch_event::Event::ServiceUpdated(_))
        | Some(pb::watch_event::Event::ServiceBackends(_))
        | Some(pb::watch_event::Event::MeshCidrs(_))
        | None => return Ok(()),
    }
    if link.have_snapshot {
        let nodes = Arc::new(link.nodes.clone());
        *agent.nodes() = Some(nodes.clone());
        refresh(agent, Some(nodes));
        super::datapath::kick(agent);
    }
    Ok(())
}

async fn register(
    agent: &Agent,
    url: &str,
    client: &mut DiscoveryClient<Channel>,
) -> anyhow::Result<Duration> {
    let req = pb::RegisterRequest {
        node: Some(this_node(agent)),
    };
    let resp = tokio::time::timeout(CALL_TIMEOUT, client.register(req))
        .await
        .context("register timed out")?
        .map_err(|s| {
            anyhow!(
                "discovery refused the registration: {}",
                why(agent, url, &s)
            )
        })?
        .into_inner();
    let node = resp.node.context("register answer has no node")?;
    let ip: Ipv4Addr = node
        .tunnel_ip
        .parse()
        .with_context(|| format!("discovery gave an invalid tunnel ip {:?}", node.tunnel_ip))?;
    set_tunnel_ip(agent, ip)?;
    let ttl = Duration::from_millis(u64::from(resp.lease_ttl_ms.max(300)));
    info!(discovery = %url, tunnel_ip = %ip, lease_ms = ttl.as_millis() as u64, "registered with discovery");
    Ok(ttl)
}

/// Reports this node's endpoints (the full set). A refusal is logged, not
/// fatal: the mesh keeps working without them.
async fn report_endpoints(agent: &Agent, url: &str, client: &mut DiscoveryClient<Channel>) {
    let req = pb::ReportEndpointsRequest {
        node: agent.cfg.node.clone(),
        cluster: agent.cfg.cluster.clone(),
        endpoints: agent
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.report_endpoints(req)).await {
        Ok(Ok(resp)) => {
            let n = resp.into_inner().endpoints.len();
            info!(endpoints = n, "endpoints reported");
        }
        Ok(Err(s)) => {
            warn!(error = %why(agent, url, &s), "discovery refused this node's endpoints")
        }
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

/// Applies an event to the services and writes `services.json` if they
/// changed. A change of backends that does not apply (of a service this
/// agent does not have) is an error: the copy no longer matches
/// discovery's, and only a new snapshot mends it.
fn update_services(agent: &Agent, event: &pb::watch_event::Event) -> anyhow::Result<()> {
    let mut services = agent.services();
    match services.apply(event) {
        Ok(true) => {
            if let Err(e) = super::services::save(&agent.cfg.state_dir, &services) {
                warn!(error = %format!("{e:#}"), "writing the services failed");
            }
        }
        Ok(false) => {}
        Err(problem) if matches!(event, pb::watch_event::Event::ServiceBackends(_)) => {
            return Err(anyhow!("{problem}; opening the watch again for a snapshot"));
        }
        Err(problem) => {
            // The copy left the unreadable service out: write it as it is.
            warn!(%problem, "ignoring an unusable service record");
            if let Err(e) = super::services::save(&agent.cfg.state_dir, &services) {
                warn!(error = %format!("{e:#}"), "writing the services failed");
            }
        }
    }
    Ok(())
}

/// Tells discovery this node leaves, so peers drop it at once: the first
/// replica that answers.
pub async fn deregister(agent: &Agent) -> anyhow::Result<()> {
    let mut last = None;
    for url in &agent.cfg.discovery {
        match deregister_at(agent, url).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                debug!(discovery = %url, error = %format!("{e:#}"), "deregistration failed here");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no discovery URL")))
}

async fn deregister_at(agent: &Agent, url: &str) -> anyhow::Result<()> {
    let mut client = connect_with(url, agent.cfg.tls.as_ref()).await?;
    client
        .deregister(pb::DeregisterRequest {
            name: agent.cfg.node.clone(),
            cluster: agent.cfg.cluster.clone(),
        })
        .await
        .map_err(|s| anyhow!("deregistration refused: {}", why(agent, url, &s)))?;
    info!(discovery = %url, "deregistered from discovery");
    Ok(())
}
