//! What `meshgate-cni` and the agent say over the agent's CNI socket
//! (`<state dir>/cni.sock`): one JSON request per connection, then one
//! JSON answer, each a single line. Shared by both binaries.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The socket's file name in the agent's state directory.
pub const SOCKET_NAME: &str = "cni.sock";

/// One pod interface, as the plugin made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`, the interface inside the pod.
    pub ifname: String,
    /// `CNI_NETNS`, the pod's network namespace.
    pub netns: String,
    /// The pod's namespace and name (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`
    /// from `CNI_ARGS`; `default` and the container ID without them).
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The host-side end of the pod's veth.
    pub host_interface: String,
}

impl Pod {
    /// The key the agent keeps the pod under.
    pub fn key(&self) -> String {
        key(&self.container_id, &self.ifname)
    }
}

/// The key of a container's interface.
pub fn key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// A request from the plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The pod's interface exists (host side still down); answered once the
    /// endpoint has its identity and the datapath is ready for it.
    Add(Pod),
    /// The container is gone: forget its endpoint (nothing to forget is no
    /// error).
    Del {
        container_id: String,
        ifname: String,
    },
    /// What the agent holds for this interface.
    Check {
        container_id: String,
        ifname: String,
    },
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Answer {
    Ok {
        /// The endpoint's security identity (ADD, CHECK).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<u32>,
        /// The pod as the agent holds it (CHECK; ADD).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<Pod>,
        /// Labels the endpoint reports (ADD, CHECK).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_one_line_of_json() {
        let pod = Pod {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/cni-1".into(),
            namespace: "shop".into(),
            name: "web-1".into(),
            ip: "10.1.0.20".parse().unwrap(),
            host_interface: "mgc0ffee0".into(),
        };
        let add = serde_json::to_string(&Request::Add(pod.clone())).unwrap();
        assert!(
            add.starts_with(r#"{"op":"add","container_id":"c0ffee""#),
            "{add}"
        );
        assert!(!add.contains('\n'));
        assert_eq!(
            serde_json::from_str::<Request>(&add).unwrap(),
            Request::Add(pod)
        );
        let del: Request =
            serde_json::from_str(r#"{"op":"del","container_id":"c","ifname":"eth0"}"#).unwrap();
        assert_eq!(
            del,
            Request::Del {
                container_id: "c".into(),
                ifname: "eth0".into()
            }
        );
        let err: Answer =
            serde_json::from_str(r#"{"result":"error","message":"no such pod"}"#).unwrap();
        assert_eq!(
            err,
            Answer::Error {
                message: "no such pod".into()
            }
        );
    }
}
