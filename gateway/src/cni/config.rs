//! The plugin's inputs, checked: the network config (stdin) and the `CNI_*`
//! environment, and the CNI errors (spec 1.0.0, "Error": well-known codes
//! 1-11, plugin codes from 100).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// The CNI versions this plugin speaks.
/// (Not 1.1.0: it adds STATUS and GC, which this plugin does not have.)
pub const SUPPORTED: [&str; 3] = ["0.3.1", "0.4.0", "1.0.0"];
/// The version results are written in (the config's, when supported).
pub const VERSION: &str = "1.0.0";

/// A CNI error: its code, message and details, printed on stdout as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// Well-known codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin code: ADD for a container interface that already exists.
    pub const ALREADY_ADDED: u32 = 100;
    /// Plugin code: the agent refused the pod (its message says why).
    pub const AGENT_REFUSED: u32 = 101;
    /// Plugin code: CHECK found the pod other than ADD made it.
    pub const CHECK_FAILED: u32 = 102;
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the spec prints it.
    pub fn to_json(&self, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}): {}", self.msg, self.code, self.details)
    }
}

/// The command (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The network config's fields this plugin reads; the whole config is
/// also passed on to the IPAM plugin.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The pod MTU (1420; 1370 with the eBPF datapath's VXLAN).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The agent's CNI socket.
    pub agent_socket: PathBuf,
    /// The IPAM section: `type` names the IPAM plugin.
    pub ipam: Ipam,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type")]
    pub kind: String,
}

fn default_mtu() -> u32 {
    1420
}

/// The environment of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where plugins (the IPAM one) are.
    pub path: Vec<PathBuf>,
}

/// `CNI_COMMAND` alone (VERSION needs nothing else).
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some(other) => Err(CniError::new(
            code::INVALID_ENV,
            "unknown CNI_COMMAND",
            format!("CNI_COMMAND is {other:?}; it must be ADD, DEL, CHECK or VERSION"),
        )),
        None => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "meshgate-cni is a CNI plugin: the container runtime runs it with CNI_COMMAND, \
             CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH set",
        )),
    }
}

/// The environment for `command` (ADD, DEL, CHECK), from `get`.
pub fn env(command: Command, get: &dyn Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let need = |name: &str| -> Result<String, CniError> {
        match get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                format!("the container runtime must set {name} for {command:?}"),
            )),
        }
    };
    let container_id = need("CNI_CONTAINERID")?;
    let ifname = need("CNI_IFNAME")?;
    if ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_IFNAME is not an interface name",
            format!("{ifname:?}: 1 to 15 bytes, no '/' or spaces"),
        ));
    }
    // DEL may come without a netns (the container is gone).
    let netns = match command {
        Command::Del => get("CNI_NETNS").unwrap_or_default(),
        _ => need("CNI_NETNS")?,
    };
    let mut args = BTreeMap::new();
    for pair in get("CNI_ARGS").unwrap_or_default().split(';') {
        if pair.is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some((k, v)) => {
                args.insert(k.to_string(), v.to_string());
            }
            None => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "CNI_ARGS is malformed",
                    format!("{pair:?} is not KEY=VALUE (CNI_ARGS is KEY=VALUE;KEY=VALUE)"),
                ))
            }
        }
    }
    let path = get("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    Ok(Env {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

/// The network config from stdin's bytes, and its raw JSON (passed on to
/// the IPAM plugin).
pub fn netconf(stdin: &[u8]) -> Result<(NetConf, Value), CniError> {
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "the network config is not JSON",
            format!("stdin: {e}"),
        )
    })?;
    let version = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "the config's cniVersion is {version:?}; meshgate-cni supports {}",
                SUPPORTED.join(", ")
            ),
        ));
    }
    let conf: NetConf = serde_json::from_value(raw.clone()).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "the network config is not meshgate-cni's",
            format!(
                "{e}; it needs cniVersion, name, type, agentSocket (the agent's CNI socket) \
                 and ipam (e.g. {{\"type\": \"host-local\", \"ranges\": [[{{\"subnet\": \
                 \"<the node's pod CIDR>\"}}]]}}), and may set mtu"
            ),
        )
    })?;
    if conf.name.trim().is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the network config has no name",
            "give it a `name` (the network's, e.g. `meshgate`)",
        ));
    }
    if !(576..=9000).contains(&conf.mtu) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "mtu is out of range",
            format!(
                "mtu {} (576..=9000; 1420 for the mesh, 1370 with the eBPF datapath)",
                conf.mtu
            ),
        ));
    }
    Ok((conf, raw))
}

/// The pod's namespace and name from `CNI_ARGS` (`K8S_POD_NAMESPACE`,
/// `K8S_POD_NAME`), else `default` and the container ID (`ctr run --cni`
/// passes no pod name: its container ID is `<ctr namespace>-<name>`).
pub fn pod_name(env: &Env) -> (String, String) {
    let ns = env
        .args
        .get("K8S_POD_NAMESPACE")
        .cloned()
        .unwrap_or_else(|| "default".to_string());
    let name = env
        .args
        .get("K8S_POD_NAME")
        .cloned()
        .unwrap_or_else(|| env.container_id.clone());
    (ns, name)
}

/// The host-side veth's name for a container interface: `mg` and 12 hex
/// digits of a stable hash (FNV-1a) of the container ID and interface, so
/// DEL finds it again from the same inputs.
pub fn host_interface(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mg{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"mesh","type":"meshgate-cni","agentSocket":"/run/a.sock","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]}}"#;

    #[test]
    fn the_environment_and_config_are_read_with_their_errors_coded() {
        let get = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;IgnoreUnknown=1",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        let c = command(&get).unwrap();
        let e = env(c, &get).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(pod_name(&e), ("shop".into(), "web-1".into()));
        let bare = Env {
            args: BTreeMap::new(),
            container_id: "default-client-10".into(),
            ..e.clone()
        };
        assert_eq!(
            pod_name(&bare),
            ("default".into(), "default-client-10".into())
        );
        assert_eq!(e.path.len(), 2);
        let (conf, _) = netconf(CONF.as_bytes()).unwrap();
        assert_eq!((conf.mtu, conf.ipam.kind.as_str()), (1420, "host-local"));

        assert_eq!(command(&vars(&[])).unwrap_err().code, code::INVALID_ENV);
        let no_netns = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let err = env(Command::Add, &no_netns).unwrap_err();
        assert_eq!((err.code, err.msg.as_str()), (4, "CNI_NETNS is not set"));
        // DEL may come after the netns is gone.
        assert!(env(Command::Del, &no_netns).is_ok());

        assert_eq!(netconf(b"{not json").unwrap_err().code, code::DECODE);
        let old = CONF.replace("1.0.0", "0.2.0");
        let err = netconf(old.as_bytes()).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.details.contains("1.0.0"), "{err}");
        let no_socket = CONF.replace(r#""agentSocket":"/run/a.sock","#, "");
        let err = netconf(no_socket.as_bytes()).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.details.contains("agentSocket"), "{err}");
        let json = err.to_json(VERSION);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn host_interface_names_are_stable_and_fit_linux() {
        let a = host_interface("abc", "eth0");
        assert_eq!(a, host_interface("abc", "eth0"));
        assert_ne!(a, host_interface("abc", "eth1"));
        assert_ne!(a, host_interface("abd", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("mg"));
    }
}
