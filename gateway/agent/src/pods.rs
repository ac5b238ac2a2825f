//! Pods at run time: the endpoints `meshgate-cni` adds and deletes over
//! the agent's CNI socket (`<state dir>/cni.sock`, [`proto`]).
//!
//! An ADD is answered only once the endpoint is in `pods.json` (fsync'd,
//! so a restart loses none), discovery has given it its identity (seen on
//! the watch stream) and, with the eBPF datapath, `from_pod` is attached
//! to its veth and its ipcache entry is written. Until then the plugin
//! keeps the host side of the veth down, so the pod's first packet already
//! leaves encrypted and with its identity. An ADD that cannot get there in
//! [`ADD_TIMEOUT`] is undone and refused. DEL forgets the endpoint (nothing
//! to forget is no error), and works after a restart (the pods are
//! reloaded from `pods.json`).
//!
//! Labels come from the label source, `--pod-labels FILE` (until the
//! Kubernetes API is wired in): `namespace/name: {labels: {...},
//! serviceAccount: NAME}`, read at each ADD and watched ([`watch_labels`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshgate_model::endpoint::EndpointSpec;
use meshgate_model::identity::Labels;
use meshgate_model::pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::Agent;
// The plugin (gateway/src/cni) and the agent compile the same file, so
// the CNI plugin binary links nothing of the agent.
#[path = "../../src/cni/proto.rs"]
pub mod proto;
use proto::{Answer, Pod, Request};

/// The file the pods are kept in, in the state directory.
const PODS_FILE: &str = "pods.json";
/// How long an ADD may wait for the identity and the datapath.
pub const ADD_TIMEOUT: Duration = Duration::from_secs(20);
/// How often an ADD looks whether it is there yet.
const POLL: Duration = Duration::from_millis(10);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// One pod as the agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub pod: Pod,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl PodRecord {
    fn spec(&self) -> EndpointSpec {
        EndpointSpec {
            name: self.pod.name.clone(),
            namespace: self.pod.namespace.clone(),
            ip: IpAddr::V4(self.pod.ip),
            labels: self.labels.clone(),
            interface: Some(self.pod.host_interface.clone()),
            service_account: self.service_account.clone(),
        }
    }

    /// What the endpoint reports (before namespace labels).
    pub fn to_pb(&self) -> pb::Endpoint {
        self.spec().to_pb()
    }
}

/// The pods by [`Pod::key`].
pub type Pods = BTreeMap<String, PodRecord>;

/// `pods.json` of `dir`; none when it is not there.
pub fn load(dir: &Path) -> anyhow::Result<Pods> {
    let path = dir.join(PODS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pods file; move it away", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pods::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(dir: &Path, pods: &Pods) -> anyhow::Result<()> {
    let path = dir.join(PODS_FILE);
    let bytes = serde_json::to_vec_pretty(pods).context("encoding the pods")?;
    super::persist::write_atomic_blocking(&path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The label source's entry for a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelEntry {
    #[serde(default)]
    pub labels: Labels,
    #[serde(
        default,
        rename = "serviceAccount",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account: Option<String>,
}

/// The labels file's entries by `namespace/name`.
fn parse_labels(file: &Path, text: &str) -> anyhow::Result<BTreeMap<String, LabelEntry>> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_yaml::from_str(text).with_context(|| {
        format!(
            "pod labels file {}: not a YAML map of `namespace/name: {{labels: {{...}}, \
             serviceAccount: NAME}}`",
            file.display()
        )
    })
}

/// The labels file's entry for `namespace/name`, if the file has one.
fn labels_for(file: &Path, namespace: &str, name: &str) -> anyhow::Result<LabelEntry> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the pod labels file {}", file.display()))?;
    Ok(parse_labels(file, &text)?
        .remove(&format!("{namespace}/{name}"))
        .unwrap_or_default())
}

/// How often the label source is read again.
const LABELS_RECHECK: Duration = Duration::from_secs(1);

/// Re-reads the label source every [`LABELS_RECHECK`]: a pod whose labels
/// or service account changed takes the new ones (saved), and the
/// endpoints are reported again, so its identity, and every node's policy,
/// follow. A file that does not read or parse changes nothing (logged).
pub async fn watch_labels(agent: Arc<Agent>) {
    let Some(path) = agent.cfg.pod_labels.clone() else {
        return;
    };
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(LABELS_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                if last.take().is_some() {
                    warn!(file = %path.display(), error = %e, "the pod labels file does not read; the pods' labels stay");
                }
                continue;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        last = Some(text.clone());
        let all = match parse_labels(&path, &text) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the pod labels file is refused; the pods' labels stay");
                continue;
            }
        };
        if relabel(&agent, &all).is_err() {
            // Tried again on the next tick.
            last = None;
        }
    }
}

/// Gives each pod the labels and service account of `all` (its entry by
/// `namespace/name`; none: no labels), saves them, and reports the
/// endpoints again if any changed. Labels that are refused (a namespace
/// label set on a pod) go back to the old ones for the relabelled pods
/// (logged). An error when the new labels could not be saved (nothing
/// changed).
pub fn relabel(agent: &Arc<Agent>, all: &BTreeMap<String, LabelEntry>) -> anyhow::Result<()> {
    let (relabelled, before) = {
        let mut pods = agent.pods();
        let before = pods.clone();
        let mut keys = Vec::new();
        for (key, rec) in pods.iter_mut() {
            let e = all
                .get(&format!("{}/{}", rec.pod.namespace, rec.pod.name))
                .cloned()
                .unwrap_or_default();
            if rec.labels != e.labels || rec.service_account != e.service_account {
                rec.labels = e.labels;
                rec.service_account = e.service_account;
                keys.push(key.clone());
            }
        }
        if !keys.is_empty() {
            if let Err(e) = save(&agent.cfg.state_dir, &pods) {
                warn!(error = %format!("{e:#}"), "writing the relabelled pods failed; the labels stay");
                *pods = before;
                return Err(e);
            }
        }
        (keys, before)
    };
    if relabelled.is_empty() {
        return Ok(());
    }
    match super::recompute_endpoints(agent) {
        Ok(changed) => {
            info!(pods = ?relabelled, "pod labels changed; reporting the endpoints again");
            if changed {
                agent.report.notify_one();
            }
            super::datapath::kick(agent);
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the pods' new labels are refused; the old ones stay");
            let mut pods = agent.pods();
            // Only the relabelled pods' labels go back: pods added or
            // deleted meanwhile stay as they are.
            for key in &relabelled {
                if let (Some(now), Some(old)) = (pods.get_mut(key), before.get(key)) {
                    now.labels.clone_from(&old.labels);
                    now.service_account.clone_from(&old.service_account);
                }
            }
            if let Err(e) = save(&agent.cfg.state_dir, &pods) {
                warn!(error = %format!("{e:#}"), "writing the pods back failed");
            }
        }
    }
    Ok(())
}

/// How long an ADD waits for its pod on the API's list of this node's pods.
const LISTED_WAIT: Duration = Duration::from_secs(10);

/// With `--inventory kubernetes`: waits until the pod watcher lists the
/// pod (the kubelet runs the CNI plugin after the pod is bound to this
/// node, but the watch may be a moment behind), so it starts with its
/// labels. Refused when it does not come.
async fn wait_listed(agent: &Agent, pod: &Pod) -> anyhow::Result<()> {
    let key = format!("{}/{}", pod.namespace, pod.name);
    let end = Instant::now() + LISTED_WAIT;
    loop {
        let listed = agent
            .kube_pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|k| k.contains_key(&key));
        if listed {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!(
                "pod {key} is not on the Kubernetes API's list of pods on node {} after {}s: is \
                 it scheduled here, and can the agent list pods (its RBAC)?",
                agent.cfg.node,
                LISTED_WAIT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The pods kept by an earlier run whose host-side veth still exists; the
/// others' containers went while the agent was down (logged).
pub fn still_there(pods: Pods) -> Pods {
    pods.into_iter()
        .filter(|(key, p)| {
            let there = Path::new("/sys/class/net")
                .join(&p.pod.host_interface)
                .exists();
            if !there {
                warn!(pod = %key, interface = %p.pod.host_interface, "a pod's veth went while the agent was down; forgetting it");
            }
            there
        })
        .collect()
}

/// The CNI socket's path.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(proto::SOCKET_NAME)
}

/// Serves the CNI socket until the agent exits.
pub async fn serve(agent: Arc<Agent>) -> anyhow::Result<()> {
    let path = socket_path(&agent.cfg.state_dir);
    // A socket file left by an earlier run refuses the bind.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", path.display())),
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("listening on the CNI socket {}", path.display()))?;
    info!(socket = %path.display(), "CNI socket open");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(agent.clone(), stream));
                }
                Err(e) => {
                    warn!(error = %e, "accepting on the CNI socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn handle(agent: Arc<Agent>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    // A client that never sends its line does not hold a task for ever.
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(&agent, req).await,
            Err(e) => Answer::Error {
                message: format!("the agent cannot read this request: {e}"),
            },
        },
        Ok(Err(e)) => Answer::Error {
            message: format!("reading the request: {e}"),
        },
        Err(_) => return,
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_else(|e| {
        format!(r#"{{"result":"error","message":"encoding the answer: {e}"}}"#)
    });
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

async fn answer(agent: &Arc<Agent>, req: Request) -> Answer {
    let result = match req {
        Request::Add(pod) => add(agent, pod).await,
        Request::Del {
            container_id,
            ifname,
        } => del(agent, &proto::key(&container_id, &ifname)).await,
        Request::Check {
            container_id,
            ifname,
        } => check(agent, &proto::key(&container_id, &ifname)),
    };
    result.unwrap_or_else(|e| Answer::Error {
        message: format!("{e:#}"),
    })
}

/// Why `pod` cannot be this node's, if it cannot.
fn refuse(agent: &Agent, pod: &Pod, pods: &Pods) -> Option<String> {
    if !agent.cfg.pod_cidr.trunc().contains(&pod.ip) {
        return Some(format!(
            "pod IP {} is outside this node's pod CIDR {}; give the CNI config's IPAM this \
             node's pod CIDR",
            pod.ip,
            agent.cfg.pod_cidr.trunc()
        ));
    }
    if pod.host_interface.is_empty() || pod.host_interface.len() > 15 {
        return Some(format!(
            "host interface name {:?} is not a Linux interface name (1 to 15 bytes)",
            pod.host_interface
        ));
    }
    let file = agent
        .file_endpoints
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .reported
        .iter()
        .find(|e| e.ip == pod.ip.to_string())
        .cloned();
    if let Some(e) = file {
        return Some(format!(
            "pod IP {} is already endpoint {}/{} of the endpoints file; IPAM and the file \
             overlap",
            pod.ip, e.namespace, e.name
        ));
    }
    for (key, other) in pods {
        if *key != pod.key() && other.pod.ip == pod.ip {
            return Some(format!(
                "pod IP {} is already held by container {} ({}/{}): one IP was handed out \
                 twice; check the IPAM's data directory",
                pod.ip, other.pod.container_id, other.pod.namespace, other.pod.name
            ));
        }
    }
    None
}

async fn add(agent: &Arc<Agent>, pod: Pod) -> anyhow::Result<Answer> {
    let key = pod.key();
    if agent.cfg.inventory.is_kubernetes() {
        wait_listed(agent, &pod).await?;
    }
    let record = {
        let mut pods = agent.pods();
        // Under the lock: the label watcher cannot relabel the pods between
        // this read and the insert, so no pod keeps labels older than the
        // file's (or the API's).
        let entry = match &agent.cfg.pod_labels {
            Some(file) => labels_for(file, &pod.namespace, &pod.name)?,
            None => agent
                .kube_pods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .and_then(|k| k.get(&format!("{}/{}", pod.namespace, pod.name)).cloned())
                .unwrap_or_default(),
        };
        let record = PodRecord {
            pod,
            labels: entry.labels,
            service_account: entry.service_account,
        };
        if let Some(why) = refuse(agent, &record.pod, &pods) {
            bail!("{why}");
        }
        let before = pods.insert(key.clone(), record.clone());
        if let Err(e) = save(&agent.cfg.state_dir, &pods) {
            match before {
                Some(b) => pods.insert(key.clone(), b),
                None => pods.remove(&key),
            };
            return Err(e);
        }
        record
    };
    if let Err(e) = changed(agent) {
        forget(agent, &key, &record).await;
        return Err(e.context("the pod's labels are refused"));
    }
    let started = Instant::now();
    let deadline = started + ADD_TIMEOUT;
    loop {
        if let Some(identity) = ready(agent, &record) {
            info!(
                pod = %key, ip = %record.pod.ip, identity,
                ms = started.elapsed().as_millis() as u64, "pod added"
            );
            let labels = reported_labels(agent, record.pod.ip);
            return Ok(Answer::Ok {
                identity: Some(identity),
                pod: Some(record.pod),
                labels,
            });
        }
        if Instant::now() >= deadline {
            let why = readiness(agent, &record).err().unwrap_or_default();
            forget(agent, &key, &record).await;
            bail!(
                "the pod was not ready within {} s ({why}), so it was not added; check \
                 `meshgate status` on this node (is discovery reachable?) and retry",
                ADD_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The labels the endpoint with `ip` reports.
fn reported_labels(agent: &Agent, ip: Ipv4Addr) -> Labels {
    let ip = ip.to_string();
    agent
        .endpoints
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|e| e.ip == ip)
        .map(|e| e.labels.clone())
        .unwrap_or_default()
}

/// The pod's identity once discovery has given it to this pod on this node
/// and the datapath (if any) holds the pod; else which part is missing,
/// for the timeout's message.
fn readiness(agent: &Agent, record: &PodRecord) -> Result<u32, String> {
    let identity = {
        let cache = agent.ipcache();
        let Some(e) = cache.entries.get(&IpAddr::V4(record.pod.ip)) else {
            return Err("discovery's ipcache never listed its address".into());
        };
        if e.node != agent.cfg.node || e.cluster != agent.cfg.cluster {
            return Err(format!(
                "discovery lists its address on {}/{}",
                e.cluster, e.node
            ));
        }
        if e.namespace != record.pod.namespace || e.name != record.pod.name {
            return Err(format!(
                "discovery lists its address for {}/{}",
                e.namespace, e.name
            ));
        }
        if e.identity == 0 {
            return Err("discovery gave it no identity".into());
        }
        e.identity
    };
    match agent.datapath.get() {
        Some(dp) if !dp.ready_for(record.pod.ip, &record.pod.host_interface, identity) => {
            Err(format!(
                "it has identity {identity}, but the eBPF datapath does not hold it with \
                 from_pod attached to {}",
                record.pod.host_interface
            ))
        }
        _ => Ok(identity),
    }
}

fn ready(agent: &Agent, record: &PodRecord) -> Option<u32> {
    readiness(agent, record).ok()
}

async fn del(agent: &Arc<Agent>, key: &str) -> anyhow::Result<Answer> {
    let held = agent.pods().get(key).cloned();
    if let Some(record) = held {
        forget(agent, key, &record).await;
    }
    Ok(Answer::Ok {
        identity: None,
        pod: None,
        labels: Labels::new(),
    })
}

/// Removes `key`'s pod if it is still `record` (a newer ADD of the same
/// container interface is not undone by an older one's failure), and
/// reports the endpoints.
async fn forget(agent: &Arc<Agent>, key: &str, record: &PodRecord) {
    let gone = {
        let mut pods = agent.pods();
        let gone = if pods.get(key) == Some(record) {
            pods.remove(key)
        } else {
            None
        };
        if gone.is_some() {
            if let Err(e) = save(&agent.cfg.state_dir, &pods) {
                warn!(pod = %key, error = %format!("{e:#}"), "writing the pods after a delete failed; the next change writes it");
            }
        }
        gone
    };
    if let Some(g) = gone {
        if let Err(e) = changed(agent) {
            warn!(error = %format!("{e:#}"), "recomputing the endpoints after a delete failed");
        }
        info!(pod = %key, ip = %g.pod.ip, "pod deleted");
    }
}

fn check(agent: &Agent, key: &str) -> anyhow::Result<Answer> {
    let Some(record) = agent.pods().get(key).cloned() else {
        bail!("the agent holds no endpoint for {key}; the pod needs an ADD");
    };
    let Some(identity) = ready(agent, &record) else {
        bail!(
            "the agent holds {key} ({}), but it has no identity from discovery or the \
             datapath does not hold it yet",
            record.pod.ip
        );
    };
    Ok(Answer::Ok {
        identity: Some(identity),
        pod: Some(record.pod.clone()),
        labels: reported_labels(agent, record.pod.ip),
    })
}

/// The pods changed: the endpoints are recomputed and reported, and the
/// datapath follows.
fn changed(agent: &Agent) -> anyhow::Result<()> {
    if super::recompute_endpoints(agent)? {
        agent.report.notify_one();
    }
    super::datapath::kick(agent);
    Ok(())
}
