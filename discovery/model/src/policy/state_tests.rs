//! PolicyState: diffs applied from empty maps equal a full recompilation,
//! for random sequences of operations; and no flow allowed both before and
//! after a change is dropped while a diff is applied in its order.

use super::selector::{Op, Requirement};
use super::testutil::*;
use super::{
    compile, Compiled, Direction, FqdnMatch, Peers, Policy, PolicyDiff, PolicyKind, PolicyRef,
    PolicySpec, PolicyState, PortProto, Rule, Scope, Selection, Selector, Verdict, CLUSTER_LABEL,
    NAMESPACE_LABEL, PROTO_TCP, PROTO_UDP,
};
use crate::identity::Labels;

/// xorshift64*: small, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn word(&mut self, xs: &[&'static str]) -> &'static str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const APPS: &[&str] = &["web", "db", "client"];
const NAMESPACES: &[&str] = &["shop", "other"];

fn random_labels(r: &mut Rng, cluster: u8) -> Labels {
    let mut pairs = vec![("app", r.word(APPS))];
    if r.chance(40) {
        pairs.push(("tier", "front"));
    }
    pod(cluster, r.word(NAMESPACES), &pairs)
}

fn random_selector(r: &mut Rng) -> Selector {
    let mut s = Selector::all();
    for _ in 0..r.below(3) {
        let req = match r.below(6) {
            0 | 1 => Requirement::is_in("app", r.word(APPS)),
            2 => Requirement {
                key: "app".into(),
                op: Op::NotIn,
                values: [r.word(APPS).to_string()].into(),
            },
            3 => Requirement {
                key: "tier".into(),
                op: if r.chance(50) {
                    Op::Exists
                } else {
                    Op::DoesNotExist
                },
                values: Default::default(),
            },
            4 => Requirement::is_in(NAMESPACE_LABEL, r.word(NAMESPACES)),
            _ => Requirement::is_in(CLUSTER_LABEL, cluster_name(*r.pick(&[LOCAL, REMOTE]))),
        };
        s.requirements.push(req);
    }
    s
}

fn random_rule(r: &mut Rng) -> Rule {
    let ports_pool = [
        PortProto::ANY,
        PortProto {
            proto: PROTO_TCP,
            port: 80,
        },
        PortProto {
            proto: PROTO_TCP,
            port: 0,
        },
        PortProto {
            proto: PROTO_UDP,
            port: 53,
        },
    ];
    let n = 1 + r.below(2);
    Rule {
        direction: *r.pick(&[Direction::Ingress, Direction::Egress]),
        verdict: if r.chance(20) {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        peers: match r.below(5) {
            0 => Peers::Any,
            1 => Peers::Selected(Vec::new()),
            // Selects, gives no entries.
            2 => Peers::Fqdns(vec![FqdnMatch::Name("example.com".into())]),
            _ => Peers::Selected((0..1 + r.below(2)).map(|_| random_selector(r)).collect()),
        },
        ports: (0..n).map(|_| *r.pick(&ports_pool)).collect(),
        dns: Vec::new(),
    }
}

fn random_policy(r: &mut Rng, name: usize) -> Policy {
    let specs = (0..1 + r.below(2))
        .map(|_| PolicySpec {
            subject: random_selector(r),
            selects: Selection {
                ingress: r.chance(60),
                egress: r.chance(40),
            },
            rules: (0..r.below(4)).map(|_| random_rule(r)).collect(),
        })
        .collect();
    Policy {
        id: PolicyRef {
            kind: if r.chance(50) {
                PolicyKind::NetworkPolicy
            } else {
                PolicyKind::CiliumNetworkPolicy
            },
            namespace: "shop".into(),
            name: format!("p{name}"),
        },
        specs,
    }
}

/// Every (local, remote, port, proto, direction) the probes look at.
fn probes(ids: &[u32]) -> Vec<(u32, u32, u16, u8, Direction)> {
    let mut out = Vec::new();
    for &l in ids {
        for &rem in ids {
            for (port, proto) in [(80, PROTO_TCP), (53, PROTO_UDP), (22, PROTO_TCP)] {
                for d in [Direction::Ingress, Direction::Egress] {
                    out.push((l, rem, port, proto, d));
                }
            }
        }
    }
    out
}

/// Applies `diff` in its three steps, checking after each that every probe
/// allowed both before and after the whole diff is allowed.
fn apply_checked(
    maps: &mut Compiled,
    diff: &PolicyDiff,
    after: &Compiled,
    probe: &[(u32, u32, u16, u8, Direction)],
) {
    let before = maps.clone();
    let keep: Vec<_> = probe
        .iter()
        .filter(|(l, r, p, pr, d)| {
            datapath_allows(&before, *l, *r, *p, *pr, *d)
                && datapath_allows(after, *l, *r, *p, *pr, *d)
        })
        .collect();
    let steps = [
        PolicyDiff {
            set: diff.set.clone(),
            ..Default::default()
        },
        PolicyDiff {
            select: diff.select.clone(),
            ..Default::default()
        },
        PolicyDiff {
            remove: diff.remove.clone(),
            ..Default::default()
        },
    ];
    for (i, step) in steps.iter().enumerate() {
        step.apply_to(maps);
        for (l, r, p, pr, d) in &keep {
            assert!(
                datapath_allows(maps, *l, *r, *p, *pr, *d),
                "flow {l:#x}->{r:#x} {p}/{pr} {d:?} dropped after step {i} of {diff:?}"
            );
        }
    }
}

fn check_diff_is_minimal(before: &Compiled, diff: &PolicyDiff) {
    for (k, v) in &diff.set {
        assert_ne!(
            before.entries.get(k),
            Some(v),
            "set of an unchanged entry {k:?}"
        );
    }
    for k in &diff.remove {
        assert!(
            before.entries.contains_key(k),
            "removal of a missing entry {k:?}"
        );
        assert!(!diff.set.contains_key(k));
    }
    for (id, s) in &diff.select {
        let old = before.selected.get(id).copied().unwrap_or_default();
        assert_ne!(old, *s, "unchanged selection of {id:#x}");
    }
}

fn run_sequence(seed: u64, ops: usize, peers_any_cluster: bool) {
    let mut r = Rng(seed);
    let scope = Scope {
        peers_any_cluster,
        ..Scope::new(LOCAL)
    };
    let mut st = PolicyState::new(scope.clone());
    let mut maps = Compiled::default();
    let pool: Vec<u32> = (1..=5)
        .map(|n| id(LOCAL, n))
        .chain((1..=3).map(|n| id(REMOTE, n)))
        .collect();
    let probe = probes(&pool);
    for step in 0..ops {
        let diff = match r.below(10) {
            0..=2 => {
                let i = *r.pick(&pool);
                let c = if i >> 16 == u32::from(LOCAL) {
                    LOCAL
                } else {
                    REMOTE
                };
                let labels = random_labels(&mut r, c);
                st.add_identity(i, labels)
            }
            3 => st.remove_identity(*r.pick(&pool)),
            4..=7 => {
                let name = r.below(6);
                st.upsert_policy(random_policy(&mut r, name))
            }
            8 if r.chance(30) => {
                // A re-read of the files: some kept, some changed, some gone.
                let mut set: Vec<Policy> =
                    st.policies().filter(|_| r.chance(60)).cloned().collect();
                for _ in 0..r.below(3) {
                    let name = r.below(6);
                    let p = random_policy(&mut r, name);
                    if set.iter().all(|q| q.id != p.id) {
                        set.push(p);
                    }
                }
                match st.sync_policies(set) {
                    Ok(d) => d,
                    Err(e) => panic!("{e}"),
                }
            }
            _ => {
                let ids: Vec<PolicyRef> = st.policies().map(|p| p.id.clone()).collect();
                if ids.is_empty() {
                    continue;
                }
                st.remove_policy(r.pick(&ids))
            }
        };
        let full = compile(&scope, st.policies(), st.identities());
        check_diff_is_minimal(&maps, &diff);
        let mut expected = PolicyDiff::between(&maps, &full);
        expected.remove.sort();
        let mut got = diff.clone();
        got.remove.sort();
        assert_eq!(
            got, expected,
            "seed {seed} step {step}: the diff is exactly the change"
        );
        apply_checked(&mut maps, &diff, &full, &probe);
        assert_eq!(
            maps, full,
            "seed {seed} step {step}: diffs from empty != recompilation"
        );
        assert_eq!(st.maps(), full, "seed {seed} step {step}: state's own view");
    }
}

#[test]
fn random_operation_sequences_match_full_recompilation() {
    for seed in 1..=30u64 {
        run_sequence(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 120, seed % 4 == 0);
    }
}

#[test]
fn yaml_policies_incrementally() {
    let mut st = PolicyState::new(Scope::new(LOCAL));
    let web = id(LOCAL, 1);
    let client = id(LOCAL, 2);
    let remote_client = id(REMOTE, 1);
    let p = parse(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    - matchLabels: {app: client, io.cilium.k8s.policy.cluster: east}
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
    );
    let mut maps = Compiled::default();
    st.upsert_policy(p[0].clone()).apply_to(&mut maps);
    assert!(
        maps.entries.is_empty() && maps.selected.is_empty(),
        "no identities yet"
    );
    let d = st.add_identity(web, pod(LOCAL, "shop", &[("app", "web")]));
    assert_eq!(
        d.select.get(&web),
        Some(&Selection {
            ingress: true,
            egress: false
        })
    );
    assert!(d.set.is_empty());
    d.apply_to(&mut maps);
    let d = st.add_identity(remote_client, pod(REMOTE, "shop", &[("app", "client")]));
    assert_eq!(d.set.len(), 1, "one entry for the new peer: {d:?}");
    d.apply_to(&mut maps);
    st.add_identity(client, pod(LOCAL, "shop", &[("app", "client")]))
        .apply_to(&mut maps);
    assert!(tcp(&maps, web, client, 80, Direction::Ingress));
    assert!(tcp(&maps, web, remote_client, 80, Direction::Ingress));
    assert!(!tcp(&maps, web, remote_client, 81, Direction::Ingress));
    // The same policy again: nothing to do.
    assert!(st.upsert_policy(p[0].clone()).is_empty());
    assert!(st
        .add_identity(client, pod(LOCAL, "shop", &[("app", "client")]))
        .is_empty());
    // Relabelled: its entries go.
    let d = st.add_identity(client, pod(LOCAL, "shop", &[("app", "batch")]));
    assert_eq!(d.remove.len(), 1);
    d.apply_to(&mut maps);
    assert!(!tcp(&maps, web, client, 80, Direction::Ingress));
    let d = st.remove_policy(&p[0].id);
    assert_eq!(d.select.get(&web), Some(&Selection::default()));
    d.apply_to(&mut maps);
    assert_eq!(maps, Compiled::default());
    assert_eq!(st.maps(), Compiled::default());
    assert!(st.remove_policy(&p[0].id).is_empty());
}

#[test]
fn sync_gives_one_net_diff_and_refuses_duplicates() {
    let mut st = PolicyState::new(Scope::new(LOCAL));
    let web = id(LOCAL, 1);
    let client = id(LOCAL, 2);
    st.add_identity(web, pod(LOCAL, "shop", &[("app", "web")]));
    st.add_identity(client, pod(LOCAL, "shop", &[("app", "client")]));
    let a = parse(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
"#,
    );
    let b = parse(&a_yaml_renamed());
    let mut maps = Compiled::default();
    match st.sync_policies(a.clone()) {
        Ok(d) => d.apply_to(&mut maps),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(maps.entries.len(), 1);
    // a replaced by b, which gives the same entry: nothing to do in the maps.
    let d = st
        .sync_policies(b.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(st.policies().count(), 1);
    let twice = [b.clone(), b].concat();
    let e = st.sync_policies(twice).expect_err("duplicate");
    assert!(e.to_string().contains("given twice"), "{e}");
    assert_eq!(st.maps(), maps, "a refused sync changes nothing");
}

fn a_yaml_renamed() -> String {
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: shop}\n\
     spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80}]}]\n"
        .to_string()
}

#[test]
fn between_reconciles_maps_left_by_an_earlier_run() {
    let mut st = PolicyState::new(Scope::new(LOCAL));
    let mut r = Rng(7);
    for n in 1..=5 {
        let c = if n > 3 { REMOTE } else { LOCAL };
        st.add_identity(id(c, n), random_labels(&mut r, c));
    }
    for n in 0..4 {
        st.upsert_policy(random_policy(&mut r, n));
    }
    let old = st.maps();
    for n in 2..6 {
        st.upsert_policy(random_policy(&mut r, n));
    }
    let new = st.maps();
    assert_ne!(old, new, "the test needs a change");
    assert!(PolicyDiff::between(&new, &new).is_empty());
    let mut maps = old.clone();
    apply_checked(
        &mut maps,
        &PolicyDiff::between(&old, &new),
        &new,
        &probes(&[id(LOCAL, 1), id(LOCAL, 2), id(LOCAL, 3), id(REMOTE, 4)]),
    );
    assert_eq!(maps, new);
}
