//! The per-node DNS proxy (`meshgate dnsproxy`): its own process, so DNS
//! keeps working while the agent is down or restarting.

pub mod state;
