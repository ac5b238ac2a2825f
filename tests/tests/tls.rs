//! Mutual TLS between agents and discovery in a lab world: the control
//! plane on the underlay is TLS (no node data in clear), and discovery
//! refuses agents with another node's or cluster's certificate, clients
//! without a certificate, and plaintext clients, saying why.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshgate_e2e::{meshgate, meshgate_bin, one_cluster, wait_until, Capture, World};

/// Runs an agent by hand in `ns` until its log says why discovery refused
/// it (or 15 s pass), then kills it; returns its log.
fn refused_agent(world: &World, ns: &str, node: &str, tls: &[String], dir: &Path) -> String {
    let log = dir.join(format!("{node}.log"));
    let state = dir.join(node);
    let mut argv: Vec<String> = [
        "agent",
        "--node",
        node,
        "--cluster",
        "c1",
        "--cluster-id",
        "1",
        "--discovery",
        &world.discovery_url("c1"),
        "--underlay-ip",
        "198.18.1.2",
        "--pod-cidr",
        "10.1.200.0/24",
        "--listen-port",
        "51999",
        "--interface",
        "mgt-rogue0",
        "--backend",
        "userspace",
        "--state-dir",
        state.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend_from_slice(tls);
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(meshgate_bin())
        .args(&argv)
        .env("MESHGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Wait for a refusal that gives its reason: on a loaded machine an
    // attempt may first time out, and the agent retries.
    let seen = wait_until(Duration::from_secs(15), || {
        text().lines().any(|l| {
            l.contains("discovery unreachable")
                && !(l.contains("cannot connect to discovery") && l.contains("no answer within"))
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = text();
    assert!(
        seen.is_some(),
        "the agent was not refused within 15 s:\n{out}"
    );
    assert!(
        !out.contains("registered with discovery"),
        "the agent got registered:\n{out}"
    );
    out
}

#[test]
fn the_control_plane_is_mutual_tls() {
    let world = World::up("e2e-tls", &one_cluster("e2e-tls", 2));
    let dir = meshgate_e2e::tempdir();

    // The world's CA signs one more certificate: an agent of cluster c2.
    let certs = world.certs_dir();
    let made = meshgate(&[
        "certs",
        "--out",
        certs.to_str().unwrap(),
        "--mesh",
        "e2e-tls",
        "--agent",
        "c2/n1",
    ]);
    assert!(made.contains("existing CA"), "{made}");

    // Capture the underlay while n1 re-registers and reports its pods.
    let cap = Capture::start(
        &world.node_ns("c1", "n1"),
        "eth0",
        dir.path().join("n1.pcap"),
    );
    world.lab("restart", "c1/n1");
    let back = wait_until(Duration::from_secs(10), || {
        let st = world.status("c1", "n1");
        st.discovery_connected && st.pid != 0
    });
    assert!(back.is_some(), "n1 did not reconnect over TLS");
    std::thread::sleep(Duration::from_secs(1));
    let file = cap.file.clone();
    let counts = cap.stop_and_count(&["tcp port 7100"]);
    assert!(
        counts[0] > 5,
        "only {} discovery packets captured",
        counts[0]
    );
    let ascii = Command::new("tcpdump")
        .args(["-A", "-nr"])
        .arg(&file)
        .args(["tcp", "port", "7100"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    // Payload only: leave out tcpdump's header line of each packet.
    let ascii: String = String::from_utf8_lossy(&ascii.stdout)
        .lines()
        .filter(|l| !(l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" IP ")))
        .collect::<Vec<_>>()
        .join("\n");
    for clear in ["n1-a", "198.18.1.10", "10.1.0.0/24", "app"] {
        assert!(
            !ascii.contains(clear),
            "{clear:?} crossed the underlay in clear on TCP 7100"
        );
    }

    // Every agent is connected; `meshgate nodes` over TLS sees both nodes.
    let mut argv = vec![
        meshgate_bin().display().to_string(),
        "nodes".to_string(),
        "--json".to_string(),
    ];
    argv.extend(world.nodes_flags("c1", "c1/n2"));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = world.in_ns(&world.node_ns("c1", "n2"), &argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"n1\"") && stdout.contains("\"n2\""),
        "meshgate nodes over TLS: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Agents started by hand in the discovery's namespace.
    let ns = format!("mg-{}-c1-d", world.name);
    let tls = |agent: &str| {
        let mut f = world.tls_flags("c1", agent);
        f.truncate(6); // default server name
        f
    };
    let log = refused_agent(&world, &ns, "n1", &tls("c2/n1"), dir.path());
    assert!(
        log.contains("PermissionDenied") || log.contains("not allowed to act for node c1/n1"),
        "{log}"
    );
    assert!(
        log.contains("certificate is for c2/n1 of cluster c2") && log.contains("serves cluster c1"),
        "{log}"
    );

    let log = refused_agent(&world, &ns, "n9", &tls("c1/n1"), dir.path());
    assert!(
        log.contains("certificate is for c1/n1, but the request is for c1/n9"),
        "{log}"
    );

    let mut ca_only = tls("c1/n1");
    ca_only.truncate(2);
    let log = refused_agent(&world, &ns, "n8", &ca_only, dir.path());
    assert!(log.contains("requires a client certificate"), "{log}");

    // A plaintext client gets nothing.
    let plain = format!("http://{}:7100", world.ip("c1/discovery"));
    let out = world.in_ns(
        &ns,
        &[
            meshgate_bin().to_str().unwrap(),
            "nodes",
            "--discovery",
            &plain,
        ],
    );
    assert!(
        !out.status.success(),
        "a plaintext client was served: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The real agents were never disturbed.
    for n in ["n1", "n2"] {
        assert!(
            world.status("c1", n).discovery_connected,
            "{n} lost discovery"
        );
    }
}
