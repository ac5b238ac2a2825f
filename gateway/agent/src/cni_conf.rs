//! `--cni-conf-dir`: once the agent serves its CNI socket, it writes the
//! node's CNI network config there (`05-meshgate.conflist`: meshgate-cni
//! with host-local IPAM on the node's pod CIDR, the pod MTU of the
//! datapath, the agent's socket). The container runtime then starts pods
//! through meshgate, and only once the agent is up: on Kubernetes the
//! node is not Ready before that.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::Ipv4Net;

/// The file written in the CNI config directory.
pub const FILE: &str = "05-meshgate.conflist";
/// The VXLAN header the eBPF datapath adds inside the tunnel (outer IPv4
/// 20, UDP 8, VXLAN 8, inner Ethernet 14).
const VXLAN_OVERHEAD: u16 = 50;

/// The pod MTU of a datapath.
pub fn pod_mtu(ebpf: bool) -> u16 {
    if ebpf {
        super::mesh::TUNNEL_MTU - VXLAN_OVERHEAD
    } else {
        super::mesh::TUNNEL_MTU
    }
}

/// The conflist's JSON.
pub fn conflist(pod_cidr: Ipv4Net, mtu: u16, agent_socket: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "meshgate",
        "plugins": [{
            "type": "meshgate-cni",
            "mtu": mtu,
            "agentSocket": agent_socket,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr.trunc().to_string()}]],
            },
        }],
    })
}

/// Writes the conflist into `dir` (atomically: the runtime never reads a
/// half-written one). Returns its path.
pub fn write(dir: &Path, conf: &serde_json::Value) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the CNI config directory {}", dir.display()))?;
    let path = dir.join(FILE);
    let bytes = serde_json::to_vec_pretty(conf).context("encoding the CNI config")?;
    super::persist::write_atomic(&path, &bytes)
        .with_context(|| format!("writing the CNI config {}", path.display()))?;
    Ok(path)
}

/// The plugin's own config reader (`meshgate-cni` is another binary).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../src/cni/config.rs"]
mod plugin_config;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::plugin_config;
    use super::*;

    #[test]
    fn the_conflist_is_one_the_plugin_reads() {
        let dir = tempfile::tempdir().unwrap();
        let sock = Path::new("/var/lib/meshgate/cni.sock");
        let conf = conflist("10.1.1.0/24".parse().unwrap(), pod_mtu(true), sock);
        let path = write(dir.path(), &conf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // What a runtime hands the plugin: the plugin's object with the
        // list's cniVersion and name.
        let mut plugin = v["plugins"][0].clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        plugin["name"] = v["name"].clone();
        let nc = plugin_config::netconf(&serde_json::to_vec(&plugin).unwrap())
            .unwrap()
            .0;
        assert_eq!(nc.mtu, 1370);
        assert_eq!(nc.agent_socket, sock);
        assert_eq!(nc.ipam.kind, "host-local");
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.1.1.0/24"
        );
    }
}
