//! What the eBPF datapath's maps, routes and attachments should hold, from
//! the agent's ipcache, the node records and this node's pods. Pure: no
//! kernel, so it is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use meshgate_ebpf::{Attachment, Hook, IpcacheEntry};
use meshgate_model::{identity, pb};

use crate::ipcache::IpCache;

/// The VXLAN (collect_md) device the mesh traffic goes through.
pub const VXLAN_DEV: &str = "mg-vx0";

/// This node, and its pods' host-side interfaces (IP -> (name, ifindex);
/// ifindex 0 when the interface does not exist).
pub struct Local<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub interfaces: &'a BTreeMap<Ipv4Addr, (String, u32)>,
    /// This node's own addresses, every interface's but loopback (the pods'
    /// gateway address among them): the `host` entity.
    pub host: &'a BTreeSet<Ipv4Addr>,
}

/// The datapath state wanted now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// `mg_ipcache`, one /32 per endpoint and per node address.
    pub ipcache: BTreeMap<Ipv4Addr, IpcacheEntry>,
    /// Other nodes' pod CIDRs, routed into the VXLAN device. `None` while
    /// the node records are unknown (leave the routes as they are).
    pub pod_routes: Option<BTreeSet<Ipv4Net>>,
    pub attachments: BTreeSet<Attachment>,
    /// Entries left out, and why.
    pub problems: Vec<String>,
}

fn tunnel_ips(nodes: &BTreeMap<String, pb::Node>) -> BTreeMap<(&str, &str), Ipv4Addr> {
    nodes
        .values()
        .filter_map(|n| {
            let ip = n.tunnel_ip.parse().ok()?;
            Some(((n.cluster.as_str(), n.name.as_str()), ip))
        })
        .collect()
}

/// The nodes' own addresses with the identity a pod's traffic to them gets:
/// `host` for this node's (`me.host`, and its underlay and tunnel IPs),
/// `remote-node` for every other node's underlay, tunnel and published
/// interface addresses, of any cluster. An address two nodes claim is
/// `host` if one of them is this node.
pub fn node_entries(
    me: &Local<'_>,
    nodes: Option<&BTreeMap<String, pb::Node>>,
) -> BTreeMap<Ipv4Addr, u32> {
    let mut out: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    for n in nodes.into_iter().flat_map(|ns| ns.values()) {
        let id = if n.cluster == me.cluster && n.name == me.node {
            identity::HOST
        } else {
            identity::REMOTE_NODE
        };
        let addrs = [n.underlay_ip.as_str(), n.tunnel_ip.as_str()]
            .into_iter()
            .chain(n.addresses.iter().map(|a| a.ip.as_str()))
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .filter(|a| !a.is_loopback() && !a.is_unspecified());
        for a in addrs {
            let e = out.entry(a).or_insert(id);
            if id == identity::HOST {
                *e = id;
            }
        }
    }
    for a in me.host {
        out.insert(*a, identity::HOST);
    }
    out
}

/// Computes the wanted state. With `nodes` unknown (no snapshot yet since
/// the start) only local endpoints are listed: remote entries already in
/// the pinned map are kept until the node records say where they are.
pub fn desired(
    me: &Local<'_>,
    cache: &IpCache,
    nodes: Option<&BTreeMap<String, pb::Node>>,
) -> Desired {
    let mut out = Desired::default();
    let tunnels = nodes.map(tunnel_ips).unwrap_or_default();
    for (ip, e) in &cache.entries {
        let IpAddr::V4(ip) = *ip else {
            continue; // the datapath is IPv4 only
        };
        if e.cluster == me.cluster && e.node == me.node {
            let ifindex = me.interfaces.get(&ip).map_or(0, |(_, i)| *i);
            out.ipcache
                .insert(ip, IpcacheEntry::local(e.identity, ifindex));
            continue;
        }
        if nodes.is_none() {
            continue;
        }
        match tunnels.get(&(e.cluster.as_str(), e.node.as_str())) {
            Some(t) => {
                out.ipcache.insert(ip, IpcacheEntry::remote(e.identity, *t));
            }
            None => out.problems.push(format!(
                "endpoint {ip}: node {}/{} has no tunnel IP yet",
                e.cluster, e.node
            )),
        }
    }
    // A pod's address is never a node's: the endpoint's entry wins.
    for (ip, id) in node_entries(me, nodes) {
        out.ipcache.entry(ip).or_insert(IpcacheEntry::node(id));
    }
    if let Some(nodes) = nodes {
        let mut routes = BTreeSet::new();
        for n in nodes.values() {
            if n.cluster == me.cluster && n.name == me.node {
                continue;
            }
            for c in &n.pod_cidrs {
                match c.parse::<Ipv4Net>() {
                    Ok(net) => {
                        routes.insert(net.trunc());
                    }
                    Err(_) => out.problems.push(format!(
                        "node {}/{}: pod CIDR {c:?} is not an IPv4 CIDR",
                        n.cluster, n.name
                    )),
                }
            }
        }
        out.pod_routes = Some(routes);
    }
    // Every pod veth that exists gets from_pod, also before its identity is
    // known: until then from_pod drops what it sends (`unknown-source`), so
    // no pod traffic ever leaves without its identity (to_mesh would
    // otherwise send it as `host`). And to_pod, the pod's ingress policy for
    // what reaches it from outside the mesh (fromCIDR, fromEntities world).
    for (iface, ifindex) in me.interfaces.values() {
        if *ifindex != 0 {
            out.attachments
                .insert(Attachment::new(iface.clone(), Hook::FromPod));
            out.attachments
                .insert(Attachment::new(iface.clone(), Hook::ToPod));
        }
    }
    out.attachments
        .insert(Attachment::new(VXLAN_DEV, Hook::ToMesh));
    out.attachments
        .insert(Attachment::new(VXLAN_DEV, Hook::FromMesh));
    out
}

/// Map changes that turn `applied` into `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub upsert: Vec<(Ipv4Addr, IpcacheEntry)>,
    pub remove: Vec<Ipv4Addr>,
}

/// Upserts of new or changed entries; removals only when `prune` (the node
/// records are known, so an entry missing from `desired` is really gone).
pub fn diff(
    applied: &BTreeMap<Ipv4Addr, IpcacheEntry>,
    desired: &BTreeMap<Ipv4Addr, IpcacheEntry>,
    prune: bool,
) -> Changes {
    let upsert = desired
        .iter()
        .filter(|(ip, e)| applied.get(ip) != Some(e))
        .map(|(ip, e)| (*ip, *e))
        .collect();
    let remove = if prune {
        applied
            .keys()
            .filter(|ip| !desired.contains_key(ip))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    Changes { upsert, remove }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipcache::IpCacheEntry;

    fn entry(node: &str, identity: u32) -> IpCacheEntry {
        IpCacheEntry {
            identity,
            node: node.into(),
            cluster: "c1".into(),
            namespace: "default".into(),
            name: format!("pod-{node}"),
        }
    }

    fn node(name: &str, tunnel: &str, cidr: &str) -> (String, pb::Node) {
        (
            format!("c1/{name}"),
            pb::Node {
                name: name.into(),
                cluster: "c1".into(),
                cluster_id: 1,
                underlay_ip: "198.18.1.10".into(),
                listen_port: 51820,
                wg_public_key: String::new(),
                pod_cidrs: vec![cidr.into()],
                tunnel_ip: tunnel.into(),
                roles: vec![],
                encryption: Default::default(),
                labels: Default::default(),
                addresses: Default::default(),
            },
        )
    }

    type Interfaces = BTreeMap<Ipv4Addr, (String, u32)>;

    /// This node: c1/n1.
    fn n1<'a>(ifaces: &'a Interfaces, host: &'a BTreeSet<Ipv4Addr>) -> Local<'a> {
        Local {
            cluster: "c1",
            node: "n1",
            interfaces: ifaces,
            host,
        }
    }

    fn world() -> (IpCache, BTreeMap<String, pb::Node>, Interfaces) {
        let mut cache = IpCache::default();
        cache
            .entries
            .insert("10.1.0.10".parse().unwrap(), entry("n1", 65_792));
        cache
            .entries
            .insert("10.1.1.10".parse().unwrap(), entry("n2", 65_793));
        cache
            .entries
            .insert("10.1.2.10".parse().unwrap(), entry("n3", 65_794));
        cache
            .entries
            .insert("fd00::1".parse().unwrap(), entry("n2", 65_793));
        let nodes = [
            node("n1", "100.64.0.1", "10.1.0.0/24"),
            node("n2", "100.64.0.2", "10.1.1.0/24"),
            node("n3", "", "10.1.2.0/24"),
        ]
        .into();
        let ifaces = [
            ("10.1.0.10".parse().unwrap(), ("pod0".to_string(), 7)),
            ("10.1.0.11".parse().unwrap(), ("pod1".to_string(), 8)),
        ]
        .into();
        (cache, nodes, ifaces)
    }

    #[test]
    fn local_remote_routes_and_attachments() {
        let (cache, nodes, ifaces) = world();
        let host = BTreeSet::new();
        let me = n1(&ifaces, &host);
        let d = desired(&me, &cache, Some(&nodes));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(d.ipcache[&ip("10.1.0.10")], IpcacheEntry::local(65_792, 7));
        assert_eq!(
            d.ipcache[&ip("10.1.1.10")],
            IpcacheEntry::remote(65_793, ip("100.64.0.2"))
        );
        assert!(!d.ipcache.contains_key(&ip("10.1.2.10")), "no tunnel IP");
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        let pods = d.ipcache.values().filter(|e| !e.is_node()).count();
        assert_eq!(pods, 2, "IPv6 left out");
        let routes: Vec<String> = d
            .pod_routes
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(routes, ["10.1.1.0/24", "10.1.2.0/24"], "not our own CIDR");
        // pod1 has no identity yet: from_pod anyway (it drops its traffic
        // as unknown-source until the identity arrives).
        let names: Vec<String> = d.attachments.iter().map(|a| a.to_string()).collect();
        assert_eq!(d.attachments.len(), 6, "{names:?}");
        assert!(d
            .attachments
            .contains(&Attachment::new("pod1", Hook::FromPod)));
        assert!(d
            .attachments
            .contains(&Attachment::new("pod1", Hook::ToPod)));
        assert!(!d.ipcache.contains_key(&ip("10.1.0.11")));
    }

    #[test]
    fn before_the_node_records_only_local_entries_and_nothing_pruned() {
        let (cache, _, ifaces) = world();
        let host = BTreeSet::new();
        let me = n1(&ifaces, &host);
        let d = desired(&me, &cache, None);
        assert_eq!(d.ipcache.len(), 1);
        assert_eq!(d.pod_routes, None);
        let stale: BTreeMap<_, _> = [(
            "10.1.9.9".parse().unwrap(),
            IpcacheEntry::remote(1, "100.64.0.9".parse().unwrap()),
        )]
        .into();
        let c = diff(&stale, &d.ipcache, false);
        assert_eq!(c.upsert.len(), 1);
        assert!(c.remove.is_empty(), "kept until the node records are known");
        let c = diff(&stale, &d.ipcache, true);
        assert_eq!(c.remove, vec!["10.1.9.9".parse::<Ipv4Addr>().unwrap()]);
        assert!(diff(&d.ipcache, &d.ipcache, true) == Changes::default());
    }

    #[test]
    fn node_addresses_are_host_here_and_remote_node_elsewhere_and_pods_win() {
        let (cache, mut nodes, ifaces) = world();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        for (k, u) in [
            ("c1/n1", "198.18.1.10"),
            ("c1/n2", "198.18.1.11"),
            ("c1/n3", "198.18.1.12"),
        ] {
            nodes.get_mut(k).unwrap().underlay_ip = u.into();
        }
        nodes.get_mut("c1/n2").unwrap().addresses = vec![
            pb::NodeAddress {
                interface: "eg0".into(),
                ip: "203.0.113.200".into(),
                default_route: false,
            },
            // A pod's address published by mistake stays the pod's.
            pb::NodeAddress {
                interface: "eth1".into(),
                ip: "10.1.1.10".into(),
                default_route: false,
            },
        ];
        let (c2, mut c2n3) = node("n3", "100.65.0.3", "10.2.3.0/24");
        c2n3.cluster = "c2".into();
        c2n3.underlay_ip = "198.18.2.13".into();
        nodes.insert(c2.replace("c1", "c2"), c2n3);
        let host: BTreeSet<Ipv4Addr> = [ip("169.254.1.1"), ip("198.18.1.10")].into();
        let me = n1(&ifaces, &host);
        let d = desired(&me, &cache, Some(&nodes));
        let node_id = |s: &str| {
            let e = d.ipcache.get(&ip(s)).copied();
            assert!(e.is_none_or(|e| e.is_node()), "{s}: {e:?}");
            e.map(|e| e.identity)
        };
        for h in ["169.254.1.1", "198.18.1.10", "100.64.0.1"] {
            assert_eq!(node_id(h), Some(identity::HOST), "{h}");
        }
        for r in [
            "198.18.1.11",
            "100.64.0.2",
            "203.0.113.200",
            "198.18.1.12",
            "198.18.2.13",
            "100.65.0.3",
        ] {
            assert_eq!(node_id(r), Some(identity::REMOTE_NODE), "{r}");
        }
        assert_eq!(
            d.ipcache[&ip("10.1.1.10")],
            IpcacheEntry::remote(65_793, ip("100.64.0.2"))
        );
        // Before the node records: this node's own addresses only.
        let d = desired(&me, &cache, None);
        let nodes_only: Vec<_> = d.ipcache.iter().filter(|(_, e)| e.is_node()).collect();
        assert_eq!(nodes_only.len(), 2, "{nodes_only:?}");
    }
}
