#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;

fn records() -> Records {
    let a = |ips: &[&str], ttl| ZoneRecord::A {
        addresses: ips.iter().map(|i| i.parse().unwrap()).collect(),
        ttl,
        rotate: false,
    };
    BTreeMap::from([
        ("api.example.com".to_string(), a(&["203.0.113.10"], 30)),
        ("short.example.com".to_string(), a(&["203.0.113.11"], 2)),
        (
            "www.example.com".to_string(),
            ZoneRecord::Cname {
                target: "api.example.com".into(),
                ttl: 30,
            },
        ),
        (
            "alias.example.com.".to_string(),
            ZoneRecord::Cname {
                target: "WWW.example.com".into(),
                ttl: 5,
            },
        ),
        (
            "many.example.com".to_string(),
            ZoneRecord::Range {
                start: "198.18.0.1".parse().unwrap(),
                count: 1000,
                ttl: 30,
                rotate: false,
            },
        ),
        (
            "rotate.example.com".to_string(),
            ZoneRecord::Range {
                start: "198.18.8.1".parse().unwrap(),
                count: 64,
                ttl: 30,
                rotate: true,
            },
        ),
    ])
}

fn zone() -> Zone {
    Zone::new(&records()).unwrap()
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask(z: &Zone, name: &str, qtype: RecordType, t: Transport, edns: Option<u16>) -> Message {
    let out = respond(z, &query(name, qtype, edns), t).expect("a response");
    Message::from_vec(&out).unwrap()
}

fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_record_with_its_ttl() {
    let z = zone();
    let m = ask(&z, "api.example.com.", RecordType::A, Transport::Udp, None);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), ["203.0.113.10".parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(m.answers[0].ttl, 30);
    let m = ask(
        &z,
        "SHORT.Example.COM.",
        RecordType::A,
        Transport::Udp,
        None,
    );
    assert_eq!(m.answers[0].ttl, 2);
}

#[test]
fn cname_chain_then_addresses() {
    let z = zone();
    let m = ask(
        &z,
        "alias.example.com.",
        RecordType::A,
        Transport::Udp,
        None,
    );
    let kinds: Vec<(String, RecordType)> = m
        .answers
        .iter()
        .map(|r| (r.name.to_ascii(), r.record_type()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alias.example.com.".to_string(), RecordType::CNAME),
            ("www.example.com.".to_string(), RecordType::CNAME),
            ("api.example.com.".to_string(), RecordType::A),
        ]
    );
    assert_eq!(m.answers[0].ttl, 5);
    // A CNAME query gets the alias only.
    let m = ask(
        &z,
        "www.example.com.",
        RecordType::CNAME,
        Transport::Udp,
        None,
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
}

#[test]
fn unknown_names_are_nxdomain_and_aaaa_is_nodata() {
    let z = zone();
    let m = ask(&z, "nope.example.com.", RecordType::A, Transport::Udp, None);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    let m = ask(
        &z,
        "api.example.com.",
        RecordType::AAAA,
        Transport::Udp,
        None,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let z = zone();
    let m = ask(&z, "many.example.com.", RecordType::A, Transport::Udp, None);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
    let m = ask(
        &z,
        "many.example.com.",
        RecordType::A,
        Transport::Udp,
        Some(4096),
    );
    assert!(m.metadata.truncation, "16 kB do not fit 4096");
    assert!(m.edns.is_some(), "an EDNS query gets an OPT record back");
    let m = ask(&z, "many.example.com.", RecordType::A, Transport::Tcp, None);
    assert!(!m.metadata.truncation);
    let ips = addresses(&m);
    assert_eq!(ips.len(), 1000);
    assert_eq!(ips[0], Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(ips[999], Ipv4Addr::new(198, 18, 3, 232));
    // Twenty addresses fit 512 bytes; an EDNS size below 512 counts as 512.
    let mut r = records();
    r.insert(
        "twenty.example.com".into(),
        ZoneRecord::Range {
            start: Ipv4Addr::new(10, 0, 0, 1),
            count: 20,
            ttl: 1,
            rotate: false,
        },
    );
    let z = Zone::new(&r).unwrap();
    let m = ask(
        &z,
        "twenty.example.com.",
        RecordType::A,
        Transport::Udp,
        Some(100),
    );
    assert!(!m.metadata.truncation);
    assert_eq!(addresses(&m).len(), 20);
}

#[test]
fn rotating_names_answer_the_next_address_each_time() {
    let z = zone();
    let got: Vec<Ipv4Addr> = (0..66)
        .map(|_| {
            let m = ask(
                &z,
                "rotate.example.com.",
                RecordType::A,
                Transport::Udp,
                None,
            );
            let a = addresses(&m);
            assert_eq!(a.len(), 1);
            a[0]
        })
        .collect();
    assert_eq!(got[0], Ipv4Addr::new(198, 18, 8, 1));
    assert_eq!(got[63], Ipv4Addr::new(198, 18, 8, 64));
    assert_eq!(got[64], got[0], "wraps around");
    assert_eq!(got[65], got[1]);
}

#[test]
fn garbage_never_panics() {
    let z = zone();
    assert_eq!(respond(&z, &[], Transport::Udp), None);
    assert_eq!(respond(&z, &[1, 2, 3], Transport::Udp), None);
    // A header promising a question that is not there: FORMERR, same id.
    let mut q = query("api.example.com.", RecordType::A, None);
    q.truncate(15);
    let out = respond(&z, &q, Transport::Udp).unwrap();
    assert_eq!(&out[..2], &[0x12, 0x34]);
    assert_eq!(out[2] & 0x80, 0x80);
    assert_eq!(out[3] & 0x0f, 1, "FORMERR");
    // Responses are never answered (no loops between servers).
    let q = query("api.example.com.", RecordType::A, None);
    let resp = respond(&z, &q, Transport::Udp).unwrap();
    assert_eq!(respond(&z, &resp, Transport::Udp), None);
    // Every prefix and every single-byte corruption of a query.
    let q = query("alias.example.com.", RecordType::A, Some(1232));
    for n in 0..q.len() {
        let _ = respond(&z, &q[..n], Transport::Udp);
    }
    for i in 0..q.len() {
        for b in [0u8, 0x3f, 0xc0, 0xff] {
            let mut c = q.clone();
            c[i] = b;
            let _ = respond(&z, &c, Transport::Tcp);
        }
    }
    // Pseudo-random datagrams.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        let len = (x % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = respond(&z, &bytes, Transport::Udp);
    }
}

#[test]
fn two_questions_are_formerr_and_other_opcodes_notimp() {
    let z = zone();
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str("a.").unwrap(), RecordType::A));
    m.add_query(Query::query(Name::from_str("b.").unwrap(), RecordType::A));
    let out =
        Message::from_vec(&respond(&z, &m.to_vec().unwrap(), Transport::Udp).unwrap()).unwrap();
    assert_eq!(out.metadata.response_code, ResponseCode::FormErr);
    let mut m = Message::new(8, MessageType::Query, OpCode::Status);
    m.add_query(Query::query(Name::from_str("a.").unwrap(), RecordType::A));
    let out =
        Message::from_vec(&respond(&z, &m.to_vec().unwrap(), Transport::Udp).unwrap()).unwrap();
    assert_eq!(out.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn zone_checks_name_each_problem() {
    let cname = |t: &str| ZoneRecord::Cname {
        target: t.into(),
        ttl: 1,
    };
    let bad = BTreeMap::from([
        ("a.example".to_string(), cname("b.example")),
        ("b.example".to_string(), cname("a.example.")),
        ("c.example".to_string(), cname("nowhere.example")),
        ("bad name".to_string(), cname("a.example")),
        ("*.example".to_string(), cname("a.example")),
        (
            "big.example".to_string(),
            ZoneRecord::Range {
                start: Ipv4Addr::new(10, 0, 0, 0),
                count: 5000,
                ttl: 1,
                rotate: false,
            },
        ),
        (
            "edge.example".to_string(),
            ZoneRecord::Range {
                start: Ipv4Addr::new(255, 255, 255, 0),
                count: 257,
                ttl: 1,
                rotate: true,
            },
        ),
        (
            "none.example".to_string(),
            ZoneRecord::A {
                addresses: vec![],
                ttl: 1,
                rotate: false,
            },
        ),
        ("Dup.example".to_string(), cname("none.example")),
        ("dup.example.".to_string(), cname("none.example")),
    ]);
    let errors: Vec<String> = zone::check(&bad).iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "no {needle:?} in {errors:#?}"
        )
    };
    has("a.example: CNAME loop a.example -> b.example -> a.example");
    has("c.example: cname target \"nowhere.example\" is not among the records");
    has("\"bad name\" is not a DNS name");
    has("wildcard records are not served");
    has("big.example: 5000 addresses in one answer");
    has("edge.example: the range from 255.255.255.0 with 257 addresses goes past");
    has("none.example: no addresses");
    has("given twice");
    assert!(zone::check(&records()).is_empty());
}

#[test]
fn serves_udp_and_tcp_on_loopback() {
    let sockets = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sockets.udp.local_addr().unwrap();
    assert_eq!(sockets.tcp.local_addr().unwrap(), addr);
    let z = Arc::new(zone());
    std::thread::spawn(move || serve(z, sockets));

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.send_to(&query("api.example.com.", RecordType::A, None), addr)
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(addresses(&m), [Ipv4Addr::new(203, 0, 113, 10)]);

    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        let q = query("many.example.com.", RecordType::A, None);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        tcp.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut body).unwrap();
        let m = Message::from_vec(&body).unwrap();
        assert_eq!(addresses(&m).len(), 1000);
    }
}
