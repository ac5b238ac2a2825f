//! The planner's per-policy status, as the agent reports it in its
//! `status.json` (`meshgate_agent::status::EgressStatus`).

use serde::{Deserialize, Serialize};

/// One egress gateway policy as this agent applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPolicyStatus {
    pub name: String,
    /// This node's endpoints the policy selects.
    pub endpoints: usize,
    /// The gateways of this node's cluster's endpoints (a node selector
    /// naming another cluster picks that cluster's nodes), in the order
    /// flows are hashed over.
    pub gateways: Vec<EgressGatewayStatus>,
}

/// One gateway of an [`EgressPolicyStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressGatewayStatus {
    /// `cluster/node`
    pub node: String,
    /// The egress IP it SNATs to, when the node has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ip: Option<String>,
    /// `up` or `down`, judged from the tunnel (this node itself is `up`).
    pub health: String,
    /// New flows may use it: it has its egress IP and a tunnel IP, and is up.
    pub usable: bool,
    /// Why it is not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Flows of this node's endpoints through it now.
    pub flows: u64,
}
