//! End-to-end egress gateways (CiliumEgressGatewayPolicy) on the world of
//! `scenarios/egress.yaml`: cluster c1 with nodes n1, n2 and gateways g1
//! (egress IP 203.0.113.50) and g2 (.51); cluster c2 with n1 and gateway g1
//! (.60); an external host `internet` (203.0.113.10) whose TCP 8080 answers
//! with the source address it saw, and `internet-excluded` (203.0.113.200,
//! in the policy's excludedCIDRs). World names start with `eg`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::Duration;

use meshgate_e2e::stream::unix_now;
use meshgate_e2e::{meshgate_output, wait_until, Capture, World};

/// The project's own probe: `conns` opens one connection per interval and
/// prints how each went (`ok:<what the server sent>`), `rr` keeps one
/// connection busy, `serve` echoes.
const PROBE: &str = env!("CARGO_BIN_EXE_mg-probe");
const INTERNET: &str = "203.0.113.10";
const EXCLUDED: &str = "203.0.113.200";
const G1: &str = "203.0.113.50";
const G2: &str = "203.0.113.51";
const C2_G1: &str = "203.0.113.60";
/// The echo service the long-lived connections use, on the external host.
const ECHO_PORT: &str = "9000";

fn egress_world(name: &str) -> World {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/egress.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    assert!(
        yaml.contains("\nname: egress\n"),
        "{path} no longer names world egress"
    );
    World::up(
        name,
        &yaml.replace("\nname: egress\n", &format!("\nname: {name}\n")),
    )
}

fn external_ns(world: &World, name: &str) -> String {
    format!("mg-{}-x-{name}", world.name)
}

/// One connection per `interval_ms` from a pod to `to`:8080; each outcome
/// with its start time.
fn conns(
    world: &World,
    cluster: &str,
    pod: &str,
    to: &str,
    count: u32,
    interval_ms: u32,
) -> Vec<(f64, String)> {
    let out = world.in_ns(
        &world.pod_ns(cluster, pod),
        &[
            PROBE,
            "conns",
            to,
            "8080",
            &count.to_string(),
            &interval_ms.to_string(),
            "1500",
        ],
    );
    parse_conns(&String::from_utf8_lossy(&out.stdout))
}

fn parse_conns(out: &str) -> Vec<(f64, String)> {
    let mut v: Vec<(f64, String)> = out
        .lines()
        .filter_map(|l| {
            let (t, what) = l.split_once(' ')?;
            Some((t.parse().ok()?, what.trim().to_string()))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The source addresses the external host saw, per connection (panics on
/// a failed one).
fn sources(world: &World, cluster: &str, pod: &str, to: &str, count: u32) -> BTreeSet<String> {
    let got = conns(world, cluster, pod, to, count, 30);
    assert_eq!(
        got.len(),
        count as usize,
        "{cluster}/{pod} -> {to}: {got:?}"
    );
    got.iter()
        .map(|(_, what)| {
            what.strip_prefix("ok:")
                .unwrap_or_else(|| panic!("{cluster}/{pod} -> {to}:8080 failed: {got:?}"))
                .trim()
                .to_string()
        })
        .collect()
}

fn set(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|s| s.to_string()).collect()
}

fn egress_status(world: &World, cluster: &str, node: &str) -> meshgate_lab::status::EgressStatus {
    world
        .status(cluster, node)
        .egress
        .unwrap_or_else(|| panic!("{cluster}/{node} shows no egress status"))
}

/// (gateway node, usable) of policy `policy` as `cluster/node` sees it.
fn gateways(world: &World, cluster: &str, node: &str, policy: &str) -> Vec<(String, bool)> {
    egress_status(world, cluster, node)
        .policies
        .iter()
        .find(|p| p.name == policy)
        .unwrap_or_else(|| panic!("{cluster}/{node} does not list policy {policy}"))
        .gateways
        .iter()
        .map(|g| (g.node.clone(), g.usable))
        .collect()
}

#[test]
fn selected_pods_leave_from_the_egress_ips_and_the_rest_from_their_node() {
    let world = egress_world("egsrc");
    // Every c1 node sees both c1 gateways usable, with their egress IPs.
    let st = egress_status(&world, "c1", "n1");
    let pol = st
        .policies
        .iter()
        .find(|p| p.name == "egress-client")
        .unwrap();
    assert_eq!(pol.endpoints, 1, "{st:?}");
    let shown: Vec<(String, Option<String>, bool)> = pol
        .gateways
        .iter()
        .map(|g| (g.node.clone(), g.egress_ip.clone(), g.usable))
        .collect();
    assert_eq!(
        shown,
        [
            ("c1/g1".to_string(), Some(G1.to_string()), true),
            ("c1/g2".to_string(), Some(G2.to_string()), true)
        ],
        "{st:?}"
    );
    assert_eq!(
        egress_status(&world, "c1", "g1")
            .serving
            .get(G1)
            .map(String::as_str),
        Some("eg0")
    );

    let dir = meshgate_e2e::tempdir();
    // n1's underlay carries its selected pod's traffic inside WireGuard
    // only; the gateways' egress interfaces carry no pod address.
    let n1 = Capture::start(
        &world.node_ns("c1", "n1"),
        "eth0",
        dir.path().join("n1.pcap"),
    );
    let eg = [
        Capture::start(
            &world.node_ns("c1", "g1"),
            "eg0",
            dir.path().join("g1.pcap"),
        ),
        Capture::start(
            &world.node_ns("c1", "g2"),
            "eg0",
            dir.path().join("g2.pcap"),
        ),
    ];
    let c1 = set(&[G1, G2]);
    let from_app1 = sources(&world, "c1", "app1", INTERNET, 20);
    assert!(from_app1.is_subset(&c1), "c1/app1 seen from {from_app1:?}");
    let from_app2 = sources(&world, "c1", "app2", INTERNET, 20);
    assert!(from_app2.is_subset(&c1), "c1/app2 seen from {from_app2:?}");
    assert_eq!(
        from_app1.union(&from_app2).count(),
        2,
        "40 flows were not spread over both gateways: {from_app1:?} {from_app2:?}"
    );
    n1.assert_nothing_in_clear("net 10.0.0.0/8", 20);
    for c in eg {
        let counts = c.stop_and_count(&["net 10.0.0.0/8", "host 203.0.113.10"]);
        assert_eq!(
            counts[0], 0,
            "a pod address crossed a gateway's eg0 in clear"
        );
    }
    // c2's pods use c2's own gateway; its `via-c1` pod is routed by a
    // policy naming cluster c1 through c1's gateways, across the mesh.
    assert_eq!(sources(&world, "c2", "app3", INTERNET, 5), set(&[C2_G1]));
    let via = sources(&world, "c2", "via1", INTERNET, 10);
    assert!(via.is_subset(&c1), "c2/via1 seen from {via:?}");

    // Unselected traffic, and excluded destinations, keep the usual source
    // (the node's address, as the cluster masquerades it).
    let n1_ip = world.ip("c1/n1");
    assert_eq!(sources(&world, "c1", "other1", INTERNET, 3), set(&[&n1_ip]));
    assert_eq!(sources(&world, "c1", "app1", EXCLUDED, 3), set(&[&n1_ip]));

    // The gateway's flow events name the pod (its identity came in the VNI).
    let flows = meshgate_e2e::meshgate(&[
        "lab",
        "observe",
        &world.name,
        "c1/g1",
        "--last",
        "1000",
        "--json",
    ]);
    let g2_flows = meshgate_e2e::meshgate(&[
        "lab",
        "observe",
        &world.name,
        "c1/g2",
        "--last",
        "1000",
        "--json",
    ]);
    let named = |text: &str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|f| f.to_string().contains("app1") && f.to_string().contains(INTERNET))
    };
    assert!(
        named(&flows) || named(&g2_flows),
        "no gateway flow event names c1/app1 -> {INTERNET}:\n{flows}\n{g2_flows}"
    );

    // A bad policy is refused with the field named; nothing is applied.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: both}\n\
         spec:\n  selectors: [{podSelector: {matchLabels: {app: other}}}]\n\
         \x20 destinationCIDRs: [203.0.113.0/24]\n\
         \x20 egressGateway: {nodeSelector: {matchLabels: {egress: \"true\"}}, egressIP: 203.0.113.50, interface: eg0}\n",
    )
    .unwrap();
    let out = meshgate_output(&[
        "lab",
        "policy",
        "--world",
        &world.name,
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad policy was accepted");
    assert!(
        err.contains("both") && err.contains("egressIP") && err.contains("interface"),
        "{err}"
    );
    assert_eq!(sources(&world, "c1", "other1", INTERNET, 2), set(&[&n1_ip]));
    assert!(sources(&world, "c1", "app1", INTERNET, 4).is_subset(&c1));

    // A gateway whose node loses its egress IP is unusable, says why, and
    // new flows avoid it (the node's addresses are re-read every 3 s).
    world.in_ns(
        &world.node_ns("c1", "g2"),
        &["ip", "addr", "del", &format!("{G2}/32"), "dev", "eg0"],
    );
    let gone = wait_until(Duration::from_secs(15), || {
        gateways(&world, "c1", "n1", "egress-client")
            == [("c1/g1".to_string(), true), ("c1/g2".to_string(), false)]
    });
    let st = egress_status(&world, "c1", "n1");
    assert!(
        gone.is_some(),
        "c1/g2 still usable without its egress IP: {st:?}"
    );
    let g2 = &st
        .policies
        .iter()
        .find(|p| p.name == "egress-client")
        .unwrap()
        .gateways[1];
    assert!(
        g2.problem.as_deref().is_some_and(|p| p.contains("eg0")),
        "c1/g2's problem does not name its interface: {g2:?}"
    );
    assert_eq!(sources(&world, "c1", "app1", INTERNET, 10), set(&[G1]));
}

/// Long-lived connections from `pod` to the external echo service, each
/// with the source port it connected from.
fn long_lived(world: &World, pod: &str, count: usize, secs: u32) -> Vec<(Child, u16)> {
    let ns = world.pod_ns("c1", pod);
    (0..count)
        .map(|_| {
            let mut child =
                world.spawn_in_ns(&ns, &[PROBE, "rr", INTERNET, ECHO_PORT, &secs.to_string()]);
            let port = read_local_port(&mut child);
            (child, port)
        })
        .collect()
}

/// The `local PORT` line `mg-probe rr` prints once connected.
fn read_local_port(child: &mut Child) -> u16 {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let port = line
        .strip_prefix("local ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("rr did not connect: {line:?}"));
    // Keep reading in the background so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    });
    port
}

/// The external echo service's connections: source port -> source IP.
fn peers_seen(world: &World) -> BTreeMap<u16, String> {
    let out = world.in_ns(
        &external_ns(world, "internet"),
        &["ss", "-Htn", "state", "established", "sport", "=", ":9000"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let peer = l.split_whitespace().last()?;
            let (ip, port) = peer.rsplit_once(':')?;
            Some((port.parse().ok()?, ip.to_string()))
        })
        .collect()
}

fn wait_ok(children: Vec<(Child, u16)>) -> BTreeMap<u16, bool> {
    children
        .into_iter()
        .map(|(mut c, port)| (port, c.wait().unwrap().success()))
        .collect()
}

#[test]
fn a_dead_gateway_s_flows_move_within_a_second_its_return_and_a_policy_change_move_none() {
    let world = egress_world("egfail");
    let echo = world.spawn_in_ns(
        &external_ns(&world, "internet"),
        &[PROBE, "serve", ECHO_PORT],
    );
    let _echo = KillOnDrop(echo);
    std::thread::sleep(Duration::from_millis(300));

    // Eight long-lived connections over both gateways, for the whole test.
    let lived = long_lived(&world, "app2", 8, 24);
    let seen = wait_until(Duration::from_secs(5), || peers_seen(&world).len() >= 8);
    assert!(seen.is_some(), "the external sees {:?}", peers_seen(&world));
    let before = peers_seen(&world);
    let on_g2: BTreeSet<u16> = lived
        .iter()
        .map(|(_, p)| *p)
        .filter(|p| before.get(p).map(String::as_str) == Some(G2))
        .collect();
    assert!(
        !on_g2.is_empty() && on_g2.len() < 8,
        "8 connections were not spread over both gateways: {before:?}"
    );

    // A connection every 20 ms from app1 while g1 dies. Each has 500 ms:
    // less than TCP's 1 s SYN retransmission, so one sent to the dead g1
    // fails rather than being rescued by a retransmission after the switch.
    let stream = world.spawn_in_ns(
        &world.pod_ns("c1", "app1"),
        &[PROBE, "conns", INTERNET, "8080", "400", "20", "500"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let killed = unix_now();
    world.lab("fail", "c1/g1");
    let down = wait_until(Duration::from_secs(3), || {
        gateways(&world, "c1", "n1", "egress-client")
            == [("c1/g1".into(), false), ("c1/g2".into(), true)]
    });
    assert!(
        down.is_some(),
        "c1/n1 still uses c1/g1: {:?}",
        gateways(&world, "c1", "n1", "egress-client")
    );
    std::thread::sleep(Duration::from_secs(2));
    let out = stream.wait_with_output().unwrap();
    let got = parse_conns(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(got.len(), 400, "{}", String::from_utf8_lossy(&out.stderr));
    let before: BTreeSet<&str> = got
        .iter()
        .filter(|(t, _)| *t < killed)
        .map(|(_, w)| w.as_str())
        .collect();
    assert!(
        before.contains(format!("ok:{G1}").as_str())
            && before.contains(format!("ok:{G2}").as_str()),
        "before the kill, new flows did not use both gateways: {before:?}"
    );
    let after: Vec<&(f64, String)> = got.iter().filter(|(t, _)| *t >= killed + 1.0).collect();
    let bad: Vec<String> = after
        .iter()
        .filter(|(_, w)| w.trim() != format!("ok:{G2}"))
        .map(|(t, w)| format!("{:+.3}s {w}", t - killed))
        .collect();
    let last_failure = got
        .iter()
        .filter(|(t, w)| *t >= killed && !w.starts_with("ok:"))
        .map(|(t, _)| t - killed)
        .fold(0.0, f64::max);
    eprintln!(
        "g1 killed: last failed connection began {last_failure:.3} s after; {} of {} began later, all through g2",
        after.len(),
        got.len()
    );
    assert!(
        bad.is_empty(),
        "connections begun over 1 s after g1 died did not all succeed through g2: {bad:?}"
    );

    // g1 returns: new flows may use it again, existing ones stay put.
    world.lab("recover", "c1/g1");
    let back = wait_until(Duration::from_secs(10), || {
        gateways(&world, "c1", "n1", "egress-client")
            .iter()
            .all(|(_, u)| *u)
    });
    assert!(
        back.is_some(),
        "c1/g1 never came back: {:?}",
        gateways(&world, "c1", "n1", "egress-client")
    );
    let spread = sources(&world, "c1", "app1", INTERNET, 20);
    assert_eq!(spread, set(&[G1, G2]), "new flows after g1's return");

    // A policy change that keeps app2 selected (one more destination, one
    // more selector) keeps its connections and their gateways.
    let policies = scenario_policies(|yaml| {
        yaml.replacen(
            "        - podSelector: {matchLabels: {app: egress-client}}\n      destinationCIDRs: [203.0.113.0/24]",
            "        - podSelector: {matchLabels: {app: egress-client}}\n        - podSelector: {matchLabels: {app: more}}\n      destinationCIDRs: [203.0.113.0/24, 192.0.2.0/24]",
            1,
        )
    });
    assert!(
        policies.contains("192.0.2.0/24"),
        "the scenario's policy changed shape"
    );
    let dir = meshgate_e2e::tempdir();
    let f = dir.path().join("changed.yaml");
    std::fs::write(&f, &policies).unwrap();
    meshgate_e2e::meshgate(&["lab", "policy", "--world", &world.name, f.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(2));
    let now = peers_seen(&world);
    for p in &on_g2 {
        assert_eq!(
            now.get(p).map(String::as_str),
            Some(G2),
            "connection from port {p} left g2 after g1's return or the policy change: {now:?}"
        );
    }
    let results = wait_ok(lived);
    for p in &on_g2 {
        assert!(
            results[p],
            "the connection from port {p} through g2 broke: {results:?}"
        );
    }
}

/// The scenario's `policies:`, edited by `edit` on the file's text, as one
/// YAML text (for `lab policy`).
fn scenario_policies(edit: impl Fn(&str) -> String) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/egress.yaml");
    let text = edit(&std::fs::read_to_string(path).unwrap());
    let s = meshgate_lab::Scenario::parse("egress.yaml", &text).unwrap();
    meshgate_lab::scenario::policy_text(&s.policies).unwrap()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Isolated underlays: c1's and c2's ordinary nodes reach outside their
/// cluster only through their cluster gateways (cg1). c1's egress gateway
/// g1 reaches the external network on its eg0 only.
fn isolated_yaml(name: &str) -> String {
    let policies = scenario_policies(|y| y.to_string());
    let mut y = format!(
        "name: {name}\ndatapath: ebpf\nclusters:\n\
         \x20 - name: c1\n    id: 1\n    podCIDR: 10.1.0.0/16\n    underlay: isolated\n    nodes:\n\
         \x20     - {{name: cg1, roles: [cluster-gateway]}}\n\
         \x20     - {{name: g1, roles: [egress-gateway], labels: {{egress: \"true\"}}, egressIPs: [{G1}]}}\n\
         \x20     - name: n1\n        pods: [{{name: app1, labels: {{app: egress-client}}}}]\n\
         \x20 - name: c2\n    id: 2\n    podCIDR: 10.2.0.0/16\n    underlay: isolated\n    nodes:\n\
         \x20     - {{name: cg1, roles: [cluster-gateway]}}\n\
         \x20     - name: n1\n        pods: [{{name: via1, labels: {{app: via-c1}}}}]\n\
         externals:\n  - {{name: internet, ip: {INTERNET}}}\npolicies:\n"
    );
    let docs: Vec<serde_yaml::Value> = policies
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let list = serde_yaml::to_string(&docs).unwrap();
    for line in list.lines() {
        y.push_str("  ");
        y.push_str(line);
        y.push('\n');
    }
    y
}

#[test]
fn egress_works_through_cluster_gateways_where_underlays_are_isolated() {
    let world = World::up("egiso", &isolated_yaml("egiso"));
    let dir = meshgate_e2e::tempdir();
    let n1 = Capture::start_immediate(
        &world.node_ns("c2", "n1"),
        "eth0",
        dir.path().join("c2n1.pcap"),
    );
    // c1's walled node leaves through its own cluster's egress gateway.
    assert_eq!(sources(&world, "c1", "app1", INTERNET, 5), set(&[G1]));
    // c2's walled node, under the policy naming cluster c1: through c2's
    // cluster gateway, c1's cluster gateway, to c1's egress gateway.
    assert_eq!(sources(&world, "c2", "via1", INTERNET, 5), set(&[G1]));
    n1.assert_nothing_in_clear("net 10.0.0.0/8", 10);
    let gws = gateways(&world, "c2", "n1", "via-c1");
    assert_eq!(gws, [("c1/g1".to_string(), true)], "as c2/n1 sees it");
}
