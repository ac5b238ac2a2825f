//! The session on a virtual clock: time is an `Instant` the test moves,
//! the shell's answers are given by hand, and nothing sleeps.

use super::*;

const TTL: Duration = Duration::from_secs(9);

/// A session and its clock.
struct World {
    s: Session,
    now: Instant,
}

impl World {
    fn new(urls: &[&str]) -> World {
        let now = Instant::now();
        World {
            s: Session::new(urls.iter().map(|u| u.to_string()).collect(), now),
            now,
        }
    }

    /// Moves the clock to the session's next wake-up (asserting there is
    /// one) and wakes it; returns how far the clock moved.
    fn wake(&mut self) -> Duration {
        let at = self
            .s
            .poll_timeout()
            .expect("the session waits for nothing");
        let moved = at.saturating_duration_since(self.now);
        self.now = self.now.max(at);
        self.s.handle_timeout(self.now);
        moved
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
    }

    fn input(&mut self, i: Input) {
        self.s.handle(i, self.now);
    }

    fn effects(&mut self) -> Vec<Effect> {
        std::iter::from_fn(|| self.s.poll_effect()).collect()
    }

    /// Connects, registers and watches at the current replica.
    fn establish(&mut self) {
        assert!(matches!(self.effects()[..], [Effect::Connect { .. }]));
        self.input(Input::Connected);
        assert_eq!(self.effects(), [Effect::Register]);
        self.input(Input::Registered { lease_ttl: TTL });
        assert_eq!(self.effects(), [Effect::Report, Effect::Watch]);
        self.input(Input::Watching);
        assert!(self.s.connected());
    }
}

fn connect(url: &str) -> Effect {
    Effect::Connect { url: url.into() }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[test]
fn the_first_replica_is_tried_at_once() {
    let mut w = World::new(&["a", "b"]);
    assert_eq!(ms(w.wake()), 0);
    assert_eq!(w.effects(), [connect("a")]);
    assert!(!w.s.connected());
    assert_eq!(
        w.s.poll_timeout(),
        None,
        "nothing to wait for while connecting"
    );
}

#[test]
fn one_replica_backs_off_doubling_to_five_seconds() {
    let mut w = World::new(&["a"]);
    let mut waits = Vec::new();
    w.wake();
    for _ in 0..7 {
        assert_eq!(w.effects(), [connect("a")]);
        w.input(Input::ConnectFailed("refused".into()));
        let ended = w.effects();
        assert!(matches!(&ended[..], [Effect::EndSession { reason, .. }] if reason == "refused"));
        waits.push(ms(w.wake()));
    }
    assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
}

#[test]
fn a_failed_replica_hands_over_to_the_next_at_once_and_a_failed_round_backs_off() {
    let mut w = World::new(&["a", "b"]);
    w.wake();
    w.establish();
    // a's stream breaks: b after the short wait, with what was applied kept.
    w.input(Input::StreamBroke("a went away".into()));
    match &w.effects()[..] {
        [Effect::EndSession {
            url,
            next,
            retry_in,
            ..
        }] => {
            assert_eq!(
                (url.as_str(), next.as_str(), ms(*retry_in)),
                ("a", "b", 200)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!w.s.connected());
    assert_eq!(ms(w.wake()), 200);
    assert_eq!(w.effects(), [connect("b")]);
    // b is down too, then a: the round failed, so the wait doubles.
    w.input(Input::ConnectFailed("b down".into()));
    w.effects();
    assert_eq!(ms(w.wake()), 200);
    assert_eq!(w.effects(), [connect("a")]);
    w.input(Input::ConnectFailed("a down".into()));
    w.effects();
    assert_eq!(ms(w.wake()), 200);
    w.input(Input::ConnectFailed("b down".into()));
    w.effects();
    assert_eq!(ms(w.wake()), 400);
    // a is back: connected, and the backoff starts over.
    w.establish();
    w.input(Input::StreamBroke("again".into()));
    w.effects();
    assert_eq!(ms(w.wake()), 200);
}

#[test]
fn the_lease_is_renewed_every_third_of_its_ttl_however_long_renewals_take() {
    let mut w = World::new(&["a"]);
    w.wake();
    w.establish();
    let start = w.now;
    let mut at = Vec::new();
    for took in [0, 2_900, 100, 2_000] {
        w.wake();
        assert_eq!(w.effects(), [Effect::Renew]);
        at.push(ms(w.now - start));
        // No second renewal while one is in flight.
        assert_eq!(w.s.poll_timeout(), None);
        w.advance(Duration::from_millis(took));
        w.input(Input::Renewed);
    }
    assert_eq!(at, [3_000, 6_000, 9_000, 12_000]);
    assert!(w.s.connected());
}

#[test]
fn a_lease_discovery_forgot_registers_again_and_reports_without_a_new_watch() {
    let mut w = World::new(&["a"]);
    w.wake();
    w.establish();
    w.wake();
    assert_eq!(w.effects(), [Effect::Renew]);
    w.input(Input::RenewNotFound);
    assert_eq!(w.effects(), [Effect::Register]);
    w.input(Input::Registered { lease_ttl: TTL });
    assert_eq!(w.effects(), [Effect::Report], "the same watch goes on");
    assert!(w.s.connected());
    assert_eq!(ms(w.wake()), 3_000, "renewals go on");
}

#[test]
fn a_failed_renewal_ends_the_session_and_the_next_replica_is_tried() {
    let mut w = World::new(&["a", "b"]);
    w.wake();
    w.establish();
    w.wake();
    w.effects();
    w.input(Input::RenewFailed("timed out".into()));
    assert!(matches!(&w.effects()[..], [Effect::EndSession { next, .. }] if next == "b"));
    assert_eq!(ms(w.wake()), 200);
    assert_eq!(w.effects(), [connect("b")]);
}

#[test]
fn a_key_change_registers_again_once_at_a_time_and_is_dropped_while_disconnected() {
    let mut w = World::new(&["a"]);
    w.wake();
    // Not connected yet: the first registration carries the new key.
    w.input(Input::ReregisterWanted);
    w.input(Input::ReportWanted);
    w.establish();
    w.input(Input::ReregisterWanted);
    assert_eq!(w.effects(), [Effect::Register]);
    // Wanted again while that one is in flight: once more after it.
    w.input(Input::ReregisterWanted);
    w.input(Input::ReregisterWanted);
    assert_eq!(w.effects(), []);
    w.input(Input::Registered { lease_ttl: TTL });
    assert_eq!(w.effects(), [Effect::Report, Effect::Register]);
    w.input(Input::Registered { lease_ttl: TTL });
    assert_eq!(w.effects(), [Effect::Report]);
    w.input(Input::ReportWanted);
    assert_eq!(w.effects(), [Effect::Report]);
}

#[test]
fn a_refused_registration_or_watch_ends_the_session() {
    let mut w = World::new(&["a"]);
    w.wake();
    w.effects();
    w.input(Input::Connected);
    w.effects();
    w.input(Input::RegisterFailed("wrong cluster".into()));
    assert!(
        matches!(&w.effects()[..], [Effect::EndSession { reason, .. }] if reason == "wrong cluster")
    );
    w.wake();
    w.effects();
    w.input(Input::Connected);
    w.effects();
    w.input(Input::Registered { lease_ttl: TTL });
    w.effects();
    w.input(Input::WatchFailed("refused".into()));
    assert!(matches!(&w.effects()[..], [Effect::EndSession { .. }]));
    assert!(!w.s.connected());
}

#[test]
fn answers_for_an_ended_session_change_nothing() {
    let mut w = World::new(&["a"]);
    w.wake();
    w.effects();
    w.input(Input::ConnectFailed("x".into()));
    w.effects();
    for late in [
        Input::Registered { lease_ttl: TTL },
        Input::Watching,
        Input::Renewed,
        Input::StreamBroke("y".into()),
    ] {
        w.input(late);
        assert_eq!(w.effects(), []);
    }
    assert!(!w.s.connected());
    assert_eq!(ms(w.wake()), 200);
}
