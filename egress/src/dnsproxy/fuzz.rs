//! The fuzzed path: one input through parse-and-decide, as the proxy runs
//! it on a pod's query and then on an upstream's answer. The cargo-fuzz
//! target (`egress/fuzz`, `cargo xtask fuzz`) calls [`one`]; the unit tests
//! replay the corpus in `egress/fuzz/corpus/decide` and mutations of it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use super::decide::{Decider, Question, RefuseWith};
use super::state::{FqdnEgress, FqdnReach, IdentityDns, ProxyPolicy};
use crate::fqdn::NameMatch;

fn decider() -> &'static Decider {
    static D: OnceLock<Decider> = OnceLock::new();
    D.get_or_init(|| {
        let m = |p: &str| NameMatch::MatchPattern(p.into());
        let policy = ProxyPolicy {
            revision: 1,
            identities: BTreeMap::from([
                (
                    1,
                    IdentityDns {
                        lookups: Some(vec![m("*.example.com"), m("**.cdn.net"), m("*")]),
                        reach: vec![FqdnReach {
                            names: vec![m("**.example.com"), m("api*.stripe.com")],
                            ports: vec![(6, 443)],
                        }],
                    },
                ),
                (
                    2,
                    IdentityDns {
                        lookups: Some(vec![NameMatch::MatchName("only.example.com".into())]),
                        reach: vec![],
                    },
                ),
                (3, IdentityDns::default()),
            ]),
            egress: vec![FqdnEgress {
                policy: "p".into(),
                tag: 1,
                names: vec![m("*")],
                sources: vec![Ipv4Addr::new(10, 0, 0, 1)],
                excluded: vec![],
                snat_index: 1,
                gateways: vec![Ipv4Addr::new(100, 64, 0, 1)],
            }],
            clusterset: BTreeMap::from([(
                "a.b.svc.clusterset.local".into(),
                Ipv4Addr::new(10, 96, 0, 1),
            )]),
        };
        Decider::new(policy, RefuseWith::Refused, 5)
    })
}

/// Decides about `data` as a query from each identity, then reads it as the
/// answer to its own question (or to a fixed one). Must never panic.
pub fn one(data: &[u8]) {
    let d = decider();
    let identity = data.first().map(|b| u32::from(b % 5));
    let mut question = None;
    for id in [identity, None, Some(1)] {
        let r = d.on_query(id, data);
        if question.is_none() {
            question = r.question;
        }
    }
    let q = question.unwrap_or(Question {
        id: 0,
        name: "api.example.com".into(),
        qtype: hickory_proto::rr::RecordType::A,
    });
    let learned = d.on_answer(1, Ipv4Addr::new(10, 0, 0, 1), &q, data, 0);
    // The decider's name index agrees with the plain walk over the rules.
    if let Some(rules) = d.policy.identities.get(&1) {
        if !learned.addresses.is_empty() {
            assert_eq!(
                learned.reach_ports,
                super::decide::reach_ports(rules, &q.name),
                "{}",
                q.name
            );
        }
    }
    let _ = super::decide::servfail(data);
    for n in [d.policy.identities.get(&1)] {
        if let (Some(rules), Ok(s)) = (n, std::str::from_utf8(data)) {
            let _ = super::decide::may_look_up(rules, s);
            let _ = super::decide::reach_ports(rules, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decide");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).expect("read");
                (p, b)
            })
            .collect()
    }

    #[test]
    fn the_corpus_replays_without_a_panic() {
        let c = corpus();
        assert!(c.len() >= 10, "the corpus has {} inputs", c.len());
        for (_, data) in &c {
            super::one(data);
        }
    }

    /// A deterministic stand-in for a fuzzer run: truncations, bit flips,
    /// pointer bytes and length bytes over every corpus input.
    #[test]
    fn mutations_of_the_corpus_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut runs = 0;
        for (_, data) in corpus() {
            for cut in 0..data.len() {
                super::one(&data[..cut]);
                runs += 1;
            }
            for _ in 0..400 {
                let mut m = data.clone();
                if m.is_empty() {
                    break;
                }
                for _ in 0..=(next() % 4) {
                    let i = (next() as usize) % m.len();
                    m[i] = match next() % 4 {
                        0 => m[i] ^ (1 << (next() % 8)),
                        1 => 0xc0 | (next() as u8 & 0x3f),
                        2 => 0xff,
                        _ => next() as u8,
                    };
                }
                super::one(&m);
                runs += 1;
            }
        }
        assert!(runs > 1000, "{runs} runs");
    }
}
