//! The `ip` commands that build a planned world, as data.

use std::net::Ipv4Addr;

use super::{pod_mtu, NodePlan, Plan, BRIDGE, EGRESS_INTERFACE, POD_GATEWAY, UNDERLAY_NET};
use crate::scenario::Underlay;

/// One step of building a world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `ip netns add NAME` (recorded before it runs, so `down` finds it).
    AddNamespace(String),
    /// `ip ARGS...`
    Ip(Vec<String>),
}

impl Step {
    /// The full argument list given to `ip`.
    pub fn ip_args(&self) -> Vec<String> {
        match self {
            Step::AddNamespace(ns) => vec!["netns".into(), "add".into(), ns.clone()],
            Step::Ip(args) => args.clone(),
        }
    }
}

struct Steps(Vec<Step>);

impl Steps {
    fn ip(&mut self, args: &[&str]) {
        self.0
            .push(Step::Ip(args.iter().map(|a| a.to_string()).collect()));
    }

    /// `nft ARGS...` in namespace `ns`.
    fn nft(&mut self, ns: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", ns, "nft"];
        all.extend_from_slice(args);
        self.ip(&all);
    }

    fn sysctl(&mut self, ns: &str, setting: &str) {
        self.ip(&["netns", "exec", ns, "sysctl", "-qw", setting]);
    }

    /// A fresh namespace with `lo` up and reverse-path filtering off (the
    /// host's setting is inherited otherwise); `router` turns forwarding on.
    fn namespace(&mut self, ns: &str, router: bool) {
        self.0.push(Step::AddNamespace(ns.to_string()));
        self.sysctl(ns, "net.ipv4.conf.all.rp_filter=0");
        self.sysctl(ns, "net.ipv4.conf.default.rp_filter=0");
        // The lab is IPv4 only: without this, IPv6 autoconfiguration chatter
        // (router solicitations, MLD reports) would cross the underlay.
        self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1");
        self.sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1");
        if router {
            self.sysctl(ns, "net.ipv4.ip_forward=1");
        }
        self.ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// `eth0` in `ns`, its peer `ul_veth` on the underlay bridge.
    fn attach(&mut self, ul: &str, ns: &str, ul_veth: &str, addr: &str) {
        self.ip(&[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", ul_veth, "netns",
            ul,
        ]);
        self.ip(&["-n", ul, "link", "set", ul_veth, "master", BRIDGE, "up"]);
        self.ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
        self.ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }
}

fn with_len(ip: Ipv4Addr, len: u8) -> String {
    format!("{ip}/{len}")
}

pub fn build(plan: &Plan) -> Vec<Step> {
    let mut s = Steps(Vec::new());
    let ul = plan.underlay_ns.as_str();
    let gw = POD_GATEWAY.to_string();
    let ul_len = UNDERLAY_NET.prefix_len();

    s.namespace(ul, false);
    s.ip(&["-n", ul, "link", "add", BRIDGE, "type", "bridge"]);
    s.ip(&["-n", ul, "link", "set", BRIDGE, "up"]);

    for c in &plan.clusters {
        let mtu = pod_mtu(c.datapath).to_string();
        if let Some(e) = &c.etcd {
            s.namespace(&e.netns, false);
            s.attach(ul, &e.netns, &e.ul_veth, &with_len(e.ip, ul_len));
        }
        for (_, d) in c.discovery_replicas() {
            s.namespace(&d.netns, false);
            s.attach(ul, &d.netns, &d.ul_veth, &with_len(d.ip, ul_len));
        }

        for n in &c.nodes {
            let node = n.netns.as_str();
            s.namespace(node, true);
            if n.is_cluster_gateway() {
                // A gateway forwards back out of the interface a packet came
                // in on (mg-wg0): no ICMP redirects for that.
                s.sysctl(node, "net.ipv4.conf.all.send_redirects=0");
                s.sysctl(node, "net.ipv4.conf.default.send_redirects=0");
            }
            s.attach(ul, node, &n.ul_veth, &with_len(n.underlay_ip, ul_len));
            if n.is_egress_gateway() {
                egress_interface(&mut s, ul, n);
            }
            if !plan.externals.is_empty() || plan.dns.is_some() {
                masquerade(&mut s, n);
            }
            // The pods' gateway: a local address answers their ARP and ping.
            s.ip(&[
                "-n",
                node,
                "addr",
                "add",
                &with_len(POD_GATEWAY, 32),
                "dev",
                "lo",
                "scope",
                "link",
            ]);
            for ip in world_hosts(plan) {
                let ip = with_len(ip, 32);
                s.ip(&[
                    "-n", node, "route", "add", &ip, "dev", "eth0", "scope", "link",
                ]);
            }
            for p in &n.pods {
                let pod = p.netns.as_str();
                let ip = with_len(p.ip, 32);
                let veth = p.node_veth.as_str();
                s.namespace(pod, false);
                s.ip(&[
                    "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", veth,
                    "netns", node,
                ]);
                s.ip(&["-n", pod, "link", "set", "eth0", "mtu", &mtu, "up"]);
                s.ip(&["-n", pod, "addr", "add", &ip, "dev", "eth0"]);
                s.ip(&[
                    "-n", pod, "route", "add", &gw, "dev", "eth0", "scope", "link",
                ]);
                s.ip(&[
                    "-n", pod, "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
                ]);
                s.sysctl(node, &format!("net.ipv4.conf.{veth}.proxy_arp=1"));
                s.sysctl(node, &format!("net.ipv4.conf.{veth}.rp_filter=0"));
                s.ip(&["-n", node, "link", "set", veth, "mtu", &mtu, "up"]);
                s.ip(&["-n", node, "route", "add", &ip, "dev", veth]);
            }
        }
    }

    isolate(&mut s, plan);

    let hosts = plan
        .externals
        .iter()
        .map(|x| (x.netns.as_str(), x.ul_veth.as_str(), x.ip))
        .chain(
            plan.dns
                .iter()
                .map(|d| (d.netns.as_str(), d.ul_veth.as_str(), d.server)),
        );
    for (ns, ul_veth, ip) in hosts {
        world_host(&mut s, plan, (ns, ul_veth), ip);
    }
    s.0
}

/// The addresses of the world's hosts outside every cluster: the
/// externals' and the DNS server's.
fn world_hosts(plan: &Plan) -> impl Iterator<Item = Ipv4Addr> + '_ {
    plan.externals
        .iter()
        .map(|x| x.ip)
        .chain(plan.dns.iter().map(|d| d.server))
}

/// A host on the external network (an external, the DNS server): its
/// namespace on the underlay bridge with its address as a /32, a route to
/// the underlay, and routes to the egress IPs (replies go to the gateways'
/// eg0, on the same bridge).
fn world_host(s: &mut Steps, plan: &Plan, (ns, ul_veth): (&str, &str), ip: Ipv4Addr) {
    let ul = plan.underlay_ns.as_str();
    let underlay = UNDERLAY_NET.to_string();
    s.namespace(ns, false);
    s.attach(ul, ns, ul_veth, &with_len(ip, 32));
    s.ip(&[
        "-n", ns, "route", "add", &underlay, "dev", "eth0", "scope", "link",
    ]);
    for ip in plan
        .clusters
        .iter()
        .flat_map(|c| &c.nodes)
        .flat_map(|n| &n.egress_ips)
    {
        s.ip(&[
            "-n",
            ns,
            "route",
            "add",
            &with_len(*ip, 32),
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
    }
}

/// An egress gateway's second interface: `eg0` in the node, its peer on the
/// underlay bridge (the external network), each egress IP on it as a /32.
/// ARP on eth0 and eg0 only (the pods' veths must keep answering for the
/// pod gateway address on `lo`): only the interface holding an address
/// answers for it (`arp_ignore=1`), and requests name the outgoing
/// interface's own address (`arp_announce=2`), so eth0 never claims an
/// egress IP.
fn egress_interface(s: &mut Steps, ul: &str, n: &NodePlan) {
    let Some(peer) = n.egress_veth.as_deref() else {
        return;
    };
    let node = n.netns.as_str();
    s.ip(&[
        "link",
        "add",
        EGRESS_INTERFACE,
        "netns",
        node,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        ul,
    ]);
    s.ip(&["-n", ul, "link", "set", peer, "master", BRIDGE, "up"]);
    for dev in ["eth0", EGRESS_INTERFACE] {
        s.sysctl(node, &format!("net.ipv4.conf.{dev}.arp_ignore=1"));
        s.sysctl(node, &format!("net.ipv4.conf.{dev}.arp_announce=2"));
    }
    for ip in &n.egress_ips {
        s.ip(&[
            "-n",
            node,
            "addr",
            "add",
            &with_len(*ip, 32),
            "dev",
            EGRESS_INTERFACE,
        ]);
    }
    s.ip(&["-n", node, "link", "set", EGRESS_INTERFACE, "up"]);
}

/// nftables table (ip family) in every node namespace of a world with
/// externals: the lab's stand-in for the cluster's usual masquerade of pod
/// traffic to the world with the node's address.
pub const MASQUERADE_TABLE: &str = "mg_lab_masq";

/// Pod traffic of the node leaving `eth0` (to an external) is masqueraded
/// to the node's address. At `srcnat + 10`, after an egress gateway's own
/// SNAT at `srcnat`, so that one wins for the flows it takes.
fn masquerade(s: &mut Steps, n: &NodePlan) {
    let node = n.netns.as_str();
    let pods = n.pod_cidr.to_string();
    let nft = |s: &mut Steps, args: &[&str]| s.nft(node, args);
    nft(s, &["add", "table", "ip", MASQUERADE_TABLE]);
    nft(
        s,
        &[
            "add",
            "chain",
            "ip",
            MASQUERADE_TABLE,
            "postrouting",
            "{ type nat hook postrouting priority srcnat + 10; policy accept; }",
        ],
    );
    nft(
        s,
        &[
            "add",
            "rule",
            "ip",
            MASQUERADE_TABLE,
            "postrouting",
            "ip",
            "saddr",
            &pods,
            "oifname",
            "\"eth0\"",
            "counter",
            "masquerade",
        ],
    );
}

/// nftables table (bridge family) in the underlay namespace that enforces
/// isolated underlays.
pub const ISOLATION_TABLE: &str = "mg_isolation";

fn nft_set(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", quoted.join(", "))
}

/// Isolated clusters: on the underlay bridge, frames between a cluster's
/// ordinary nodes and any port outside the cluster (other clusters'
/// nodes and discoveries, externals) are dropped, in both directions. Its
/// cluster gateways, its discovery and its egress gateways' `eg0` ports
/// stay on the shared underlay (an `eg0` talks to externals).
fn isolate(s: &mut Steps, plan: &Plan) {
    let ul = plan.underlay_ns.as_str();
    let isolated: Vec<_> = plan
        .clusters
        .iter()
        .filter(|c| c.underlay == Underlay::Isolated)
        .collect();
    if isolated.is_empty() {
        return;
    }
    let nft = |s: &mut Steps, args: &[&str]| s.nft(ul, args);
    nft(s, &["add", "table", "bridge", ISOLATION_TABLE]);
    nft(
        s,
        &[
            "add",
            "chain",
            "bridge",
            ISOLATION_TABLE,
            "isolate",
            "{ type filter hook forward priority 0; policy accept; }",
        ],
    );
    for c in isolated {
        let inside: Vec<&str> = c
            .nodes
            .iter()
            .map(|n| n.ul_veth.as_str())
            .chain([c.discovery.ul_veth.as_str()])
            .chain(c.nodes.iter().filter_map(|n| n.egress_veth.as_deref()))
            // Every node's DNS proxy forwards to the world's DNS server.
            .chain(plan.dns.iter().map(|d| d.ul_veth.as_str()))
            .collect();
        let walled: Vec<&str> = c
            .nodes
            .iter()
            .filter(|n| !n.is_cluster_gateway())
            .map(|n| n.ul_veth.as_str())
            .collect();
        if walled.is_empty() {
            continue;
        }
        let (inside, walled) = (nft_set(&inside), nft_set(&walled));
        for (from, to) in [("iifname", "oifname"), ("oifname", "iifname")] {
            nft(
                s,
                &[
                    "add",
                    "rule",
                    "bridge",
                    ISOLATION_TABLE,
                    "isolate",
                    from,
                    &walled,
                    to,
                    "!=",
                    &inside,
                    "counter",
                    "drop",
                ],
            );
        }
    }
}
