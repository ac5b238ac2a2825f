//! Commands on one target of a world that is up: ip, exec, stop, start,
//! restart, rotate-key, status.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::plan::agent_dir;
use crate::procs::{self, SIGHUP, SIGKILL, SIGTERM, SIGUSR1, SIGUSR2};
use crate::status::{self, short_key, AgentStatus};
use crate::target::{self, Target, TargetKind};
use crate::world::record::{Component, ProcessRecord, WorldRecord};
use crate::world::{self, pick_world};

/// How long an agent may take to leave (SIGTERM) before SIGKILL.
const LEAVE_GRACE: Duration = Duration::from_secs(10);
/// How long an agent may take to exit for a restart (SIGUSR2).
const RESTART_GRACE: Duration = Duration::from_secs(5);
const ROTATE_TIMEOUT: Duration = Duration::from_secs(10);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of a target.
pub fn ip(target: &str) -> Result<IpAddr> {
    Ok(IpAddr::V4(target::resolve(target)?.ip))
}

/// Runs `ip netns exec NS ARGV...` with inherited stdio; returns its exit
/// code (128 + signal if it was killed).
pub fn exec(target: &str, argv: &[String]) -> Result<i32> {
    let t = target::resolve(target)?;
    if argv.is_empty() {
        return Err(LabError::Target {
            target: target.to_string(),
            problem: "no command given to run".to_string(),
        });
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &t.netns])
        .args(argv)
        .status()
        .map_err(|source| LabError::Io {
            what: format!("running `ip netns exec {} {}`", t.netns, argv.join(" ")),
            source,
        })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// The status of a world (the only one up if `name` is `None`).
pub fn status(name: Option<&str>) -> Result<String> {
    let world = pick_world(name)?;
    let rec = WorldRecord::load_up(&world)?;
    crate::report::status_text(&rec)
}

/// An agent's `status.json`.
pub fn agent_status(world: &str, cluster: &str, node: &str) -> Result<AgentStatus> {
    status::read(&agent_dir(world, cluster, node).join("status.json"))
}

/// The record and the process of a target that has one.
fn with_process(target: &str) -> Result<(WorldRecord, Target, Component)> {
    let t = target::resolve(target)?;
    let Some(component) = t.component() else {
        let what = match &t.kind {
            TargetKind::Pod { node } => {
                format!("a pod has no process; its node is {}/{node}", t.cluster)
            }
            _ => "this target has no process".to_string(),
        };
        return Err(LabError::Target {
            target: target.to_string(),
            problem: what,
        });
    };
    let rec = WorldRecord::load_up(&t.world)?;
    Ok((rec, t, component))
}

fn running_pid(rec: &WorldRecord, component: &Component) -> Option<u32> {
    rec.process(component)
        .and_then(|p| p.pid)
        .filter(|pid| procs::is_meshgate(*pid))
}

fn require_running(rec: &WorldRecord, component: &Component) -> Result<u32> {
    running_pid(rec, component).ok_or_else(|| LabError::NotRunning {
        component: component.to_string(),
    })
}

/// Sends `sig`, waits up to `grace` (then SIGKILL), records it stopped.
fn stop_with(
    rec: &mut WorldRecord,
    component: &Component,
    sig: i32,
    grace: Duration,
) -> Result<String> {
    let pid = require_running(rec, component)?;
    let killed = procs::stop(pid, sig, grace)?;
    rec.set_pid(component, None)?;
    Ok(if killed {
        format!(
            "{component} (pid {pid}) did not exit within {} s; killed it",
            grace.as_secs()
        )
    } else {
        format!("{component} (pid {pid}) stopped")
    })
}

/// Stops a node's agent (SIGTERM: it leaves the mesh) or a discovery.
pub fn stop(target: &str) -> Result<String> {
    let (mut rec, _, component) = with_process(target)?;
    stop_with(&mut rec, &component, SIGTERM, LEAVE_GRACE)
}

fn start_in(
    rec: &mut WorldRecord,
    t: &Target,
    component: &Component,
    bin: &Path,
) -> Result<String> {
    if let Some(pid) = running_pid(rec, component) {
        // An agent handing over (after SIGUSR2) forwards on only until a
        // new one takes over: starting that one is what it waits for.
        if !(t.kind == TargetKind::Node && handing_over(t, pid)) {
            return Err(LabError::AlreadyRunning {
                component: component.to_string(),
                pid,
            });
        }
    }
    if t.kind == TargetKind::External {
        let x = rec
            .plan
            .externals
            .iter()
            .find(|x| x.name == t.name)
            .cloned()
            .ok_or_else(|| LabError::Target {
                target: format!("{}/{}", t.cluster, t.name),
                problem: "external vanished from the world record".to_string(),
            })?;
        world::start_external(rec, &x, bin, LISTEN_TIMEOUT)?;
        let pid = running_pid(rec, component).unwrap_or(0);
        return Ok(format!("{component} started (pid {pid})"));
    }
    let c = rec
        .plan
        .cluster(&t.cluster)
        .cloned()
        .ok_or_else(|| LabError::Target {
            target: format!("{}/{}", t.cluster, t.name),
            problem: "cluster vanished from the world record".to_string(),
        })?;
    let p: ProcessRecord = match rec.process(component) {
        Some(p) => p.clone(),
        None => match &t.kind {
            TargetKind::Discovery { replica } => {
                world::write_services_file(&c)?;
                world::replica_record(&c, *replica, Duration::from_secs(10))
            }
            _ => {
                let n = c.node(&t.name).ok_or_else(|| LabError::Target {
                    target: format!("{}/{}", t.cluster, t.name),
                    problem: "node vanished from the world record".to_string(),
                })?;
                world::write_endpoints_file(n)?;
                world::agent_record(&c, n)
            }
        },
    };
    let pid = world::spawn_recorded(rec, p, bin)?;
    if let TargetKind::Discovery { replica } = t.kind {
        world::wait_replica_listening(rec, &c, replica, LISTEN_TIMEOUT)?;
    }
    Ok(format!("{component} started (pid {pid})"))
}

/// Starts a stopped agent or discovery again with its recorded arguments.
pub fn start(target: &str, meshgate_bin: &Path) -> Result<String> {
    let (mut rec, t, component) = with_process(target)?;
    start_in(&mut rec, &t, &component, meshgate_bin)
}

/// Node: SIGUSR2 (exit keeping interface, routes and registration), then
/// start again at once. Discovery: SIGTERM, then start again.
pub fn restart(target: &str, meshgate_bin: &Path) -> Result<String> {
    let (mut rec, t, component) = with_process(target)?;
    if t.kind == TargetKind::Node {
        return restart_agent(&mut rec, &t, &component, meshgate_bin);
    }
    let stopped = stop_with(&mut rec, &component, SIGTERM, LEAVE_GRACE)?;
    let started = start_in(&mut rec, &t, &component, meshgate_bin)?;
    Ok(format!("{stopped}; {started}"))
}

/// An agent that hands over (the userspace backend) forwards on after
/// SIGUSR2 until the new one took over; the agent's `handoff-old.pid`
/// says so (docs/contracts.md).
const HANDOFF_FILE: &str = "handoff-old.pid";
/// How long the old agent may take to hand over once the new one runs.
const HANDOFF_GRACE: Duration = Duration::from_secs(20);

/// Whether agent `pid` of node `t` says it is handing over.
fn handing_over(t: &Target, pid: u32) -> bool {
    std::fs::read_to_string(agent_dir(&t.world, &t.cluster, &t.name).join(HANDOFF_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(pid)
}

/// SIGUSR2; once the old agent has exited or says it is handing over,
/// the new one starts; then the old one must be gone within the grace.
fn restart_agent(
    rec: &mut WorldRecord,
    t: &Target,
    component: &Component,
    bin: &Path,
) -> Result<String> {
    let pid = require_running(rec, component)?;
    let says_handing_over = || handing_over(t, pid);
    procs::signal(pid, SIGUSR2)?;
    let deadline = Instant::now() + RESTART_GRACE;
    let mut handing_over = false;
    while procs::alive(pid) {
        if says_handing_over() {
            handing_over = true;
            break;
        }
        if Instant::now() >= deadline {
            procs::signal(pid, SIGKILL)?;
            procs::wait_exit(pid, Duration::from_secs(2));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    rec.set_pid(component, None)?;
    let started = start_in(rec, t, component, bin)?;
    if !handing_over {
        return Ok(format!("{component} (pid {pid}) stopped; {started}"));
    }
    if !procs::wait_exit(pid, HANDOFF_GRACE) {
        procs::signal(pid, SIGKILL)?;
        return Err(LabError::Target {
            target: format!("{}/{}", t.cluster, t.name),
            problem: format!(
                "the old agent (pid {pid}) did not hand over within {HANDOFF_GRACE:?} after \
                 the new one started: killed it (see the node's agent.log)"
            ),
        });
    }
    Ok(format!(
        "{component} (pid {pid}) handed over to the new agent; {started}"
    ))
}

/// How long `set_policies` waits for every agent to report the reload.
const POLICY_TIMEOUT: Duration = Duration::from_secs(10);

/// `meshgate lab policy WORLD FILE...`: replaces the world's policies with
/// those of `files` (each checked first; an error names its file and changes
/// nothing), then sends SIGHUP to every agent given `--policy` and waits
/// until each reports the reload. Returns a line per agent.
pub fn set_policies(world: Option<&str>, files: &[std::path::PathBuf]) -> Result<String> {
    let world = crate::world::pick_world(world)?;
    let mut rec = WorldRecord::load_up(&world)?;
    let mut text = String::new();
    let mut count = 0;
    for f in files {
        let body = std::fs::read_to_string(f).map_err(|source| LabError::Io {
            what: format!("reading policy file {}", f.display()),
            source,
        })?;
        count += crate::scenario::check_policy_text(&body, &f.display().to_string()).map_err(
            |problem| LabError::BadFile {
                path: f.clone(),
                problem,
            },
        )?;
        text.push_str("---\n");
        text.push_str(&body);
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    let agents: Vec<(String, String)> = rec
        .plan
        .clusters
        .iter()
        .filter(|c| c.policy_file.is_some())
        .flat_map(|c| c.nodes.iter().map(|n| (c.name.clone(), n.name.clone())))
        .collect();
    if agents.is_empty() {
        return Err(LabError::Target {
            target: world.clone(),
            problem: "no agent of this world was started with --policy: the scenario needs \
                      `policies:` (and `datapath: ebpf`) when the world is brought up"
                .to_string(),
        });
    }
    let before: Vec<(u64, u64)> = agents
        .iter()
        .map(|(c, n)| reloads(&world, c, n).unwrap_or((0, 0)))
        .collect();
    crate::world::write_policies(&world, &text)?;
    rec.plan.policies = text;
    rec.save()?;
    let mut signalled = Vec::new();
    for ((c, n), b) in agents.iter().zip(before) {
        let component = Component::Agent {
            cluster: c.clone(),
            node: n.clone(),
        };
        if let Some(pid) = running_pid(&rec, &component) {
            procs::signal(pid, SIGHUP)?;
            signalled.push((c, n, b));
        }
    }
    let deadline = Instant::now() + POLICY_TIMEOUT;
    let mut lines = vec![format!(
        "world {world}: {count} policies from {} file(s)",
        files.len()
    )];
    for (c, n, b) in signalled {
        loop {
            let p = agent_status(&world, c, n)
                .ok()
                .and_then(|s| s.datapath)
                .and_then(|d| d.policy);
            if let Some(p) = p
                .as_ref()
                .filter(|p| p.reloads > b.0 || p.failed_reloads > b.1)
            {
                if p.reloads == b.0 {
                    let e = p.last_error.as_deref().unwrap_or("no reason given");
                    return Err(LabError::Target {
                        target: format!("{c}/{n}"),
                        problem: format!(
                            "the agent refused the policy (it keeps the old one): {e}"
                        ),
                    });
                }
                lines.push(format!(
                    "  agent {c}/{n}: reloaded, {} entries, {} identities selected",
                    p.entries, p.selected
                ));
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::Target {
                    target: format!("{c}/{n}"),
                    problem: format!(
                        "the agent did not report the policy reload within {} s (see its log)",
                        POLICY_TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(lines.join("\n"))
}

/// (successful, refused) policy reloads an agent reports.
fn reloads(world: &str, cluster: &str, node: &str) -> Option<(u64, u64)> {
    agent_status(world, cluster, node)
        .ok()?
        .datapath?
        .policy
        .map(|p| (p.reloads, p.failed_reloads))
}

/// Asks a node's agent to rotate its WireGuard key now (SIGUSR1) and waits
/// until its status shows the new key. Returns `old… → new…`.
pub fn rotate_key(target: &str) -> Result<String> {
    let (rec, t, component) = with_process(target)?;
    if t.kind != TargetKind::Node {
        return Err(LabError::Target {
            target: target.to_string(),
            problem: "only nodes have keys to rotate".to_string(),
        });
    }
    let pid = require_running(&rec, &component)?;
    let old = agent_status(&t.world, &t.cluster, &t.name)?.public_key;
    procs::signal(pid, SIGUSR1)?;
    let deadline = Instant::now() + ROTATE_TIMEOUT;
    loop {
        if let Ok(s) = agent_status(&t.world, &t.cluster, &t.name) {
            if s.public_key != old {
                return Ok(format!(
                    "{}/{}: {} → {}",
                    t.cluster,
                    t.name,
                    short_key(&old),
                    short_key(&s.public_key)
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("{component} did not show a new public key after SIGUSR1"),
                timeout: ROTATE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node plan and the underlay namespace of a node target.
fn node_link(rec: &WorldRecord, t: &Target, target: &str) -> Result<(String, String)> {
    let not_node = || LabError::Target {
        target: target.to_string(),
        problem: "only a node can fail or recover (give cluster/node)".to_string(),
    };
    if t.kind != TargetKind::Node {
        return Err(not_node());
    }
    let n = rec
        .plan
        .cluster(&t.cluster)
        .and_then(|c| c.node(&t.name))
        .ok_or_else(not_node)?;
    Ok((rec.plan.underlay_ns.clone(), n.ul_veth.clone()))
}

/// A node failure: its underlay link is cut (the bridge-side end of its
/// veth goes down) and its agent is killed with SIGKILL, so it neither
/// leaves the mesh nor says goodbye. Its namespaces, TUN device and
/// registration stay, as after a crash; discovery expires the lease.
pub fn fail(target: &str) -> Result<String> {
    let (mut rec, t, component) = with_process(target)?;
    let (ul, veth) = node_link(&rec, &t, target)?;
    let pid = require_running(&rec, &component)?;
    crate::world::ip::ip(&[
        "-n".into(),
        ul,
        "link".into(),
        "set".into(),
        veth.clone(),
        "down".into(),
    ])?;
    procs::signal(pid, SIGKILL)?;
    procs::wait_exit(pid, Duration::from_secs(2));
    rec.set_pid(&component, None)?;
    Ok(format!(
        "{component} failed: underlay link {veth} down, agent (pid {pid}) killed"
    ))
}

/// Undoes [`fail`]: the underlay link comes up and the agent starts again
/// (it resumes from its saved peers).
pub fn recover(target: &str, meshgate_bin: &Path) -> Result<String> {
    let (mut rec, t, component) = with_process(target)?;
    let (ul, veth) = node_link(&rec, &t, target)?;
    crate::world::ip::ip(&[
        "-n".into(),
        ul,
        "link".into(),
        "set".into(),
        veth.clone(),
        "up".into(),
    ])?;
    let started = start_in(&mut rec, &t, &component, meshgate_bin)?;
    Ok(format!("underlay link {veth} up; {started}"))
}

/// How long `rotate-secret` waits for every agent to finish the rotation
/// (accept, switch after 3 s, retire after 3 s more).
const SECRET_ROTATE_TIMEOUT: Duration = Duration::from_secs(20);

/// Replaces the world's IPsec mesh secret with the next generation and
/// waits until every agent sends under it with the old one retired.
pub fn rotate_secret(world: Option<&str>) -> Result<String> {
    let world = crate::world::pick_world(world)?;
    let rec = WorldRecord::load_up(&world)?;
    let Some(cluster) = rec
        .plan
        .clusters
        .iter()
        .find(|c| c.encryption == crate::scenario::Encryption::Ipsec)
    else {
        return Err(LabError::Target {
            target: world,
            problem: "no cluster of this world uses `encryption: ipsec`".to_string(),
        });
    };
    let path = cluster.ipsec_secret();
    let old = crate::world::ipsec::generation(&path)?;
    let new = if old >= 15 { 1 } else { old + 1 };
    crate::world::ipsec::write(&path, new)?;
    let agents: Vec<(String, String)> = rec
        .plan
        .clusters
        .iter()
        .flat_map(|c| c.nodes.iter().map(|n| (c.name.clone(), n.name.clone())))
        .collect();
    let deadline = Instant::now() + SECRET_ROTATE_TIMEOUT;
    loop {
        let behind: Vec<String> = agents
            .iter()
            .filter(|(c, n)| {
                !agent_status(&world, c, n)
                    .ok()
                    .and_then(|s| s.ipsec)
                    .is_some_and(|i| i.generation == new && !i.rotating)
            })
            .map(|(c, n)| format!("{c}/{n}"))
            .collect();
        if behind.is_empty() {
            return Ok(format!(
                "IPsec secret generation {old} → {new} on {} agents",
                agents.len()
            ));
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!(
                    "agents {} did not finish rotating to generation {new}",
                    behind.join(", ")
                ),
                timeout: SECRET_ROTATE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long the old DNS proxy may take to hand over and finish its queries.
const DNS_HANDOFF_GRACE: Duration = Duration::from_secs(15);

/// `meshgate lab restart-dns WORLD:CLUSTER/NODE`: starts a new DNS proxy on
/// the node with the recorded arguments while the old one runs; the new one
/// takes the old one's sockets, and the old one exits once the new one
/// serves (no query lost). Waits for that exit.
pub fn restart_dns_proxy(target: &str, meshgate_bin: &Path) -> Result<String> {
    let t = target::resolve(target)?;
    if !matches!(t.kind, TargetKind::Node) {
        return Err(LabError::Target {
            target: target.to_string(),
            problem: "a DNS proxy runs on a node: give WORLD:CLUSTER/NODE".to_string(),
        });
    }
    let mut rec = WorldRecord::load_up(&t.world)?;
    let component = Component::DnsProxy {
        cluster: t.cluster.clone(),
        node: t.name.clone(),
    };
    let p = rec
        .process(&component)
        .cloned()
        .ok_or_else(|| LabError::Target {
            target: target.to_string(),
            problem: "this world runs no DNS proxy (the scenario has no `dns:`)".to_string(),
        })?;
    let old = require_running(&rec, &component)?;
    let new = world::spawn_recorded(&mut rec, p, meshgate_bin)?;
    if !procs::wait_exit(old, DNS_HANDOFF_GRACE) {
        return Err(LabError::Target {
            target: target.to_string(),
            problem: format!(
                "the old DNS proxy (pid {old}) did not exit within {DNS_HANDOFF_GRACE:?} after \
                 pid {new} started: the handoff failed (see the node's dnsproxy.log)"
            ),
        });
    }
    Ok(format!(
        "{component}: pid {old} handed its sockets to pid {new} and exited"
    ))
}
