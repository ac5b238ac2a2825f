//! The datapath's sync worker: one thread that brings the maps, routes and
//! attachments in step with the agent's state ([`super::sync`]).
//!
//! The discovery watch loop only updates the agent's state and [`kick`]s
//! the worker, so it never waits on `ip`, `nft` or map writes and reads the
//! next event at once. Kicks that arrive while a sync runs fold into one
//! more sync, which reads the newest state. The worker also syncs every
//! [`RESYNC`] without a kick: a map write or route that failed is retried
//! then, not only when discovery happens to send another event. While
//! egress gateway policies are loaded it also plans the egress routes
//! every [`super::egress::TICK`], so a dead gateway's flows move at once.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context;
use tracing::debug;

use crate::Agent;

/// How often the worker syncs with no kick.
pub const RESYNC: Duration = Duration::from_secs(1);

/// "The agent's state changed since the last sync."
#[derive(Default)]
pub struct Kick {
    dirty: Mutex<bool>,
    wake: Condvar,
}

impl Kick {
    fn set(&self) {
        *self.dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for a kick; clears it. Whether there was one.
    fn take(&self, timeout: Duration) -> bool {
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let (mut dirty, _) = self
            .wake
            .wait_timeout_while(dirty, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *dirty)
    }
}

/// Asks the worker to sync (returns at once). Nothing without `--datapath ebpf`.
pub fn kick(agent: &Agent) {
    if let Some(dp) = agent.datapath.get() {
        dp.kick.set();
    }
}

/// Starts the worker thread; it runs as long as the process (a sync after
/// the datapath was removed does nothing).
pub fn spawn_worker(agent: Arc<Agent>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("datapath-sync".into())
        .spawn(move || {
            let Some(dp) = agent.datapath.get() else {
                return;
            };
            let mut last_full = std::time::Instant::now();
            loop {
                // Egress gateways' health is judged every tick while
                // egress policies are loaded; the full sync stays at RESYNC.
                let egress = super::egress_active(&agent);
                let wait = if egress { super::egress::TICK } else { RESYNC };
                let kicked = dp.kick.take(wait);
                if agent.handing_off.load(std::sync::atomic::Ordering::Relaxed) {
                    // The next agent owns the maps now.
                    continue;
                }
                let full = kicked || last_full.elapsed() >= RESYNC;
                if full {
                    if !kicked {
                        debug!("periodic datapath resync");
                    }
                    super::sync(&agent);
                    last_full = std::time::Instant::now();
                }
                if egress || kicked {
                    super::sync_egress(&agent);
                }
                if full || egress {
                    super::sync_dns(&agent, full);
                }
            }
        })
        .context("starting the datapath sync thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_fold_into_one_and_a_quiet_wait_times_out() {
        let k = Kick::default();
        assert!(!k.take(Duration::from_millis(1)), "no kick yet");
        k.set();
        k.set();
        assert!(k.take(Duration::from_secs(5)), "kicked");
        assert!(!k.take(Duration::from_millis(1)), "two kicks are one sync");
        let k = Arc::new(k);
        let k2 = k.clone();
        let t = std::thread::spawn(move || k2.take(Duration::from_secs(30)));
        k.set();
        assert!(t.join().expect("waiter"), "a waiting worker is woken");
    }
}
