//! The agent's `status.json` (docs/contracts.md).
//!
//! The type is the agent's, `meshgate_agent::status::AgentStatus` (crate
//! `meshgate-agent-status`); this module reads
//! it and formats keys.

use std::path::Path;

use crate::error::LabError;

pub use meshgate_agent_status::{AgentStatus, EgressStatus, PeerStatus};

/// Reads and parses a `status.json`.
pub fn read(path: &Path) -> Result<AgentStatus, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LabError::BadFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// First 8 characters of a base64 key, for display.
pub fn short_key(key: &str) -> String {
    let short: String = key.chars().take(8).collect();
    if short.len() < key.len() {
        format!("{short}…")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_contract_example() {
        let json = r#"{"node":"n1","cluster":"c1","cluster_id":1,"backend":"userspace","public_key":"AbCdEfGhIjKl=",
 "tunnel_ip":"100.64.4.1","underlay_ip":"198.18.1.10","listen_port":51820,"pod_cidr":"10.1.0.0/24",
 "discovery_connected":true,"pid":1234,"updated_unix_ms":1700000000000,"key_rotations":0,
 "peers":[{"node":"n2","cluster":"c1","public_key":"x","endpoint":"198.18.1.11:51820",
           "allowed_ips":["10.1.1.0/24","100.64.4.2/32"],"last_handshake_age_ms":null,
           "tx_bytes":0,"rx_bytes":0}]}"#;
        let s: AgentStatus = serde_json::from_str(json).expect("contract example parses");
        assert_eq!(s.peers[0].last_handshake_age_ms, None);
        assert_eq!(short_key(&s.public_key), "AbCdEfGh…");
        assert_eq!(short_key("abc"), "abc");
    }
}
