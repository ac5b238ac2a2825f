//! End-to-end: security identities and the ipcache within one cluster
//! (root required; see the crate docs).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use meshgate_e2e::{one_cluster, wait_until, World};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PODS: [&str; 6] = ["n1-a", "n1-b", "n2-a", "n2-b", "n3-a", "n3-b"];

/// IP → identity from a node's `ipcache.json` (empty if there is none yet).
fn ipcache(world: &World, node: &str) -> BTreeMap<String, u64> {
    world
        .ipcache("c1", node)
        .into_iter()
        .map(|(ip, (_, identity))| (ip, identity))
        .collect()
}

#[test]
fn identities_are_shared_by_labels_stable_across_restart_and_follow_nodes() {
    let world = World::up("e2e-ident", &one_cluster("e2e-ident", 3));
    let ips: BTreeMap<&str, String> = PODS
        .iter()
        .map(|p| (*p, world.ip(&format!("c1/{p}"))))
        .collect();
    let all_listed = |node: &str| {
        let cache = ipcache(&world, node);
        ips.values().all(|ip| cache.contains_key(ip))
    };
    for n in NODES {
        assert!(
            wait_until(Duration::from_secs(5), || all_listed(n)).is_some(),
            "{n}'s ipcache never listed all 6 pod IPs: {:?} (want {ips:?})",
            ipcache(&world, n)
        );
    }
    let cache = ipcache(&world, "n1");
    for n in ["n2", "n3"] {
        assert_eq!(ipcache(&world, n), cache, "{n}'s ipcache differs from n1's");
    }
    let id = |pod: &str| cache[&ips[pod]];
    let (web, db) = (id("n1-a"), id("n1-b"));
    for pod in ["n2-a", "n3-a"] {
        assert_eq!(
            id(pod),
            web,
            "{pod} (app=web) has another identity than n1-a"
        );
    }
    for pod in ["n2-b", "n3-b"] {
        assert_eq!(id(pod), db, "{pod} (app=db) has another identity than n1-b");
    }
    assert_ne!(web, db, "app=web and app=db share an identity");
    for i in [web, db] {
        assert_eq!(i >> 16, 1, "identity {i} is not in cluster 1's range");
        assert!(i & 0xffff >= 256, "identity {i} uses a reserved local ID");
    }
    let status = world.status("c1", "n1");
    assert_eq!(status.ipcache_entries, 6, "status.json ipcache_entries");
    let table = meshgate_e2e::meshgate(&[
        "ipcache",
        "--state-dir",
        &format!("/run/meshgate/lab/{}/c1/nodes/n1", world.name),
    ]);
    assert!(
        table.contains(&ips["n2-a"]) && table.contains("app=web") && table.contains("c1/n2"),
        "meshgate ipcache shows:\n{table}"
    );

    // A discovery restart keeps every identity.
    world.lab("restart", "c1/discovery");
    for n in NODES {
        assert!(
            wait_until(Duration::from_secs(10), || world
                .status("c1", n)
                .discovery_connected)
            .is_some(),
            "{n} did not reconnect to the restarted discovery"
        );
    }
    // Let the re-registrations and their reports settle.
    std::thread::sleep(Duration::from_millis(500));
    for n in NODES {
        assert_eq!(
            ipcache(&world, n),
            cache,
            "{n}: identities or entries changed across the discovery restart"
        );
    }

    // A node that leaves takes its pods out of every other node's ipcache.
    world.lab("stop", "c1/n3");
    let gone = [&ips["n3-a"], &ips["n3-b"]];
    let without_n3 = |n: &str| {
        let c = ipcache(&world, n);
        gone.iter().all(|ip| !c.contains_key(*ip)) && c.len() == 4
    };
    let took = wait_until(Duration::from_secs(2), || {
        without_n3("n1") && without_n3("n2")
    });
    assert!(
        took.is_some(),
        "n3's pods still listed 2 s after n3 left: n1 {:?}, n2 {:?}",
        ipcache(&world, "n1"),
        ipcache(&world, "n2")
    );
}
