//! The netlink module against a real kernel: each test in a network
//! namespace of its own (deleted on drop, panics too), read back both with
//! the module's own dumps and with iproute2's JSON (`ip -j`).
//!
//! Needs root (network namespaces): `#[ignore]`d for unprivileged runs,
//! run by `cargo xtask test`.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::Ipv4Net;
use meshgate_tunnel::netlink::{
    LinkChange, LinkKind, Netlink, NetlinkError, Route, RouteType, Rule, MAIN_TABLE,
};
use meshgate_tunnel::routes;
use serde_json::Value;

mod support;

use support::{in_ns, ip};

const TABLE: u32 = 28_007;

/// A network namespace named uniquely for this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
        let name = format!(
            "mgnl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns(name);
        ip(&["netns", "add", &ns.0]);
        ns
    }

    /// `ip -n NS -j ARGS`, parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-n", &self.0, "-j"];
        all.extend(args);
        let out = ip(&all);
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .unwrap_or_else(|e| panic!("ip {}: {e}: {out}", all.join(" ")))
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.0, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// A veth pair `mgd0`/`mgd1`: this kernel has no dummy driver.
fn veth() -> LinkKind {
    LinkKind::Veth {
        peer: "mgd1".into(),
    }
}

fn up(nl: &mut Netlink, dev: &str, mtu: u32) {
    nl.set_link(
        dev,
        &LinkChange {
            mtu: Some(mtu),
            up: Some(true),
            arp: None,
        },
    )
    .unwrap();
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn links_are_made_set_and_deleted_like_iproute2_makes_them() {
    let ns = Netns::new();
    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.link_index("mgd0").unwrap(), None);
        nl.add_link("mgd0", &veth()).unwrap();
        let e = nl.add_link("mgd0", &veth()).unwrap_err();
        assert!(e.is_exists(), "{e}");
        up(&mut nl, "mgd0", 1400);
        let s = nl.link("mgd0").unwrap().unwrap();
        assert_eq!((s.mtu, s.up, s.arp), (Some(1400), true, true), "{s:?}");
        assert_eq!(nl.link_name(s.index).unwrap().as_deref(), Some("mgd0"));

        let vx = LinkKind::VxlanExternal { port: 4789 };
        nl.add_link("mg-vx0", &vx).unwrap();
        nl.set_link(
            "mg-vx0",
            &LinkChange {
                mtu: Some(1370),
                up: Some(true),
                arp: Some(false),
            },
        )
        .unwrap();
        let s = nl.link("mg-vx0").unwrap().unwrap();
        assert_eq!((s.mtu, s.up, s.arp), (Some(1370), true, false), "{s:?}");
    });
    // The anchor: the same device as `ip link add ... external` makes it
    // (in a namespace of its own: one external VXLAN device per port).
    let anchor = Netns::new();
    ip(&[
        "-n", &anchor.0, "link", "add", "mg-vx0", "type", "vxlan", "external", "dstport", "4789",
    ]);
    let ours = ns.ip_json(&["-d", "link", "show", "mg-vx0"]);
    let theirs = anchor.ip_json(&["-d", "link", "show", "mg-vx0"]);
    let data = |v: &Value| v[0]["linkinfo"]["info_data"].clone();
    assert_eq!(data(&ours)["external"], true, "{ours}");
    assert_eq!(data(&ours)["port"], 4789, "{ours}");
    assert_eq!(data(&ours)["learning"], false, "{ours}");
    assert_eq!(data(&ours), data(&theirs), "ours vs ip's");
    let flags = ours[0]["flags"].as_array().unwrap();
    assert!(flags.contains(&"NOARP".into()), "{ours}");
    assert!(flags.contains(&"UP".into()), "{ours}");
    assert_eq!(ours[0]["mtu"], 1370, "{ours}");

    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        nl.delete_link("mg-vx0").unwrap();
        let e = nl.delete_link("mg-vx0").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
        assert_eq!(nl.link_index("mg-vx0").unwrap(), None);
    });
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn addresses_are_replaced_idempotently_and_read_back() {
    let ns = Netns::new();
    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_link("mgd0", &veth()).unwrap();
        let a = net("100.64.0.1/32");
        nl.replace_address("mgd0", a).unwrap();
        nl.replace_address("mgd0", a).unwrap();
        assert_eq!(nl.addresses("mgd0").unwrap(), vec![a]);
        let e = nl.replace_address("mg-missing", a).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("mg-missing"), "{e}");
        // Removing: the address goes, and a second removal says it was not there.
        let b = net("100.64.0.2/32");
        nl.replace_address("mgd0", b).unwrap();
        assert!(nl.remove_address("mgd0", b).unwrap());
        assert!(!nl.remove_address("mgd0", b).unwrap());
    });
    let v = ns.ip_json(&["addr", "show", "dev", "mgd0"]);
    let addrs: Vec<(String, u64)> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(addrs, vec![("100.64.0.1".to_string(), 32)], "{v}");
}

/// `ip -j route show table T` as (type, dst, dev) triples.
fn ip_routes(ns: &Netns, table: &str) -> Vec<(String, String, String)> {
    let v = ns.ip_json(&["route", "show", "table", table]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap_or("unicast").to_string(),
                r["dst"].as_str().unwrap().to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn triple(t: &str, dst: &str, dev: &str) -> (String, String, String) {
    (t.into(), dst.into(), dev.into())
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn routes_of_each_type_in_main_and_in_table_28007() {
    let ns = Netns::new();
    let src = Ipv4Addr::new(100, 64, 0, 1);
    ns.run(move || {
        let mut nl = Netlink::open().unwrap();
        nl.add_link("mgd0", &veth()).unwrap();
        up(&mut nl, "mgd0", 1420);
        nl.replace_address("mgd0", Ipv4Net::from(src)).unwrap();
        assert_eq!(nl.routes(TABLE).unwrap(), vec![], "a table never used");

        let main = Route::via_dev(net("10.1.2.0/24"), "mgd0").with_src(Some(src));
        nl.replace_route(&main).unwrap();
        nl.replace_route(&main).unwrap();
        let guard = Route::unreachable(net("10.9.0.0/16"));
        nl.replace_route(&guard).unwrap();
        let have = nl.routes(MAIN_TABLE).unwrap();
        assert!(have.contains(&main), "{have:?}");
        assert!(have.contains(&guard), "{have:?}");

        for r in [
            Route::via_dev(net("10.1.1.0/24"), "mgd0").in_table(TABLE),
            Route::unreachable(net("10.1.0.0/16")).in_table(TABLE),
            Route::throw(net("10.1.0.0/24")).in_table(TABLE),
        ] {
            nl.replace_route(&r).unwrap();
            nl.replace_route(&r).unwrap();
        }
        // Replacing changes the type of the route to the same prefix.
        nl.replace_route(&Route::unreachable(net("10.2.0.0/16")).in_table(TABLE))
            .unwrap();
        nl.replace_route(&Route::via_dev(net("10.2.0.0/16"), "mgd0").in_table(TABLE))
            .unwrap();
        let mut have = nl.routes(TABLE).unwrap();
        have.sort_by_key(|r| (r.dst, r.kind));
        assert_eq!(
            have,
            vec![
                Route::unreachable(net("10.1.0.0/16")).in_table(TABLE),
                Route::throw(net("10.1.0.0/24")).in_table(TABLE),
                Route::via_dev(net("10.1.1.0/24"), "mgd0").in_table(TABLE),
                Route::via_dev(net("10.2.0.0/16"), "mgd0").in_table(TABLE),
            ]
        );
    });
    let mut table = ip_routes(&ns, "28007");
    table.sort();
    assert_eq!(
        table,
        vec![
            triple("throw", "10.1.0.0/24", ""),
            triple("unicast", "10.1.1.0/24", "mgd0"),
            triple("unicast", "10.2.0.0/16", "mgd0"),
            triple("unreachable", "10.1.0.0/16", ""),
        ]
    );
    let main = ns.ip_json(&["route", "show", "10.1.2.0/24"]);
    assert_eq!(main[0]["dev"], "mgd0", "{main}");
    assert_eq!(main[0]["prefsrc"], "100.64.0.1", "{main}");
    assert_eq!(main[0]["scope"], "link", "{main}");

    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let r = Route::throw(net("10.1.0.0/24")).in_table(TABLE);
        nl.delete_route(&r).unwrap();
        let e = nl.delete_route(&r).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.errno(), Some(libc::ESRCH), "{e}");
        // A unicast route is not deleted as unreachable.
        let wrong = Route::unreachable(net("10.1.1.0/24")).in_table(TABLE);
        assert!(nl.delete_route(&wrong).unwrap_err().is_not_found());
        nl.delete_route(&Route::unreachable(net("10.9.0.0/16")))
            .unwrap();
        assert_eq!(nl.flush_table(TABLE).unwrap(), 3);
        assert_eq!(nl.routes(TABLE).unwrap(), vec![]);
    });
    assert_eq!(ip_routes(&ns, "28007"), vec![]);
    let main: Vec<_> = ip_routes(&ns, "main");
    assert!(
        main.contains(&triple("unicast", "10.1.2.0/24", "mgd0")),
        "flushing 28007 leaves main: {main:?}"
    );
    assert!(!main.iter().any(|r| r.0 == "unreachable"), "{main:?}");
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn rules_are_added_once_listed_and_deleted_by_priority() {
    let ns = Netns::new();
    let rule = Rule::lookup(TABLE, TABLE);
    ns.run(move || {
        let mut nl = Netlink::open().unwrap();
        let before = nl.rules().unwrap();
        assert!(
            before.contains(&Rule::lookup(32_766, MAIN_TABLE)),
            "{before:?}"
        );
        nl.add_rule(&rule).unwrap();
        let e = nl.add_rule(&rule).unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(nl.rules().unwrap().contains(&rule));
    });
    let v = ns.ip_json(&["rule", "show"]);
    let ours: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["priority"] == TABLE)
        .collect();
    assert_eq!(ours.len(), 1, "{v}");
    assert_eq!(ours[0]["table"], "28007", "{v}");
    // A rule for marked packets only reads back with its mark and mask.
    let marked = Rule {
        fwmark: Some((0x6c00_0000, 0xff00_0000)),
        ..Rule::lookup(TABLE - 1, TABLE + 2)
    };
    ns.run(move || {
        let mut nl = Netlink::open().unwrap();
        nl.add_rule(&marked).unwrap();
        assert!(nl.rules().unwrap().contains(&marked));
    });
    let v = ns.ip_json(&["rule", "show"]);
    let m: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["priority"] == TABLE - 1)
        .collect();
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(
        (m[0]["fwmark"].as_str(), m[0]["fwmask"].as_str()),
        (Some("0x6c000000"), Some("0xff000000")),
        "{v}"
    );
    ns.run(move || {
        let mut nl = Netlink::open().unwrap();
        nl.delete_rule(TABLE - 1).unwrap();
        nl.delete_rule(TABLE).unwrap();
        let e = nl.delete_rule(TABLE).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(!nl.rules().unwrap().iter().any(|r| r.priority == TABLE));
    });
    let v = ns.ip_json(&["rule", "show"]);
    assert!(
        !v.as_array().unwrap().iter().any(|r| r["priority"] == TABLE),
        "{v}"
    );
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn a_refusal_names_the_operation_and_the_errno() {
    let ns = Netns::new();
    ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let r = Route::via_dev(net("10.1.2.0/24"), "mg-missing").in_table(TABLE);
        let e: NetlinkError = nl.delete_route(&r).unwrap_err();
        let s = e.to_string();
        assert_eq!(
            e.operation(),
            "deleting route 10.1.2.0/24 dev mg-missing table 28007"
        );
        assert!(
            s.starts_with("deleting route 10.1.2.0/24 dev mg-missing table 28007: "),
            "{s}"
        );
        assert!(s.contains(&format!("os error {}", libc::ENODEV)), "{s}");
        assert_eq!(e.errno(), Some(libc::ENODEV));
        assert!(e.is_not_found());

        // The kernel's own refusal, with its extended-ack message kept: a
        // route through a device that is down.
        nl.add_link("mgd0", &veth()).unwrap();
        let e = nl
            .replace_route(&Route::via_dev(net("10.1.2.0/24"), "mgd0"))
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENETDOWN), "{e}");
        assert!(!e.is_not_found() && !e.is_exists(), "{e}");
        assert!(e.kernel_message().is_some(), "no extended ack: {e}");
        assert!(
            e.to_string()
                .starts_with("setting route 10.1.2.0/24 dev mgd0: "),
            "{e}"
        );
        // An unknown type of route is refused by the kernel, not by us.
        let odd = Route {
            kind: RouteType::Other(200),
            ..Route::unreachable(net("10.3.0.0/16"))
        };
        let e = nl.replace_route(&odd).unwrap_err();
        assert!(e.errno().is_some(), "{e}");
    });
}

#[test]
#[ignore = "needs root (network namespaces): cargo xtask test runs it"]
fn tunnel_routes_are_idempotent() {
    let ns = Netns::new();
    ns.run(|| {
        Netlink::open().unwrap().add_link("mgt0", &veth()).unwrap();
        let me = Ipv4Addr::new(100, 64, 0, 1);
        routes::configure_interface("mgt0", me, 1420).unwrap();
        routes::configure_interface("mgt0", me, 1420).unwrap();
        let peer = net("100.64.0.2/32");
        routes::add_route("mgt0", &peer, Some(me)).unwrap();
        routes::add_route("mgt0", &peer, Some(me)).unwrap();
        let mut nl = Netlink::open().unwrap();
        assert!(nl
            .routes(MAIN_TABLE)
            .unwrap()
            .contains(&Route::via_dev(peer, "mgt0").with_src(Some(me))));
        routes::remove_route("mgt0", &peer).unwrap();
        routes::remove_route("mgt0", &peer).unwrap();
        routes::delete_interface("mgt0").unwrap();
        routes::delete_interface("mgt0").unwrap();
        routes::remove_route("mgt0", &peer).unwrap();
        assert_eq!(nl.link_index("mgt0").unwrap(), None);
    });
}
