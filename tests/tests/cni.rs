//! `meshgate-cni` driven as a container runtime drives it (as `cnitool`
//! does: the CNI environment, the network config on stdin, in the node's
//! network namespace), against a running world: eBPF datapath in strict
//! mode, one cluster of two nodes, a policy that lets only `app: client`
//! reach the web pods. Pods are added at run time into fresh network
//! namespaces, with `host-local` IPAM (containernetworking-plugins).
//! Real packets, real ipcaches; the CNI error codes by the spec.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use meshgate_e2e::{meshgate_bin, parse_ping, wait_until, World};
use serde_json::Value;

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
        pods:
          - {name: web1, labels: {app: web}}
      - name: n2
        pods:
          - {name: web2, labels: {app: web}}
          - {name: db2, labels: {app: db}}
          - {name: pay2, labels: {app: pay}}
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web-from-clients, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: pay-from-payments, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: pay}}
      ingress:
        - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: payments}}]
"#;

const IPAM_DIR: &str = "/usr/lib/cni";

fn plugin() -> PathBuf {
    let p = meshgate_bin().with_file_name("meshgate-cni");
    assert!(
        p.is_file(),
        "{} is missing: `cargo build -p meshgate-gateway` builds it",
        p.display()
    );
    p
}

/// A network namespace for one container, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        Netns(name.to_string())
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Cni {
    node_ns: String,
    conf: String,
}

impl Cni {
    fn new(world: &World, node: &str, ipam_dir: &Path) -> Cni {
        let st = world.status("c1", node);
        let socket = format!("/run/meshgate/lab/{}/c1/nodes/{node}/cni.sock", world.name);
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "meshgate",
            "type": "meshgate-cni",
            "mtu": 1370,
            "agentSocket": socket,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": st.pod_cidr, "rangeStart": range(&st.pod_cidr, 200), "rangeEnd": range(&st.pod_cidr, 250)}]],
                "dataDir": ipam_dir,
            },
        });
        Cni {
            node_ns: world.node_ns("c1", node),
            conf: conf.to_string(),
        }
    }

    /// Runs the plugin in the node's namespace.
    fn call(&self, command: &str, id: &str, netns: &str, args: &str, stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(plugin())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", IPAM_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, command: &str, id: &str, netns: &str, args: &str) -> Value {
        let out = self.call(command, id, netns, args, &self.conf);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "meshgate-cni {command} {id}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {text}"))
        }
    }

    /// The CNI error code of a failing call, checked to be the spec's JSON.
    fn error(&self, command: &str, id: &str, netns: &str, stdin: &str) -> (u64, String) {
        let out = self.call(command, id, netns, "", stdin);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!out.status.success(), "{command} {id} should fail: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a CNI error is JSON on stdout ({e}): {text}"));
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        (v["code"].as_u64().unwrap(), text)
    }
}

/// The `n`th address of a /24-or-larger CIDR's first /24.
fn range(cidr: &str, n: u8) -> String {
    let base: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
    let o = base.octets();
    format!("{}.{}.{}.{n}", o[0], o[1], o[2])
}

fn ping_from(ns: &str, to: &str, count: u32) -> u32 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
            to,
        ])
        .output()
        .unwrap();
    parse_ping(&String::from_utf8_lossy(&out.stdout)).received
}

fn ip_of(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn cni_adds_and_deletes_pods_at_run_time_with_identity_and_policy_from_the_first_packet() {
    let world = World::up("cnie", &SCENARIO.replace("NAME", "cnie"));
    let ipam = meshgate_e2e::tempdir();
    let cni = Cni::new(&world, "n1", ipam.path());
    let labels = format!(
        "/run/meshgate/lab/{}/c1/nodes/n1/pod-labels.yaml",
        world.name
    );
    std::fs::write(
        &labels,
        "default/client-1:\n  labels: {app: client}\ndefault/payer-1:\n  serviceAccount: payments\n",
    )
    .unwrap();
    let web2 = world.ip("c1/web2");
    let db2 = world.ip("c1/db2");

    // VERSION, as the runtime asks first.
    let v = cni.ok("VERSION", "", "", "");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("1.0.0")),
        "{v}"
    );

    // ADD: the result names the pod's address; it is this node's, and the
    // identity is the agent's.
    let a = Netns::new("mgcni-a");
    let added = cni.ok(
        "ADD",
        "ctr-a",
        &a.path(),
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client-1",
    );
    let ip_a = ip_of(&added);
    assert!(
        added["meshgate"]["identity"].as_u64().unwrap() > 0,
        "{added}"
    );
    assert_eq!(added["routes"][0]["gw"], "169.254.1.1", "{added}");
    // The pod's MTU (the eBPF datapath's, from the config) on both ends.
    let veth_a = added["interfaces"][0]["name"].as_str().unwrap().to_string();
    for (ns, dev) in [
        (a.0.as_str(), "eth0"),
        (cni.node_ns.as_str(), veth_a.as_str()),
    ] {
        let out = Command::new("ip")
            .args(["-n", ns, "link", "show", dev])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("mtu 1370"), "{ns} {dev}: {text}");
    }
    // The first packet passes: by the time ADD returned, the pod had its
    // identity and from_pod. One ping, no retry.
    assert_eq!(
        ping_from(&a.0, &web2, 1),
        1,
        "the new client pod's first ping to web2"
    );
    // The other node holds the pod.
    assert!(
        world.ipcache("c1", "n2").contains_key(&ip_a),
        "n2's ipcache lacks {ip_a}"
    );

    // A pod without the client label: the policy keeps it from web2 from
    // its first packet, and db2 (no policy) answers.
    let b = Netns::new("mgcni-b");
    let added_b = cni.ok(
        "ADD",
        "ctr-b",
        &b.path(),
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=other-1",
    );
    let ip_b = ip_of(&added_b);
    assert_ne!(ip_a, ip_b, "host-local handed one address out twice");
    assert_eq!(
        ping_from(&b.0, &web2, 2),
        0,
        "an unlabeled pod reached web2"
    );
    assert_eq!(
        ping_from(&b.0, &db2, 1),
        1,
        "the unlabeled pod's first ping to db2"
    );
    // Remote pods reach the new pod back through the mesh.
    assert_eq!(world.ping("c1", "db2", &ip_b, 1, "0.1").received, 1);

    // A service account from the label source: a policy selecting by it
    // lets the payer in, and not the client (service account `default`).
    let pay2 = world.ip("c1/pay2");
    let p = Netns::new("mgcni-p");
    let added_p = cni.ok(
        "ADD",
        "ctr-p",
        &p.path(),
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=payer-1",
    );
    assert_eq!(
        ping_from(&p.0, &pay2, 1),
        1,
        "the payments pod's first ping to pay2"
    );
    assert_eq!(
        ping_from(&a.0, &pay2, 2),
        0,
        "client-1 (service account default) reached pay2"
    );
    cni.ok("DEL", "ctr-p", &p.path(), "");
    assert_ne!(ip_of(&added_p), ip_a);

    // CHECK verifies what ADD made.
    cni.ok("CHECK", "ctr-a", &a.path(), "");

    // The spec's errors.
    let (code, text) = cni.error("ADD", "ctr-a", &a.path(), &cni.conf);
    assert_eq!(code, 100, "a duplicate ADD: {text}");
    assert_eq!(cni.error("ADD", "ctr-x", &a.path(), "{not json").0, 6);
    let old = cni.conf.replace("\"1.0.0\"", "\"0.2.0\"");
    assert_eq!(cni.error("ADD", "ctr-x", &a.path(), &old).0, 1);
    let (code, text) = cni.error("ADD", "ctr-x", "/var/run/netns/mgcni-none", &cni.conf);
    assert_eq!(code, 3, "a missing netns: {text}");

    // DEL: the pod leaves every ipcache, its veth and address go; DEL again
    // is no error.
    cni.ok("DEL", "ctr-a", &a.path(), "");
    let gone = wait_until(Duration::from_secs(2), || {
        !world.ipcache("c1", "n2").contains_key(&ip_a)
    });
    assert!(
        gone.is_some(),
        "{ip_a} is still in n2's ipcache 2 s after DEL"
    );
    let veth = added["interfaces"][0]["name"].as_str().unwrap();
    let link = Command::new("ip")
        .args(["netns", "exec", &cni.node_ns, "ip", "link", "show", veth])
        .output()
        .unwrap();
    assert!(!link.status.success(), "{veth} is still on n1 after DEL");
    assert!(
        !ipam.path().join("meshgate").join(&ip_a).exists(),
        "host-local still holds {ip_a}"
    );
    cni.ok("DEL", "ctr-a", &a.path(), "");

    // An agent restart keeps the CNI pods (pods.json): ctr-b still
    // reaches db2 and is still in n2's ipcache, and DEL works after it.
    world.lab("restart", "c1/n1");
    let back = wait_until(Duration::from_secs(10), || ping_from(&b.0, &db2, 1) == 1);
    assert!(
        back.is_some(),
        "ctr-b lost its connectivity across the agent restart"
    );
    assert!(world.ipcache("c1", "n2").contains_key(&ip_b));
    cni.ok("DEL", "ctr-b", &b.path(), "");

    // With the agent down, ADD fails as "try again later" and leaves
    // nothing: no veth, no address held.
    world.lab("stop", "c1/n1");
    let c = Netns::new("mgcni-c");
    let (code, text) = cni.error("ADD", "ctr-c", &c.path(), &cni.conf);
    assert_eq!(code, 11, "ADD with the agent down: {text}");
    let held: Vec<_> = std::fs::read_dir(ipam.path().join("meshgate"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        held.iter().all(|n| !n.to_string_lossy().starts_with("10.")),
        "addresses still held after a failed ADD: {held:?}"
    );
}

#[test]
fn the_endpoints_file_is_followed_at_run_time() {
    let world = World::up("cnif", &SCENARIO.replace("NAME", "cnif"));
    let st = world.status("c1", "n1");
    let ip = range(&st.pod_cidr, 77);
    let node_ns = world.node_ns("c1", "n1");
    // A pod made by hand, as the lab makes its pods: a veth, its /32, the
    // gateway route, proxy ARP and the node's /32 route.
    let pod = Netns::new("mgcnif-p");
    let sh = |ns: &str, cmd: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
    };
    sh(
        &node_ns,
        "ip link add filepod type veth peer name eth0 netns mgcnif-p",
    );
    sh(&pod.0, &format!("ip link set eth0 mtu 1370 up && ip addr add {ip}/32 dev eth0 && ip route add 169.254.1.1 dev eth0 scope link && ip route add default via 169.254.1.1 dev eth0 onlink"));
    sh(&node_ns, &format!("sysctl -qw net.ipv4.conf.filepod.proxy_arp=1 net.ipv4.conf.filepod.rp_filter=0 && ip link set filepod mtu 1370 up && ip route add {ip}/32 dev filepod"));
    let file = format!(
        "/run/meshgate/lab/{}/c1/nodes/n1/endpoints.yaml",
        world.name
    );
    let before = std::fs::read_to_string(&file).unwrap();
    let entry = format!("- name: filepod\n  namespace: default\n  ip: {ip}\n  labels: {{app: client}}\n  interface: filepod\n");
    std::fs::write(&file, format!("{before}{entry}")).unwrap();
    let there = wait_until(Duration::from_secs(5), || {
        world.ipcache("c1", "n2").contains_key(&ip)
    });
    assert!(
        there.is_some(),
        "n2 never learned {ip} from n1's endpoints file"
    );
    let web2 = world.ip("c1/web2");
    let reached = wait_until(Duration::from_secs(5), || ping_from(&pod.0, &web2, 1) == 1);
    assert!(
        reached.is_some(),
        "the file's new client pod never reached web2"
    );
    // A broken file changes nothing.
    std::fs::write(&file, "- name: [broken\n").unwrap();
    let log = format!("/run/meshgate/lab/{}/c1/nodes/n1/agent.log", world.name);
    let refused = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the endpoints file is refused")
    });
    assert!(
        refused.is_some(),
        "the agent never said it refused the broken file"
    );
    assert!(
        world.ipcache("c1", "n2").contains_key(&ip),
        "a broken file removed {ip}"
    );
    // Taken out of the file: gone from the other node.
    std::fs::write(&file, &before).unwrap();
    let gone = wait_until(Duration::from_secs(5), || {
        !world.ipcache("c1", "n2").contains_key(&ip)
    });
    assert!(
        gone.is_some(),
        "{ip} stayed in n2's ipcache after leaving the file"
    );
}
