//! Identity policy enforced by the eBPF datapath in a running mesh
//! (`scenarios/policy.yaml`: two clusters of two nodes, policies given to
//! every agent with `--policy`). Real packets between pod namespaces: TCP
//! connects (`mg-probe`, a test binary of this crate) and pings. The expected
//! verdict of each pod pair is worked out here from what the policies say
//! ([`allowed`]), and every pair is checked. Each test has its own `pol*`
//! world.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshgate_e2e::{meshgate, meshgate_output, wait_until, Procs, World, TCP_PROBE_WAIT_MS};

const PROBE: &str = env!("CARGO_BIN_EXE_mg-probe");
const TCP: u8 = 6;
const ICMP: u8 = 1;

/// A pod of the scenario: cluster, name, its `app` label.
#[derive(Clone, Copy, Debug)]
struct Pod {
    cluster: &'static str,
    name: &'static str,
    app: &'static str,
}

const PODS: [Pod; 7] = [
    Pod {
        cluster: "c1",
        name: "w1",
        app: "web",
    },
    Pod {
        cluster: "c1",
        name: "k1",
        app: "client",
    },
    Pod {
        cluster: "c1",
        name: "d2",
        app: "db",
    },
    Pod {
        cluster: "c1",
        name: "x2",
        app: "other",
    },
    Pod {
        cluster: "c2",
        name: "w3",
        app: "web",
    },
    Pod {
        cluster: "c2",
        name: "d3",
        app: "db",
    },
    Pod {
        cluster: "c2",
        name: "k4",
        app: "client",
    },
];

fn pod(name: &str) -> Pod {
    *PODS.iter().find(|p| p.name == name).unwrap()
}

/// What `scenarios/policy.yaml`'s policies say about `s` opening a flow to
/// `d` (`db_web_port` is the port db accepts from web: 5432, or 5433 after
/// the run-time change). Unselected directions allow everything.
fn allowed(s: Pod, d: Pod, proto: u8, port: u16, db_web_port: u16) -> bool {
    // client-egress: only TCP 5432 to db of its own cluster or of c1.
    let egress = s.app != "client"
        || (d.app == "db"
            && proto == TCP
            && port == 5432
            && (d.cluster == s.cluster || d.cluster == "c1"));
    let ingress = match d.app {
        // db-ingress: TCP from web of its own cluster, from client of c2.
        "db" => {
            proto == TCP
                && ((s.app == "web" && s.cluster == d.cluster && port == db_web_port)
                    || (s.app == "client" && s.cluster == "c2" && port == 5432))
        }
        // web-ingress (NetworkPolicy, peers of its own cluster only): TCP 80
        // from web and client.
        "web" => {
            proto == TCP
                && port == 80
                && s.cluster == d.cluster
                && matches!(s.app, "web" | "client")
        }
        _ => true,
    };
    egress && ingress
}

fn scenario(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/policy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("\nname: policy\n"));
    text.replace("\nname: policy\n", &format!("\nname: {name}\n"))
}

fn probe_cmd(world: &World, p: Pod, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &world.pod_ns(p.cluster, p.name), PROBE])
        .args(args);
    c
}

/// TCP echo servers on 80, 5432 and 5433 in every pod.
fn serve_everywhere(world: &World) -> Procs {
    let mut procs = Procs(Vec::new());
    for p in PODS {
        let child = probe_cmd(world, p, &["serve", "80,5432,5433"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.0.push(child);
    }
    std::thread::sleep(Duration::from_millis(300));
    procs
}

/// Whether `s` gets a TCP connection to `d`:`port` with an echoed byte.
fn tcp(
    world: &World,
    ips: &std::collections::BTreeMap<&str, String>,
    s: Pod,
    d: Pod,
    port: u16,
) -> bool {
    probe_cmd(
        world,
        s,
        &[
            "connect",
            &ips[d.name],
            &port.to_string(),
            TCP_PROBE_WAIT_MS,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .unwrap()
    .success()
}

/// [`tcp`] for a flow that should pass: one retry, as in the matrix.
fn tcp_allowed(
    world: &World,
    ips: &std::collections::BTreeMap<&str, String>,
    s: Pod,
    d: Pod,
    port: u16,
) -> bool {
    tcp(world, ips, s, d, port) || tcp(world, ips, s, d, port)
}

fn ping(world: &World, ips: &std::collections::BTreeMap<&str, String>, s: Pod, d: Pod) -> bool {
    world
        .ping(s.cluster, s.name, &ips[d.name], 1, "0.2")
        .received
        == 1
}

fn ips(world: &World) -> std::collections::BTreeMap<&'static str, String> {
    PODS.iter()
        .map(|p| (p.name, world.ip(&format!("{}/{}", p.cluster, p.name))))
        .collect()
}

/// Waits until every agent has applied the policy over every identity of
/// both clusters (the imported ones come through federation).
fn wait_applied(world: &World) {
    let nodes = [("c1", "n1"), ("c1", "n2"), ("c2", "n1"), ("c2", "n2")];
    let mut last = String::new();
    // Generous: federation under the kernel lab's emulated VM takes long.
    let ok = wait_until(Duration::from_secs(120), || {
        nodes.iter().all(|(c, n)| {
            let st = world.status(c, n);
            let p = st.datapath.and_then(|d| d.policy);
            let ids = world.ipcache(c, n).len();
            last = format!("{c}/{n}: {p:?}, ipcache {ids}");
            ids >= PODS.len() && p.is_some_and(|p| p.applied && p.entries > 0)
        })
    });
    assert!(ok.is_some(), "policy never applied everywhere: {last}");
}

/// Checks every ordered pod pair for TCP 5432, TCP 80 and ping; returns the
/// mismatches (one source pod per thread).
fn matrix(world: &World, db_web_port: u16) -> (Vec<String>, usize, usize) {
    let ips = ips(world);
    let results: Vec<(Vec<String>, usize, usize)> = std::thread::scope(|sc| {
        let hs: Vec<_> = PODS
            .iter()
            .map(|&s| {
                let ips = &ips;
                sc.spawn(move || {
                    let (mut bad, mut allow, mut deny) = (Vec::new(), 0, 0);
                    for d in PODS.iter().copied().filter(|d| d.name != s.name) {
                        let mut probes: Vec<(String, u8, u16)> = [5432, 5433, 80]
                            .into_iter()
                            .map(|p| (format!("tcp {p}"), TCP, p))
                            .collect();
                        probes.push(("ping".into(), ICMP, 0));
                        for (what, proto, port) in probes {
                            let want = allowed(s, d, proto, port, db_web_port);
                            let run = || match proto {
                                TCP => tcp(world, ips, s, d, port),
                                _ => ping(world, ips, s, d),
                            };
                            // An allowed probe may lose its first packet to
                            // neighbour resolution: one retry. A denied one
                            // must never pass.
                            let got = run() || (want && run());
                            if want {
                                allow += 1;
                            } else {
                                deny += 1;
                            }
                            if got != want {
                                bad.push(format!(
                                    "{}/{} -> {}/{} {what}: expected {}, got {}",
                                    s.cluster,
                                    s.name,
                                    d.cluster,
                                    d.name,
                                    if want { "allowed" } else { "denied" },
                                    if got { "through" } else { "dropped" }
                                ));
                            }
                        }
                    }
                    (bad, allow, deny)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut bad = Vec::new();
    let (mut a, mut d) = (0, 0);
    for (b, x, y) in results {
        bad.extend(b);
        a += x;
        d += y;
    }
    (bad, a, d)
}

fn drops(world: &World, cluster: &str, node: &str, reason: &str) -> u64 {
    world
        .status(cluster, node)
        .datapath
        .and_then(|d| d.drops.get(reason).copied())
        .unwrap_or(0)
}

#[test]
fn every_pod_pair_gets_the_verdict_the_policies_give() {
    let world = World::up("polmx", &scenario("polmx"));
    wait_applied(&world);
    let _servers = serve_everywhere(&world);
    let (bad, allow, deny) = matrix(&world, 5432);
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(allow >= 8 && deny >= 100, "allowed {allow}, denied {deny}");
    eprintln!("matrix: {allow} allowed and {deny} denied probes as expected");
    // Denied drops counted per reason where they happen: client egress on
    // its own node, db/web ingress at the destination.
    wait_until(Duration::from_secs(3), || {
        drops(&world, "c1", "n1", "policy-egress") > 0
    });
    assert!(
        drops(&world, "c1", "n1", "policy-egress") > 0,
        "k1's egress drops"
    );
    assert!(
        drops(&world, "c1", "n2", "policy-ingress") > 0,
        "d2's ingress drops"
    );
    assert!(
        drops(&world, "c2", "n1", "policy-ingress") > 0,
        "w3/d3's ingress drops"
    );
    let st = world.status("c1", "n2").datapath.unwrap();
    let p = st.policy.unwrap();
    assert!(p.entries > 0 && p.selected >= 2, "{p:?}");
    let text = meshgate(&["lab", "status", "polmx"]);
    assert!(text.contains("identities selected"), "{text}");
    assert!(text.contains("policy-ingress"), "{text}");
}

/// Runs `mg-probe rr` from `s` to `d`:`port` for `secs` in the background.
fn rr(world: &World, s: Pod, d_ip: &str, port: u16, secs: f64) -> Child {
    probe_cmd(
        world,
        s,
        &["rr", d_ip, &port.to_string(), &secs.to_string()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

fn finish(c: Child, what: &str) -> String {
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn replies_pass_but_the_same_flow_opened_the_other_way_is_dropped() {
    let world = World::up("polrev", &scenario("polrev"));
    wait_applied(&world);
    let _servers = serve_everywhere(&world);
    let ips = ips(&world);
    let (w1, d2) = (pod("w1"), pod("d2"));
    assert!(allowed(w1, d2, TCP, 5432, 5432) && !allowed(d2, w1, TCP, 5432, 5432));
    // w1 -> d2 across nodes: an open connection exchanging bytes while d2
    // tries the same port the other way.
    let conn = rr(&world, w1, &ips["d2"], 5432, 3.0);
    std::thread::sleep(Duration::from_millis(500));
    let mut reverse = 0;
    for _ in 0..5 {
        reverse += usize::from(tcp(&world, &ips, d2, w1, 5432));
        reverse += usize::from(ping(&world, &ips, d2, w1));
    }
    let out = finish(conn, "w1 -> d2 request/response");
    assert_eq!(
        reverse, 0,
        "d2 -> w1 must not get through (it did {reverse} times)"
    );
    assert!(out.contains("transactions"), "{out}");
    // A reply-like packet d2 sends on its own (to a port w1 has no flow on)
    // is a new flow and dropped.
    assert!(!tcp(&world, &ips, d2, w1, 5433));
}

/// Writes `text` to a temp file and runs `meshgate lab policy`.
fn set_policy(world: &str, text: &str) -> std::process::Output {
    let dir = meshgate_e2e::tempdir();
    let f = dir.path().join("change.yaml");
    std::fs::write(&f, text).unwrap();
    meshgate_output(&["lab", "policy", "--world", world, f.to_str().unwrap()])
}

#[test]
fn a_policy_change_at_run_time_applies_and_established_flows_keep_working() {
    let world = World::up("polchg", &scenario("polchg"));
    wait_applied(&world);
    let _servers = serve_everywhere(&world);
    let ips = ips(&world);
    let (w1, d2, k4) = (pod("w1"), pod("d2"), pod("k4"));
    assert!(tcp_allowed(&world, &ips, w1, d2, 5432));
    assert!(!tcp(&world, &ips, w1, d2, 5433));
    // An allowed cross-cluster connection that stays allowed, held across
    // the change.
    let held = rr(&world, k4, &ips["d2"], 5432, 6.0);
    std::thread::sleep(Duration::from_millis(1000));

    // A file the parser refuses changes nothing and is named.
    let policies = std::fs::read_to_string(meshgate_lab::plan::policies_file("polchg")).unwrap();
    let bad = set_policy("polchg", &policies.replacen("TCP", "TPC", 1));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("change.yaml") && err.contains("TPC"), "{err}");
    assert!(
        tcp_allowed(&world, &ips, w1, d2, 5432),
        "a refused file changed the policy"
    );
    // The agent itself, sent SIGHUP over a broken file, keeps its policy
    // whole and says why in status.json.
    let path = meshgate_lab::plan::policies_file("polchg");
    std::fs::write(&path, policies.replacen("TCP", "TPC", 1)).unwrap();
    let pid = world.status("c1", "n2").pid;
    // SAFETY: kill(2) on the agent's pid; no memory effects.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let mut st = None;
    wait_until(Duration::from_secs(5), || {
        st = world.status("c1", "n2").datapath.and_then(|d| d.policy);
        st.as_ref().is_some_and(|p| p.last_error.is_some())
    });
    let st = st.unwrap();
    let e = st.last_error.as_deref().unwrap_or_default();
    assert!(e.contains("policies.yaml") && e.contains("TPC"), "{st:?}");
    assert!(
        st.applied && st.reloads == 0 && st.failed_reloads == 1,
        "{st:?}"
    );
    assert!(
        tcp_allowed(&world, &ips, w1, d2, 5432),
        "a broken file changed the policy"
    );
    assert!(!tcp(&world, &ips, w1, d2, 5433));
    std::fs::write(&path, &policies).unwrap();

    // web -> db moves from 5432 to 5433.
    // (The first 5432 of the world's file is db-ingress's rule for web.)
    let changed = policies.replacen("5432", "5433", 1);
    let t = Instant::now();
    let out = set_policy("polchg", &changed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("agent c1/n2: reloaded"), "{said}");
    eprintln!("policy change applied by every agent in {:?}", t.elapsed());
    assert!(
        !tcp(&world, &ips, w1, d2, 5432),
        "newly denied flow still allowed"
    );
    assert!(
        tcp_allowed(&world, &ips, w1, d2, 5433),
        "newly allowed flow still denied"
    );
    let out = finish(held, "k4 -> d2 connection held across the change");
    eprintln!("held connection: {out}");
    // The whole matrix agrees with the changed policy.
    let (bad, _, _) = matrix(&world, 5433);
    assert!(bad.is_empty(), "after the change:\n{}", bad.join("\n"));
}

#[test]
fn an_agent_restart_during_traffic_keeps_denied_flows_denied() {
    let world = World::up("polrst", &scenario("polrst"));
    wait_applied(&world);
    let _servers = serve_everywhere(&world);
    let ips = ips(&world);
    let (w1, k1, d2) = (pod("w1"), pod("k1"), pod("d2"));
    assert!(!allowed(d2, w1, 17, 9000, 5432) && allowed(d2, k1, 17, 9000, 5432));
    // Receivers on n1 (the node restarted); senders on n2 every 5 ms: to w1
    // denied, to k1 allowed (the control that the stream flows).
    let secs = "8";
    let mut procs = Procs(Vec::new());
    let recv = |p: Pod| {
        probe_cmd(&world, p, &["udp-recv", "9000", secs])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (r_denied, r_allowed) = (recv(w1), recv(k1));
    std::thread::sleep(Duration::from_millis(300));
    for to in ["w1", "k1"] {
        procs.0.push(
            probe_cmd(&world, d2, &["udp-send", &ips[to], "9000", "5", "7"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    world.lab("restart", "c1/n1");
    eprintln!("agent c1/n1 restarted in {:?}", t.elapsed());
    let denied_got: u64 = count(finish(r_denied, "receiver on w1"));
    let allowed_got: u64 = count(finish(r_allowed, "receiver on k1"));
    eprintln!(
        "across the restart: denied stream received {denied_got}, allowed stream {allowed_got}"
    );
    assert_eq!(
        denied_got, 0,
        "denied datagrams d2 -> w1 got through around the restart"
    );
    // ~7 s at 5 ms: about 1400 sent; the allowed stream must have flowed.
    assert!(
        allowed_got > 700,
        "allowed d2 -> k1 received only {allowed_got}"
    );
    // After the restart the policy is there (reconciled, not rebuilt) and
    // allowed TCP works.
    // The restarted agent found the maps as it wanted them and wrote
    // nothing: they were never emptied.
    let st = world.status("c1", "n1").datapath.unwrap();
    let p = st.policy.as_ref().unwrap();
    assert!(p.applied, "{st:?}");
    assert_eq!(p.reconcile_writes, Some(0), "{p:?}");
    assert!(tcp_allowed(&world, &ips, w1, d2, 5432));
    assert!(!tcp(&world, &ips, d2, w1, 5432));
    assert!(drops(&world, "c1", "n1", "policy-ingress") > 0);
}

fn count(out: String) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("received "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {out:?}"))
}

fn agent_with(dir: &std::path::Path, extra: &[&str]) -> String {
    let state = dir.join("state");
    let mut args = vec![
        "agent",
        "--node",
        "n1",
        "--cluster",
        "c1",
        "--cluster-id",
        "1",
        "--discovery",
        "http://127.0.0.1:9",
        "--underlay-ip",
        "198.18.0.10",
        "--pod-cidr",
        "10.9.0.0/24",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = meshgate_output(&args);
    assert!(!out.status.success());
    assert!(
        !state.exists(),
        "the agent started before refusing its policy"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_refuses_a_bad_policy_file_or_policy_without_the_ebpf_datapath() {
    let dir = meshgate_e2e::tempdir();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n\
         spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: TPC}]}]\n",
    )
    .unwrap();
    let b = bad.to_str().unwrap();
    let err = agent_with(dir.path(), &["--datapath", "ebpf", "--policy", b]);
    assert!(
        err.contains("bad.yaml") && err.contains("TPC") && err.contains("default/x"),
        "{err}"
    );
    let err = agent_with(dir.path(), &["--policy", b]);
    assert!(err.contains("--policy needs --datapath ebpf"), "{err}");
    let err = agent_with(
        dir.path(),
        &["--datapath", "ebpf", "--policy", "/nonexistent.yaml"],
    );
    assert!(err.contains("/nonexistent.yaml"), "{err}");
}
