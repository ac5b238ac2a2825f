//! End-to-end service load balancing in the eBPF datapath: a global
//! service with backends in two clusters and affinity `local` in c1,
//! reached at the VIP of c1's definition. Connections from a pod of c1 land
//! on c1's backends only; once they leave (their agents stopped), new
//! connections go to c2's backends, measured from the moment c1's discovery
//! no longer lists them. World names start with `lb`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshgate_e2e::{wait_until, World};

const PORT: u16 = 7000;

/// Answers every TCP connection on PORT with the pod's name.
const SERVER: &str = "import socket,sys\n\
s=socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('0.0.0.0',int(sys.argv[2])))\n\
s.listen(128)\n\
while True:\n    c,_=s.accept()\n    c.sendall(sys.argv[1].encode())\n    c.close()\n";

/// `count` connections to VIP:PORT, one started every `interval` s, each
/// in its own thread (a connection that times out does not delay the
/// next), each printed as `<start time> <backend name or ->`.
const CLIENT: &str = "import socket,sys,time,threading\n\
vip,port,n,gap=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4])\n\
out=threading.Lock()\n\
def one(t):\n    try:\n        s=socket.create_connection((vip,port),timeout=0.5)\n        s.settimeout(0.5)\n        d=s.recv(64).decode() or '-'\n        s.close()\n    except Exception:\n        d='-'\n    with out:\n        print('%.3f %s'%(t,d),flush=True)\n\
ts=[]\n\
for i in range(n):\n    th=threading.Thread(target=one,args=(time.time(),))\n    th.start()\n    ts.append(th)\n    time.sleep(gap)\n\
for th in ts:\n    th.join()\n";

/// Panics unless the connections begun at or after `from` were served by
/// c2's backends, but for sporadic failures (at most 2 %, never two in a
/// row): on this loaded lab a connection now and then misses its 0.5 s
/// timeout, while backends that are picked but gone fail every time.
fn served_by_c2_from(lines: &[(f64, String)], from: f64, what: &str) {
    let after: Vec<&(f64, String)> = lines.iter().filter(|(t, _)| *t >= from).collect();
    let c1: Vec<_> = after
        .iter()
        .filter(|(_, n)| n.starts_with("web1"))
        .collect();
    assert!(c1.is_empty(), "{what}: served by c1: {c1:?}");
    let failed: Vec<_> = after.iter().filter(|(_, n)| n == "-").collect();
    let in_a_row = after.windows(2).any(|w| w[0].1 == "-" && w[1].1 == "-");
    assert!(
        failed.len() * 50 <= after.len() && !in_a_row,
        "{what}: {} of {} connections failed (two in a row: {in_a_row}): {failed:?}",
        failed.len(),
        after.len()
    );
}

fn service(affinity: &str) -> String {
    format!(
        "    services:\n      - name: web\n        ports: [{{name: echo, port: {PORT}, protocol: TCP}}]\n        selector: {{app: web}}\n        annotations:\n          service.cilium.io/global: \"true\"\n{affinity}"
    )
}

fn scenario(name: &str) -> String {
    let pod = |p: &str, app: &str| {
        format!("        pods:\n          - name: {p}\n            labels: {{app: {app}}}\n")
    };
    let node = |n: &str, p: &str, app: &str| format!("      - name: {n}\n{}", pod(p, app));
    let cluster =
        |c: u8| format!("  - name: c{c}\n    id: {c}\n    podCIDR: 10.{c}.0.0/16\n    nodes:\n");
    let mut y = format!("name: {name}\ndatapath: ebpf\nclusters:\n");
    y += &cluster(1);
    y += &node("n1", "client", "client");
    y += &node("n2", "web1a", "web");
    y += &node("n3", "web1b", "web");
    y += &service("          service.cilium.io/affinity: local\n");
    y += &cluster(2);
    y += &node("n1", "web2a", "web");
    y += &node("n2", "web2b", "web");
    y += &service("");
    y
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Parses the client's `<time> <name>` lines.
fn parse(out: &str) -> Vec<(f64, String)> {
    let mut v: Vec<(f64, String)> = out
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once(' ')?;
            Some((t.parse().ok()?, n.trim().to_string()))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The VIP of c1's `default/web` as its agent on n1 received it.
fn vip(world: &World) -> String {
    let path = format!("/run/meshgate/lab/{}/c1/nodes/n1/services.json", world.name);
    let mut vip = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let web = &v["services"]["default/web"];
        vip = web["vip"].as_str().unwrap_or_default().to_string();
        !vip.is_empty() && web["backends"].as_array().map_or(0, Vec::len) == 4
    });
    assert!(
        ok.is_some(),
        "c1/n1 never had default/web with a VIP and 4 backends: {:?}",
        std::fs::read_to_string(&path)
    );
    vip
}

#[test]
fn local_affinity_keeps_connections_in_the_cluster_and_fails_over_to_the_other_within_a_second() {
    let name = "lbaff";
    let world = World::up(name, &scenario(name));
    let vip = vip(&world);
    assert_eq!(vip, "10.96.1.10", "the lab's first VIP of cluster 1");
    let status = meshgate_e2e::meshgate(&["lab", "status", name]);
    assert!(
        status.contains("4 backends (c1 2, c2 2), vip 10.96.1.10"),
        "lab status does not show the service with its VIP:\n{status}"
    );
    let ok = wait_until(Duration::from_secs(10), || {
        meshgate_e2e::meshgate(&["lab", "status", name]).contains("1 service frontends")
    });
    assert!(
        ok.is_some(),
        "lab status does not show the agents' service frontend:\n{}",
        meshgate_e2e::meshgate(&["lab", "status", name])
    );

    let mut servers = Servers(Vec::new());
    for (c, pod) in [
        ("c1", "web1a"),
        ("c1", "web1b"),
        ("c2", "web2a"),
        ("c2", "web2b"),
    ] {
        servers.0.push(world.spawn_in_ns(
            &world.pod_ns(c, pod),
            &["python3", "-c", SERVER, pod, &PORT.to_string()],
        ));
    }
    let client_ns = world.pod_ns("c1", "client");
    let port = PORT.to_string();
    // Every backend answers (directly, not through the VIP): the servers are up.
    for (c, pod) in [
        ("c1", "web1a"),
        ("c1", "web1b"),
        ("c2", "web2a"),
        ("c2", "web2b"),
    ] {
        let ip = world.ip(&format!("{c}/{pod}"));
        let ok = wait_until(Duration::from_secs(10), || {
            let out = world.in_ns(&client_ns, &["python3", "-c", CLIENT, &ip, &port, "1", "0"]);
            String::from_utf8_lossy(&out.stdout).contains(pod)
        });
        assert!(
            ok.is_some(),
            "backend {c}/{pod} ({ip}) does not answer directly"
        );
    }

    // 60 connections to the VIP: only c1's backends.
    let out = world.in_ns(
        &client_ns,
        &["python3", "-c", CLIENT, &vip, &port, "60", "0"],
    );
    let got = parse(&String::from_utf8_lossy(&out.stdout));
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (_, n) in &got {
        *per.entry(n.clone()).or_default() += 1;
    }
    eprintln!("60 connections to {vip}:{PORT} from c1/client: {per:?}");
    assert_eq!(got.len(), 60, "{out:?}");
    assert!(
        per.keys().all(|n| n == "web1a" || n == "web1b"),
        "affinity local: only c1's backends may answer: {per:?}"
    );
    assert_eq!(
        per.len(),
        2,
        "both c1 backends should share 60 connections: {per:?}"
    );

    // A connection every 20 ms while c1's backends leave.
    let mut client = world.spawn_in_ns(
        &client_ns,
        &["python3", "-c", CLIENT, &vip, &port, "1000", "0.02"],
    );
    std::thread::sleep(Duration::from_millis(500));
    // Poll c1's discovery (from before the backends leave) until it lists
    // no c1 backend of web: (poll start, poll end, c1 backends listed).
    let history: Vec<(f64, f64, usize)> = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut history = Vec::new();
            let deadline = now() + 30.0;
            while now() < deadline {
                let started = now();
                let web = world
                    .discovery_services("c1")
                    .remove("default/web")
                    .unwrap_or_default();
                let c1 = web.iter().filter(|b| b.starts_with("c1 ")).count();
                history.push((started, now(), c1));
                if c1 == 0 && !web.is_empty() {
                    break;
                }
            }
            history
        });
        std::thread::sleep(Duration::from_millis(300));
        world.lab("stop", "c1/n2");
        world.lab("stop", "c1/n3");
        poller.join().unwrap()
    });
    assert!(
        history.last().is_some_and(|h| h.2 == 0),
        "c1's discovery still lists c1 backends of web: {history:?}"
    );
    // The change was published between the start of the last poll that
    // still listed a c1 backend and the end of the first that did not.
    let gone_at = history.last().unwrap().1;
    let listed_until = history.iter().rev().nth(1).map_or(gone_at, |h| h.0);
    std::thread::sleep(Duration::from_secs(3));
    let _ = client.kill();
    let out = client.wait_with_output().unwrap();
    let lines = parse(&String::from_utf8_lossy(&out.stdout));
    let c2 = |n: &str| n == "web2a" || n == "web2b";
    // Failures in the window around the change: connections given a
    // departed backend (its node already left) before the agent switched.
    let window: Vec<String> = lines
        .iter()
        .filter(|(t, n)| n == "-" && (*t - gone_at).abs() <= 1.0)
        .map(|(t, _)| format!("{:+.3}", t - gone_at))
        .collect();
    let first_c2 = lines
        .iter()
        .find(|(_, n)| c2(n))
        .unwrap_or_else(|| panic!("no connection reached c2's backends: {lines:?}"))
        .0;
    eprintln!(
        "c1 backends gone from `meshgate services` at {gone_at:.3}, still listed by the poll \
         begun {:+.3} s before (polls: {:?}); first c2-served connection began {:+.3} s, \
         failed connections near the change began at {window:?} s",
        listed_until - gone_at,
        history
            .iter()
            .map(|(t, _, n)| format!("{:+.3}:{n}", t - gone_at))
            .collect::<Vec<_>>(),
        first_c2 - gone_at,
    );
    // The requirement: within 1 s of discovery publishing the change, new
    // connections no longer go to the departed backends but to c2's.
    served_by_c2_from(
        &lines,
        gone_at + 1.0,
        "1 s after discovery dropped c1's backends",
    );
    let later: Vec<&(f64, String)> = lines.iter().filter(|(t, _)| *t >= gone_at + 1.0).collect();
    assert!(
        later.len() > 50,
        "too few connections after failover: {}",
        later.len()
    );
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in &later {
        *per.entry(n.as_str()).or_default() += 1;
    }
    eprintln!("from 1 s after the change on: {per:?}");

    // The client node's agent restarts (SIGUSR2): the pinned service maps
    // keep translating, and the new agent keeps the frontend.
    let client = world.spawn_in_ns(
        &client_ns,
        &["python3", "-c", CLIENT, &vip, &port, "400", "0.02"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let restart_began = now();
    world.lab("restart", "c1/n1");
    let restarted = now();
    let out = client.wait_with_output().unwrap();
    let lines = parse(&String::from_utf8_lossy(&out.stdout));
    let served = lines
        .iter()
        .filter(|(_, n)| n == "web2a" || n == "web2b")
        .count();
    let failed = lines.iter().filter(|(_, n)| n == "-").count();
    eprintln!(
        "across an agent restart of c1/n1: {served} of {} connections served by c2, {failed} failed",
        lines.len()
    );
    eprintln!(
        "restart began {restart_began:.3}, `lab restart` returned {:+.3} s later; failures at {:?} s",
        restarted - restart_began,
        lines
            .iter()
            .filter(|(_, n)| n == "-")
            .map(|(t, _)| format!("{:+.2}", t - restart_began))
            .collect::<Vec<_>>()
    );
    assert_eq!(served + failed, lines.len(), "only c2 may serve: {lines:?}");
    served_by_c2_from(&lines, restarted + 1.0, "1 s after the agent restart");
    let ok = wait_until(Duration::from_secs(10), || {
        world
            .status("c1", "n1")
            .datapath
            .is_some_and(|d| d.lb_frontends == 1)
    });
    assert!(
        ok.is_some(),
        "the restarted agent does not report its service frontend"
    );
}
