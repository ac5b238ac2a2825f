//! Cilium's policy constructs enforced in a running world (eBPF datapath,
//! one cluster of two nodes, pods in three namespaces, two externals):
//! service accounts, namespace selectors by label (from the world's
//! `namespaces:`), then, replaced at run time with `meshgate lab policy`,
//! a clusterwide policy with entities and a CIDR set with `except`, an
//! ICMP-only rule, an ingress deny and `toEntities: [world]`; then the
//! `host`, `remote-node` and `kube-apiserver` entities and `fromCIDR` from
//! the world. Real packets: pings and TCP connects (`mg-probe`) between pod
//! namespaces, the nodes' own stacks and the externals. Each row of a table says who may reach whom; every row is
//! checked, the denied ones as well as the allowed.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use meshgate_e2e::{meshgate_output, wait_until, Procs, World, TCP_PROBE_WAIT_MS};

const PROBE: &str = env!("CARGO_BIN_EXE_mg-probe");

/// Pods: name, node, namespace, service account, labels.
const SCENARIO: &str = r#"
name: NAME
datapath: ebpf
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        pods:
          - {name: web1, labels: {app: web}}
          - {name: pay1, namespace: shop, serviceAccount: payments, labels: {app: pay}}
          - {name: cli1, labels: {app: client}}
      - name: n2
        pods:
          - {name: tool2, namespace: ops, labels: {app: tool}}
          - {name: pay2, namespace: shop, labels: {app: pay}}
externals:
  - {name: ext1, ip: 203.0.113.10}
  - {name: ext2, ip: 203.0.113.11}
  - {name: ext3, ip: 203.0.113.12}
kubeApiservers: [203.0.113.12]
namespaces:
  shop: {team: payments}
  ops: {team: operations}
policies:
  # Selected by service account: only pay1 (pay2 runs as `default`).
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: pay-sa, namespace: shop}
    spec:
      endpointSelector: {matchLabels: {io.cilium.k8s.policy.serviceaccount: payments}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: pay}}]
  # A namespace selector by label: only the payments team's namespace.
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: from-payments, namespace: ops}
    spec:
      podSelector: {}
      policyTypes: [Ingress]
      ingress:
        - from: [{namespaceSelector: {matchLabels: {team: payments}}}]
"#;

/// Replaces the first set at run time.
const SECOND: &str = r#"
# Clients, in any namespace: anything in the cluster, and the externals'
# /24 but for ext2.
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEntities: [cluster]
    - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.11/32]}]
---
# web answers pings (ICMP echo request) from anyone, nothing else.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ping-only, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [all]
      icmps: [{fields: [{type: 8, family: IPv4}]}]
---
# pay pods: the whole cluster, but never the ops namespace.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pay-no-ops, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: pay}}
  ingress:
    - fromEntities: [cluster]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: ops}}]
---
# tool reaches the world only: no pod.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tool-world, namespace: ops}
spec:
  endpointSelector: {matchLabels: {app: tool}}
  egress:
    - toEntities: [world]
"#;

/// Replaces the second: the nodes, the API server and the world by CIDR.
const THIRD: &str = r#"
# Clients: their own node and the API server (ext3), nothing else.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-host, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEntities: [host, kube-apiserver]
---
# tool: the other nodes only.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tool-nodes, namespace: ops}
spec:
  endpointSelector: {matchLabels: {app: tool}}
  egress:
    - toEntities: [remote-node]
---
# web: from the other nodes only (its own node's stack always reaches it).
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-nodes, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [remote-node]
---
# pay: from ext1 only, by CIDR.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pay-from-ext1, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: pay}}
  ingress:
    - fromCIDR: [203.0.113.10/32]
"#;

/// The port the nodes' own stacks serve on.
const NODE_PORT: u16 = 7000;

const PODS: [(&str, &str); 5] = [
    ("web1", "n1"),
    ("pay1", "n1"),
    ("cli1", "n1"),
    ("tool2", "n2"),
    ("pay2", "n2"),
];

/// The namespace of a row's source: a pod, `node:<name>` (the node's own
/// stack) or `ext:<name>` (an external).
fn source_ns(world: &World, from: &str) -> String {
    match from.split_once(':') {
        Some(("node", n)) => world.node_ns("c1", n),
        Some(("ext", x)) => format!("mg-{}-x-{x}", world.name),
        _ => world.pod_ns("c1", from),
    }
}

fn probe(world: &World, from: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &source_ns(world, from), PROBE])
        .args(args);
    c
}

/// What a row probes.
#[derive(Clone, Copy, Debug)]
enum Probe {
    Ping,
    Tcp(u16),
}

/// `from` -> `to` (a pod or an external's address) with `probe`: allowed?
struct Row(&'static str, &'static str, Probe, bool);

/// A row's target: an address, `underlay:<node>` or `tunnel:<node>` (a
/// node's addresses), or a pod.
fn target_ip(world: &World, to: &str) -> String {
    match to.split_once(':') {
        Some(("underlay", n)) => world.status("c1", n).underlay_ip,
        Some(("tunnel", n)) => world.status("c1", n).tunnel_ip,
        _ if to.contains('.') => to.to_string(),
        _ => world.ip(&format!("c1/{to}")),
    }
}

fn passes(world: &World, from: &str, ip: &str, p: Probe) -> bool {
    match p {
        Probe::Ping => world.ping("c1", from, ip, 1, "0.3").received == 1,
        Probe::Tcp(port) => probe(
            world,
            from,
            &["connect", ip, &port.to_string(), TCP_PROBE_WAIT_MS],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success(),
    }
}

/// Checks every row; an allowed probe gets one retry (a first packet may
/// go to neighbour resolution), a denied one must never pass.
fn check(world: &World, what: &str, rows: &[Row]) {
    let mut bad = Vec::new();
    for Row(from, to, p, want) in rows {
        let ip = target_ip(world, to);
        let got = passes(world, from, &ip, *p) || (*want && passes(world, from, &ip, *p));
        if got != *want {
            bad.push(format!(
                "{from} -> {to} ({ip}) {p:?}: expected {}, got {}",
                if *want { "allowed" } else { "denied" },
                if got { "through" } else { "dropped" }
            ));
        }
    }
    assert!(bad.is_empty(), "{what}:\n{}", bad.join("\n"));
}

/// Every agent has applied its policy set (reloaded more than `reloads`
/// times) over every pod's identity, and read it without a warning.
fn wait_applied(world: &World, reloads: Option<[u64; 2]>) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(120), || {
        ["n1", "n2"].iter().enumerate().all(|(i, n)| {
            let p = world.status("c1", n).datapath.and_then(|d| d.policy);
            let ids = world.ipcache("c1", n).len();
            last = format!("c1/{n}: {p:?}, ipcache {ids}");
            ids >= PODS.len()
                && p.is_some_and(|p| {
                    p.applied && p.entries > 0 && reloads.is_none_or(|r| p.reloads > r[i])
                })
        })
    });
    assert!(ok.is_some(), "policy never applied everywhere: {last}");
    for n in ["n1", "n2"] {
        let p = world.status("c1", n).datapath.unwrap().policy.unwrap();
        assert!(p.warnings.is_empty(), "c1/{n}: {:?}", p.warnings);
    }
}

/// `meshgate lab policy` with `text`, waiting until both agents have
/// applied it.
fn replace_policies(world: &World, name: &str, text: &str) {
    let reloads = ["n1", "n2"].map(|n| {
        world
            .status("c1", n)
            .datapath
            .unwrap()
            .policy
            .unwrap()
            .reloads
    });
    let dir = meshgate_e2e::tempdir();
    let f = dir.path().join("policies.yaml");
    std::fs::write(&f, text).unwrap();
    let out = meshgate_output(&["lab", "policy", "--world", name, f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_applied(world, Some(reloads));
}

#[test]
fn service_accounts_namespace_labels_entities_cidr_except_icmp_deny_and_clusterwide_policies_are_enforced(
) {
    let name = "polcil";
    let world = World::up(name, &SCENARIO.replace("NAME", name));
    let mut servers = Procs(Vec::new());
    for node in ["node:n1", "node:n2"] {
        servers.0.push(
            probe(&world, node, &["serve", &NODE_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for (pod, _) in PODS {
        servers.0.push(
            probe(&world, pod, &["serve", "80"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    wait_applied(&world, None);
    // The first set as the lab wrote it, to go back to.
    let first = std::fs::read_to_string(meshgate_lab::plan::policies_file(name)).unwrap();
    use Probe::*;
    check(
        &world,
        "service account and namespace labels",
        &[
            // pay1 runs as `payments`: only pay pods of shop reach it.
            Row("pay2", "pay1", Ping, true),
            Row("web1", "pay1", Ping, false),
            Row("tool2", "pay1", Tcp(80), false),
            // pay2 runs as `default`: not selected, open.
            Row("web1", "pay2", Ping, true),
            Row("tool2", "pay2", Tcp(80), true),
            // ops takes only what comes from a namespace labelled
            // team=payments.
            Row("pay1", "tool2", Ping, true),
            Row("pay2", "tool2", Tcp(80), true),
            Row("web1", "tool2", Ping, false),
            Row("cli1", "tool2", Tcp(80), false),
        ],
    );

    replace_policies(&world, name, SECOND);
    check(
        &world,
        "clusterwide policy, entities, CIDR except, ICMP, deny, world",
        &[
            // client: the cluster (pay2 is open to the cluster), and the
            // externals' /24 except ext2.
            Row("cli1", "pay2", Tcp(80), true),
            Row("cli1", "203.0.113.10", Ping, true),
            Row("cli1", "203.0.113.11", Ping, false),
            // web: pings only.
            Row("cli1", "web1", Ping, true),
            Row("cli1", "web1", Tcp(80), false),
            Row("pay1", "web1", Tcp(80), false),
            // pay: the cluster, but the deny wins for ops.
            Row("web1", "pay1", Tcp(80), true),
            Row("web1", "pay2", Ping, true),
            Row("tool2", "pay1", Ping, false),
            Row("tool2", "pay2", Tcp(80), false),
            // tool: the world, no pod (the pay pods would take it).
            Row("tool2", "203.0.113.11", Ping, true),
            Row("tool2", "web1", Ping, false),
        ],
    );

    // The nodes and the world's hosts reach pods: ext1 and ext2 route the
    // pods of n1 through n1 (the lab gives them no such route).
    let n1_underlay = target_ip(&world, "underlay:n1");
    for x in ["ext1", "ext2"] {
        let out = world.in_ns(
            &source_ns(&world, &format!("ext:{x}")),
            &[
                "ip",
                "route",
                "add",
                &format!("{}/32", world.ip("c1/pay1")),
                "via",
                &n1_underlay,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    replace_policies(&world, name, THIRD);
    check(
        &world,
        "host, remote-node, kube-apiserver, fromCIDR",
        &[
            // client: its own node (the pods' gateway address, its underlay
            // and tunnel IPs) and the API server; not the other node.
            Row("cli1", "169.254.1.1", Tcp(NODE_PORT), true),
            Row("cli1", "underlay:n1", Tcp(NODE_PORT), true),
            Row("cli1", "tunnel:n1", Tcp(NODE_PORT), true),
            Row("cli1", "203.0.113.12", Ping, true),
            Row("cli1", "underlay:n2", Tcp(NODE_PORT), false),
            Row("cli1", "203.0.113.10", Ping, false),
            Row("cli1", "web1", Ping, false),
            // tool (on n2): the other node; not its own node, not the
            // world, not the API server.
            Row("tool2", "underlay:n1", Tcp(NODE_PORT), true),
            Row("tool2", "169.254.1.1", Tcp(NODE_PORT), false),
            Row("tool2", "underlay:n2", Tcp(NODE_PORT), false),
            Row("tool2", "203.0.113.12", Ping, false),
            Row("tool2", "203.0.113.10", Ping, false),
            // web: n2's stack (remote-node) and its own node's (host, let
            // in as Cilium lets it by default); no pod.
            Row("node:n2", "web1", Tcp(80), true),
            Row("node:n1", "web1", Tcp(80), true),
            Row("pay1", "web1", Tcp(80), false),
            Row("tool2", "web1", Tcp(80), false),
            // pay1: from ext1 by CIDR, not ext2, no pod.
            Row("ext:ext1", "pay1", Tcp(80), true),
            Row("ext:ext2", "pay1", Tcp(80), false),
            Row("web1", "pay1", Tcp(80), false),
        ],
    );

    // Back to the first set; then namespace labels change at run time:
    // `default` joins the payments team and `shop` gains a label (every
    // shop pod gets a new identity) while shop's pay1 pings ops' tool2,
    // which the policy allows before and after.
    replace_policies(&world, name, &first);
    check(
        &world,
        "the first set again",
        &[
            Row("web1", "tool2", Ping, false),
            Row("pay1", "tool2", Ping, true),
        ],
    );
    let before = world.ipcache("c1", "n1");
    let pay1_ip = world.ip("c1/pay1");
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "pay1"),
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "300",
            "-i",
            "0.01",
            "-W",
            "1",
            &world.ip("c1/tool2"),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let ns_file = meshgate_lab::plan::namespaces_file(name);
    let tmp = ns_file.with_extension("tmp");
    std::fs::write(
        &tmp,
        "shop: {team: payments, tier: gold}\nops: {team: operations}\ndefault: {team: payments}\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &ns_file).unwrap();
    let out = ping.wait_with_output().unwrap();
    let s = meshgate_e2e::parse_ping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(s.sent, 300, "{s:?}");
    assert_eq!(
        s.lost(),
        0,
        "pay1 -> tool2 lost {} of {} pings while shop's labels changed",
        s.lost(),
        s.sent
    );
    let was = before.get(&pay1_ip).map(|e| e.1);
    assert!(
        was.is_some(),
        "pay1 ({pay1_ip}) is not in n1's ipcache: {before:?}"
    );
    let changed = wait_until(Duration::from_secs(30), || {
        world.ipcache("c1", "n1").get(&pay1_ip).map(|e| e.1) != was
    });
    assert!(
        changed.is_some(),
        "pay1's identity did not change with its namespace's labels"
    );
    // The new labels select: default's pods now reach ops.
    let reached = wait_until(Duration::from_secs(30), || {
        passes(&world, "web1", &world.ip("c1/tool2"), Ping)
    });
    assert!(
        reached.is_some(),
        "web1 (namespace default, now team=payments) does not reach tool2"
    );
    check(
        &world,
        "after the namespace labels changed",
        &[
            Row("web1", "tool2", Ping, true),
            Row("cli1", "tool2", Tcp(80), true),
            Row("pay2", "tool2", Tcp(80), true),
            Row("web1", "pay1", Ping, false),
        ],
    );
}
