//! Checks on a parsed scenario; every problem is reported with its field.

mod dns;
mod labels;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Datapath, FieldError, Role, Scenario, Underlay};
use crate::plan::{LINK_LOCAL, TUNNEL_NET, UNDERLAY_NET};

/// Longest world and cluster names (they go into namespace names).
pub const MAX_SHORT_NAME: usize = 12;
/// Longest node, pod and external names.
pub const MAX_NAME: usize = 63;
/// Node i sits at underlay host .(10+i), pod j at host .(10+j) of its /24.
pub const MAX_NODES_PER_CLUSTER: usize = 239;
pub const MAX_PODS_PER_NODE: usize = 239;
/// Target word naming a cluster's discovery; no node or pod may use it.
pub const DISCOVERY_WORD: &str = "discovery";
/// `discovery` or `discovery-N`: a target naming a discovery replica.
pub fn is_discovery_name(name: &str) -> bool {
    name == DISCOVERY_WORD
        || name
            .strip_prefix(DISCOVERY_WORD)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Cluster name reserved: externals live in `mg-<world>-x-<name>`.
pub const EXTERNAL_WORD: &str = "x";

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            problem: problem.into(),
        });
    }
}

/// A Kubernetes name (namespace, service account): a DNS label.
const MAX_K8S_NAME: usize = 63;

fn name_problem(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if name.len() > max {
        return Some(format!(
            "\"{name}\" is {} characters long; at most {max} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "\"{name}\" contains {c:?}; only a-z, 0-9 and - are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("\"{name}\" must not start or end with -"));
    }
    None
}

fn check_name(errors: &mut Errors, field: String, name: &str, max: usize) {
    if let Some(problem) = name_problem(name, max) {
        errors.add(field, problem);
    }
}

/// Ranges the lab uses itself; pod CIDRs and externals must stay out.
fn reserved_ranges() -> [(Ipv4Net, &'static str); 3] {
    [
        (UNDERLAY_NET, "the lab underlay"),
        (TUNNEL_NET, "the tunnel IP range"),
        (
            LINK_LOCAL,
            "link-local addresses (the pods' gateway 169.254.1.1)",
        ),
    ]
}

/// Most discovery replicas of one cluster (underlay hosts .2 to .5).
pub const MAX_DISCOVERY_REPLICAS: u32 = 4;

fn check_discovery(errors: &mut Errors, at: &str, c: &super::Cluster) {
    let Some(d) = &c.discovery else { return };
    if !(1..=MAX_DISCOVERY_REPLICAS).contains(&d.replicas) {
        errors.add(
            format!("{at}.discovery.replicas"),
            format!("{} is not in 1..={MAX_DISCOVERY_REPLICAS}", d.replicas),
        );
    } else if d.replicas > 1 && d.store != super::StoreKind::Etcd {
        errors.add(
            format!("{at}.discovery.store"),
            format!(
                "{} replicas need `store: etcd` (the embedded store serves one replica)",
                d.replicas
            ),
        );
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub fn validate(s: &Scenario) -> Vec<FieldError> {
    let mut errors = Errors(Vec::new());
    check_name(&mut errors, "name".into(), &s.name, MAX_SHORT_NAME);
    if s.clusters.is_empty() {
        errors.add("clusters", "at least one cluster is needed");
    }

    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    let mut nets: Vec<(Ipv4Net, usize)> = Vec::new();
    for (ci, c) in s.clusters.iter().enumerate() {
        let at = format!("clusters[{ci}]");
        check_name(&mut errors, format!("{at}.name"), &c.name, MAX_SHORT_NAME);
        let encryption = c.encryption.unwrap_or(s.encryption);
        if encryption != s.encryption {
            errors.add(
                format!("{at}.encryption"),
                format!(
                    "cluster \"{}\" encrypts with {encryption} but the world with {}: a mesh \
                     mixes no encryption, so set `encryption:` once for the world",
                    c.name, s.encryption
                ),
            );
        }
        if encryption == crate::scenario::Encryption::Ipsec
            && !c.backend.unwrap_or(s.backend).is_auto()
        {
            errors.add(
                format!("{at}.backend"),
                "`backend` chooses the WireGuard implementation; with `encryption: ipsec` leave it out",
            );
        }
        if let Err(e) = meshgate_model::service::validate_all(&c.services) {
            errors.add(format!("{at}.services"), e.to_string());
        }
        if c.name == EXTERNAL_WORD {
            errors.add(
                format!("{at}.name"),
                "\"x\" is reserved (externals live in mg-<world>-x-<name>)",
            );
        }
        if let Some(first) = names.get(c.name.as_str()) {
            errors.add(
                format!("{at}.name"),
                format!("\"{}\" is already used by clusters[{first}]", c.name),
            );
        } else {
            names.insert(&c.name, ci);
        }
        if !(1..=255).contains(&c.id) {
            errors.add(format!("{at}.id"), format!("{} is not in 1..=255", c.id));
        } else if let Some(other) = ids.get(&c.id) {
            errors.add(
                format!("{at}.id"),
                format!("{} is already used by cluster \"{other}\"", c.id),
            );
        } else {
            ids.insert(c.id, &c.name);
        }
        if c.underlay == Underlay::Isolated
            && !c
                .nodes
                .iter()
                .any(|n| n.roles.contains(&Role::ClusterGateway))
        {
            errors.add(
                format!("{at}.underlay"),
                format!(
                    "cluster \"{}\" is isolated but none of its nodes has the role cluster-gateway, so nothing could leave it: give one or two of its nodes `roles: [cluster-gateway]`, or make its underlay routable",
                    c.name
                ),
            );
        }
        let mut vips: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        for (si, svc) in c.services.iter().enumerate() {
            let Some(vip) = svc.vip else { continue };
            if let Some(other) = vips.insert(vip, &svc.name) {
                errors.add(
                    format!("{at}.services[{si}].vip"),
                    format!("{vip} is already the VIP of service \"{other}\": give each service its own, or leave `vip` out (the lab assigns one)"),
                );
            }
            if let Ok(pods) = c.pod_cidr.parse::<Ipv4Net>() {
                if pods.contains(&vip) {
                    errors.add(
                        format!("{at}.services[{si}].vip"),
                        format!("{vip} is inside the cluster's podCIDR {pods}: use an address outside every pod CIDR, e.g. 10.96.{}.20", c.id),
                    );
                }
            }
        }
        if c.strict.unwrap_or(s.strict) && c.datapath.unwrap_or(s.datapath) != Datapath::Ebpf {
            errors.add(
                format!("{at}.strict"),
                format!(
                    "cluster \"{}\" asks for strict mode, which the eBPF programs enforce, but its datapath is plain: set `datapath: ebpf` (for the world or the cluster), or drop `strict`",
                    c.name
                ),
            );
        }
        check_pod_cidr(&mut errors, s, ci, &mut nets);
        check_discovery(&mut errors, &at, c);
        check_nodes(&mut errors, s, ci);
    }
    check_external_network(&mut errors, s, &nets);
    check_policies(&mut errors, s);
    if !s.kube_apiservers.is_empty() && s.policies.is_empty() {
        errors.add(
            "kubeApiservers",
            "the kube-apiserver entity is for the policies, and there are none: add `policies` (with `datapath: ebpf`), or drop `kubeApiservers`",
        );
    }
    for (ns, labels) in &s.namespaces {
        check_name(&mut errors, format!("namespaces.{ns}"), ns, MAX_K8S_NAME);
        if labels.keys().any(|k| k.trim().is_empty()) {
            errors.add(format!("namespaces.{ns}"), "a label key is empty");
        }
    }
    errors.0
}

/// Each policy parses, and some cluster runs the datapath that enforces it.
fn check_policies(errors: &mut Errors, s: &Scenario) {
    if s.policies.is_empty() {
        return;
    }
    for (i, p) in s.policies.iter().enumerate() {
        if let Err(problem) = super::policy_text(std::slice::from_ref(p))
            .and_then(|text| super::check_policy_text(&text, ""))
        {
            errors.add(format!("policies[{i}]"), problem);
        }
    }
    let ebpf = s
        .clusters
        .iter()
        .any(|c| c.datapath.unwrap_or(s.datapath) == super::Datapath::Ebpf);
    if !ebpf {
        errors.add(
            "policies",
            "only the eBPF datapath enforces policies: add `datapath: ebpf` (world or cluster)",
        );
    }
}

fn check_pod_cidr(errors: &mut Errors, s: &Scenario, ci: usize, nets: &mut Vec<(Ipv4Net, usize)>) {
    let c = &s.clusters[ci];
    let field = format!("clusters[{ci}].podCIDR");
    let net: Ipv4Net = match c.pod_cidr.parse() {
        Ok(net) => net,
        Err(_) => {
            errors.add(
                field,
                format!("\"{}\" is not an IPv4 CIDR like 10.1.0.0/16", c.pod_cidr),
            );
            return;
        }
    };
    if net.network() != net.addr() {
        errors.add(
            field,
            format!("{net} has host bits set; did you mean {}?", net.trunc()),
        );
        return;
    }
    if net.prefix_len() > 24 {
        errors.add(
            field,
            format!(
                "{net}: prefix /{} is longer than /24 (each node gets a /24)",
                net.prefix_len()
            ),
        );
        return;
    }
    let room = 1usize << (24 - net.prefix_len());
    if c.nodes.len() > room {
        errors.add(
            field.clone(),
            format!(
                "{net} has room for {room} node /24s but cluster \"{}\" has {} nodes",
                c.name,
                c.nodes.len()
            ),
        );
    }
    for (range, what) in reserved_ranges() {
        if overlaps(&net, &range) {
            errors.add(field.clone(), format!("{net} overlaps {range}, {what}"));
        }
    }
    for (other, oi) in nets.iter() {
        if overlaps(&net, other) {
            errors.add(
                field.clone(),
                format!(
                    "{net} overlaps {other}, the podCIDR of cluster \"{}\"",
                    s.clusters[*oi].name
                ),
            );
        }
    }
    nets.push((net, ci));
}

fn check_nodes(errors: &mut Errors, s: &Scenario, ci: usize) {
    let c = &s.clusters[ci];
    let at = format!("clusters[{ci}]");
    if c.nodes.len() > MAX_NODES_PER_CLUSTER {
        errors.add(
            format!("{at}.nodes"),
            format!(
                "{} nodes; at most {MAX_NODES_PER_CLUSTER} per cluster",
                c.nodes.len()
            ),
        );
    }
    // Node and pod names share one target namespace: `cluster/name`.
    let mut node_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (ni, n) in c.nodes.iter().enumerate() {
        if n.rotate_interval == Some(0) {
            errors.add(
                format!("{at}.nodes[{ni}].rotateInterval"),
                "0 is not valid: give seconds (at least 1), or leave it out",
            );
        }
        check_node_extras(errors, &format!("{at}.nodes[{ni}]"), n);
        let field = format!("{at}.nodes[{ni}].name");
        check_name(errors, field.clone(), &n.name, MAX_NAME);
        if is_discovery_name(&n.name) {
            errors.add(
                field.clone(),
                format!(
                    "\"{}\" is reserved for the cluster's discovery (discovery, discovery-N)",
                    n.name
                ),
            );
        }
        if let Some(first) = node_names.get(n.name.as_str()) {
            errors.add(
                field,
                format!("\"{}\" is already used by {at}.nodes[{first}]", n.name),
            );
        } else {
            node_names.insert(&n.name, ni);
        }
    }
    let mut pod_names: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (ni, n) in c.nodes.iter().enumerate() {
        if n.pods.len() > MAX_PODS_PER_NODE {
            errors.add(
                format!("{at}.nodes[{ni}].pods"),
                format!(
                    "{} pods; at most {MAX_PODS_PER_NODE} per node",
                    n.pods.len()
                ),
            );
        }
        for (pi, p) in n.pods.iter().enumerate() {
            let pod_at = format!("{at}.nodes[{ni}].pods[{pi}]");
            if let Some(ns) = &p.namespace {
                check_name(errors, format!("{pod_at}.namespace"), ns, MAX_K8S_NAME);
            }
            if let Some(sa) = &p.service_account {
                check_name(errors, format!("{pod_at}.serviceAccount"), sa, MAX_K8S_NAME);
            }
            let field = format!("{pod_at}.name");
            check_name(errors, field.clone(), &p.name, MAX_NAME);
            if is_discovery_name(&p.name) {
                errors.add(
                    field.clone(),
                    format!(
                        "\"{}\" is reserved for the cluster's discovery (discovery, discovery-N)",
                        p.name
                    ),
                );
            }
            if let Some((fn_, fp)) = pod_names.get(p.name.as_str()) {
                errors.add(
                    field,
                    format!(
                        "\"{}\" is already used by {at}.nodes[{fn_}].pods[{fp}] (pod names are unique per cluster)",
                        p.name
                    ),
                );
            } else if let Some(node) = node_names.get(p.name.as_str()) {
                errors.add(
                    field,
                    format!("\"{}\" is already the name of {at}.nodes[{node}]", p.name),
                );
            } else {
                pod_names.insert(&p.name, (ni, pi));
            }
        }
    }
}

/// An address the lab puts on a host of the external network (an
/// external's, or a gateway's egress IP): a unicast host address outside
/// the lab's own ranges and every pod CIDR, used once in the world.
/// `owners` maps each address seen so far to its owner (`externals[0]`).
fn check_host_ip(
    errors: &mut Errors,
    s: &Scenario,
    nets: &[(Ipv4Net, usize)],
    owners: &mut BTreeMap<Ipv4Addr, String>,
    (field, owner): (String, String),
    ip: Ipv4Addr,
) {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        errors.add(field.clone(), format!("{ip} is not a unicast host address"));
    }
    for (range, what) in reserved_ranges() {
        if range.contains(&ip) {
            errors.add(field.clone(), format!("{ip} is inside {range}, {what}"));
        }
    }
    for (net, ci) in nets {
        if net.contains(&ip) {
            errors.add(
                field.clone(),
                format!(
                    "{ip} is inside {net}, the podCIDR of cluster \"{}\"",
                    s.clusters[*ci].name
                ),
            );
        }
    }
    if let Some(first) = owners.get(&ip) {
        errors.add(field, format!("{ip} is already used by {first}"));
    } else {
        owners.insert(ip, owner);
    }
}

/// Node labels, and egress IPs only on egress gateways.
fn check_node_extras(errors: &mut Errors, at: &str, n: &super::Node) {
    for (key, value) in &n.labels {
        if let Some(problem) = labels::label_problem(key, value) {
            errors.add(format!("{at}.labels"), problem);
        }
    }
    if !n.egress_ips.is_empty() && !n.roles.contains(&Role::EgressGateway) {
        errors.add(
            format!("{at}.egressIPs"),
            format!(
                "node \"{}\" has egress IPs but not the role egress-gateway: add \
                 `roles: [egress-gateway]`, or leave egressIPs out",
                n.name
            ),
        );
    }
}

/// Egress IPs first, then externals' IPs: all in one address space.
fn check_external_network(errors: &mut Errors, s: &Scenario, nets: &[(Ipv4Net, usize)]) {
    let mut owners: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (ci, c) in s.clusters.iter().enumerate() {
        for (ni, n) in c.nodes.iter().enumerate() {
            for (k, ip) in n.egress_ips.iter().enumerate() {
                let field = format!("clusters[{ci}].nodes[{ni}].egressIPs[{k}]");
                let owner = format!("{field} (an egress IP of {}/{})", c.name, n.name);
                check_host_ip(errors, s, nets, &mut owners, (field, owner), *ip);
            }
        }
    }
    check_externals(errors, s, nets, &mut owners);
    dns::check(errors, s, nets, &mut owners);
}

fn check_externals(
    errors: &mut Errors,
    s: &Scenario,
    nets: &[(Ipv4Net, usize)],
    owners: &mut BTreeMap<Ipv4Addr, String>,
) {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (xi, x) in s.externals.iter().enumerate() {
        let at = format!("externals[{xi}]");
        check_name(errors, format!("{at}.name"), &x.name, MAX_NAME);
        if let Some(first) = names.get(x.name.as_str()) {
            errors.add(
                format!("{at}.name"),
                format!("\"{}\" is already used by externals[{first}]", x.name),
            );
        } else {
            names.insert(&x.name, xi);
        }
        check_host_ip(errors, s, nets, owners, (format!("{at}.ip"), at), x.ip);
    }
}
