//! The agent's link to discovery: register and report this node's
//! endpoints, watch the stream of node, endpoint and identity changes, renew
//! the lease. When discovery is unreachable the agent keeps its last known
//! peers and ipcache and retries with backoff; nothing is torn down.
//!
//! With several discovery replicas (`--discovery URL,URL,...`) the agent
//! talks to one; when that session breaks (connection, watch, a refused or
//! timed-out renewal) it moves to the next at once and registers there.
//! Backoff grows only after every replica failed in a row.

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

/// Runs forever: one session with discovery after another, moving to the
/// next replica after each.
pub async fn run(agent: Arc<Agent>) {
    let urls = &agent.cfg.discovery;
    let mut failover = Failover::new(urls.len());
    loop {
        let url = &urls[failover.current()];
        let mut connected = false;
        let result = session(&agent, url, &mut connected).await;
        agent.mesh().discovery_connected = false;
        let wait = failover.ended(connected);
        if let Err(e) = result {
            warn!(
                discovery = %url,
                error = %format!("{e:#}"),
                next = %urls[failover.current()],
                retry_in_ms = wait.as_millis() as u64,
                "discovery unreachable; keeping the last known peers"
            );
        }
        tokio::time::sleep(wait).await;
    }
}

/// Which discovery replica to try next and how long to wait first: the
/// next one in order; at once (after [`BACKOFF_START`]) while some replica
/// of this round is untried, with a backoff doubling to [`BACKOFF_MAX`]
/// after every replica failed in a row. A session that got connected
/// starts a new round.
#[derive(Debug)]
struct Failover {
    replicas: usize,
    current: usize,
    failed_in_row: usize,
    backoff: Duration,
}

impl Failover {
    fn new(replicas: usize) -> Self {
        Failover {
            replicas: replicas.max(1),
            current: 0,
            failed_in_row: 0,
            backoff: BACKOFF_START,
        }
    }

    fn current(&self) -> usize {
        self.current
    }

    /// The session with the current replica ended (`connected`: it had
    /// registered and watched); moves on and returns the wait before the
    /// next attempt.
    fn ended(&mut self, connected: bool) -> Duration {
        if connected {
            self.backoff = BACKOFF_START;
            self.failed_in_row = 0;
        }
        self.failed_in_row += 1;
        self.current = (self.current + 1) % self.replicas;
        if !self.failed_in_row.is_multiple_of(self.replicas) {
            return BACKOFF_START;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
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
    report_endpoints(agent, url, client).await;
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

/// One session with the discovery at `url`; `connected` is set once it
/// registered and watches.
async fn session(agent: &Agent, url: &str, connected: &mut bool) -> anyhow::Result<()> {
    let mut client = connect_with(url, agent.cfg.tls.as_ref()).await?;
    let ttl = register(agent, url, &mut client).await?;
    let req = pb::WatchRequest {
        local_only: false,
        backend_deltas: true,
        snapshot_parts: true,
    };
    let mut stream = meshgate_discovery::client::watch(&mut client, req)
        .await
        .map_err(|s| anyhow!("watch refused: {}", why(agent, url, &s)))?;
    agent.mesh().discovery_connected = true;
    *connected = true;
    let mut nodes: BTreeMap<String, pb::Node> = BTreeMap::new();
    let mut have_snapshot = false;
    let mut renew = tokio::time::interval(ttl / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            msg = stream.message() => {
                let event = msg
                    .map_err(|s| anyhow!("watch stream broke: {}", why(agent, url, &s)))?
                    .ok_or_else(|| anyhow!("discovery closed the watch stream"))?;
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
                    | Some(pb::watch_event::Event::ServiceBackends(_))
                    | Some(pb::watch_event::Event::MeshCidrs(_))
                    | None => continue,
                }
                if have_snapshot {
                    *agent.nodes() = Some(nodes.clone());
                    refresh(agent);
                    super::datapath::kick(agent);
                }
            }
            _ = renew.tick() => {
                let req = pb::RenewRequest { name: agent.cfg.node.clone(), cluster: agent.cfg.cluster.clone() };
                match tokio::time::timeout(CALL_TIMEOUT, client.renew(req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                        info!("discovery forgot this node; registering again");
                        register(agent, url, &mut client).await?;
                    }
                    Ok(Err(s)) => return Err(anyhow!("lease renewal failed: {}", why(agent, url, &s))),
                    Err(_) => return Err(anyhow!("lease renewal timed out")),
                }
            }
            _ = agent.reregister.notified() => {
                register(agent, url, &mut client).await?;
            }
            _ = agent.report.notified() => {
                report_endpoints(agent, url, &mut client).await;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn one_replica_backs_off_as_before() {
        let mut f = Failover::new(1);
        let waits: Vec<u128> = (0..7).map(|_| ms(f.ended(false))).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(f.current(), 0);
        // A good session resets the backoff.
        assert_eq!(ms(f.ended(true)), 200);
    }

    #[test]
    fn the_next_replica_is_tried_at_once_and_a_failed_round_backs_off() {
        let mut f = Failover::new(2);
        assert_eq!(f.current(), 0);
        // Replica 0 was in use and died: replica 1 at once.
        assert_eq!(ms(f.ended(true)), 200);
        assert_eq!(f.current(), 1);
        // Replica 1 fails too: the round is over, back off, then replica 0.
        assert_eq!(ms(f.ended(false)), 200);
        assert_eq!(f.current(), 0);
        assert_eq!(ms(f.ended(false)), 200);
        assert_eq!(f.current(), 1);
        assert_eq!(ms(f.ended(false)), 400);
        assert_eq!(f.current(), 0);
        assert_eq!(ms(f.ended(false)), 200);
        assert_eq!(ms(f.ended(false)), 800);
        // Connected at replica 1, then it dies: replica 0 at once, fresh backoff.
        assert_eq!(f.current(), 0);
        f.ended(false);
        assert_eq!(f.current(), 1);
        assert_eq!(ms(f.ended(true)), 200);
        assert_eq!(f.current(), 0);
        // Replica 0 is down as well: that round ends with the first backoff.
        assert_eq!(ms(f.ended(false)), 200);
        assert_eq!(ms(f.ended(false)), 200);
        assert_eq!(ms(f.ended(false)), 400);
    }
}
