//! Test worlds for the planner: nodes and pods owned here, viewed as the
//! planner's [`NodeView`] / [`EndpointView`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_model::identity::{endpoint_labels, Labels};

use crate::{
    parse_policy_text, plan, EgressPlan, EgressPolicy, EndpointView, NodeAddress, NodeView, Route,
};

pub struct Node {
    pub name: String,
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub addresses: Vec<NodeAddress>,
}

pub struct Pod {
    pub ip: Ipv4Addr,
    pub cluster: String,
    pub node: String,
    pub namespace: String,
    pub labels: Labels,
}

#[derive(Default)]
pub struct World {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub down: BTreeSet<String>,
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn addr(interface: &str, a: &str, default_route: bool) -> NodeAddress {
    NodeAddress {
        interface: interface.into(),
        ip: ip(a),
        default_route,
    }
}

pub fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl World {
    /// A node `cluster/name` with `labels`, tunnel IP `tunnel` and eth0 at
    /// `eth0` holding the default route.
    pub fn node(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        tunnel: &str,
        eth0: &str,
    ) -> &mut Node {
        let cluster = name.split_once('/').map(|(c, _)| c).unwrap_or("west");
        self.nodes.push(Node {
            name: name.into(),
            cluster: cluster.into(),
            labels: kv(labels),
            tunnel_ip: Some(ip(tunnel)),
            addresses: vec![addr("eth0", eth0, true)],
        });
        self.nodes.last_mut().expect("just pushed")
    }

    pub fn gateway(&mut self, name: &str, tunnel: &str, eth0: &str) -> &mut Node {
        self.node(name, &[("egress", "true")], tunnel, eth0)
    }

    pub fn pod(&mut self, ip_: &str, node: &str, ns: &str, labels: &[(&str, &str)]) {
        let cluster = node.split_once('/').map(|(c, _)| c).unwrap_or("west");
        self.pods.push(Pod {
            ip: ip(ip_),
            cluster: cluster.into(),
            node: node.into(),
            namespace: ns.into(),
            labels: endpoint_labels(&kv(labels), ns, cluster),
        });
    }

    /// Plans for `me`; `healthy` is never asked about `me`.
    pub fn plan(&self, me: &str, policies: &[EgressPolicy]) -> EgressPlan {
        let nodes: BTreeMap<String, NodeView<'_>> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    NodeView {
                        name: &n.name,
                        cluster: &n.cluster,
                        labels: &n.labels,
                        tunnel_ip: n.tunnel_ip,
                        addresses: &n.addresses,
                    },
                )
            })
            .collect();
        let eps: Vec<EndpointView<'_>> = self
            .pods
            .iter()
            .map(|p| EndpointView {
                ip: p.ip,
                cluster: &p.cluster,
                node: &p.node,
                namespace: &p.namespace,
                labels: &p.labels,
            })
            .collect();
        let asked = RefCell::new(Vec::new());
        let out = plan(me, policies, &eps, &nodes, |n: &str| {
            assert_ne!(n, me, "healthy asked about this node itself");
            asked.borrow_mut().push(n.to_string());
            !self.down.contains(n)
        });
        // Deterministic: the same inputs give the same plan.
        let again = plan(me, policies, &eps, &nodes, |n: &str| !self.down.contains(n));
        assert_eq!(out, again);
        out
    }
}

pub fn policies(yaml: &str) -> Vec<EgressPolicy> {
    parse_policy_text(yaml, "test.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .egress
}

/// A policy `name` selecting `pods` (a podSelector's matchLabels) to
/// `dst`, excluding `excl`, through nodes matching `gw` (a nodeSelector's
/// matchLabels) with `extra` gateway fields.
pub fn policy(name: &str, pods: &str, dst: &str, excl: &str, gw: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  selectors: [{{podSelector: {{matchLabels: {pods}}}}}]\n  destinationCIDRs: {dst}\n\
         \x20 excludedCIDRs: {excl}\n  egressGateway: {{nodeSelector: {{matchLabels: {gw}}}{extra}}}\n"
    )
}

pub fn web_out() -> Vec<EgressPolicy> {
    policies(&policy(
        "out",
        "{app: web}",
        "[0.0.0.0/0]",
        "[10.0.0.0/8]",
        "{egress: \"true\"}",
        "",
    ))
}

/// west/a (a worker with pod 10.1.0.5 app=web), west/gw1 and west/gw2.
pub fn west() -> World {
    let mut w = World::default();
    w.node("west/a", &[], "100.64.0.1", "192.0.2.1");
    w.gateway("west/gw1", "100.64.0.11", "192.0.2.11");
    w.gateway("west/gw2", "100.64.0.12", "192.0.2.12");
    w.pod("10.1.0.5", "west/a", "shop", &[("app", "web")]);
    w.pod("10.1.0.6", "west/a", "shop", &[("app", "db")]);
    w
}

pub fn via(gws: &[&str], snat: Option<&str>) -> Route {
    Route {
        gateway_only: false,
        excluded: false,
        gateways: gws.iter().map(|g| ip(g)).collect(),
        snat: snat.map(ip),
    }
}

pub fn excluded() -> Route {
    Route {
        gateway_only: false,
        excluded: true,
        gateways: Vec::new(),
        snat: None,
    }
}

pub fn routes(entries: &[(&str, &str, Route)]) -> BTreeMap<(Ipv4Addr, Ipv4Net), Route> {
    entries
        .iter()
        .map(|(s, c, r)| ((ip(s), net(c)), r.clone()))
        .collect()
}
