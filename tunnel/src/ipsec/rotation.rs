//! Zero-loss rotation of the mesh secret, pure (time passed in).
//!
//! A node that sees a new secret first accepts it: it installs the new
//! generation's SAs in both directions, but keeps sending under the old
//! one. Only after [`SWITCH_AFTER`], by when every node has seen the new
//! secret too and accepts it, do its outbound policies move to the new
//! generation; after [`RETIRE_AFTER`] more, when no peer can still be
//! sending under the old one, the old SAs go. So at every moment a packet
//! is sent only under a generation its receiver holds. The contract: the
//! new secret reaches every node within [`SWITCH_AFTER`] of the first.

use std::time::{Duration, Instant};

use super::keys::MeshSecret;

/// From first sight of a new secret to sending under it.
pub const SWITCH_AFTER: Duration = Duration::from_secs(3);
/// From sending under the new secret to removing the old one's SAs.
pub const RETIRE_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Next {
    secret: MeshSecret,
    seen: Instant,
    switched: Option<Instant>,
}

/// The secrets in use and the state of a rotation between them.
#[derive(Debug)]
pub struct Rotation {
    current: MeshSecret,
    next: Option<Next>,
}

impl Rotation {
    pub fn new(secret: MeshSecret) -> Self {
        Rotation {
            current: secret,
            next: None,
        }
    }

    /// Takes the secret as read now; a new one starts a rotation (a newer
    /// one mid-rotation, before the switch, replaces the one in progress).
    pub fn offer(&mut self, secret: MeshSecret, now: Instant) {
        if secret == self.current {
            return;
        }
        match &self.next {
            Some(n) if n.secret == secret => {}
            Some(n) if n.switched.is_some() => {} // finish this one first
            _ => {
                self.next = Some(Next {
                    secret,
                    seen: now,
                    switched: None,
                })
            }
        }
    }

    /// Advances the rotation; true when what must be installed changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let Some(n) = &mut self.next else {
            return false;
        };
        match n.switched {
            None if now.duration_since(n.seen) >= SWITCH_AFTER => {
                n.switched = Some(now);
                true
            }
            Some(at) if now.duration_since(at) >= RETIRE_AFTER => {
                if let Some(n) = self.next.take() {
                    self.current = n.secret;
                }
                true
            }
            _ => false,
        }
    }

    /// The secrets whose SAs must be installed: the current one and the
    /// one being rotated to.
    pub fn installed(&self) -> Vec<&MeshSecret> {
        let mut v = vec![&self.current];
        v.extend(self.next.as_ref().map(|n| &n.secret));
        v
    }

    /// The secret outbound traffic is sent under.
    pub fn outbound(&self) -> &MeshSecret {
        match &self.next {
            Some(n) if n.switched.is_some() => &n.secret,
            _ => &self.current,
        }
    }

    /// True while a rotation is in progress.
    pub fn rotating(&self) -> bool {
        self.next.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::Cipher;
    use super::*;

    fn s(generation: u8) -> MeshSecret {
        MeshSecret::new(generation, Cipher::AesGcm128, vec![generation; 32])
    }

    #[test]
    fn accept_then_switch_then_retire() {
        let t0 = Instant::now();
        let mut r = Rotation::new(s(1));
        r.offer(s(1), t0);
        assert!(!r.rotating());
        r.offer(s(2), t0);
        let gens = |r: &Rotation| {
            r.installed()
                .iter()
                .map(|s| s.generation)
                .collect::<Vec<_>>()
        };
        assert_eq!(gens(&r), vec![1, 2], "both accepted at once");
        assert_eq!(
            r.outbound().generation,
            1,
            "still sending under the old one"
        );
        assert!(!r.tick(t0 + SWITCH_AFTER - Duration::from_millis(1)));
        assert!(r.tick(t0 + SWITCH_AFTER));
        assert_eq!(r.outbound().generation, 2);
        assert_eq!(gens(&r), vec![1, 2], "the old one is still accepted");
        let t1 = t0 + SWITCH_AFTER;
        // A newer secret now waits for this rotation to end.
        r.offer(s(3), t1);
        assert!(!r.tick(t1 + RETIRE_AFTER - Duration::from_millis(1)));
        assert!(r.tick(t1 + RETIRE_AFTER));
        assert_eq!(gens(&r), vec![2]);
        assert!(!r.rotating());
        r.offer(s(3), t1 + RETIRE_AFTER);
        assert_eq!(gens(&r), vec![2, 3]);
    }

    #[test]
    fn a_newer_secret_before_the_switch_replaces_the_pending_one() {
        let t0 = Instant::now();
        let mut r = Rotation::new(s(1));
        r.offer(s(2), t0);
        r.offer(s(3), t0 + Duration::from_secs(1));
        let gens: Vec<u8> = r.installed().iter().map(|s| s.generation).collect();
        assert_eq!(gens, vec![1, 3]);
        assert!(!r.tick(t0 + SWITCH_AFTER), "the clock restarted for 3");
        assert!(r.tick(t0 + Duration::from_secs(1) + SWITCH_AFTER));
        assert_eq!(r.outbound().generation, 3);
    }
}
