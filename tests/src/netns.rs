//! Threads that run inside a lab namespace, for tests that open sockets
//! themselves (to send and check exact bytes) rather than run a tool.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

/// Runs `f` on a new thread that has entered network namespace `ns` (a
/// name under /run/netns); sockets it opens live there.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace fd; it changes this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "entering {path}: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
}

/// A deterministic byte stream (xorshift), so a receiver checks what it
/// got without the sender's copy.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}
