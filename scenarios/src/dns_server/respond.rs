//! One DNS query in, one response out: no sockets, so it is tested with
//! plain bytes.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::zone::{normalise, Entry, Zone};

/// How the query came, which bounds the response's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// UDP payload size without EDNS (RFC 1035).
pub const CLASSIC_UDP: usize = 512;
/// The UDP payload size the server advertises in its OPT record.
pub const SERVER_UDP_PAYLOAD: u16 = 1232;

/// The response to `query`, or `None` when nothing should be sent (too
/// short to carry an id, or itself a response).
pub fn respond(zone: &Zone, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let msg = match Message::from_vec(query) {
        Ok(msg) => msg,
        Err(_) => return error_header(query, ResponseCode::FormErr),
    };
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut out = Message::response(msg.metadata.id, msg.metadata.op_code);
    out.metadata.recursion_desired = msg.metadata.recursion_desired;
    out.metadata.checking_disabled = msg.metadata.checking_disabled;
    if let Some(edns) = &msg.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(SERVER_UDP_PAYLOAD);
        ours.set_dnssec_ok(edns.flags().dnssec_ok);
        out.set_edns(ours);
    }
    out.add_queries(msg.queries.iter().cloned());
    if msg.metadata.op_code != OpCode::Query {
        out.metadata.response_code = ResponseCode::NotImp;
    } else if msg.queries.len() != 1 {
        out.metadata.response_code = ResponseCode::FormErr;
    } else {
        answer(zone, &msg.queries[0], &mut out);
    }
    encode(&out, &msg, transport)
}

/// Fills in the answer (and the response code) for one question.
fn answer(zone: &Zone, q: &Query, out: &mut Message) {
    if q.query_class() != DNSClass::IN {
        out.metadata.response_code = ResponseCode::Refused;
        return;
    }
    let qtype = q.query_type();
    let mut owner: Name = q.name().clone();
    let mut key = normalise(&owner.to_ascii());
    let Some(mut entry) = zone.get(&key) else {
        out.metadata.response_code = ResponseCode::NXDomain;
        return;
    };
    out.metadata.authoritative = true;
    // The zone was checked: chains end at an address record within
    // MAX_CNAME_CHAIN steps. The bound keeps a bad zone from looping.
    for _ in 0..=super::zone::MAX_CNAME_CHAIN {
        match entry {
            Entry::Cname {
                ttl,
                target,
                key: next,
            } => {
                out.add_answer(Record::from_rdata(
                    owner.clone(),
                    *ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                if qtype == RecordType::CNAME {
                    return;
                }
                owner = target.clone();
                key.clone_from(next);
                match zone.get(&key) {
                    Some(e) => entry = e,
                    None => return,
                }
            }
            Entry::Addresses { ttl, .. } => {
                if matches!(qtype, RecordType::A | RecordType::ANY) {
                    let ttl = *ttl;
                    let records = entry.answer_addresses().into_iter().map(|ip: Ipv4Addr| {
                        Record::from_rdata(owner.clone(), ttl, RData::A(A(ip)))
                    });
                    out.add_answers(records);
                }
                // AAAA and every other type: NOERROR, no data.
                return;
            }
        }
    }
}

/// The response bytes, truncated (TC, no answers) when they do not fit
/// the client's UDP payload size.
fn encode(out: &Message, query: &Message, transport: Transport) -> Option<Vec<u8>> {
    let bytes = match out.to_vec() {
        Ok(b) => b,
        Err(_) => {
            let mut fail = Message::error_msg(
                out.metadata.id,
                out.metadata.op_code,
                ResponseCode::ServFail,
            );
            fail.add_queries(out.queries.iter().cloned());
            return fail.to_vec().ok();
        }
    };
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => query
            .edns
            .as_ref()
            .map(|e| usize::from(e.max_payload()).max(CLASSIC_UDP))
            .unwrap_or(CLASSIC_UDP),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut short = out.truncate();
    short.metadata.truncation = true;
    short.to_vec().ok()
}

/// A bare header echoing the query's id and opcode, for a query that does
/// not parse.
fn error_header(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let mut h = [0u8; 12];
    h[0] = query[0];
    h[1] = query[1];
    // QR, the query's opcode, RD copied.
    h[2] = 0x80 | (query[2] & 0x79);
    h[3] = code.low();
    Some(h.to_vec())
}
