//! Real containers: three nodes with `runtime: containerd` (the
//! distribution's containerd and runc, an image built from busybox-static),
//! containers made with `ctr run --cni` through `meshgate-cni`, in a strict
//! eBPF world with a policy that lets only `app: client` reach the web pod.
//! Containers come and go in a loop while the underlay is captured; one
//! agent restarts during the churn; an ADD with the agent down.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meshgate_e2e::{meshgate_output, wait_until, Capture, World};

const SCENARIO: &str = r#"
name: NAME
datapath: ebpf
strict: true
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        runtime: containerd
        pods:
          - {name: web1, labels: {app: web}}
      - name: n2
        runtime: containerd
      - name: n3
        runtime: containerd
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web-from-clients, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
"#;

/// A service whose only backends are containers (`app: echo`).
const SERVICE: &str = "    services:\n      - name: echo\n        ports: [{name: echo, port: 7070, protocol: TCP}]\n        selector: {app: echo}\n    nodes:\n";

const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Containers made in the churn, and how many stay up at once.
const CHURN: usize = 20;
const LIVE: usize = 4;

fn lab(args: &[&str]) -> Result<String, String> {
    let out = meshgate_output(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Starts container `name` on `node`; it pings `first` at once (its first
/// packets, written to /tmp/first with ping's exit status) and sleeps.
fn run(world: &World, node: &str, name: &str, labels: &[&str], first: &str) -> String {
    let target = format!("c1/{node}");
    let mut args = vec![
        "lab",
        "run",
        &target,
        "--name",
        name,
        "--world",
        &world.name,
    ];
    for l in labels {
        args.extend(["--label", l]);
    }
    let script = format!(
        "ping -c 1 -W 3 {first} > /tmp/first 2>&1; echo rc=$? >> /tmp/first; exec sleep 100000"
    );
    args.extend(["--", "sh", "-c", &script]);
    let said = lab(&args).unwrap_or_else(|e| panic!("lab run {name} on {node}: {e}"));
    // "container NAME on c1/NODE: IP"
    said.trim().rsplit(' ').next().unwrap().to_string()
}

fn exec(world: &World, node: &str, name: &str, cmd: &[&str]) -> String {
    let out = meshgate_lab::runtime::exec(&world.name, &format!("c1/{node}"), name, cmd).unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The container's first ping: whether it was answered (waits for it).
fn first_ping(world: &World, node: &str, name: &str) -> bool {
    let mut text = String::new();
    let done = wait_until(Duration::from_secs(10), || {
        text = exec(world, node, name, &["cat", "/tmp/first"]);
        text.contains("rc=")
    });
    assert!(
        done.is_some(),
        "{name} never finished its first ping: {text:?}"
    );
    text.contains("rc=0")
}

fn ping(world: &World, node: &str, name: &str, to: &str) -> bool {
    exec(world, node, name, &["ping", "-c", "1", "-W", "2", to]).contains(" 0% packet loss")
}

/// Every node's datapath drops by reason, for failure messages.
fn drops(world: &World) -> String {
    NODES
        .iter()
        .map(|n| {
            let d = world
                .status("c1", n)
                .datapath
                .map(|d| d.drops)
                .unwrap_or_default();
            let d: Vec<String> = d
                .iter()
                .filter(|(_, c)| **c > 0)
                .map(|(r, c)| format!("{r}={c}"))
                .collect();
            format!("{n}: {}", d.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn rm(world: &World, node: &str, name: &str) {
    lab(&[
        "lab",
        "rm",
        &format!("c1/{node}"),
        "--name",
        name,
        "--world",
        &world.name,
    ])
    .unwrap_or_else(|e| panic!("lab rm {name}: {e}"));
}

fn node_dir(world: &World, node: &str) -> String {
    format!("/run/meshgate/lab/{}/c1/nodes/{node}", world.name)
}

/// The IPs `meshgate-cni`'s host-local holds on a node.
fn ipam_held(world: &World, node: &str) -> BTreeSet<String> {
    std::fs::read_dir(format!("{}/cni/ipam/meshgate", node_dir(world, node)))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod IPs the agent of a node holds (pods.json).
fn agent_pods(world: &World, node: &str) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(format!("{}/pods.json", node_dir(world, node))).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_object()
        .map(|m| {
            m.values()
                .filter_map(|p| p["pod"]["ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The node's pod veths (`mg` + 12 hex digits).
fn pod_veths(world: &World, node: &str) -> usize {
    let out = world.in_ns(&world.node_ns("c1", node), &["ip", "-o", "link"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|n| n.starts_with("mg") && !n.starts_with("mg-"))
        .count()
}

#[test]
fn containers_come_and_go_through_the_cni_plugin_encrypted_identified_and_policed_from_the_first_packet(
) {
    let yaml = SCENARIO
        .replace("NAME", "ctrs")
        .replacen("    nodes:\n", SERVICE, 1);
    let world = World::up("ctrs", &yaml);
    let web1 = world.ip("c1/web1");
    let dir = meshgate_e2e::tempdir();
    let captures: Vec<Capture> = NODES
        .iter()
        .map(|n| {
            Capture::start(
                &world.node_ns("c1", n),
                "eth0",
                dir.path().join(format!("{n}.pcap")),
            )
        })
        .collect();

    // A client on each node: its first packet to web1 passes (policy and
    // identity are there before it sends); an unlabelled container's is
    // dropped by the policy, on every node.
    let mut live: BTreeMap<String, (String, String)> = BTreeMap::new(); // name -> (node, ip)
    let mut seen_ips: BTreeSet<String> = BTreeSet::new();
    let mut removed: Vec<(String, String)> = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let name = format!("other{i}");
        let ip = run(&world, node, &name, &[], &web1);
        assert!(
            !first_ping(&world, node, &name),
            "unlabelled {name} on {node} reached web1"
        );
        rm(&world, node, &name);
        removed.push((name, ip));
    }
    let mut restarted = false;
    for i in 0..CHURN {
        let node = NODES[i % NODES.len()];
        let name = format!("cli{i}");
        let ip = run(&world, node, &name, &["app=client"], &web1);
        if !first_ping(&world, node, &name) {
            panic!(
                "{name} on {node} ({ip}): its first ping to web1 was lost; drops: {}; {}\n{}",
                drops(&world),
                exec(&world, node, &name, &["cat", "/tmp/first"]),
                std::fs::read_to_string(format!("{}/agent.log", node_dir(&world, node)))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("pod added") || l.contains("identit"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for (other, (_, other_ip)) in &live {
            assert_ne!(&ip, other_ip, "{name} got {ip}, still held by {other}");
        }
        // Every live pair: the new container and each live one, both ways.
        for (other, (other_node, other_ip)) in &live {
            assert!(
                ping(&world, node, &name, other_ip),
                "{name} cannot reach {other} ({other_ip})"
            );
            assert!(
                ping(&world, other_node, other, &ip),
                "{other} cannot reach {name} ({ip})"
            );
        }
        seen_ips.insert(ip.clone());
        live.insert(name, (node.to_string(), ip));
        if live.len() > LIVE {
            let (old, (old_node, old_ip)) = live.pop_first().unwrap();
            rm(&world, &old_node, &old);
            // Gone from every node's ipcache within 2 s.
            let gone = wait_until(Duration::from_secs(2), || {
                NODES
                    .iter()
                    .all(|n| !world.ipcache("c1", n).contains_key(&old_ip))
            });
            assert!(
                gone.is_some(),
                "{old} ({old_ip}) is still in an ipcache 2 s after its delete"
            );
        }
        if i == CHURN / 2 {
            // An agent restart in the middle of the churn.
            world.lab("restart", "c1/n2");
            let socket = format!("{}/cni.sock", node_dir(&world, "n2"));
            let up = wait_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            });
            assert!(
                up.is_some(),
                "the restarted agent's CNI socket never opened"
            );
            restarted = true;
        }
    }
    assert!(restarted);
    // Every live pair reaches each other across nodes.
    let names: Vec<(String, String, String)> = live
        .iter()
        .map(|(n, (node, ip))| (n.clone(), node.clone(), ip.clone()))
        .collect();
    for (a, a_node, _) in &names {
        for (b, _, b_ip) in &names {
            if a != b {
                assert!(
                    ping(&world, a_node, a, b_ip),
                    "{a} cannot reach {b} ({b_ip})"
                );
            }
        }
    }
    // Nothing crossed the underlay in clear, first packets included.
    for c in captures {
        c.assert_nothing_in_clear("net 10.1.0.0/16", 10);
    }
    // No endpoint lost, no veth or IP leaked (the restarted node's too).
    for node in NODES {
        let mine: BTreeSet<String> = live
            .values()
            .filter(|(n, _)| n == node)
            .map(|(_, ip)| ip.clone())
            .collect();
        assert_eq!(agent_pods(&world, node), mine, "{node}: the agent's pods");
        assert_eq!(
            ipam_held(&world, node),
            mine,
            "{node}: IPs held by host-local"
        );
        assert_eq!(pod_veths(&world, node), mine.len(), "{node}: pod veths");
    }

    // A relabelled pod (the label source changed) gets its new identity,
    // and the policy follows: the last client is a client no more.
    let (last, (last_node, _)) = live
        .last_key_value()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let labels = format!("{}/pod-labels.yaml", node_dir(&world, &last_node));
    let text = std::fs::read_to_string(&labels).unwrap();
    let entry = format!("default/default-{last}:\n  labels:\n    app: client\n");
    assert!(text.contains(&entry), "{labels}: {text}");
    // Replaced whole, as a label source must be (the agent watches it).
    let tmp = format!("{labels}.tmp");
    std::fs::write(
        &tmp,
        text.replace(&entry, &entry.replace("app: client", "app: other")),
    )
    .unwrap();
    std::fs::rename(&tmp, &labels).unwrap();
    let denied = wait_until(Duration::from_secs(5), || {
        !ping(&world, &last_node, &last, &web1)
    });
    assert!(
        denied.is_some(),
        "{last}, relabelled app=other, still reaches web1"
    );

    // Load balancing follows: a container labelled app=echo becomes the
    // service's backend and serves its VIP; removed, it is no backend.
    let services = format!("{}/services.json", node_dir(&world, "n1"));
    let backends = |want: usize| {
        let mut vip = String::new();
        let ok = wait_until(Duration::from_secs(5), || {
            let v: serde_json::Value = std::fs::read_to_string(&services)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let echo = &v["services"]["default/echo"];
            vip = echo["vip"].as_str().unwrap_or_default().to_string();
            echo["backends"].as_array().map_or(0, Vec::len) == want
        });
        assert!(
            ok.is_some(),
            "n1 never saw default/echo with {want} backends"
        );
        vip
    };
    lab(&[
        "lab",
        "run",
        "c1/n3",
        "--name",
        "echo1",
        "--label",
        "app=echo",
        "--world",
        &world.name,
        "--",
        "nc",
        "-ll",
        "-p",
        "7070",
        "-e",
        "/bin/sh",
    ])
    .unwrap();
    let vip = backends(1);
    let web1_ns = world.pod_ns("c1", "web1");
    let said = wait_until(Duration::from_secs(5), || {
        let out = world.in_ns(
            &web1_ns,
            &[
                "sh",
                "-c",
                &format!("echo 'echo hi' | /bin/busybox nc -w 2 {vip} 7070"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains("hi")
    });
    assert!(
        said.is_some(),
        "web1 got no answer from the container behind {vip}:7070"
    );
    rm(&world, "n3", "echo1");
    backends(0);

    // With the agent down, ADD fails (the runtime would retry) and leaves
    // nothing: no container, no veth, no IP.
    world.lab("stop", "c1/n3");
    let err = lab(&[
        "lab",
        "run",
        "c1/n3",
        "--name",
        "down1",
        "--world",
        &world.name,
        "--",
        "sleep",
        "1000",
    ])
    .unwrap_err();
    assert!(err.contains("does not answer"), "{err}");
    let left = meshgate_lab::runtime::containers(&world.name, "c1/n3").unwrap();
    assert!(!left.contains(&"down1".to_string()), "{left:?}");
    let mine_n3: BTreeSet<String> = live
        .values()
        .filter(|(n, _)| n == "n3")
        .map(|(_, ip)| ip.clone())
        .collect();
    assert_eq!(
        ipam_held(&world, "n3"),
        mine_n3,
        "n3: an IP held after the failed ADD"
    );
    assert_eq!(
        pod_veths(&world, "n3"),
        mine_n3.len(),
        "n3: a veth left after the failed ADD"
    );
    eprintln!(
        "{} containers made, {} addresses used, {} live at the end",
        CHURN + NODES.len(),
        seen_ips.len(),
        live.len()
    );
}

#[test]
fn containers_in_two_federated_clusters_reach_each_other() {
    let yaml = meshgate_e2e::clusters("ctrfed", 2, 1).replace(
        "      - name: n1\n",
        "      - name: n1\n        runtime: containerd\n",
    );
    let world = World::up("ctrfed", &yaml);
    let mut ips = BTreeMap::new();
    for c in ["c1", "c2"] {
        let target = format!("{c}/n1");
        let said = lab(&[
            "lab",
            "run",
            &target,
            "--name",
            "box",
            "--world",
            &world.name,
        ])
        .unwrap_or_else(|e| panic!("lab run on {target}: {e}"));
        ips.insert(c, said.trim().rsplit(' ').next().unwrap().to_string());
    }
    let pod_c2 = world.ip("c2/n1-a");
    for (from, to) in [
        ("c1", ips["c2"].clone()),
        ("c2", ips["c1"].clone()),
        ("c1", pod_c2),
    ] {
        // The other cluster learns the container through federation.
        let reached = wait_until(Duration::from_secs(5), || {
            let out = meshgate_lab::runtime::exec(
                &world.name,
                &format!("{from}/n1"),
                "box",
                &["ping", "-c", "1", "-W", "1", &to],
            )
            .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
        });
        assert!(
            reached.is_some(),
            "the container on {from}/n1 never reached {to}"
        );
    }
}

#[test]
fn a_container_selected_by_an_egress_gateway_policy_leaves_through_the_gateway() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/egress.yaml");
    let yaml = std::fs::read_to_string(path).unwrap();
    let first_node = "      - name: n1\n        pods:\n          - {name: app1";
    assert!(yaml.contains(first_node), "{path} changed its first node");
    let yaml = yaml
        .replace("\nname: egress\n", "\nname: ctregr\n")
        .replacen(
            first_node,
            "      - name: n1\n        runtime: containerd\n        pods:\n          - {name: app1",
            1,
        );
    let world = World::up("ctregr", &yaml);
    // The external answers each connection with the source address it saw.
    let seen = |name: &str| {
        let mut said = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let out = meshgate_lab::runtime::exec(
                &world.name,
                "c1/n1",
                name,
                &["nc", "-w", "3", "203.0.113.10", "8080"],
            )
            .unwrap();
            said = String::from_utf8_lossy(&out.stdout).trim().to_string();
            !said.is_empty()
        });
        assert!(ok.is_some(), "{name} got no answer from the external");
        said
    };
    for (name, label) in [("sel1", "app=egress-client"), ("unsel1", "app=other")] {
        lab(&[
            "lab",
            "run",
            "c1/n1",
            "--name",
            name,
            "--label",
            label,
            "--world",
            &world.name,
        ])
        .unwrap_or_else(|e| panic!("lab run {name}: {e}"));
    }
    let sel = seen("sel1");
    assert!(
        sel == "203.0.113.50" || sel == "203.0.113.51",
        "the selected container left from {sel}, not a gateway's egress IP"
    );
    assert_eq!(
        seen("unsel1"),
        "198.18.1.10",
        "the unselected container leaves from its node"
    );
}
