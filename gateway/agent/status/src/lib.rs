//! The agent's `status.json` (docs/contracts.md): what the lab, the CLI
//! and a user read of a running agent. Written by the agent
//! (`gateway/agent/src/persist.rs`), read by `meshgate_lab`; the agent
//! re-exports this crate as `meshgate_agent::status`. Its own crate so
//! that the lab, and the end-to-end tests through it, do not build the
//! agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use meshgate_egress::{EgressGatewayStatus, EgressPolicyStatus};

/// The agent's `status.json`, as docs/contracts.md fixes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub cluster: String,
    pub cluster_id: u8,
    pub backend: String,
    pub public_key: String,
    pub tunnel_ip: String,
    pub underlay_ip: String,
    pub listen_port: u16,
    pub pod_cidr: String,
    pub discovery_connected: bool,
    pub pid: u32,
    pub updated_unix_ms: u64,
    pub key_rotations: u64,
    pub peers: Vec<PeerStatus>,
    /// Entries in the agent's ipcache (every endpoint of the mesh it knows).
    #[serde(default)]
    pub ipcache_entries: usize,
    /// Identities the agent knows the labels of.
    #[serde(default)]
    pub identities: usize,
    /// Services of its cluster the agent knows (with merged backends).
    #[serde(default)]
    pub services: usize,
    /// The clusters whose traffic this agent sends through a cluster
    /// gateway, and which gateway it uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayStatus>,
    /// The eBPF datapath, when the agent runs it (`--datapath ebpf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathStatus>,
    /// With `--encryption ipsec`: the key generation and the crypto path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<IpsecStatus>,
    /// Egress gateway policies, when any is loaded (eBPF datapath).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressStatus>,
    /// The userspace backend's offloads, as probed and still on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloads: Option<OffloadStatus>,
}

/// The userspace WireGuard datapath's offloads in [`AgentStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadStatus {
    /// The kernel hands the TUN reader TCP super-packets.
    pub tun_tso: bool,
    /// The kernel hands the TUN reader UDP super-packets (Linux 6.2+).
    pub tun_uso: bool,
    /// Received TCP segments are coalesced into super-packets (GRO).
    pub tun_gro: bool,
    /// Datagrams one UDP send carries at most (1: no GSO).
    pub udp_gso_segments: usize,
    /// Received datagrams arrive coalesced (UDP GRO).
    pub udp_gro: bool,
}

/// Egress gateways in [`AgentStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressStatus {
    /// Every loaded CiliumEgressGatewayPolicy, by name.
    pub policies: Vec<EgressPolicyStatus>,
    /// The egress IPs this node SNATs to as a gateway, with their interface.
    #[serde(default)]
    pub serving: BTreeMap<String, String>,
    /// What could not be applied (conflicting policies, too many gateways...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The eBPF datapath in [`AgentStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStatus {
    /// Where its maps, programs and links are pinned.
    pub pin_dir: String,
    /// How its programs are attached: `tcx` (TCX links, Linux 6.6+) or `tc`
    /// (clsact + cls_bpf filters, the fallback below 6.6 or with
    /// `MESHGATE_TC_ATTACH=tc`).
    #[serde(default)]
    pub attach: String,
    /// Endpoint entries in the `mg_ipcache` map (pods, local and remote).
    pub ipcache_entries: usize,
    /// Node address entries in `mg_ipcache` (`host` and `remote-node`).
    #[serde(default)]
    pub node_entries: usize,
    /// Programs attached, `HOOK@INTERFACE`.
    pub attachments: Vec<String>,
    /// What the last attach reconcile of this process did: links made new,
    /// pinned links whose program was swapped atomically, links removed.
    pub created: usize,
    pub replaced: usize,
    pub removed: usize,
    /// Packets dropped per reason (`policy-ingress`, `unknown-source`, ...),
    /// from the pinned counters: they survive agent restarts.
    pub drops: BTreeMap<String, u64>,
    /// Strict encryption mode is on: pod traffic to another node that would
    /// leave unencrypted is dropped (counted as `strict-unencrypted`).
    #[serde(default)]
    pub strict: bool,
    /// Service frontends (VIP, port, protocol) in the load-balancing maps.
    #[serde(default)]
    pub lb_frontends: usize,
    /// Identity policy (`--policy`); absent when no policy file was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,
}

/// The agent's identity policy in [`DatapathStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The `--policy` files.
    pub files: Vec<String>,
    /// Entries the policy gives in `mg_policy`, and identities it selects
    /// (`mg_policy_sel`).
    pub entries: usize,
    pub selected: usize,
    /// Whether the pinned maps hold exactly that (false before the first
    /// identities are known, or after a failed map write until retried).
    pub applied: bool,
    /// Successful reloads (SIGHUP) since the agent started.
    pub reloads: u64,
    /// Reloads refused (a file that does not parse) since the agent started.
    #[serde(default)]
    pub failed_reloads: u64,
    /// Map writes of the last reconcile with what the pinned maps held at
    /// start (an agent restarted over the same policy and identities: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_writes: Option<usize>,
    /// Why the last reload failed (the previous policy stays); none after a
    /// successful one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The warnings of the policy files as last read (`meshgate policy
    /// check` shows the same): policies that may not do what they read as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<PolicyWarningStatus>,
}

/// One warning of the policy files in [`PolicyStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyWarningStatus {
    /// `never-matches`, `namespace-overridden`, `namespace-scoped`,
    /// `deprecated`, `l7-not-enforced`.
    pub kind: String,
    /// `file: policy: field: message`.
    pub warning: String,
}

/// One cluster's cluster-gateway choice in [`AgentStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub cluster: String,
    /// The gateway node this agent uses now.
    pub active: String,
    /// Every cluster-gateway node of the cluster and its health as this
    /// agent sees it: `up`, `fresh` (back for less than a second) or `down`.
    pub health: BTreeMap<String, String>,
}

/// IPsec's state in [`AgentStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecStatus {
    /// The mesh secret generation outbound ESP is sent under.
    pub generation: u8,
    /// True while a rotation to a new generation is in progress.
    pub rotating: bool,
    /// `hardware (DEV)` or `software (DEV: why)`.
    pub offload: String,
}

/// One peer in [`AgentStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    pub cluster: String,
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
    /// `None` (JSON `null`) until a handshake with this peer completed.
    pub last_handshake_age_ms: Option<u64>,
    /// Milliseconds since anything (data, keepalive, heartbeat) last
    /// arrived from this peer; `None` until something did.
    #[serde(default)]
    pub last_rx_age_ms: Option<u64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn agent_status_json_matches_contract() {
        let json = r#"{"node":"n1","cluster":"c1","cluster_id":1,"backend":"userspace","public_key":"k",
 "tunnel_ip":"100.64.4.1","underlay_ip":"198.18.1.10","listen_port":51820,"pod_cidr":"10.1.0.0/24",
 "discovery_connected":true,"pid":1234,"updated_unix_ms":1700000000000,"key_rotations":0,
 "peers":[{"node":"n2","cluster":"c1","public_key":"k2","endpoint":"198.18.1.11:51820",
           "allowed_ips":["10.1.1.0/24","100.64.4.2/32"],"last_handshake_age_ms":null,
           "tx_bytes":0,"rx_bytes":0}]}"#;
        let s: AgentStatus = serde_json::from_str(json).unwrap();
        assert_eq!(s.peers[0].last_handshake_age_ms, None);
        assert_eq!(
            s.ipcache_entries, 0,
            "older status files have no ipcache count"
        );
        assert_eq!(s.listen_port, 51820);
        let again: AgentStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }
}
