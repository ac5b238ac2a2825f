//! Traffic helper for the policy tests and benchmark, run inside a pod's
//! namespace (`ip netns exec NS mg-probe ...`):
//!
//! - `serve PORT[,PORT...]`: TCP echo servers (each connection echoes what
//!   it reads) until killed.
//! - `connect IP PORT TIMEOUT_MS`: exit 0 if a TCP connection opens and one
//!   byte comes back, 1 otherwise.
//! - `rr IP PORT SECONDS`: 1-byte request/response over one TCP connection
//!   for SECONDS; prints `local PORT` (its source port) once connected,
//!   then `transactions N rate R/s`; exits 1 (printing the error) if an
//!   exchange fails or takes over 2 s.
//! - `udp-recv PORT SECONDS`: counts datagrams for SECONDS; prints the count.
//! - `udp-send IP PORT INTERVAL_MS SECONDS`: one datagram every INTERVAL_MS.
//! - `name PORT NAME`: answers every TCP connection with NAME and closes it
//!   (the load-balancing tests' backends).
//! - `conns IP PORT COUNT INTERVAL_MS TIMEOUT_MS`: COUNT connections, one
//!   begun every INTERVAL_MS, each on its own thread (a slow one never
//!   delays the next); one line per connection, `<unix start time> <outcome>`
//!   where the outcome is `ok:<what the server sent>`, or how it failed:
//!   `timeout` (no SYN-ACK), `refused` (RST to the SYN), `unreachable`
//!   (ICMP unreachable or no route), `reset` (RST after connecting),
//!   `no-answer` (connected, nothing read in time), `closed` (connected,
//!   closed with nothing sent) or `error:<kind>`.
//! - `rate IP PORT SECONDS THREADS`: THREADS loops of connect, read to the
//!   end, close, for SECONDS; prints `connections N failed F rate R/s`.
//! - `hold-serve PORT`: accepts TCP connections and keeps every one open
//!   (reading nothing) until killed; prints `listening`. The port is bound
//!   with SO_REUSEPORT: several of them share it, each holding as many as
//!   its open-file limit allows.
//! - `hold IP PORT COUNT SECONDS`: opens COUNT connections (32 threads)
//!   and keeps them open for SECONDS; prints `held N of COUNT` once all
//!   were tried (with the first failure, if any), then `done`.
//! - `dns-connect`, `dns-load`, `dns-query`: see `mg-probe/dns.rs`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "mg-probe/dns.rs"]
mod dns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: mg-probe serve PORT[,PORT] | connect IP PORT TIMEOUT_MS | rr IP PORT SECONDS | \
         udp-recv PORT SECONDS | udp-send IP PORT INTERVAL_MS SECONDS | name PORT NAME | \
         conns IP PORT COUNT INTERVAL_MS TIMEOUT_MS | rate IP PORT SECONDS THREADS | \
         hold-serve PORT | hold IP PORT COUNT SECONDS | \
         dns-connect SERVER TEMPLATE FROM COUNT PORT TIMEOUT_MS | dns-load SERVER NAME QPS SECONDS | \
         dns-query SERVER NAME"
    );
    ExitCode::from(2)
}

fn addr(ip: &str, port: &str) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("IP and port")
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn serve(ports: &str) -> ExitCode {
    let mut handles = Vec::new();
    for p in ports.split(',') {
        let l = TcpListener::bind(format!("0.0.0.0:{p}")).expect("binding the port");
        handles.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || echo(s));
            }
        }));
    }
    println!("listening");
    for h in handles {
        let _ = h.join();
    }
    ExitCode::SUCCESS
}

fn exchange(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
}

fn connect(ip: &str, port: &str, timeout_ms: &str) -> ExitCode {
    let t = Duration::from_millis(timeout_ms.parse().expect("milliseconds"));
    let ok = TcpStream::connect_timeout(&addr(ip, port), t).and_then(|mut s| {
        s.set_read_timeout(Some(t))?;
        exchange(&mut s)
    });
    if ok.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn rr(ip: &str, port: &str, secs: &str) -> ExitCode {
    let d = Duration::from_secs_f64(secs.parse().expect("seconds"));
    let mut s = match TcpStream::connect_timeout(&addr(ip, port), Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            println!("error connecting: {e}");
            return ExitCode::from(1);
        }
    };
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if let Ok(local) = s.local_addr() {
        println!("local {}", local.port());
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < d {
        if let Err(e) = exchange(&mut s) {
            println!("error after {n} transactions: {e}");
            return ExitCode::from(1);
        }
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("transactions {n} rate {:.1}/s", n as f64 / secs);
    ExitCode::SUCCESS
}

fn udp_recv(port: &str, secs: &str) -> ExitCode {
    let d = Duration::from_secs_f64(secs.parse().expect("seconds"));
    let s = UdpSocket::bind(format!("0.0.0.0:{port}")).expect("binding the port");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    println!("listening");
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = [0u8; 2048];
    while start.elapsed() < d {
        if s.recv(&mut buf).is_ok() {
            n += 1;
        }
    }
    println!("received {n}");
    ExitCode::SUCCESS
}

fn udp_send(ip: &str, port: &str, interval_ms: &str, secs: &str) -> ExitCode {
    let d = Duration::from_secs_f64(secs.parse().expect("seconds"));
    let every = Duration::from_millis(interval_ms.parse().expect("milliseconds"));
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    let to = addr(ip, port);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        // A send refused for a moment (no route) is just not counted.
        if s.send_to(b"probe", to).is_ok() {
            n += 1;
        }
        std::thread::sleep(every);
    }
    println!("sent {n}");
    ExitCode::SUCCESS
}

fn name_serve(port: &str, name: &str) -> ExitCode {
    let l = TcpListener::bind(format!("0.0.0.0:{port}")).expect("binding the port");
    println!("listening");
    for mut s in l.incoming().flatten() {
        let _ = s.write_all(name.as_bytes());
    }
    ExitCode::SUCCESS
}

/// How one connection went (see the module comment).
fn outcome(to: SocketAddr, t: Duration) -> String {
    use std::io::ErrorKind as K;
    let mut s = match TcpStream::connect_timeout(&to, t) {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                K::TimedOut | K::WouldBlock => "timeout".into(),
                K::ConnectionRefused => "refused".into(),
                K::HostUnreachable | K::NetworkUnreachable => "unreachable".into(),
                other => format!("error:{other:?}"),
            }
        }
    };
    let _ = s.set_read_timeout(Some(t));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => "closed".into(),
        Ok(n) => format!("ok:{}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => match e.kind() {
            K::TimedOut | K::WouldBlock => "no-answer".into(),
            K::ConnectionReset | K::ConnectionAborted => "reset".into(),
            other => format!("error:{other:?}"),
        },
    }
}

fn conns(ip: &str, port: &str, count: &str, interval_ms: &str, timeout_ms: &str) -> ExitCode {
    let to = addr(ip, port);
    let count: u64 = count.parse().expect("count");
    let every = Duration::from_millis(interval_ms.parse().expect("milliseconds"));
    let t = Duration::from_millis(timeout_ms.parse().expect("milliseconds"));
    let start = Instant::now();
    let mut threads = Vec::new();
    for i in 0..count {
        // Paced from the start, so a late wake-up does not shift the rest.
        let due = start + every * u32::try_from(i).unwrap_or(u32::MAX);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        threads.push(std::thread::spawn(move || {
            let began = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let what = outcome(to, t);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{began:.3} {what}");
            let _ = out.flush();
        }));
    }
    for th in threads {
        let _ = th.join();
    }
    ExitCode::SUCCESS
}

fn rate(ip: &str, port: &str, secs: &str, threads: &str) -> ExitCode {
    let to = addr(ip, port);
    let d = Duration::from_secs_f64(secs.parse().expect("seconds"));
    let threads: usize = threads.parse().expect("threads");
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut buf = [0u8; 256];
                while start.elapsed() < d {
                    let done = TcpStream::connect_timeout(&to, Duration::from_secs(2)).and_then(
                        |mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            while s.read(&mut buf)? > 0 {}
                            Ok(())
                        },
                    );
                    match done {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        let (o, f) = h.join().unwrap_or((0, 0));
        ok += o;
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "connections {ok} failed {failed} rate {:.1}/s",
        ok as f64 / secs
    );
    ExitCode::SUCCESS
}

/// Raises the open-file limit as far as the hard limit allows (root: far).
fn more_files(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let target = want.max(lim.rlim_cur);
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: target.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A listener on `0.0.0.0:port` with SO_REUSEPORT, so that several
/// processes (each under its own open-file limit) share one port.
fn reuseport_listener(port: u16) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it is handed to TcpListener.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
            || libc::listen(fd, 65_535) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

fn hold_serve(port: &str) -> ExitCode {
    more_files(400_000);
    let l = reuseport_listener(port.parse().expect("port")).expect("binding the port");
    println!("listening");
    let mut held = Vec::new();
    let mut full = false;
    for s in l.incoming() {
        match s {
            Ok(s) => held.push(s),
            Err(e) => {
                // Out of descriptors: say so once, and let the other
                // processes on the port take the rest.
                if !full {
                    eprintln!("accept after {} connections: {e}", held.len());
                    full = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    ExitCode::SUCCESS
}

fn hold(ip: &str, port: &str, count: &str, secs: &str) -> ExitCode {
    let to = addr(ip, port);
    let count: usize = count.parse().expect("count");
    let d = Duration::from_secs_f64(secs.parse().expect("seconds"));
    more_files(count as u64 + 1024);
    const THREADS: usize = 32;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let n = count / THREADS + usize::from(t < count % THREADS);
            std::thread::spawn(move || {
                let mut kept = Vec::with_capacity(n);
                let mut first_error = None;
                for _ in 0..n {
                    match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                        Ok(s) => kept.push(s),
                        Err(e) => {
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                (kept, first_error)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    let mut first_error = None;
    for h in handles {
        if let Ok((mut kept, e)) = h.join() {
            all.append(&mut kept);
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    match first_error {
        Some(e) => println!("held {} of {count} (first failure: {e})", all.len()),
        None => println!("held {} of {count}", all.len()),
    }
    let _ = std::io::stdout().flush();
    std::thread::sleep(d);
    drop(all);
    println!("done");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["serve", ports] => serve(ports),
        ["connect", ip, port, t] => connect(ip, port, t),
        ["rr", ip, port, s] => rr(ip, port, s),
        ["udp-recv", port, s] => udp_recv(port, s),
        ["udp-send", ip, port, i, s] => udp_send(ip, port, i, s),
        ["name", port, name] => name_serve(port, name),
        ["conns", ip, port, n, i, t] => conns(ip, port, n, i, t),
        ["rate", ip, port, s, t] => rate(ip, port, s, t),
        ["hold-serve", port] => hold_serve(port),
        ["hold", ip, port, n, s] => hold(ip, port, n, s),
        ["dns-connect", srv, tmpl, from, n, port, t] => {
            dns::connect_after_lookup(srv, tmpl, from, n, port, t)
        }
        ["dns-load", srv, name, qps, s] => dns::load(srv, name, qps, s),
        ["dns-query", srv, name] => dns::query(srv, name),
        _ => usage(),
    }
}
