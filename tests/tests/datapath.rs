//! End-to-end behaviour of the eBPF datapath (`datapath: ebpf`): pod traffic
//! between nodes travels in VXLAN whose VNI is the sending pod's identity,
//! inside WireGuard; the datapath survives agent restarts through its pins;
//! `lab down` leaves nothing behind. Each test has its own `dp*` world.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_e2e::vxlan::read_pcap_vxlan;
use meshgate_e2e::{clusters, one_cluster, parse_ping, wait_until, Capture, World};

const VXLAN_PORT: u16 = 4789;

/// `one_cluster` / `clusters` with the eBPF datapath for the whole world.
fn ebpf(yaml: String) -> String {
    let (first, rest) = yaml.split_once('\n').unwrap();
    format!("{first}\ndatapath: ebpf\n{rest}")
}

/// Where the lab pins a node's datapath, as the host sees it.
fn pin_dir(world: &str, cluster: &str, node: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/meshgate/lab/{world}/{cluster}-{node}"))
}

/// Waits until node `cluster/node` knows every pod of `pods` (by IP) and
/// returns IP -> identity from its ipcache.
fn identities(world: &World, cluster: &str, node: &str, ips: &[&str]) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(10), || {
        seen = world
            .ipcache(cluster, node)
            .into_iter()
            .map(|(ip, (_, id))| (ip, id))
            .collect();
        ips.iter().all(|ip| seen.contains_key(*ip))
    });
    assert!(
        ok.is_some(),
        "{cluster}/{node} never learned {ips:?}: {seen:?}"
    );
    seen
}

/// Attachments recorded for a node (`HOOK@IFACE`): TCX links pinned in
/// `links/`, or tc filters recorded in `tc/` (kernels before 6.6).
fn pinned_links(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = ["links", "tc"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).into_iter().flatten())
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `tc` on kernels before 6.6 (no TCX) or with `MESHGATE_TC_ATTACH=tc`,
/// else `tcx`.
fn expected_attach_mode() -> &'static str {
    if matches!(
        std::env::var("MESHGATE_TC_ATTACH").as_deref(),
        Ok("tc" | "netlink")
    ) {
        return "tc";
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut nums = release
        .trim()
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) >= (6, 6) {
        "tcx"
    } else {
        "tc"
    }
}

fn namespaces_of(world: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("mg-{world}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn pod_traffic_crosses_nodes_in_vxlan_with_the_source_identity_as_vni_inside_wireguard() {
    let name = "dpvni";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let a = world.ip("c1/n1-a"); // app=web
    let b = world.ip("c1/n2-b"); // app=db
    let ids = identities(&world, "c1", "n1", &[&a, &b]);
    let (id_a, id_b) = (ids[&a], ids[&b]);
    assert_ne!(
        id_a, id_b,
        "the pods need different identities for the test to mean anything"
    );

    // Pins and attachments made by the agents.
    let pins = pin_dir(name, "c1", "n1");
    assert_eq!(
        pinned_links(&pins),
        [
            "from_mesh@mg-vx0",
            "from_pod@pod0",
            "from_pod@pod1",
            "to_mesh@mg-vx0",
            "to_pod@pod0",
            "to_pod@pod1"
        ],
        "{}",
        pins.display()
    );
    let attach = world
        .status("c1", "n1")
        .datapath
        .expect("status.json shows the datapath")
        .attach;
    assert_eq!(
        attach,
        expected_attach_mode(),
        "the attach mode in status.json for this kernel"
    );

    let dir = meshgate_e2e::tempdir();
    let n1 = world.node_ns("c1", "n1");
    let inner = Capture::start_immediate(&n1, "mg-wg0", dir.path().join("wg.pcap"));
    let underlay = Capture::start_immediate(&n1, "eth0", dir.path().join("ul.pcap"));

    let s = world.ping("c1", "n1-a", &b, 5, "0.05");
    assert_eq!(s.received, 5, "n1-a -> n2-b over the eBPF datapath: {s:?}");
    // Full-size packets: pod MTU 1370 (1420 of WireGuard minus 50 of VXLAN), DF set.
    let big = world.in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "3", "-i", "0.1", "-W", "1", "-M", "do", "-s", "1342", &b,
        ],
    );
    let big = parse_ping(&String::from_utf8_lossy(&big.stdout));
    assert_eq!(big.received, 3, "1370-byte packets with DF: {big:?}");
    // A TCP exchange across nodes.
    let mut server = world.spawn_in_ns(
        &world.pod_ns("c1", "n2-b"),
        &["iperf3", "-s", "-1", "-p", "5201"],
    );
    std::thread::sleep(Duration::from_millis(400));
    let client = world.in_ns(
        &world.pod_ns("c1", "n1-a"),
        &["iperf3", "-c", &b, "-p", "5201", "-n", "2M"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        client.status.success(),
        "TCP (iperf3) across nodes failed: {}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );

    inner.stop_and_count(&[]);
    let packets = read_pcap_vxlan(&dir.path().join("wg.pcap"), VXLAN_PORT);
    let (a_ip, b_ip): (Ipv4Addr, Ipv4Addr) = (a.parse().unwrap(), b.parse().unwrap());
    let from_a: Vec<_> = packets.iter().filter(|p| p.inner_src == a_ip).collect();
    let from_b: Vec<_> = packets.iter().filter(|p| p.inner_src == b_ip).collect();
    eprintln!(
        "VXLAN in mg-wg0 of n1: {} packets ({} from n1-a, {} from n2-b)",
        packets.len(),
        from_a.len(),
        from_b.len()
    );
    assert!(
        from_a.len() >= 8,
        "n1-a's packets in VXLAN inside WireGuard: {packets:?}"
    );
    assert!(
        from_b.len() >= 8,
        "n2-b's packets in VXLAN inside WireGuard: {packets:?}"
    );
    for p in &from_a {
        assert_eq!(u64::from(p.vni), id_a, "VNI of a packet from n1-a: {p:?}");
        assert_eq!(p.inner_dst, b_ip);
    }
    for p in &from_b {
        assert_eq!(u64::from(p.vni), id_b, "VNI of a packet from n2-b: {p:?}");
    }
    // Outer addresses are the nodes' tunnel IPs.
    let (t1, t2) = (
        world.status("c1", "n1").tunnel_ip,
        world.status("c1", "n2").tunnel_ip,
    );
    assert!(
        from_a
            .iter()
            .all(|p| p.outer_src.to_string() == t1 && p.outer_dst.to_string() == t2),
        "outer {t1} -> {t2}: {from_a:?}"
    );
    // And on the wire only WireGuard: no pod address, no VXLAN in clear.
    underlay.assert_nothing_in_clear("net 10.1.0.0/16", 20);

    // from_pod enforces: a source address that is no endpoint is dropped,
    // counted per reason in status.json and shown by `lab status`.
    let pod_a = world.pod_ns("c1", "n1-a");
    let add = world.in_ns(
        &pod_a,
        &["ip", "addr", "add", "10.1.0.99/32", "dev", "eth0"],
    );
    assert!(add.status.success());
    let spoofed = world.in_ns(
        &pod_a,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.1",
            "-W",
            "1",
            "-I",
            "10.1.0.99",
            &b,
        ],
    );
    let spoofed = parse_ping(&String::from_utf8_lossy(&spoofed.stdout));
    assert_eq!(
        spoofed.received, 0,
        "an unknown source must not pass: {spoofed:?}"
    );
    let mut drops = BTreeMap::new();
    wait_until(Duration::from_secs(3), || {
        drops = world.status("c1", "n1").datapath.unwrap().drops;
        drops.get("unknown-source").is_some_and(|n| *n >= 3)
    })
    .unwrap_or_else(|| panic!("unknown-source drops not counted in status.json: {drops:?}"));
    let status = meshgate_e2e::meshgate(&["lab", "status", name]);
    assert!(status.contains("drops: unknown-source"), "{status}");

    // lab down leaves no pins, links or namespaces.
    drop(world);
    assert!(
        !Path::new(&format!("/sys/fs/bpf/meshgate/lab/{name}")).exists(),
        "lab down left pins under /sys/fs/bpf/meshgate/lab/{name}"
    );
    assert_eq!(namespaces_of(name), Vec::<String>::new());
}

#[test]
fn agent_restart_keeps_the_pinned_datapath_forwarding() {
    let name = "dprestart";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let to = world.ip("c1/n2-b");
    identities(&world, "c1", "n1", &[&to]);
    let pins = pin_dir(name, "c1", "n2");
    let before = pinned_links(&pins);
    let old_pid = world.status("c1", "n2").pid;
    let ping = world.spawn_in_ns(
        &world.pod_ns("c1", "n1-a"),
        &[
            "ping", "-n", "-q", "-c", "500", "-i", "0.01", "-W", "1", &to,
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    world.lab("restart", "c1/n2");
    let out = ping.wait_with_output().unwrap();
    let s = parse_ping(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "agent restart with the eBPF datapath: lost {} of {} pings",
        s.lost(),
        s.sent
    );
    // The new agent reports once it has swapped its programs in (on a slow
    // machine, the kernel lab's emulated VM, after the ping has ended).
    let mut st = world.status("c1", "n2");
    let took = wait_until(Duration::from_secs(120), || {
        st = world.status("c1", "n2");
        st.pid != old_pid && st.datapath.as_ref().is_some_and(|d| d.replaced > 0)
    });
    assert!(
        took.is_some(),
        "the restarted agent did not report its swapped programs within 120 s: pid {} (was {old_pid}), {:?}",
        st.pid,
        st.datapath
    );
    assert_eq!(s.sent, 500);
    assert!(
        s.lost() * 50 < s.sent,
        "agent restart lost {} of {} pings (2% allowed)",
        s.lost(),
        s.sent
    );
    assert_eq!(
        pinned_links(&pins),
        before,
        "the restarted agent reused the pins"
    );
    let dp = st.datapath.expect("status.json shows the datapath");
    assert_eq!(
        (dp.created, dp.replaced, dp.removed),
        (0, 6, 0),
        "the new agent swapped its programs into the 6 pinned links: {dp:?}"
    );
    assert!(dp.drops.is_empty(), "no drops: {:?}", dp.drops);
    // And traffic keeps flowing after the restart.
    let s = world.ping("c1", "n2-b", &world.ip("c1/n1-a"), 3, "0.05");
    assert_eq!(s.received, 3, "after the restart: {s:?}");
}

#[test]
fn pods_in_two_clusters_reach_each_other_over_the_ebpf_datapath() {
    let name = "dpfed";
    let world = World::up(name, &ebpf(clusters(name, 2, 1)));
    let a = world.ip("c1/n1-a");
    let b = world.ip("c2/n1-a");
    let ids = identities(&world, "c1", "n1", &[&a, &b]);
    let dir = meshgate_e2e::tempdir();
    let wg = Capture::start_immediate(
        &world.node_ns("c1", "n1"),
        "mg-wg0",
        dir.path().join("wg.pcap"),
    );
    let s = world.ping("c1", "n1-a", &b, 5, "0.05");
    assert_eq!(s.received, 5, "c1/n1-a -> c2/n1-a: {s:?}");
    let s = world.ping("c2", "n1-a", &a, 5, "0.05");
    assert_eq!(s.received, 5, "c2/n1-a -> c1/n1-a: {s:?}");
    wg.stop_and_count(&[]);
    let packets = read_pcap_vxlan(&dir.path().join("wg.pcap"), VXLAN_PORT);
    let b_ip: Ipv4Addr = b.parse().unwrap();
    let from_b: Vec<_> = packets.iter().filter(|p| p.inner_src == b_ip).collect();
    assert!(
        from_b.len() >= 10,
        "c2's packets in VXLAN in c1/n1's mg-wg0: {packets:?}"
    );
    assert_eq!(ids[&b] >> 16, 2, "an identity of cluster 2");
    assert!(
        from_b.iter().all(|p| u64::from(p.vni) == ids[&b]),
        "VNI = c2/n1-a's identity {}: {from_b:?}",
        ids[&b]
    );
}

#[test]
fn a_restarted_agent_reconciles_gone_veths_and_stale_map_entries() {
    let name = "dprecon";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let (a, b) = (world.ip("c1/n2-a"), world.ip("c1/n2-b"));
    identities(&world, "c1", "n2", &[&a, &b, &world.ip("c1/n1-a")]);
    let pins = pin_dir(name, "c1", "n2");
    assert!(pinned_links(&pins).contains(&"from_pod@pod1".to_string()));

    // While the agent runs: n2-b's veth goes away, and an entry nobody
    // asked for appears in the pinned ipcache.
    let n2 = world.node_ns("c1", "n2");
    let out = world.in_ns(&n2, &["ip", "link", "del", "pod1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stale: Ipv4Addr = "10.1.99.99".parse().unwrap();
    let mut maps = meshgate_ebpf::Maps::open_pinned(&pins.join("maps")).unwrap();
    maps.ipcache
        .upsert(
            stale,
            32,
            meshgate_ebpf::IpcacheEntry::remote(0x01_0999, "100.64.9.9".parse().unwrap()),
        )
        .unwrap();

    world.lab("restart", "c1/n2");
    let pruned = wait_until(Duration::from_secs(10), || {
        maps.ipcache.lookup(stale).unwrap().is_none()
    });
    assert!(pruned.is_some(), "the stale ipcache entry was not removed");
    assert_eq!(
        pinned_links(&pins),
        [
            "from_mesh@mg-vx0",
            "from_pod@pod0",
            "to_mesh@mg-vx0",
            "to_pod@pod0"
        ],
        "from_pod and to_pod of the deleted veth were unpinned"
    );
    let dp = world.status("c1", "n2").datapath.unwrap();
    assert_eq!((dp.created, dp.replaced, dp.removed), (0, 4, 2), "{dp:?}");
    // The other pod keeps its path, and its entry is the agent's.
    let s = world.ping("c1", "n1-a", &a, 3, "0.05");
    assert_eq!(s.received, 3, "n1-a -> n2-a after the restart: {s:?}");
    let a_ip: Ipv4Addr = a.parse().unwrap();
    assert!(maps.ipcache.lookup(a_ip).unwrap().is_some_and(|e| e.local));
}

#[test]
fn leaving_the_mesh_removes_the_datapath() {
    let name = "dpleave";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let pins = pin_dir(name, "c1", "n2");
    assert!(!pinned_links(&pins).is_empty());
    world.lab("stop", "c1/n2");
    let n2 = world.node_ns("c1", "n2");
    let show = |args: &[&str]| {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        String::from_utf8_lossy(&world.in_ns(&n2, &argv).stdout).into_owned()
    };
    assert!(!pins.exists(), "pins left in {}", pins.display());
    assert!(!show(&["link", "show"]).contains("mg-vx0"), "mg-vx0 left");
    assert!(
        !show(&["rule", "show"]).contains("28007"),
        "routing rule left"
    );
    let nft = world.in_ns(&n2, &["nft", "list", "tables"]);
    assert!(
        !String::from_utf8_lossy(&nft.stdout).contains("meshgate_vxlan"),
        "VXLAN filter table left"
    );
    let tc = show(&["link", "show", "pod0"]);
    assert!(tc.contains("pod0"), "the pod's veth itself stays: {tc}");
    let filters = world.in_ns(&n2, &["tc", "filter", "show", "dev", "pod0", "ingress"]);
    let filters = String::from_utf8_lossy(&filters.stdout);
    assert!(
        !filters.contains("mg_from_pod"),
        "a tc filter left on the pod's veth: {filters}"
    );
    // n1 still runs its datapath.
    assert!(!pinned_links(&pin_dir(name, "c1", "n1")).is_empty());
}

#[test]
fn vxlan_sent_in_clear_on_the_underlay_does_not_reach_pods() {
    let name = "dpforge";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let target = world.ip("c1/n2-a");
    let n2_underlay = world.ip("c1/n2");
    let ids = identities(&world, "c1", "n2", &[&target, &world.ip("c1/n1-b")]);
    let forged_identity = ids[&world.ip("c1/n1-b")].to_string();
    // A host on the underlay (the discovery's namespace) sends VXLAN to
    // n2's UDP 4789 in clear, claiming n1-b's identity in the VNI.
    let attacker = world.discovery_ns("c1");
    for args in [
        vec![
            "ip",
            "link",
            "add",
            "dpatk",
            "type",
            "vxlan",
            "id",
            &forged_identity,
            "remote",
            &n2_underlay,
            "dstport",
            "4789",
            "dev",
            "eth0",
        ],
        vec!["ip", "addr", "add", "10.1.0.99/32", "dev", "dpatk"],
        vec!["ip", "link", "set", "dpatk", "up"],
        vec!["ip", "route", "add", &target, "dev", "dpatk"],
        vec![
            "ip",
            "neigh",
            "add",
            &target,
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "dpatk",
        ],
    ] {
        let out = world.in_ns(&attacker, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = meshgate_e2e::tempdir();
    let pod = Capture::start_immediate(
        &world.pod_ns("c1", "n2-a"),
        "eth0",
        dir.path().join("pod.pcap"),
    );
    let ul = Capture::start_immediate(
        &world.node_ns("c1", "n2"),
        "eth0",
        dir.path().join("ul.pcap"),
    );
    world.in_ns(
        &attacker,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "5",
            "-i",
            "0.1",
            "-W",
            "1",
            "-I",
            "10.1.0.99",
            &target,
        ],
    );
    let sent = ul.stop_and_count(&["udp dst port 4789"]);
    assert!(
        sent[0] >= 5,
        "the forged VXLAN reached n2's underlay interface: {sent:?}"
    );
    let reached = pod.stop_and_count(&["icmp and src host 10.1.0.99"]);
    assert_eq!(
        reached[0], 0,
        "VXLAN sent in clear on the underlay reached the pod with a forged identity"
    );
    let rules = world.in_ns(
        &world.node_ns("c1", "n2"),
        &["nft", "list", "chain", "inet", "meshgate_vxlan", "input"],
    );
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("iifname != \"mg-wg0\"") && !rules.contains("packets 0 "),
        "the VXLAN filter dropped them: {rules}"
    );
    // Pod traffic from the other node (VXLAN out of WireGuard) still passes.
    let s = world.ping("c1", "n1-b", &target, 3, "0.05");
    assert_eq!(s.received, 3, "{s:?}");
}

#[test]
fn pod_traffic_that_bypasses_vxlan_is_dropped_and_a_restart_restores_the_path() {
    let name = "dpbypass";
    let world = World::up(name, &ebpf(one_cluster(name, 2)));
    let to = world.ip("c1/n2-b");
    identities(&world, "c1", "n1", &[&to, &world.ip("c1/n1-a")]);
    let s = world.ping("c1", "n1-a", &to, 3, "0.05");
    assert_eq!(s.received, 3, "through VXLAN: {s:?}");

    // n1 loses its rule into table 28007: its pod traffic now takes the
    // plain route straight into WireGuard, without an identity.
    let n1 = world.node_ns("c1", "n1");
    let out = world.in_ns(&n1, &["ip", "rule", "del", "pref", "28007"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = world.ping("c1", "n1-a", &to, 3, "0.05");
    assert_eq!(
        s.received, 0,
        "pod traffic around VXLAN must not reach the pod: {s:?}"
    );
    let chain = world.in_ns(
        &world.node_ns("c1", "n2"),
        &["nft", "list", "chain", "inet", "meshgate_vxlan", "forward"],
    );
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert!(
        chain.contains("ip daddr 10.1.1.0/24") && !chain.contains("packets 0 "),
        "n2 dropped them as they came out of WireGuard: {chain}"
    );

    // The restarted agent puts its rule back.
    world.lab("restart", "c1/n1");
    let back = wait_until(Duration::from_secs(10), || {
        world.ping("c1", "n1-a", &to, 1, "0.05").received == 1
    });
    assert!(
        back.is_some(),
        "the restarted agent did not restore the VXLAN path"
    );
}
