//! The proxy's decisions on real DNS packets built with hickory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::decide::{servfail, Action, Decider, RefuseWith, Verdict};
use super::state::{FqdnEgress, FqdnReach, IdentityDns, ProxyPolicy};
use crate::fqdn::NameMatch;

const APP: u32 = 0x0001_0101;
const OPEN: u32 = 0x0001_0102;
const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);

fn name(n: &str) -> NameMatch {
    NameMatch::MatchName(n.into())
}

fn pattern(p: &str) -> NameMatch {
    NameMatch::MatchPattern(p.into())
}

fn policy() -> ProxyPolicy {
    ProxyPolicy {
        revision: 1,
        identities: BTreeMap::from([
            (
                APP,
                IdentityDns {
                    lookups: Some(vec![pattern("*.example.com"), name("api.stripe.com")]),
                    reach: vec![
                        FqdnReach {
                            names: vec![name("api.example.com")],
                            ports: vec![(6, 443)],
                        },
                        FqdnReach {
                            names: vec![pattern("*.example.com")],
                            ports: vec![(6, 8080)],
                        },
                    ],
                },
            ),
            (OPEN, IdentityDns::default()),
        ]),
        egress: vec![FqdnEgress {
            policy: "via-gw".into(),
            tag: 7,
            names: vec![name("api.example.com")],
            sources: vec![POD],
            excluded: vec!["203.0.113.128/25".parse().expect("net")],
            snat_index: 0,
            gateways: vec![Ipv4Addr::new(100, 64, 0, 9)],
        }],
        clusterset: BTreeMap::from([(
            "web.shop.svc.clusterset.local".into(),
            Ipv4Addr::new(10, 96, 1, 1),
        )]),
    }
}

fn decider() -> Decider {
    Decider::new(policy(), RefuseWith::Refused, 30)
}

fn query(n: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(n).expect("name"), t));
    m.to_vec().expect("encode")
}

fn parse(b: &[u8]) -> Message {
    Message::from_vec(b).expect("decode")
}

fn replied(a: &Action) -> Message {
    match a {
        Action::Reply(b) => parse(b),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn allowed_names_are_forwarded_and_others_refused_with_the_id_kept() {
    let d = decider();
    let ok = d.on_query(Some(APP), &query("Www.Example.com.", RecordType::A));
    assert_eq!(ok.verdict, Verdict::Allowed);
    assert_eq!(ok.action, Action::Forward);
    assert_eq!(ok.question.expect("q").name, "www.example.com");

    let no = d.on_query(Some(APP), &query("evil.org", RecordType::A));
    assert_eq!(no.verdict, Verdict::Refused);
    let m = replied(&no.action);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.queries.len(), 1, "the question is echoed");

    // `*.example.com` does not match the apex.
    assert_eq!(
        d.on_query(Some(APP), &query("example.com", RecordType::A))
            .verdict,
        Verdict::Refused
    );
    // No DNS rule: any name.
    assert_eq!(
        d.on_query(Some(OPEN), &query("evil.org", RecordType::A))
            .verdict,
        Verdict::Allowed
    );
}

#[test]
fn refusal_can_be_nxdomain() {
    let d = Decider::new(policy(), RefuseWith::NxDomain, 0);
    let r = d.on_query(Some(APP), &query("evil.org", RecordType::A));
    assert_eq!(
        replied(&r.action).metadata.response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn unknown_identities_get_servfail_so_clients_retry() {
    let d = decider();
    for id in [None, Some(0x0001_0999)] {
        let r = d.on_query(id, &query("api.example.com", RecordType::A));
        assert_eq!(r.verdict, Verdict::UnknownIdentity);
        assert_eq!(
            replied(&r.action).metadata.response_code,
            ResponseCode::ServFail
        );
    }
}

#[test]
fn clusterset_names_are_answered_locally() {
    let d = decider();
    let r = d.on_query(
        Some(OPEN),
        &query("web.shop.svc.clusterset.local.", RecordType::A),
    );
    assert_eq!(r.verdict, Verdict::Local);
    let m = replied(&r.action);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 96, 1, 1))));
    // AAAA: the name exists, no IPv6 address.
    let r = d.on_query(
        Some(OPEN),
        &query("web.shop.svc.clusterset.local", RecordType::AAAA),
    );
    let m = replied(&r.action);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

fn answer(q: &[u8], records: Vec<Record>) -> Vec<u8> {
    let q = parse(q);
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.queries = q.queries.clone();
    m.answers = records;
    m.to_vec().expect("encode")
}

fn a(n: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(Name::from_ascii(n).expect("n"), ttl, RData::A(A(ip.into())))
}

fn cname(n: &str, target: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(n).expect("n"),
        300,
        RData::CNAME(CNAME(Name::from_ascii(target).expect("t"))),
    )
}

#[test]
fn answers_follow_cnames_raise_ttls_and_union_ports() {
    let d = decider();
    let q = query("api.example.com", RecordType::A);
    let question = d.on_query(Some(APP), &q).question.expect("q");
    // CNAME chain out of order, plus an unrelated A record that must not count.
    let ans = answer(
        &q,
        vec![
            a("edge.cdn.net.", [203, 0, 113, 10], 5),
            cname("api.example.com.", "lb.example.net."),
            cname("lb.example.net.", "edge.cdn.net."),
            a("other.org.", [198, 51, 100, 1], 600),
            a("edge.cdn.net.", [203, 0, 113, 200], 120),
        ],
    );
    let now = 1_000_000_000;
    let l = d.on_answer(APP, POD, &question, &ans, now);
    assert_eq!(
        l.addresses,
        vec![
            (Ipv4Addr::new(203, 0, 113, 10), 5),
            (Ipv4Addr::new(203, 0, 113, 200), 120)
        ]
    );
    // TTL 5 is raised to the minimum of 30 s; 120 is kept.
    assert_eq!(
        l.reach,
        vec![
            (Ipv4Addr::new(203, 0, 113, 10), now + 30_000_000_000),
            (Ipv4Addr::new(203, 0, 113, 200), now + 120_000_000_000)
        ]
    );
    // api.example.com matches both rules: 443 and 8080.
    assert_eq!(l.reach_ports, Some(vec![(6, 443), (6, 8080)]));
    // The egress policy: the excluded half of 203.0.113.0/24 gets no route.
    assert_eq!(l.egress.len(), 1);
    assert_eq!(l.egress[0].1, Ipv4Addr::new(203, 0, 113, 10));
    assert_eq!(l.egress[0].0.tag, 7);
}

#[test]
fn identities_without_fqdn_rules_learn_nothing_to_reach() {
    let d = decider();
    let q = query("api.example.com", RecordType::A);
    let question = d.on_query(Some(OPEN), &q).question.expect("q");
    let ans = answer(&q, vec![a("api.example.com.", [203, 0, 113, 10], 60)]);
    let l = d.on_answer(OPEN, Ipv4Addr::new(10, 1, 0, 9), &question, &ans, 0);
    assert_eq!(l.addresses.len(), 1);
    assert!(l.reach.is_empty());
    assert_eq!(l.reach_ports, None);
    assert!(
        l.egress.is_empty(),
        "another pod: not a source of the policy"
    );
}

#[test]
fn garbage_is_formerr_or_dropped_never_a_panic() {
    let d = decider();
    assert_eq!(d.on_query(Some(APP), &[]).action, Action::Drop);
    assert_eq!(d.on_query(Some(APP), &[1, 2, 3]).action, Action::Drop);
    let mut header_only = query("a.example.com", RecordType::A);
    header_only.truncate(14);
    let r = d.on_query(Some(APP), &header_only);
    assert_eq!(r.verdict, Verdict::Malformed);
    assert_eq!(
        replied(&r.action).metadata.response_code,
        ResponseCode::FormErr
    );
    // A name that is a compression pointer to itself.
    let mut looped = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(d.on_query(Some(APP), &looped).verdict, Verdict::Malformed);
    // A response sent as a query.
    let q = query("a.example.com", RecordType::A);
    let resp = answer(&q, vec![]);
    assert_eq!(d.on_query(Some(APP), &resp).verdict, Verdict::Malformed);
    // An answer that cannot be read teaches nothing.
    let question = d.on_query(Some(APP), &q).question.expect("q");
    assert_eq!(
        d.on_answer(APP, POD, &question, &looped, 0),
        Default::default()
    );
}

#[test]
fn servfail_keeps_the_question() {
    let q = query("api.example.com", RecordType::A);
    let m = parse(&servfail(&q).expect("servfail"));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.queries, parse(&q).queries);
    assert_eq!(servfail(&[0, 1]), None);
}
