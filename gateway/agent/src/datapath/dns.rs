//! The DNS proxy's policy file, `<state-dir>/dnsproxy-policy.json`
//! (`meshgate_egress::dnsproxy::state::ProxyPolicy`): what each identity of
//! this cluster may look up and reach by name, the FQDN egress gateway
//! routes of this node's pods, and the MCS names of the global services.
//!
//! Rewritten (atomically, by rename) when it changes; the proxy re-reads
//! it. The proxy keeps working from the last file while the agent is down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meshgate_egress::dnsproxy::state::{FqdnEgress, IdentityDns, ProxyPolicy};
use meshgate_model::identity::{cluster_of, Labels};
use meshgate_model::service::GlobalService;
use tracing::{info, warn};

pub const POLICY_FILE: &str = "dnsproxy-policy.json";

/// The file's path in `state_dir`.
pub fn policy_file(state_dir: &Path) -> PathBuf {
    state_dir.join(POLICY_FILE)
}

/// The last content written (without its revision).
#[derive(Debug, Default)]
pub struct DnsFile {
    last: Option<ProxyPolicy>,
    revision: u64,
}

/// The names `svc.ns.svc.clusterset.local` of the global services with a
/// VIP here.
pub fn clusterset<'a>(
    services: impl IntoIterator<Item = &'a GlobalService>,
) -> BTreeMap<String, Ipv4Addr> {
    services
        .into_iter()
        .filter(|s| s.global)
        .filter_map(|s| {
            Some((
                format!("{}.{}.svc.clusterset.local", s.name, s.namespace).to_ascii_lowercase(),
                s.vip?,
            ))
        })
        .collect()
}

/// Every identity of `cluster_id` among `identities`, with the rules of
/// `dns` (identities without any get the default: no restriction).
pub fn identities(
    cluster_id: u8,
    identities: &BTreeMap<u32, Labels>,
    mut dns: BTreeMap<u32, IdentityDns>,
) -> BTreeMap<u32, IdentityDns> {
    identities
        .keys()
        .filter(|id| cluster_of(**id) == u32::from(cluster_id))
        .map(|id| (*id, dns.remove(id).unwrap_or_default()))
        .collect()
}

impl DnsFile {
    /// Whether `egress` differs from the FQDN egress routes written last.
    pub fn egress_changed(&self, egress: &[FqdnEgress]) -> bool {
        self.last.as_ref().is_none_or(|l| l.egress != egress)
    }

    /// Writes `want` if it differs from what was written last.
    pub fn write(
        &mut self,
        state_dir: &Path,
        identities: BTreeMap<u32, IdentityDns>,
        egress: Vec<FqdnEgress>,
        clusterset: BTreeMap<String, Ipv4Addr>,
    ) {
        let want = ProxyPolicy {
            revision: 0,
            identities,
            egress,
            clusterset,
        };
        if self.last.as_ref() == Some(&want) {
            return;
        }
        self.revision += 1;
        let file = ProxyPolicy {
            revision: self.revision,
            ..want.clone()
        };
        match save(state_dir, &file) {
            Ok(()) => {
                info!(
                    revision = self.revision,
                    identities = file.identities.len(),
                    fqdn_egress = file.egress.len(),
                    "DNS proxy policy written"
                );
                self.last = Some(want);
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "writing the DNS proxy's policy failed; retried on the next sync")
            }
        }
    }
}

fn save(state_dir: &Path, p: &ProxyPolicy) -> anyhow::Result<()> {
    let path = policy_file(state_dir);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(p).context("encoding the DNS proxy policy")?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
}
