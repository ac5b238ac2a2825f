//! `policy_bench`: the cost of compiling identity policy into map entries,
//! from scratch and incrementally, at about 10,000 entries.
//!
//! World: two clusters of `--identities` identities each (label sets over 100
//! apps and 5 namespaces) and `--policies` CiliumNetworkPolicies, policy k
//! selecting app svc{k} and allowing 2 TCP ports from apps svc{k+1} and
//! svc{k+2} of any namespace, in the local cluster and (by cluster label) in
//! the remote one. With the defaults that is 50 × 5 subjects × 20 peers ×
//! 2 ports = 10,000 entries.
//!
//! Figures, each the median of `--rounds` runs: parsing the YAML; a full
//! compile; building a `PolicyState` from empty; and single changes on the
//! full state (one policy changed, a local identity added, a remote identity
//! added, a policy removed). Anchor, measured in the same run: filling a
//! `HashMap` with the same 10,000 entries (what any compiler has to do at
//! least once); the single changes are also given against the full compile.
//!
//! CIDR rules: one policy allowing one local identity egress to
//! `--cidrs` /32 prefixes (default 10,000) on one port: collecting the
//! prefixes, numbering their CIDR identities with labels, a full compile
//! over the endpoint and CIDR identities, and adding the CIDR identities one
//! by one to a `PolicyState` holding the endpoints and the policy (the
//! agent's path when the prefixes appear). Anchor: the same `HashMap` fill
//! of that compile's entries.
//!
//! Run by `cargo xtask bench policy-compile`; by hand:
//! `cargo run --release -p meshgate-discovery --example policy_bench`.
//! The result is one JSON line on stdout.
#![allow(clippy::print_stdout)] // a benchmark driver: stdout is its output

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::Instant;

use meshgate_discovery::identity::{endpoint_labels, identity, Labels, CLUSTER_LABEL};
use meshgate_discovery::policy::cidr::{cidr_prefixes, CidrIdentities};
use meshgate_discovery::policy::selector::{Op, Requirement};
use meshgate_discovery::policy::{
    compile, parse_policies, Direction, Peers, Policy, PolicyKind, PolicyRef, PolicySpec,
    PolicyState, PortProto, Rule, Scope, Selection, Selector, Verdict, NAMESPACE_LABEL, PROTO_TCP,
};
use serde_json::json;

const USAGE: &str = "usage: policy_bench [--identities N per cluster (default 500, max 60000)] \
[--policies N (default 50, max 100)] [--cidrs N (default 10000, max 65280)] [--rounds N (default 21)]";

const LOCAL: u8 = 1;
const REMOTE: u8 = 2;

fn main() {
    let (identities, policies, cidrs, rounds) = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let ids = world(identities);
    let yaml = policy_yaml(policies);
    let scope = Scope::new(LOCAL);

    let parse_s = median(rounds, || {
        black_box(parse_policies(&yaml, "bench").map(|p| p.len()).unwrap_or(0));
    });
    let parsed: Vec<Policy> = match parse_policies(&yaml, "bench") {
        Ok(p) => p,
        Err(e) => {
            println!("{}", json!({"error": e.to_string()}));
            std::process::exit(1);
        }
    };
    let full = compile(&scope, &parsed, &ids);
    let entries: Vec<_> = full.entries.iter().map(|(k, v)| (*k, *v)).collect();

    let anchor_s = median(rounds, || {
        let mut m: HashMap<_, Verdict> = HashMap::new();
        for (k, v) in &entries {
            m.insert(*k, *v);
        }
        black_box(m.len());
    });
    let compile_s = median(rounds, || {
        black_box(compile(&scope, &parsed, &ids).entries.len());
    });
    let build = || {
        let mut st = PolicyState::new(scope.clone());
        for (id, l) in &ids {
            st.add_identity(*id, l.clone());
        }
        for p in &parsed {
            st.upsert_policy(p.clone());
        }
        st
    };
    let build_s = median(rounds, || {
        black_box(build().maps().entries.len());
    });
    let base = build();
    if base.maps() != full {
        println!(
            "{}",
            json!({"error": "PolicyState from empty differs from the full compile"})
        );
        std::process::exit(1);
    }

    // Single changes on the full state (cloned outside the timing).
    let changed = {
        let y = yaml.replacen("port: \"8080\"", "port: \"9090\"", 1);
        match parse_policies(&y, "bench") {
            Ok(p) => p[0].clone(),
            Err(e) => {
                println!("{}", json!({"error": e.to_string()}));
                std::process::exit(1);
            }
        }
    };
    let new_local = (identity(LOCAL, 65_000), pod(LOCAL, 0, 0, 999));
    let new_remote = (identity(REMOTE, 65_000), pod(REMOTE, 1, 1, 999));
    let one = |f: &dyn Fn(&mut PolicyState) -> usize| {
        let mut samples = Vec::new();
        let mut diff_len = 0;
        for _ in 0..rounds {
            let mut st = base.clone();
            let t = Instant::now();
            diff_len = black_box(f(&mut st));
            samples.push(t.elapsed().as_secs_f64());
        }
        (med(samples), diff_len)
    };
    let diff_size =
        |d: meshgate_discovery::policy::PolicyDiff| d.set.len() + d.remove.len() + d.select.len();
    let (change_s, change_n) = one(&|st| diff_size(st.upsert_policy(changed.clone())));
    let (local_s, local_n) =
        one(&|st| diff_size(st.add_identity(new_local.0, new_local.1.clone())));
    let (remote_s, remote_n) =
        one(&|st| diff_size(st.add_identity(new_remote.0, new_remote.1.clone())));
    let (remove_s, remove_n) = one(&|st| diff_size(st.remove_policy(&parsed[0].id)));
    let cidr = cidr_figures(&scope, &ids, cidrs, rounds);

    let op =
        |s: f64, n: usize| json!({"seconds": s, "diff_items": n, "vs_full_compile": s / compile_s});
    println!(
        "{}",
        json!({
            "identities": ids.len(),
            "policies": parsed.len(),
            "entries": full.entries.len(),
            "selected": full.selected.len(),
            "rounds": rounds,
            "anchor_hashmap_fill_s": anchor_s,
            "parse_s": parse_s,
            "compile_s": compile_s,
            "compile_vs_anchor": compile_s / anchor_s,
            "state_from_empty_s": build_s,
            "state_from_empty_vs_compile": build_s / compile_s,
            "change_policy": op(change_s, change_n),
            "add_local_identity": op(local_s, local_n),
            "add_remote_identity": op(remote_s, remote_n),
            "remove_policy": op(remove_s, remove_n),
            "cidr": cidr,
        })
    );
}

fn args() -> Result<(usize, usize, usize, usize), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (mut ids, mut pols, mut cidrs, mut rounds) = (500, 50, 10_000, 21);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        let n: usize = v.parse().map_err(|_| format!("{a} {v:?}: not a number"))?;
        match a.as_str() {
            "--identities" if (1..=60_000).contains(&n) => ids = n,
            "--policies" if (1..=100).contains(&n) => pols = n,
            "--cidrs" if (1..=65_280).contains(&n) => cidrs = n,
            "--rounds" if n >= 1 => rounds = n,
            _ => return Err(format!("{a} {v}: unknown option or out of range")),
        }
    }
    Ok((ids, pols, cidrs, rounds))
}

/// The CIDR figures (see the module docs), as JSON.
fn cidr_figures(
    scope: &Scope,
    ids: &BTreeMap<u32, Labels>,
    n: usize,
    rounds: usize,
) -> serde_json::Value {
    let exists = |key: String| Requirement {
        key,
        op: Op::Exists,
        values: Default::default(),
    };
    let peers: Vec<Selector> = (0..n as u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x6440_0000 + i);
            Selector::all()
                .with(exists(format!("cidr:{a}/32")))
                // Reaches cluster 0 under either rule for peers.
                .with(Requirement {
                    key: CLUSTER_LABEL.into(),
                    op: Op::DoesNotExist,
                    values: Default::default(),
                })
        })
        .collect();
    let policy = Policy {
        id: PolicyRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: "ns0".into(),
            name: "to-cidrs".into(),
        },
        specs: vec![PolicySpec {
            subject: Selector::all()
                .with(Requirement::is_in("app", "svc0"))
                .with(Requirement::is_in("version", "v0"))
                .with(Requirement::is_in(NAMESPACE_LABEL, "ns0")),
            selects: Selection {
                ingress: false,
                egress: true,
            },
            rules: vec![Rule {
                direction: Direction::Egress,
                verdict: Verdict::Allow,
                peers: Peers::Selected(peers),
                ports: vec![PortProto {
                    proto: PROTO_TCP,
                    port: 443,
                }],
                dns: vec![],
            }],
        }],
    };
    let policies = [policy];
    let prefixes_s = median(rounds, || {
        black_box(cidr_prefixes(&policies).len());
    });
    let named = cidr_prefixes(&policies);
    let number_s = median(rounds, || {
        let mut c = CidrIdentities::default();
        let _ = black_box(c.allocate(&named));
        black_box(c.identities(&named).len());
    });
    let mut c = CidrIdentities::default();
    if let Err(e) = c.allocate(&named) {
        return json!({"error": e.to_string()});
    }
    let mut all = ids.clone();
    all.extend(c.identities(&named));
    let compile_s = median(rounds, || {
        black_box(compile(scope, &policies, &all).entries.len());
    });
    let full = compile(scope, &policies, &all);
    let entries: Vec<_> = full.entries.iter().map(|(k, v)| (*k, *v)).collect();
    let anchor_s = median(rounds, || {
        let mut m: HashMap<_, Verdict> = HashMap::new();
        for (k, v) in &entries {
            m.insert(*k, *v);
        }
        black_box(m.len());
    });
    let mut base = PolicyState::new(scope.clone());
    for (id, l) in ids {
        base.add_identity(*id, l.clone());
    }
    base.upsert_policy(policies[0].clone());
    let cidr_ids = c.identities(&named);
    let add_rounds = rounds.clamp(1, 3);
    let mut samples = Vec::new();
    for _ in 0..add_rounds {
        let mut st = base.clone();
        let t = Instant::now();
        for (id, l) in &cidr_ids {
            black_box(st.add_identity(*id, l.clone()));
        }
        samples.push(t.elapsed().as_secs_f64());
        if st.maps() != full {
            return json!({"error": "adding the CIDR identities one by one differs from the full compile"});
        }
    }
    let add_s = med(samples);
    json!({
        "prefixes": named.len(),
        "entries": full.entries.len(),
        "anchor_hashmap_fill_s": anchor_s,
        "collect_prefixes_s": prefixes_s,
        "number_and_label_s": number_s,
        "compile_s": compile_s,
        "compile_vs_anchor": compile_s / anchor_s,
        "state_add_identities_s": add_s,
        "state_add_identities_vs_compile": add_s / compile_s,
    })
}

fn pod(cluster: u8, app: usize, ns: usize, version: usize) -> Labels {
    let l: Labels = [
        ("app".to_string(), format!("svc{app}")),
        ("version".to_string(), format!("v{version}")),
    ]
    .into();
    let cname = if cluster == LOCAL { "west" } else { "east" };
    endpoint_labels(&l, &format!("ns{ns}"), cname)
}

/// `n` identities per cluster; identity i has app svc{i % 100}, namespace
/// ns{i % 5} and version v{i / 100} (so label sets are distinct).
fn world(n: usize) -> BTreeMap<u32, Labels> {
    let mut ids = BTreeMap::new();
    for c in [LOCAL, REMOTE] {
        for i in 0..n {
            let id = identity(c, 256 + i as u16);
            ids.insert(id, pod(c, i % 100, i % 5, i / 100));
        }
    }
    ids
}

fn policy_yaml(n: usize) -> String {
    let mut out = String::new();
    for k in 0..n {
        let (a, b) = ((k + 1) % 100, (k + 2) % 100);
        out.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
             metadata: {{name: p{k}, namespace: ns{ns}}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: svc{k}}}}}\n  ingress:\n  \
             - fromEndpoints:\n    \
             - matchExpressions:\n      \
             - {{key: app, operator: In, values: [svc{a}, svc{b}]}}\n      \
             - {{key: io.kubernetes.pod.namespace, operator: Exists}}\n    \
             - matchExpressions:\n      \
             - {{key: app, operator: In, values: [svc{a}, svc{b}]}}\n      \
             - {{key: io.kubernetes.pod.namespace, operator: Exists}}\n      \
             - {{key: io.cilium.k8s.policy.cluster, operator: In, values: [east]}}\n    \
             toPorts:\n    - ports:\n      - {{port: \"8080\", protocol: TCP}}\n      \
             - {{port: \"8443\", protocol: TCP}}\n",
            ns = k % 5
        ));
    }
    out
}

fn median(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    med(samples)
}

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
