//! The WireGuard port shared by an old and a new process during a
//! restart's handover (`SO_REUSEPORT`), and the classic BPF program that
//! sends each datagram to the process that holds its session.
//!
//! Every session index a process makes carries its generation in bit 23
//! (the top bit of the little-endian receiver index on the wire: byte 3 of
//! the field). The old process, when it starts handing over, attaches a
//! program to the port's reuseport group that picks socket 0 (itself: it
//! joined first) for its own generation and socket 1 (the newcomer) for
//! the other, and for handshake initiations, which open new sessions. Once
//! the old socket closes, the new one is socket 0 and the kernel falls back
//! to it for any index the program returns that no longer exists.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};

const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

// Classic BPF opcodes.
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;

/// Binds UDP `port` on every address with `SO_REUSEPORT`, so a new process
/// can bind beside an old one during a handover.
pub fn bind_reuseport(port: u16) -> io::Result<UdpSocket> {
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh socket nothing else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(raw) };
    if !super::io::set_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1) {
        return Err(io::Error::last_os_error());
    }
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: bind with a sockaddr_in and its size.
    if unsafe {
        libc::bind(
            raw,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } < 0
    {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("binding {addr}: {e}")));
    }
    Ok(sock)
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program of the process whose generation is `mine`, which
/// is socket 0 of the group (see the module comment). The program sees the
/// UDP payload: a WireGuard message starts with its type; the receiver
/// index is at 4 (cookie reply, data) or 8 (handshake response).
pub fn program(mine: u32) -> Vec<libc::sock_filter> {
    // jset #0x80 on the index's top byte: set means generation 1.
    let (jt, jf) = if mine == 1 { (0, 1) } else { (1, 0) };
    vec![
        insn(LD_B_ABS, 0, 0, 0),    // 0: A = type
        insn(JEQ_K, 6, 0, 1),       // 1: initiation -> 8 (newcomer)
        insn(JEQ_K, 2, 0, 2),       // 2: response -> 5
        insn(LD_B_ABS, 0, 0, 7),    // 3: A = receiver index, top byte
        insn(JA, 0, 0, 1),          // 4: -> 6
        insn(LD_B_ABS, 0, 0, 11),   // 5: A = receiver index (response), top byte
        insn(JSET_K, jt, jf, 0x80), // 6: mine -> 7, other -> 8
        insn(RET_K, 0, 0, 0),       // 7: this process
        insn(RET_K, 0, 0, 1),       // 8: the newcomer
    ]
}

/// Attaches [`program`] for generation `mine` to `sock`'s reuseport group.
pub fn attach(sock: &UdpSocket, mine: u32) -> io::Result<()> {
    let prog = program(mine);
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt with a sock_fprog whose filter outlives the call
    // (the kernel copies it).
    if unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs the program as the kernel would, over a datagram's payload
    /// (a load past the end returns 0, as classic BPF aborts with 0).
    fn run(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0;
        loop {
            let i = prog[pc];
            match i.code {
                LD_B_ABS => match pkt.get(i.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                JEQ_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                JSET_K => {
                    pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf });
                }
                JA => pc += i.k as usize,
                RET_K => return i.k,
                other => panic!("opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    /// A message of `kind` whose receiver index is `index` (24 bits, the
    /// slot index) with session counter `n`, as boringtun puts it on the wire.
    fn message(kind: u8, index: u32, n: u8) -> Vec<u8> {
        let wire = (index << 8) | u32::from(n);
        let mut m = vec![0u8; 32];
        m[0] = kind;
        let at = if kind == 2 { 8 } else { 4 };
        m[at..at + 4].copy_from_slice(&wire.to_le_bytes());
        m
    }

    #[test]
    fn datagrams_go_to_the_process_of_their_session() {
        let gen0 = 0x00_1234;
        let gen1 = 0x80_1234;
        for (mine, own, other) in [(0, gen0, gen1), (1, gen1, gen0)] {
            let p = program(mine);
            for kind in [2u8, 3, 4] {
                assert_eq!(
                    run(&p, &message(kind, own, 7)),
                    0,
                    "type {kind}, own session"
                );
                assert_eq!(
                    run(&p, &message(kind, other, 7)),
                    1,
                    "type {kind}, newcomer's"
                );
            }
            assert_eq!(
                run(&p, &message(1, 0, 0)),
                1,
                "initiations go to the newcomer"
            );
            assert_eq!(
                run(&p, &[4, 0]),
                0,
                "a short datagram stays (and is dropped there)"
            );
        }
    }

    #[test]
    fn two_sockets_share_the_port_and_the_program_attaches() {
        let a = bind_reuseport(0).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = bind_reuseport(port).expect("a second socket on the port");
        attach(&a, 0).expect("the steering program attaches");
        // socket 0 (a) gets its own generation's data, b the other's.
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for (index, want_a) in [(0x00_0042u32, true), (0x80_0042, false)] {
            tx.send_to(&message(4, index, 1), ("127.0.0.1", port))
                .unwrap();
            let (got, other) = if want_a { (&a, &b) } else { (&b, &a) };
            got.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 64];
            let n = got.recv(&mut buf).expect("steered to the right socket");
            assert_eq!(&buf[..n], &message(4, index, 1)[..]);
            other.set_nonblocking(true).unwrap();
            assert!(
                other.recv(&mut buf).is_err(),
                "nothing reached the other socket"
            );
            other.set_nonblocking(false).unwrap();
        }
    }
}
