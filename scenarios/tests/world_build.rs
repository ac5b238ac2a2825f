//! Root tier: builds a real world of namespaces (no agents), checks its
//! wiring with ping, and tears it down twice.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshgate_lab::plan::world_dir;

/// Tears the world down even when the test panics.
struct WorldGuard {
    name: String,
    file: PathBuf,
}

impl Drop for WorldGuard {
    fn drop(&mut self) {
        if let Err(e) = meshgate_lab::down(Some(&self.name)) {
            eprintln!("cleanup of world {} failed: {e}", self.name);
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn ping(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", ip])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn have_ping() -> bool {
    Command::new("ping")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn scenario(world: &str) -> String {
    format!(
        r#"
name: {world}
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        pods:
          - name: a
            labels: {{app: web}}
          - name: b
      - name: n2
        pods:
          - name: c
externals:
  - name: internet
    ip: 203.0.113.10
"#
    )
}

#[test]
#[ignore = "needs root (network namespaces, veth): cargo xtask test runs it"]
fn build_world_only_then_down_twice() {
    assert!(is_root(), "needs root (network namespaces, veth)");
    let world = format!("t{}", std::process::id() % 1_000_000);
    let file = std::env::temp_dir().join(format!("mg-lab-{world}.yaml"));
    std::fs::write(&file, scenario(&world)).expect("write scenario");
    let guard = WorldGuard {
        name: world.clone(),
        file: file.clone(),
    };

    let plan = meshgate_lab::build_world_only(Path::new(&file))
        .unwrap_or_else(|e| panic!("building world {world} failed: {e}"));
    assert!(meshgate_lab::worlds().contains(&world));
    let present = namespaces();
    for ns in plan.namespaces() {
        assert!(present.contains(&ns), "namespace {ns} missing after build");
    }
    assert!(world_dir(&world).join("world.json").is_file());

    let t = meshgate_lab::resolve(&format!("{world}:c1/b")).expect("resolve pod b");
    assert_eq!(t.ip.to_string(), "10.1.0.11");
    assert_eq!(
        meshgate_lab::ip(&format!("{world}:c1/n2"))
            .expect("ip of n2")
            .to_string(),
        "198.18.1.11"
    );

    if have_ping() {
        let a = format!("mg-{world}-c1-p-a");
        let n1 = format!("mg-{world}-c1-n-n1");
        assert!(ping(&a, "169.254.1.1"), "pod a cannot ping its gateway");
        assert!(
            ping(&a, "10.1.0.11"),
            "pod a cannot ping pod b on the same node"
        );
        assert!(
            ping(&n1, "198.18.1.11"),
            "node n1 cannot ping node n2 on the underlay"
        );
        assert!(
            ping(&n1, "198.18.1.2"),
            "node n1 cannot ping the discovery namespace"
        );
        assert!(
            ping(&n1, "203.0.113.10"),
            "node n1 cannot ping the external host"
        );
        assert!(
            !ping(&a, "10.1.1.10"),
            "pod a reached pod c on n2 without any agent"
        );
    } else {
        panic!("`ping` not found: install iputils-ping (cargo xtask deps does)");
    }

    let said = meshgate_lab::down(Some(&world)).expect("down");
    assert!(said.contains("is down"), "{said}");
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("mg-{world}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left after down: {left:?}");
    assert!(!world_dir(&world).exists(), "state dir left after down");

    let again = meshgate_lab::down(Some(&world)).expect("second down");
    assert!(again.contains("not up"), "{again}");
    drop(guard);
}

fn egress_scenario(world: &str) -> String {
    format!(
        r#"
name: {world}
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        pods:
          - name: a
      - name: g1
        roles: [egress-gateway]
        labels: {{egress: "true"}}
        egressIPs: [203.0.113.50, 203.0.113.51]
externals:
  - name: internet
    ip: 203.0.113.10
"#
    )
}

fn output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> String {
    let text = output(&["-n", ns, "-br", "link", "show", dev]);
    text.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "needs root (network namespaces, veth, nft): cargo xtask test runs it"]
fn egress_gateway_interface_and_pod_masquerade() {
    assert!(is_root(), "needs root (network namespaces, veth, nft)");
    assert!(have_ping(), "`ping` not found: install iputils-ping");
    let world = format!("e{}", std::process::id() % 1_000_000);
    let file = std::env::temp_dir().join(format!("mg-lab-{world}.yaml"));
    std::fs::write(&file, egress_scenario(&world)).expect("write scenario");
    let _guard = WorldGuard {
        name: world.clone(),
        file: file.clone(),
    };
    meshgate_lab::build_world_only(Path::new(&file))
        .unwrap_or_else(|e| panic!("building world {world} failed: {e}"));
    let (g1, x) = (
        format!("mg-{world}-c1-n-g1"),
        format!("mg-{world}-x-internet"),
    );
    let addrs = output(&["-n", &g1, "-br", "addr", "show", "eg0"]);
    assert!(
        addrs.contains("203.0.113.50/32")
            && addrs.contains("203.0.113.51/32")
            && addrs.contains("UP"),
        "eg0 of g1: {addrs}"
    );
    // The external reaches each egress IP, and learnt it at eg0's MAC, not eth0's.
    for ip in ["203.0.113.50", "203.0.113.51"] {
        assert!(ping(&x, ip), "the external cannot ping egress IP {ip}");
        let neigh = output(&["-n", &x, "neigh", "show", ip]);
        assert!(
            neigh.contains(&mac(&g1, "eg0")) && !neigh.contains(&mac(&g1, "eth0")),
            "ARP for {ip} answered by the wrong interface: {neigh} (eg0 {}, eth0 {})",
            mac(&g1, "eg0"),
            mac(&g1, "eth0")
        );
    }
    // Without agents a pod reaches an external through its node's masquerade.
    let pod = format!("mg-{world}-c1-p-a");
    assert!(ping(&pod, "203.0.113.10"), "pod a cannot ping the external");
    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("mg-{world}-c1-n-n1"),
            "nft",
            "list",
            "table",
            "ip",
            "mg_lab_masq",
        ])
        .output()
        .expect("nft runs");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("ip saddr 10.1.0.0/24 oifname \"eth0\"") && !rules.contains("packets 0 "),
        "the masquerade rule did not count the pod's ping: {rules}"
    );
}

#[test]
#[ignore = "needs root (ip netns): cargo xtask test runs it"]
fn down_of_unknown_world_succeeds() {
    assert!(is_root(), "needs root (ip netns)");
    let said = meshgate_lab::down(Some("nosuchworld9")).expect("down of nothing");
    assert!(said.contains("not up"), "{said}");
}
