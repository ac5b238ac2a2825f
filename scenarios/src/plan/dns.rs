//! The world's DNS in the plan: the upstream server's namespace, address
//! and records file, each node's DNS proxy (its arguments, log and the
//! policy file the agent writes for it), and the pods' resolv.conf.
//! The server is [`crate::dns_server`]; the lab starts it and the proxies
//! in `world::dns`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{world_dir, NodePlan};
use crate::dns_server::Records;

/// Where every node's DNS proxy listens (UDP and TCP), in the node's
/// namespace; it adds the address itself.
pub const PROXY_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
pub const DNS_PORT: u16 = 53;
/// The file the agent (`--dns-proxy`) writes for the proxy, in its state dir.
pub const PROXY_POLICY_FILE: &str = "dnsproxy-policy.json";
/// Where `ip netns exec` finds a namespace's own /etc files.
pub const NETNS_ETC: &str = "/etc/netns";
/// First line of every resolv.conf the lab writes: `down` removes only
/// files that start with it.
pub const RESOLV_MARK: &str = "# written by meshgate lab";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsPlan {
    /// The upstream server's namespace, on the underlay bridge like an
    /// external.
    pub netns: String,
    /// The bridge-side end of its veth, in the underlay namespace.
    pub ul_veth: String,
    pub server: Ipv4Addr,
    /// What the pods' resolv.conf names.
    pub cluster_ip: Ipv4Addr,
    /// The proxies' `--min-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<u32>,
    /// The records the server answers (written to [`DnsPlan::records_file`]).
    pub records: Records,
    /// `<world dir>/dns`: the records file and the server's log.
    pub dir: PathBuf,
}

impl DnsPlan {
    pub fn new(world: &str, spec: &crate::scenario::dns::DnsSpec, records: Records) -> DnsPlan {
        DnsPlan {
            netns: format!("mg-{world}-dns"),
            ul_veth: "dns0".to_string(),
            server: spec.server,
            cluster_ip: spec.cluster_ip,
            min_ttl: spec.min_ttl,
            records,
            dir: world_dir(world).join("dns"),
        }
    }

    pub fn records_file(&self) -> PathBuf {
        self.dir.join("records.json")
    }

    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `meshgate` arguments of the upstream server.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "lab".into(),
            "dns-server".into(),
            "--listen".into(),
            format!("{}:{DNS_PORT}", self.server),
            "--records".into(),
            self.records_file().display().to_string(),
        ]
    }

    /// `meshgate` arguments of a node's DNS proxy.
    pub fn proxy_args(&self, node: &NodePlan) -> Vec<String> {
        let mut args = vec![
            "dnsproxy".to_string(),
            "--policy".into(),
            proxy_policy_file(node).display().to_string(),
            "--bpf-pin-dir".into(),
            node.bpf_pin_dir.display().to_string(),
            "--upstream".into(),
            format!("{}:{DNS_PORT}", self.server),
            "--state-dir".into(),
            node.state_dir.display().to_string(),
        ];
        if let Some(ttl) = self.min_ttl {
            args.extend(["--min-ttl".to_string(), ttl.to_string()]);
        }
        args
    }

    /// The text of every pod's resolv.conf.
    pub fn resolv_conf(&self) -> String {
        format!("{RESOLV_MARK}\nnameserver {}\n", self.cluster_ip)
    }
}

/// The policy file a node's agent writes for its proxy.
pub fn proxy_policy_file(node: &NodePlan) -> PathBuf {
    node.state_dir.join(PROXY_POLICY_FILE)
}

/// The log of a node's DNS proxy.
pub fn proxy_log(node: &NodePlan) -> PathBuf {
    node.state_dir.join("dnsproxy.log")
}

/// The resolv.conf `ip netns exec` bind-mounts for namespace `netns`.
pub fn resolv_conf_path(netns: &str) -> PathBuf {
    std::path::Path::new(NETNS_ETC)
        .join(netns)
        .join("resolv.conf")
}
