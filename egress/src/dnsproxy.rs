//! The per-node DNS proxy (`meshgate dnsproxy`): its own process, so DNS
//! keeps working while the agent is down or restarting.
//!
//! - [`state`]: what the agent tells it (a JSON file it re-reads).
//! - [`decide`]: the pure decisions: a query and its source identity in,
//!   forward / refuse / answer out; an answer in, the addresses to write
//!   into the datapath's maps (before the client sees the answer) out.
//! - [`datapath`]: writing those into the pinned maps, and collecting
//!   what expired.
//!
//! The sockets, the steering and the restarts are the I/O shell in
//! `gateway/src/dnsproxy.rs`.

pub mod datapath;
pub mod decide;
pub mod fuzz;
pub mod state;

#[cfg(test)]
mod decide_tests;
