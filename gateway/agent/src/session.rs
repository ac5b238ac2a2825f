//! The agent's session with discovery as a state machine apart from I/O
//! (sans-IO, as quinn-proto or firezone's tunnel state): which replica to
//! connect to and when, registering, watching, renewing the lease at a
//! third of its TTL, registering again when discovery forgot the node or
//! the key changed, and failing over to the next replica with a backoff.
//! It takes inputs (the outcome of each call, the watch stream breaking,
//! the agent asking to register or report again) with the time passed in,
//! and hands out [`Effect`]s; `sync.rs` is the shell that performs them.
//! Tested on a virtual clock: no test sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The first wait after a failed session, and the wait between replicas
/// of one round.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// The longest wait, after every replica failed round after round.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the shell is to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Connect to this replica; answer [`Input::Connected`] or
    /// [`Input::ConnectFailed`].
    Connect { url: String },
    /// Register the node (with its current key and labels); answer
    /// [`Input::Registered`] or [`Input::RegisterFailed`].
    Register,
    /// Report the node's endpoints (no answer: a refusal is logged).
    Report,
    /// Open the watch stream; answer [`Input::Watching`] or
    /// [`Input::WatchFailed`].
    Watch,
    /// Renew the lease; answer [`Input::Renewed`], [`Input::RenewNotFound`]
    /// or [`Input::RenewFailed`].
    Renew,
    /// Drop the connection and the stream; the next attempt is in `retry_in`.
    /// What was applied stays: a broken session tears nothing down.
    EndSession {
        url: String,
        reason: String,
        retry_in: Duration,
        next: String,
    },
}

/// What happened, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Connected,
    ConnectFailed(String),
    Registered {
        lease_ttl: Duration,
    },
    RegisterFailed(String),
    Watching,
    WatchFailed(String),
    Renewed,
    /// Discovery no longer has the node (its lease ran out).
    RenewNotFound,
    RenewFailed(String),
    /// The watch stream broke or ended, or its state could not be applied
    /// (then a fresh snapshot is needed).
    StreamBroke(String),
    /// The node's record changed (key rotated, addresses, labels).
    ReregisterWanted,
    /// The node's endpoints changed.
    ReportWanted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to connect (to the current replica) at `at`.
    Idle {
        at: Instant,
    },
    Connecting,
    Registering,
    /// Registered; the watch is being opened.
    OpeningWatch {
        lease_ttl: Duration,
    },
    Watching {
        lease_ttl: Duration,
        renew_at: Instant,
        renewing: bool,
    },
}

/// The session's state; see the module comment.
#[derive(Debug)]
pub struct Session {
    urls: Vec<String>,
    failover: Failover,
    state: State,
    effects: VecDeque<Effect>,
    /// A registration is in flight (so a wanted one waits for it).
    registering: bool,
    /// Another registration is wanted once the one in flight is done.
    register_again: bool,
}

impl Session {
    /// A session over `urls` (at least one), connecting to the first at `now`.
    pub fn new(urls: Vec<String>, now: Instant) -> Session {
        assert!(!urls.is_empty(), "a session needs a discovery URL");
        Session {
            failover: Failover::new(urls.len()),
            urls,
            state: State::Idle { at: now },
            effects: VecDeque::new(),
            registering: false,
            register_again: false,
        }
    }

    /// Whether the node is registered and watching.
    pub fn connected(&self) -> bool {
        matches!(self.state, State::Watching { .. })
    }

    /// The replica in use (or tried next).
    pub fn url(&self) -> &str {
        &self.urls[self.failover.current()]
    }

    /// The next effect to perform, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Self::handle_timeout`] is to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle { at } => Some(at),
            State::Watching {
                renew_at,
                renewing: false,
                ..
            } => Some(renew_at),
            _ => None,
        }
    }

    /// The time came: connect, or renew the lease.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Idle { at } if now >= at => {
                self.state = State::Connecting;
                self.effects.push_back(Effect::Connect {
                    url: self.url().to_string(),
                });
            }
            State::Watching {
                lease_ttl,
                renew_at,
                renewing: false,
            } if now >= renew_at => {
                // At a steady cadence (a third of the TTL), whatever each
                // renewal took; one that is late goes a period from now.
                let period = lease_ttl / 3;
                let next = renew_at + period;
                self.state = State::Watching {
                    lease_ttl,
                    renew_at: if next > now { next } else { now + period },
                    renewing: true,
                };
                self.effects.push_back(Effect::Renew);
            }
            _ => {}
        }
    }

    /// Takes what happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match (self.state, input) {
            (State::Connecting, Input::Connected) => {
                self.state = State::Registering;
                self.register();
            }
            (State::Connecting, Input::ConnectFailed(why)) => self.end(why, now),
            (State::Registering | State::Watching { .. }, Input::Registered { lease_ttl }) => {
                self.registering = false;
                // Every registration reports the endpoints: discovery may
                // have forgotten them with the node.
                self.effects.push_back(Effect::Report);
                match self.state {
                    State::Registering => {
                        self.state = State::OpeningWatch { lease_ttl };
                        self.effects.push_back(Effect::Watch);
                    }
                    State::Watching {
                        renew_at, renewing, ..
                    } => {
                        self.state = State::Watching {
                            lease_ttl,
                            renew_at,
                            renewing,
                        }
                    }
                    _ => {}
                }
                if std::mem::take(&mut self.register_again) && self.connected() {
                    self.register();
                }
            }
            (State::Registering | State::Watching { .. }, Input::RegisterFailed(why)) => {
                self.registering = false;
                self.register_again = false;
                self.end(why, now)
            }
            (State::OpeningWatch { lease_ttl }, Input::Watching) => {
                self.failover.connected();
                self.state = State::Watching {
                    lease_ttl,
                    renew_at: now + lease_ttl / 3,
                    renewing: false,
                };
            }
            (State::OpeningWatch { .. }, Input::WatchFailed(why)) => self.end(why, now),
            (
                State::Watching {
                    lease_ttl,
                    renew_at,
                    ..
                },
                Input::Renewed,
            ) => {
                self.state = State::Watching {
                    lease_ttl,
                    renew_at,
                    renewing: false,
                }
            }
            (
                State::Watching {
                    lease_ttl,
                    renew_at,
                    ..
                },
                Input::RenewNotFound,
            ) => {
                self.state = State::Watching {
                    lease_ttl,
                    renew_at,
                    renewing: false,
                };
                self.register();
            }
            (State::Watching { .. }, Input::RenewFailed(why) | Input::StreamBroke(why)) => {
                self.end(why, now)
            }
            (State::Watching { .. }, Input::ReregisterWanted) => {
                if self.registering {
                    self.register_again = true;
                } else {
                    self.register();
                }
            }
            (State::Watching { .. }, Input::ReportWanted) => self.effects.push_back(Effect::Report),
            // Not connected: the next registration registers the node as it
            // is then, and reports its endpoints.
            (_, Input::ReregisterWanted | Input::ReportWanted) => {}
            // An answer that no longer matters (the session ended meanwhile).
            _ => {}
        }
    }

    fn register(&mut self) {
        self.registering = true;
        self.effects.push_back(Effect::Register);
    }

    /// The session with the current replica ends; the next one is tried
    /// after the failover's wait.
    fn end(&mut self, reason: String, now: Instant) {
        let url = self.url().to_string();
        let retry_in = self.failover.ended();
        self.state = State::Idle { at: now + retry_in };
        self.registering = false;
        self.register_again = false;
        self.effects
            .retain(|e| matches!(e, Effect::EndSession { .. }));
        self.effects.push_back(Effect::EndSession {
            url,
            reason,
            retry_in,
            next: self.url().to_string(),
        });
    }
}

/// Which discovery replica to try next and how long to wait first: the
/// next one in order; at once (after [`BACKOFF_START`]) while some replica
/// of this round is untried, with a backoff doubling to [`BACKOFF_MAX`]
/// after every replica failed in a row. A session that got connected
/// starts a new round.
#[derive(Debug)]
struct Failover {
    replicas: usize,
    current: usize,
    failed_in_row: usize,
    backoff: Duration,
    /// The current session registered and watched.
    was_connected: bool,
}

impl Failover {
    fn new(replicas: usize) -> Self {
        Failover {
            replicas: replicas.max(1),
            current: 0,
            failed_in_row: 0,
            backoff: BACKOFF_START,
            was_connected: false,
        }
    }

    fn current(&self) -> usize {
        self.current
    }

    fn connected(&mut self) {
        self.was_connected = true;
    }

    /// The session with the current replica ended; moves on and returns
    /// the wait before the next attempt.
    fn ended(&mut self) -> Duration {
        if std::mem::take(&mut self.was_connected) {
            self.backoff = BACKOFF_START;
            self.failed_in_row = 0;
        }
        self.failed_in_row += 1;
        self.current = (self.current + 1) % self.replicas;
        if !self.failed_in_row.is_multiple_of(self.replicas) {
            return BACKOFF_START;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
