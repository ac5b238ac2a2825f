//! The pure gateway planner: policies, endpoints, nodes and gateway health
//! in; this node's egress routes, SNAT addresses and status out.
//!
//! No I/O and no time: the agent gathers the views, calls [`plan`] on every
//! change, and writes the [`EgressPlan`] into the datapath's maps.
//!
//! # Semantics
//!
//! - An endpoint is selected by a policy when any of its selectors matches
//!   (pod labels, namespace name, labels of the endpoint's node).
//! - The gateway candidates of an endpoint of cluster C are, per gateway
//!   spec in order, the nodes matching its node selector: nodes of C only,
//!   unless the selector has a requirement on [`CLUSTER_LABEL`] (a node's
//!   labels count its cluster under that key), which routes through another
//!   cluster's nodes. A node picked by two specs keeps the first.
//!   Candidates are in hash order: sorted by node name, so a gateway going
//!   down or coming back never reorders the others.
//! - A candidate is usable when its egress IP resolves on it, it has a
//!   tunnel IP and it is healthy (this node always is). At most
//!   [`MAX_GATEWAYS`] usable ones are used, the first by name.
//! - Routes are keyed by (source pod IP, CIDR): for this node's selected
//!   endpoints, one per destination CIDR through the usable gateways (none:
//!   the datapath drops the traffic rather than let it leave with the wrong
//!   source), one per excluded CIDR marked excluded. For other nodes'
//!   selected endpoints only when this node is one of their usable
//!   gateways, with this node's egress IP to SNAT to.
//! - Two policies giving one key: the first by name wins; a problem names
//!   both.
//! - `destinationFQDNs` (see `fqdn`): a policy with names gives, on a node
//!   with selected pods of its own or SNATing for it, one [`FqdnRoutes`]
//!   for the DNS proxy: the node's selected pods, and the gateways and SNAT
//!   address its CIDR routes have (the candidates depend only on the
//!   source's cluster, so a node's pods share them). Its routes are tagged
//!   [`fqdn_tag`]; of two policies with one tag, the second by name gets no
//!   FQDN routes and a problem names both. A policy with names only still
//!   has status, watched gateways and SNAT on its gateways, like any.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use meshgate_model::identity::Labels;
use meshgate_model::policy::{CLUSTER_LABEL, NAMESPACE_LABEL};

pub use meshgate_model::model::NodeAddress;
pub use status::{EgressGatewayStatus, EgressPolicyStatus};

use crate::{EgressIpSource, EgressPolicy, GatewaySpec};

mod fqdn;
mod status;

pub use fqdn::{fqdn_tag, FqdnRoutes};

/// Most gateways one route holds (the datapath's per-route array).
pub const MAX_GATEWAYS: usize = 16;

/// A node as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// `cluster/node`
    pub name: &'a str,
    pub cluster: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub tunnel_ip: Option<Ipv4Addr>,
    pub addresses: &'a [NodeAddress],
}

/// An IPv4 endpoint (pod) as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct EndpointView<'a> {
    pub ip: Ipv4Addr,
    pub cluster: &'a str,
    /// `cluster/node`
    pub node: &'a str,
    pub namespace: &'a str,
    /// Identity labels.
    pub labels: &'a Labels,
}

/// How traffic from one source to one CIDR leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// An excluded CIDR: the traffic leaves as without the policy.
    pub excluded: bool,
    /// Tunnel IPs of the usable gateways, in hash order (empty: drop).
    pub gateways: Vec<Ipv4Addr>,
    /// This node's egress IP when this node is one of the usable gateways.
    pub snat: Option<Ipv4Addr>,
    /// Only for traffic that arrives from the mesh (the gateway's SNAT),
    /// never for steering: the wildcard route a gateway keeps for each
    /// source of a destinationFQDNs policy on another node, whose answered
    /// addresses only that node's DNS proxy knows.
    pub gateway_only: bool,
}

/// What [`plan`] decides for one node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    /// Key: (source pod IP, destination or excluded CIDR).
    pub routes: BTreeMap<(Ipv4Addr, Ipv4Net), Route>,
    /// Egress IP → interface, for every egress IP this node SNATs to.
    pub snat: BTreeMap<Ipv4Addr, String>,
    /// One per policy, in name order; `flows` left 0 (the agent fills it).
    pub status: Vec<EgressPolicyStatus>,
    pub problems: Vec<String>,
    /// This node is a gateway candidate (any health) of some policy for
    /// some selected endpoint.
    pub gateway_of_any: bool,
    /// The gateway nodes whose health this node's routes depend on.
    pub watched: BTreeSet<String>,
    /// The `destinationFQDNs` policies this node has selected pods or SNAT
    /// for, in name order.
    pub fqdn: Vec<FqdnRoutes>,
}

/// A route's key: (source pod IP, destination or excluded CIDR).
type RouteKey = (Ipv4Addr, Ipv4Net);

/// One gateway candidate of one policy for one cluster's endpoints.
#[derive(Debug, Clone)]
struct Candidate<'n> {
    name: &'n str,
    tunnel_ip: Option<Ipv4Addr>,
    /// The egress IP and its interface, when it resolves.
    egress: Option<(Ipv4Addr, &'n str)>,
    up: bool,
    usable: bool,
    problem: Option<String>,
    /// `problem` is about configuration (not health), worth reporting.
    config_problem: bool,
}

/// Plans this node's (`me`, `cluster/node`) egress routes. `nodes` is keyed
/// `cluster/node` and includes `me`; `healthy` is asked about other nodes
/// only (`me` is up).
pub fn plan(
    me: &str,
    policies: &[EgressPolicy],
    endpoints: &[EndpointView<'_>],
    nodes: &BTreeMap<String, NodeView<'_>>,
    healthy: impl Fn(&str) -> bool,
) -> EgressPlan {
    let my_cluster = nodes
        .get(me)
        .map(|n| n.cluster)
        .unwrap_or_else(|| me.split_once('/').map_or(me, |(c, _)| c));
    // Node labels with the node's cluster under CLUSTER_LABEL.
    let node_labels: BTreeMap<&str, Labels> = nodes
        .iter()
        .map(|(k, n)| {
            let mut l = n.labels.clone();
            l.insert(CLUSTER_LABEL.to_string(), n.cluster.to_string());
            (k.as_str(), l)
        })
        .collect();
    // Endpoint labels, with namespace and cluster when the caller left them out.
    let ep_labels: Vec<Labels> = endpoints
        .iter()
        .map(|e| {
            let mut l = e.labels.clone();
            l.entry(NAMESPACE_LABEL.to_string())
                .or_insert_with(|| e.namespace.to_string());
            l.entry(CLUSTER_LABEL.to_string())
                .or_insert_with(|| e.cluster.to_string());
            l
        })
        .collect();
    let mut health: BTreeMap<String, bool> = BTreeMap::new();
    let mut is_up = |name: &str| -> bool {
        if name == me {
            return true;
        }
        if let Some(&h) = health.get(name) {
            return h;
        }
        let h = healthy(name);
        health.insert(name.to_string(), h);
        h
    };

    let mut order: Vec<&EgressPolicy> = policies.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));

    let mut out = EgressPlan::default();
    let mut problems: BTreeSet<String> = BTreeSet::new();
    let mut owner: BTreeMap<RouteKey, &str> = BTreeMap::new();
    // (winner, loser) → (first key, how many keys).
    let mut conflicts: BTreeMap<(&str, &str), (RouteKey, usize)> = BTreeMap::new();
    let mut my_ifaces: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut tags: BTreeMap<u16, &str> = BTreeMap::new();

    for p in order {
        let mine = candidates(&p.gateways, my_cluster, nodes, &node_labels, &mut is_up);
        report(p, &mine, me, true, &mut problems);
        let tag = (!p.destinations.fqdns.is_empty())
            .then(|| fqdn_tag(&p.name))
            .filter(|t| match tags.get(t) {
                Some(first) => {
                    problems.insert(format!(
                        "egress policies {first} and {} have the same FQDN route tag {t}; \
                         {}'s destinationFQDNs are not applied (the first by name keeps the \
                         tag): rename one",
                        p.name, p.name
                    ));
                    false
                }
                None => {
                    tags.insert(*t, &p.name);
                    true
                }
            });
        let mut fqdn = fqdn::Gather::default();
        let mut per_cluster: BTreeMap<&str, Vec<Candidate<'_>>> = BTreeMap::new();
        let mut selected_here = 0usize;

        for (e, labels) in endpoints.iter().zip(&ep_labels) {
            let node_l = node_labels.get(e.node);
            if !p
                .selectors
                .iter()
                .any(|s| s.matches(labels, e.namespace, node_l))
            {
                continue;
            }
            let c = if e.cluster == my_cluster {
                mine.clone()
            } else if let Some(c) = per_cluster.get(e.cluster) {
                c.clone()
            } else {
                let c = candidates(&p.gateways, e.cluster, nodes, &node_labels, &mut is_up);
                per_cluster.insert(e.cluster, c.clone());
                c
            };
            let on_me = e.node == me;
            let me_cand = c.iter().find(|g| g.name == me);
            if me_cand.is_some() {
                out.gateway_of_any = true;
                report(p, &c, me, false, &mut problems);
            }
            let my_snat = me_cand.filter(|g| g.usable).and_then(|g| g.egress);
            if let Some((ip, iface)) = my_snat {
                my_ifaces.insert(ip, iface.to_string());
            }
            if on_me {
                selected_here += 1;
                out.watched.extend(
                    c.iter()
                        .filter(|g| g.name != me)
                        .map(|g| g.name.to_string()),
                );
            }
            // Whether this node holds the endpoint's routes; its keys are
            // claimed either way, so that every node resolves an overlap
            // the same way (a gateway does not serve a route its source
            // node takes from another policy).
            let here = on_me || my_snat.is_some();
            let gateways = usable_ips(&c);
            if tag.is_some() {
                if on_me {
                    fqdn.source(e.ip, &gateways);
                }
                if let Some((ip, _)) = my_snat {
                    fqdn.snat(ip);
                }
            }
            let via = Route {
                excluded: false,
                gateways,
                snat: my_snat.map(|(ip, _)| ip),
                gateway_only: false,
            };
            let skip = Route {
                excluded: true,
                gateways: Vec::new(),
                snat: None,
                gateway_only: false,
            };
            // A gateway SNATs the FQDN traffic of sources on other nodes by
            // a wildcard route (their node's proxy routes the addresses).
            let gateway_only = Route {
                excluded: false,
                gateways: Vec::new(),
                snat: my_snat.map(|(ip, _)| ip),
                gateway_only: true,
            };
            let wildcard = (tag.is_some() && !on_me && my_snat.is_some())
                .then(|| (Ipv4Net::default(), &gateway_only));
            let routes = p
                .destinations
                .cidrs
                .iter()
                .map(|c| (*c, &via))
                .chain(p.destinations.excluded.iter().map(|c| (*c, &skip)))
                .chain(wildcard);
            for (cidr, route) in routes {
                let key = (e.ip, cidr);
                match owner.get(&key) {
                    Some(&w) if w != p.name => {
                        if here {
                            let entry = conflicts.entry((w, &p.name)).or_insert((key, 0));
                            entry.1 += 1;
                        }
                    }
                    _ => {
                        owner.insert(key, &p.name);
                        if here {
                            out.routes.insert(key, route.clone());
                        }
                    }
                }
            }
        }

        if let Some(tag) = tag {
            out.fqdn
                .extend(fqdn.finish(p, tag, usable_ips(&mine), &mut problems));
        }
        out.status.push(EgressPolicyStatus {
            name: p.name.clone(),
            endpoints: selected_here,
            gateways: mine.iter().map(status_of).collect(),
        });
    }

    let snat_ips = out.routes.values().map(|r| r.snat);
    for ip in snat_ips.chain(out.fqdn.iter().map(|f| f.snat)).flatten() {
        if let Some(iface) = my_ifaces.get(&ip) {
            out.snat.insert(ip, iface.clone());
        }
    }
    out.problems.extend(problems);
    for ((winner, loser), ((src, cidr), n)) in conflicts {
        let more = if n > 1 {
            format!(" (and {} more routes)", n - 1)
        } else {
            String::new()
        };
        out.problems.push(format!(
            "egress policies {winner} and {loser} both route {src} to {cidr}{more}; {winner} is \
             applied (the first by name): make the policies select different pods or \
             destinations"
        ));
    }
    out
}

/// Tunnel IPs of the usable candidates, in hash order.
fn usable_ips(cands: &[Candidate<'_>]) -> Vec<Ipv4Addr> {
    cands
        .iter()
        .filter(|g| g.usable)
        .filter_map(|g| g.tunnel_ip)
        .collect()
}

/// The candidates of `specs` for endpoints of `cluster`, in hash order
/// (sorted by node name), with usability decided and the cap applied.
fn candidates<'n>(
    specs: &[GatewaySpec],
    cluster: &str,
    nodes: &'n BTreeMap<String, NodeView<'n>>,
    node_labels: &BTreeMap<&str, Labels>,
    is_up: &mut dyn FnMut(&str) -> bool,
) -> Vec<Candidate<'n>> {
    let mut chosen: BTreeMap<&'n str, Candidate<'n>> = BTreeMap::new();
    for spec in specs {
        let any_cluster = spec.nodes.mentions(CLUSTER_LABEL);
        for (key, node) in nodes {
            if (!any_cluster && node.cluster != cluster) || chosen.contains_key(key.as_str()) {
                continue;
            }
            let matches = node_labels
                .get(key.as_str())
                .is_some_and(|l| spec.nodes.matches(l));
            if matches {
                chosen.insert(key.as_str(), candidate(key, node, &spec.egress_ip, is_up));
            }
        }
    }
    let mut list: Vec<Candidate<'n>> = chosen.into_values().collect();
    let mut used = 0;
    for c in &mut list {
        if !c.usable {
            continue;
        }
        if used == MAX_GATEWAYS {
            c.usable = false;
            c.config_problem = true;
            c.problem = Some(format!(
                "more than {MAX_GATEWAYS} usable gateways: {} is left out (the first \
                 {MAX_GATEWAYS} by name are used); narrow the node selector",
                c.name
            ));
        } else {
            used += 1;
        }
    }
    list
}

fn candidate<'n>(
    name: &'n str,
    node: &NodeView<'n>,
    source: &EgressIpSource,
    is_up: &mut dyn FnMut(&str) -> bool,
) -> Candidate<'n> {
    let addrs = node.addresses;
    let (egress, egress_problem) = match source {
        EgressIpSource::Ip(ip) => match addrs.iter().find(|a| a.ip == *ip) {
            Some(a) => (Some((a.ip, a.interface.as_str())), None),
            None => (
                None,
                Some(format!("egress IP {ip} is not an address of node {name}")),
            ),
        },
        EgressIpSource::Interface(i) => match addrs.iter().find(|a| a.interface == *i) {
            Some(a) => (Some((a.ip, a.interface.as_str())), None),
            None => (
                None,
                Some(format!("node {name} has no IPv4 address on interface {i}")),
            ),
        },
        EgressIpSource::DefaultRoute => {
            let iface = addrs.iter().find(|a| a.default_route).map(|a| &a.interface);
            match iface.and_then(|i| addrs.iter().find(|a| a.interface == *i)) {
                Some(a) => (Some((a.ip, a.interface.as_str())), None),
                None => (
                    None,
                    Some(format!(
                        "node {name} has no IPv4 address on an interface holding the default \
                         route; give egressIP or interface"
                    )),
                ),
            }
        }
    };
    let up = is_up(name);
    let (problem, config_problem) = if let Some(p) = egress_problem {
        (Some(p), true)
    } else if node.tunnel_ip.is_none() {
        (Some(format!("node {name} has no tunnel IP")), false)
    } else if !up {
        (Some(format!("node {name} is down")), false)
    } else {
        (None, false)
    };
    Candidate {
        name,
        tunnel_ip: node.tunnel_ip,
        egress,
        up,
        usable: problem.is_none(),
        problem,
        config_problem,
    }
}

/// Adds the configuration problems of `cands` (all of them when `all`,
/// else only those about `me`).
fn report(
    p: &EgressPolicy,
    cands: &[Candidate<'_>],
    me: &str,
    all: bool,
    out: &mut BTreeSet<String>,
) {
    for c in cands {
        if c.config_problem && (all || c.name == me) {
            if let Some(m) = &c.problem {
                out.insert(format!("egress policy {}: {m}", p.name));
            }
        }
    }
}

fn status_of(c: &Candidate<'_>) -> EgressGatewayStatus {
    EgressGatewayStatus {
        node: c.name.to_string(),
        egress_ip: c.egress.map(|(ip, _)| ip.to_string()),
        health: if c.up { "up" } else { "down" }.to_string(),
        usable: c.usable,
        problem: c.problem.clone(),
        flows: 0,
    }
}
