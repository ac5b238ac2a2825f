//! End-to-end: global services merged across three federated clusters
//! (root required; see the crate docs). Each cluster has n1 with a web pod
//! and n2 with a db pod. `web` is global everywhere (affinity local in c1;
//! c3 marks it `shared: "false"`); `db` is local-only in c1 and global in c2.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meshgate_e2e::{clusters, wait_until, World};

const NAME: &str = "e2e-svc";

fn web(extra: &str) -> String {
    format!(
        "      - name: web\n        ports: [{{name: http, port: 80}}]\n        selector: {{app: web}}\n        annotations:\n          service.cilium.io/global: \"true\"\n{extra}"
    )
}

fn db(global: bool) -> String {
    let ann = if global { "        export: true\n" } else { "" };
    format!("      - name: db\n        ports: [{{port: 5432, protocol: TCP}}]\n        selector: {{app: db}}\n{ann}")
}

/// `clusters(NAME, 3, 2)` with a services block added to every cluster.
fn scenario() -> String {
    let blocks = [
        format!(
            "    services:\n{}{}",
            web("          service.cilium.io/affinity: local\n"),
            db(false)
        ),
        format!("    services:\n{}{}", web(""), db(true)),
        format!(
            "    services:\n{}",
            web("          service.cilium.io/shared: \"false\"\n")
        ),
    ];
    let base = clusters(NAME, 3, 2);
    let mut out = String::new();
    let mut parts = base.split("  - name: c").peekable();
    out.push_str(parts.next().unwrap());
    for (i, part) in parts.enumerate() {
        out.push_str("  - name: c");
        out.push_str(part);
        out.push_str(&blocks[i]);
    }
    out
}

fn ips(world: &World) -> [(String, String); 6] {
    let ip = |t: &str| world.ip(t);
    [
        ("c1 web".into(), format!("c1 {}", ip("c1/n1-a"))),
        ("c2 web".into(), format!("c2 {}", ip("c2/n1-a"))),
        ("c3 web".into(), format!("c3 {}", ip("c3/n1-a"))),
        ("c1 db".into(), format!("c1 {}", ip("c1/n2-a"))),
        ("c2 db".into(), format!("c2 {}", ip("c2/n2-a"))),
        ("c3 db".into(), format!("c3 {}", ip("c3/n2-a"))),
    ]
}

#[test]
fn global_services_are_merged_across_clusters_with_their_cluster() {
    let world = World::up(NAME, &scenario());
    let b: std::collections::BTreeMap<String, String> = ips(&world).into_iter().collect();
    let list = |names: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|n| b[*n].clone()).collect();
        v.sort();
        v
    };
    // c3 does not share: nobody else gets its backends, but it gets theirs.
    let want_web = [
        ("c1", list(&["c1 web", "c2 web"])),
        ("c2", list(&["c1 web", "c2 web"])),
        ("c3", list(&["c1 web", "c2 web", "c3 web"])),
    ];
    // db: local-only in c1 (c2's global db is not merged into it); global
    // in c2 alone, so only c2's own backend there; c3 has no db.
    let want_db = [
        ("c1", Some(list(&["c1 db"]))),
        ("c2", Some(list(&["c2 db"]))),
        ("c3", None),
    ];
    for ((c, web), (_, db)) in want_web.iter().zip(&want_db) {
        let ok = wait_until(Duration::from_secs(20), || {
            let s = world.discovery_services(c);
            s.get("default/web") == Some(web) && s.get("default/db") == db.as_ref()
        });
        assert!(
            ok.is_some(),
            "discovery of {c}: want web {web:?} and db {db:?}, have {:?}",
            world.discovery_services(c)
        );
        for n in ["n1", "n2"] {
            let ok = wait_until(Duration::from_secs(10), || {
                world.agent_services(c, n).get("default/web") == Some(web)
            });
            assert!(
                ok.is_some(),
                "{c}/{n} services.json: want web {web:?}, have {:?}",
                world.agent_services(c, n)
            );
        }
    }
    let v = world.services_json("c1");
    let web = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(web["global"], true);
    assert_eq!(web["affinity"], "local");
    let db = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap();
    assert_eq!(db["global"], false);
    // The table shows backends as ip:port (cluster).
    let mut args = vec!["services".to_string()];
    args.extend(world.nodes_flags("c1", "c1/n1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = world.meshgate_in(&world.discovery_ns("c1"), &args);
    let c2_web_ip = b["c2 web"].trim_start_matches("c2 ");
    assert!(
        table.contains(&format!("{c2_web_ip}:80 (c2)")),
        "table lacks c2's web backend:\n{table}"
    );
    assert!(
        table.contains("default/web  global  affinity local"),
        "{table}"
    );
    let status = world.status("c1", "n1");
    assert_eq!(status.services, 2, "status.json services count");
    let lab_status = meshgate_e2e::meshgate(&["lab", "status", NAME]);
    assert!(
        lab_status.contains("service default/web: global, affinity local, 2 backends (c1 1, c2 1)"),
        "{lab_status}"
    );

    // c2/n1 leaves gracefully: its web backend goes from every merged view.
    world.lab("stop", "c2/n1");
    let without_c2 = [
        ("c1", list(&["c1 web"])),
        ("c2", list(&["c1 web"])),
        ("c3", list(&["c1 web", "c3 web"])),
    ];
    for (c, web) in &without_c2 {
        let node = "n2"; // c2/n1 is stopped; n2 runs in every cluster
        let took = wait_until(Duration::from_secs(2), || {
            world.agent_services(c, node).get("default/web") == Some(web)
        });
        assert!(
            took.is_some(),
            "{c}/{node}: web not {web:?} within 2 s of c2/n1 leaving: {:?}",
            world.agent_services(c, node)
        );
        assert_eq!(
            world.discovery_services(c).get("default/web"),
            Some(web),
            "discovery of {c} after c2/n1 left"
        );
    }
}
