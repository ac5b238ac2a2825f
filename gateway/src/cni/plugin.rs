//! The commands: what ADD, DEL, CHECK and VERSION do, in order, and the
//! result or error printed on stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::{self, code, CniError, Command, Env, NetConf};
use super::proto::{Answer, Pod, Request};
use super::{ipam, pod_net};

/// How long the agent may take to answer an ADD: its own limit (20 s) and
/// a margin.
const AGENT_TIMEOUT: Duration = Duration::from_secs(25);

/// Runs one CNI command from this process's environment and stdin.
pub fn main() -> ExitCode {
    let get = |k: &str| std::env::var(k).ok();
    let mut version = config::VERSION.to_string();
    let out = run(&get, &mut version);
    let (text, code) = match out {
        Ok(v) => (v.map(|v| v.to_string()), ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&version)), ExitCode::FAILURE),
    };
    if let Some(text) = text {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.write_all(b"\n");
    }
    code
}

fn run(
    get: &dyn Fn(&str) -> Option<String>,
    version: &mut String,
) -> Result<Option<Value>, CniError> {
    let command = config::command(get)?;
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": config::VERSION,
            "supportedVersions": config::SUPPORTED,
        })));
    }
    let env = config::env(command, get)?;
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        CniError::new(
            code::IO,
            "reading the network config from stdin",
            e.to_string(),
        )
    })?;
    let (conf, raw) = config::netconf(&stdin)?;
    version.clone_from(&conf.cni_version);
    match command {
        Command::Add => add(&env, &conf, &raw).map(Some),
        Command::Del => del(&env, &conf, &raw).map(|()| None),
        Command::Check => check(&env, &conf).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// Asks the agent; an agent that does not answer is "try again later".
fn ask(socket: &Path, req: &Request, timeout: Duration) -> Result<Answer, CniError> {
    let down = |e: std::io::Error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the meshgate agent does not answer",
            format!(
                "{}: {e}; start the node's agent (meshgate agent) and the runtime retries",
                socket.display()
            ),
        )
    };
    let mut s = UnixStream::connect(socket).map_err(down)?;
    s.set_read_timeout(Some(timeout)).map_err(down)?;
    let mut line = serde_json::to_string(req)
        .map_err(|e| CniError::new(code::IO, "encoding the request", e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(down)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the meshgate agent took too long to answer",
            format!(
                "{}: no answer within {} s ({e}); the agent is up: see `meshgate status` and \
                 its log on this node; the runtime retries",
                socket.display(),
                timeout.as_secs()
            ),
        )
    })?;
    serde_json::from_str(&answer).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the meshgate agent's answer does not read",
            format!("{e}: {answer:?}"),
        )
    })
}

fn add(env: &Env, conf: &NetConf, raw: &Value) -> Result<Value, CniError> {
    let netns = pod_net::open_netns(&env.netns)?;
    let host = config::host_interface(&env.container_id, &env.ifname);
    if pod_net::host_exists(&host)? {
        return Err(CniError::new(
            code::ALREADY_ADDED,
            "the container's interface already exists",
            format!(
                "{host} is there: container {} interface {} was added already; DEL it first",
                env.container_id, env.ifname
            ),
        ));
    }
    // The agent first: while it is down nothing is made.
    let probe = Request::Check {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    ask(&conf.agent_socket, &probe, Duration::from_secs(5))?;
    let ip = ipam::add(env, &conf.ipam.kind, raw)?;
    let undo_ipam = |e: CniError| {
        let _ = ipam::del(env, &conf.ipam.kind, raw);
        e
    };
    pod_net::create(&host, &netns, &env.ifname, ip, conf.mtu).map_err(undo_ipam)?;
    let undo_link = |e: CniError| {
        let _ = pod_net::remove(&host);
        undo_ipam(e)
    };
    let (namespace, name) = config::pod_name(env);
    let pod = Pod {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        namespace,
        name,
        ip,
        host_interface: host.clone(),
    };
    // From here on the agent may hold the pod (it saves it before
    // answering): every failure, a lost answer included, tells it to forget.
    let undo_agent = |e: CniError| {
        let _ = ask(
            &conf.agent_socket,
            &Request::Del {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            },
            Duration::from_secs(5),
        );
        undo_link(e)
    };
    let identity =
        match ask(&conf.agent_socket, &Request::Add(pod), AGENT_TIMEOUT).map_err(undo_agent)? {
            Answer::Ok { identity, .. } => identity,
            Answer::Error { message } => {
                return Err(undo_link(CniError::new(
                    code::AGENT_REFUSED,
                    "the meshgate agent refused the pod",
                    message,
                )))
            }
        };
    pod_net::open_host_side(&host, ip).map_err(undo_agent)?;
    Ok(result(conf, env, &host, ip, identity))
}

/// The result's address: 0.3.x and 0.4.0 results also name the IP version.
fn ip_entry(version: &str, ip: Ipv4Addr, gw: &str) -> Value {
    let mut e = json!({"address": format!("{ip}/32"), "gateway": gw, "interface": 1});
    if version.starts_with("0.") {
        e["version"] = json!("4");
    }
    e
}

/// The ADD result (spec 1.0.0 "Success").
fn result(conf: &NetConf, env: &Env, host: &str, ip: Ipv4Addr, identity: Option<u32>) -> Value {
    let gw = pod_net::GATEWAY.to_string();
    let mut r = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": host},
            {"name": env.ifname, "sandbox": env.netns},
        ],
        "ips": [ip_entry(&conf.cni_version, ip, &gw)],
        "routes": [{"dst": "0.0.0.0/0", "gw": gw}],
        "dns": {},
    });
    if let Some(id) = identity {
        r["meshgate"] = json!({"identity": id});
    }
    r
}

fn del(env: &Env, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
    let req = Request::Del {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    match ask(&conf.agent_socket, &req, Duration::from_secs(10))? {
        Answer::Ok { .. } => {}
        Answer::Error { message } => {
            return Err(CniError::new(
                code::AGENT_REFUSED,
                "the meshgate agent refused the delete",
                message,
            ))
        }
    }
    pod_net::remove(&config::host_interface(&env.container_id, &env.ifname))?;
    ipam::del(env, &conf.ipam.kind, raw)
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let netns = pod_net::open_netns(&env.netns)?;
    let req = Request::Check {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let pod = match ask(&conf.agent_socket, &req, Duration::from_secs(10))? {
        Answer::Ok { pod: Some(p), .. } => p,
        Answer::Ok { pod: None, .. } => {
            return Err(CniError::new(
                code::CHECK_FAILED,
                "the agent holds no such pod",
                "",
            ))
        }
        Answer::Error { message } => {
            return Err(CniError::new(
                code::CHECK_FAILED,
                "the meshgate agent does not hold the pod as ADD made it",
                message,
            ))
        }
    };
    pod_net::check(&pod.host_interface, &netns, &env.ifname, pod.ip)
}
