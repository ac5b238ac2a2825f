//! Helpers for the policy tests.

use std::collections::BTreeMap;

use super::{
    compile, parse_policies, Compiled, Direction, Policy, PolicyEntry, PolicyError, Scope, Verdict,
};
use crate::identity::{endpoint_labels, identity, Labels};

/// Local cluster of the tests.
pub const LOCAL: u8 = 1;
pub const REMOTE: u8 = 2;

pub fn cluster_name(c: u8) -> &'static str {
    match c {
        LOCAL => "west",
        REMOTE => "east",
        _ => "other",
    }
}

/// Identity labels of a pod: `pairs` + namespace + cluster.
pub fn pod(cluster: u8, ns: &str, pairs: &[(&str, &str)]) -> Labels {
    let l: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    endpoint_labels(&l, ns, cluster_name(cluster))
}

pub fn id(cluster: u8, n: u16) -> u32 {
    identity(cluster, 256 + n)
}

pub fn parse(yaml: &str) -> Vec<Policy> {
    parse_policies(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

pub fn parse_err(yaml: &str) -> PolicyError {
    match parse_policies(yaml, "test.yaml") {
        Ok(p) => panic!("expected an error, parsed {p:?}"),
        Err(e) => e,
    }
}

/// A CiliumNetworkPolicy `shop/p` with `spec` (indented two spaces).
pub fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n{spec}"
    )
}

/// `cnp(spec)` is refused at `field`, the message naming the source, the
/// policy and `words`.
pub fn assert_err(spec: &str, field: &str, words: &[&str]) {
    let e = parse_err(&cnp(spec));
    let text = e.to_string();
    assert!(
        text.starts_with("test.yaml: CiliumNetworkPolicy shop/p: "),
        "names the source and policy: {text}"
    );
    assert_eq!(e.field(), Some(field), "{text}");
    for w in words {
        assert!(text.contains(w), "{text:?} should mention {w:?}");
    }
}

pub fn compile_yaml(yaml: &str, ids: &BTreeMap<u32, Labels>) -> Compiled {
    compile(&Scope::new(LOCAL), &parse(yaml), ids)
}

/// The verdict the datapath reaches for a packet, following `policy_check` in
/// `ebpf/bpf/datapath.c`: the six lookups, deny anywhere wins, else allowed
/// if some allow matched or the local identity is not selected.
pub fn datapath_allows(
    c: &Compiled,
    local: u32,
    remote: u32,
    dport: u16,
    proto: u8,
    dir: Direction,
) -> bool {
    let mut allowed = false;
    for i in 0..6 {
        let k = PolicyEntry {
            local_identity: local,
            remote_identity: if i < 3 { remote } else { 0 },
            proto: if i % 3 == 2 { 0 } else { proto },
            dport: if i % 3 == 0 { dport } else { 0 },
            direction: dir,
        };
        if i % 3 == 0 && dport == 0 {
            continue;
        }
        if i >= 3 && remote == 0 {
            break;
        }
        match c.entries.get(&k) {
            Some(Verdict::Deny) => return false,
            Some(Verdict::Allow) => allowed = true,
            None => {}
        }
    }
    allowed || !c.selected.get(&local).is_some_and(|s| s.get(dir))
}

pub fn tcp(c: &Compiled, local: u32, remote: u32, port: u16, dir: Direction) -> bool {
    datapath_allows(c, local, remote, port, super::PROTO_TCP, dir)
}
