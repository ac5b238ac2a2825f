//! The probe's DNS modes (queries built and read with hickory-proto):
//!
//! - `dns-connect SERVER TEMPLATE FROM COUNT PORT TIMEOUT_MS`: for each i
//!   in FROM..FROM+COUNT, looks up TEMPLATE with `{}` replaced by i (A,
//!   over UDP; a lost query is asked again, up to 3 times), then at once
//!   opens a TCP connection to the first address on PORT, giving it
//!   TIMEOUT_MS (under the 1 s SYN retransmission: a dropped first packet
//!   is a failure). Prints `resolved R connected C` and one line per failure.
//! - `dns-load SERVER NAME QPS SECONDS`: a steady load of A queries for
//!   NAME, each on its own port with a 1 s deadline and no retry. Prints
//!   `sent S answered A failed F` (failed: no answer, or an RCODE other
//!   than NOERROR) and each failure's time.
//! - `dns-query SERVER NAME`: one query (UDP, then TCP if truncated);
//!   prints the RCODE and the addresses, one a line.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

fn query_bytes(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a DNS name"),
        RecordType::A,
    ));
    m.to_vec().expect("encoding a query")
}

/// One UDP exchange: the answer, or why there is none.
fn udp_ask(server: SocketAddr, name: &str, timeout: Duration) -> Result<Message, String> {
    let id = (std::process::id() as u16) ^ (Instant::now().elapsed().subsec_nanos() as u16);
    let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    sock.send(&query_bytes(name, id))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".to_string(),
        _ => e.to_string(),
    })?;
    Message::from_vec(&buf[..n]).map_err(|e| format!("unreadable answer: {e}"))
}

fn tcp_ask(server: SocketAddr, name: &str, timeout: Duration) -> Result<Message, String> {
    let mut s = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let q = query_bytes(name, 7);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| format!("unreadable answer: {e}"))
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

/// The RCODE as dig prints it.
fn rcode(c: ResponseCode) -> String {
    match u16::from(c) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn server(s: &str) -> SocketAddr {
    format!("{s}:53").parse().expect("a server IP")
}

pub fn connect_after_lookup(
    srv: &str,
    template: &str,
    from: &str,
    count: &str,
    port: &str,
    timeout_ms: &str,
) -> ExitCode {
    let srv = server(srv);
    let from: u32 = from.parse().expect("from");
    let count: u32 = count.parse().expect("count");
    let port: u16 = port.parse().expect("port");
    let t = Duration::from_millis(timeout_ms.parse().expect("milliseconds"));
    let (mut resolved, mut connected) = (0, 0);
    for i in from..from + count {
        let name = template.replace("{}", &i.to_string());
        let answer = (0..3).find_map(|_| udp_ask(srv, &name, Duration::from_secs(1)).ok());
        let Some(addr) = answer.as_ref().and_then(|m| addresses(m).first().copied()) else {
            println!("unresolved {name}");
            continue;
        };
        resolved += 1;
        match TcpStream::connect_timeout(&SocketAddr::from((addr, port)), t) {
            Ok(_) => connected += 1,
            Err(e) => println!("failed {name} {addr}: {e}"),
        }
    }
    println!("resolved {resolved} connected {connected}");
    ExitCode::SUCCESS
}

pub fn load(srv: &str, name: &str, qps: &str, secs: &str) -> ExitCode {
    let srv = server(srv);
    let qps: f64 = qps.parse().expect("qps");
    let secs: f64 = secs.parse().expect("seconds");
    let total = (qps * secs) as u64;
    let every = Duration::from_secs_f64(1.0 / qps);
    let start = Instant::now();
    let mut threads = Vec::new();
    for i in 0..total {
        let due = start + every.mul_f64(i as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            let at = start.elapsed().as_secs_f64();
            match udp_ask(srv, &name, Duration::from_secs(1)) {
                Ok(m) if m.metadata.response_code == ResponseCode::NoError => None,
                Ok(m) => Some(format!("{at:.3} {}", rcode(m.metadata.response_code))),
                Err(e) => Some(format!("{at:.3} {e}")),
            }
        }));
    }
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().ok().flatten())
        .collect();
    println!(
        "sent {total} answered {} failed {}",
        total - failures.len() as u64,
        failures.len()
    );
    for f in failures.iter().take(20) {
        println!("failure {f}");
    }
    ExitCode::SUCCESS
}

pub fn query(srv: &str, name: &str) -> ExitCode {
    let srv = server(srv);
    let m = match udp_ask(srv, name, Duration::from_secs(2)) {
        Ok(m) if m.metadata.truncation => tcp_ask(srv, name, Duration::from_secs(2)),
        other => other,
    };
    match m {
        Ok(m) => {
            println!("{}", rcode(m.metadata.response_code));
            for a in addresses(&m) {
                println!("{a}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error {e}");
            ExitCode::from(1)
        }
    }
}
