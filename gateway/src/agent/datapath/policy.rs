//! Identity policy in the eBPF datapath (`--policy FILE`, repeatable): the
//! policy files and every identity the agent knows (local and imported, from
//! its ipcache) go into a [`PolicyState`]; each [`PolicyDiff`] it returns is
//! written to the pinned `mg_policy` / `mg_policy_sel` in the documented
//! order (set, select, remove), so no flow allowed before and after is
//! dropped in between. No program is reloaded for a policy change.
//!
//! Start: the files are parsed before anything else (an error stops the
//! agent). The first sync with identities reads what the pinned maps hold
//! (left by an earlier run) and applies [`PolicyDiff::between`] that and what
//! is wanted now: the maps are never emptied, so enforcement has no gap.
//! Reload (SIGHUP): the files are read again; a file that fails keeps the old
//! policy whole and the error is logged and shown in `status.json`.
//!
//! The logic works on the [`PolicyMaps`] trait, so it is tested here against
//! an in-memory model; [`meshgate_ebpf::maps::Policy`] is the real one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use meshgate_discovery::identity::Labels;
use meshgate_discovery::policy::{
    Compiled, Direction, Policy, PolicyDiff, PolicyEntry, PolicyState, Scope, Selection, Verdict,
};
use meshgate_ebpf::{PolicyRule, Proto};
use tracing::{info, warn};

/// What the agent needs of the two policy maps.
pub trait PolicyMaps {
    fn set(&mut self, e: &PolicyEntry, v: Verdict) -> anyhow::Result<()>;
    fn select(&mut self, id: u32, s: Selection) -> anyhow::Result<()>;
    fn remove(&mut self, e: &PolicyEntry) -> anyhow::Result<()>;
    /// Everything the maps hold now.
    fn read(&self) -> anyhow::Result<Compiled>;
}

fn rule_of(e: &PolicyEntry) -> PolicyRule {
    PolicyRule {
        local_identity: e.local_identity,
        remote_identity: (e.remote_identity != 0).then_some(e.remote_identity),
        port: (e.dport != 0).then_some(e.dport),
        proto: match e.proto {
            0 => Proto::Any,
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 => Proto::Icmp,
            n => Proto::Other(n),
        },
        direction: match e.direction {
            Direction::Ingress => meshgate_ebpf::Direction::Ingress,
            Direction::Egress => meshgate_ebpf::Direction::Egress,
        },
    }
}

fn entry_of(r: &PolicyRule) -> PolicyEntry {
    PolicyEntry {
        local_identity: r.local_identity,
        remote_identity: r.remote_identity.unwrap_or(0),
        dport: if r.proto == Proto::Any {
            0
        } else {
            r.port.unwrap_or(0)
        },
        proto: r.proto.number(),
        direction: match r.direction {
            meshgate_ebpf::Direction::Ingress => Direction::Ingress,
            meshgate_ebpf::Direction::Egress => Direction::Egress,
        },
    }
}

fn ebpf_verdict(v: Verdict) -> meshgate_ebpf::Verdict {
    match v {
        Verdict::Allow => meshgate_ebpf::Verdict::Allow,
        Verdict::Deny => meshgate_ebpf::Verdict::Deny,
    }
}

impl PolicyMaps for meshgate_ebpf::maps::Policy {
    fn set(&mut self, e: &PolicyEntry, v: Verdict) -> anyhow::Result<()> {
        meshgate_ebpf::maps::Policy::set(self, &rule_of(e), ebpf_verdict(v))
            .context("writing an mg_policy entry")
    }

    fn select(&mut self, id: u32, s: Selection) -> anyhow::Result<()> {
        meshgate_ebpf::maps::Policy::select(self, id, s.ingress, s.egress)
            .context("writing an mg_policy_sel entry")
    }

    fn remove(&mut self, e: &PolicyEntry) -> anyhow::Result<()> {
        meshgate_ebpf::maps::Policy::remove(self, &rule_of(e))
            .map(|_| ())
            .context("removing an mg_policy entry")
    }

    fn read(&self) -> anyhow::Result<Compiled> {
        let mut c = Compiled::default();
        for (r, v) in self.rules().context("reading mg_policy")? {
            let v = match v {
                meshgate_ebpf::Verdict::Deny => Verdict::Deny,
                _ => Verdict::Allow,
            };
            c.entries.insert(entry_of(&r), v);
        }
        for (id, ingress, egress) in self.selections().context("reading mg_policy_sel")? {
            c.selected.insert(id, Selection { ingress, egress });
        }
        Ok(c)
    }
}

/// Applies a diff in the documented order. Stops at the first failure.
pub fn apply(maps: &mut dyn PolicyMaps, d: &PolicyDiff) -> anyhow::Result<()> {
    for (e, v) in &d.set {
        maps.set(e, *v)?;
    }
    for (id, s) in &d.select {
        maps.select(*id, *s)?;
    }
    for e in &d.remove {
        maps.remove(e)?;
    }
    Ok(())
}

/// Reads and parses every policy file (identity and egress gateway
/// policies); the first error names its file.
pub fn load_files(files: &[PathBuf]) -> anyhow::Result<meshgate_egress::PolicyFile> {
    let mut all = meshgate_egress::PolicyFile::default();
    for f in files {
        let mut p = meshgate_egress::parse_policy_file(f).map_err(|e| {
            anyhow::anyhow!(
                "{e} (fix the policy file; `meshgate policy check {}` shows what is refused)",
                f.display()
            )
        })?;
        all.identity.append(&mut p.identity);
        all.egress.append(&mut p.egress);
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(twice) = all.egress.iter().find(|p| !names.insert(p.name.clone())) {
        anyhow::bail!(
            "CiliumEgressGatewayPolicy {} is given twice across the policy files; give each once",
            twice.name
        );
    }
    Ok(all)
}

/// The agent's policy: files, state and what was applied.
pub struct PolicyRuntime {
    files: Vec<PathBuf>,
    state: PolicyState,
    /// The maps were reconciled with the state (first sync done, and no
    /// write failed since).
    in_step: bool,
    pub reloads: u64,
    pub failed_reloads: u64,
    pub last_error: Option<String>,
    /// (entries, selected identities) the policy gives now, kept after each
    /// change so that status does not walk the state.
    counts: (usize, usize),
    /// Map writes of the last reconcile with the pinned maps (after a
    /// restart over unchanged policy and identities: 0).
    reconcile_writes: Option<usize>,
}

impl PolicyRuntime {
    /// With the policies already parsed from `files` (at start, where a
    /// parse error stops the agent).
    pub fn new(cluster_id: u8, files: Vec<PathBuf>, policies: Vec<Policy>) -> anyhow::Result<Self> {
        let mut state = PolicyState::new(Scope::new(cluster_id));
        state
            .sync_policies(policies)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut rt = PolicyRuntime {
            files,
            state,
            in_step: false,
            reloads: 0,
            failed_reloads: 0,
            last_error: None,
            counts: (0, 0),
            reconcile_writes: None,
        };
        rt.recount();
        Ok(rt)
    }

    fn recount(&mut self) {
        let m = self.state.maps();
        self.counts = (m.entries.len(), m.selected.len());
    }

    /// What each identity may look up and reach by name (the DNS proxy's
    /// view of the same policies).
    pub fn identity_dns(&self) -> BTreeMap<u32, meshgate_egress::dnsproxy::state::IdentityDns> {
        let policies: Vec<Policy> = self.state.policies().cloned().collect();
        meshgate_egress::identity_dns(self.state.scope(), &policies, self.state.identities())
    }

    /// Entries and selected identities the policy gives now.
    pub fn counts(&self) -> (usize, usize) {
        self.counts
    }

    /// For `status.json`.
    pub fn status(&self) -> meshgate_discovery::model::PolicyStatus {
        let (entries, selected) = self.counts();
        meshgate_discovery::model::PolicyStatus {
            files: self.files.iter().map(|f| f.display().to_string()).collect(),
            entries,
            selected,
            applied: self.in_step,
            reloads: self.reloads,
            failed_reloads: self.failed_reloads,
            last_error: self.last_error.clone(),
            reconcile_writes: self.reconcile_writes,
        }
    }

    /// Brings the identities in step with `identities` (the ipcache's) and
    /// writes what changed. The first call with identities (or after a failed
    /// write) reconciles the maps from what they hold.
    pub fn sync_identities(
        &mut self,
        maps: &mut dyn PolicyMaps,
        identities: &BTreeMap<u32, Labels>,
    ) {
        if identities.is_empty() && !self.in_step {
            // Nothing known yet (no saved ipcache, no snapshot): leave the
            // pinned maps as an earlier run left them.
            return;
        }
        let gone: Vec<u32> = self
            .state
            .identities()
            .keys()
            .filter(|id| !identities.contains_key(id))
            .copied()
            .collect();
        let mut diffs = Vec::new();
        for id in gone {
            diffs.push(self.state.remove_identity(id));
        }
        for (id, labels) in identities {
            if self.state.identities().get(id) != Some(labels) {
                diffs.push(self.state.add_identity(*id, labels.clone()));
            }
        }
        if diffs.iter().any(|d| !d.is_empty()) {
            self.recount();
        }
        if !self.in_step {
            self.reconcile(maps);
            return;
        }
        for d in diffs.iter().filter(|d| !d.is_empty()) {
            if let Err(e) = apply(maps, d) {
                warn!(error = %format!("{e:#}"), "applying a policy change failed; the maps are reconciled on the next update");
                self.in_step = false;
                return;
            }
        }
    }

    /// Re-reads the files; on success the identity policy set is replaced
    /// by one diff and the egress gateway policies read are returned for
    /// the caller to apply. On failure nothing changes and the error is
    /// kept for status.
    pub fn reload(
        &mut self,
        maps: &mut dyn PolicyMaps,
    ) -> anyhow::Result<Vec<meshgate_egress::EgressPolicy>> {
        let file = match load_files(&self.files) {
            Ok(p) => p,
            Err(e) => {
                self.failed_reloads += 1;
                self.last_error = Some(format!("{e:#}"));
                return Err(e.context("reloading the policy files; the previous policy stays"));
            }
        };
        let policies = file.identity;
        let before = self.state.clone();
        let d = match self.state.sync_policies(policies) {
            Ok(d) => d,
            Err(e) => {
                self.state = before;
                self.failed_reloads += 1;
                self.last_error = Some(e.to_string());
                return Err(anyhow::anyhow!("{e}; the previous policy stays"));
            }
        };
        self.reloads += 1;
        self.last_error = None;
        self.recount();
        let (entries, selected) = self.counts();
        info!(
            set = d.set.len(),
            select = d.select.len(),
            remove = d.remove.len(),
            entries,
            selected,
            "policy reloaded"
        );
        if self.in_step {
            if let Err(e) = apply(maps, &d) {
                // The state is the new policy: the maps are reconciled
                // with it on the next update.
                self.in_step = false;
                warn!(error = %format!("{e:#}"), "applying the reloaded policy failed; retried on the next update");
            }
        }
        Ok(file.egress)
    }

    /// Reads the maps and applies the diff to what the state wants.
    fn reconcile(&mut self, maps: &mut dyn PolicyMaps) {
        let current = match maps.read() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the pinned policy maps failed; retried on the next update");
                return;
            }
        };
        let d = PolicyDiff::between(&current, &self.state.maps());
        match apply(maps, &d) {
            Ok(()) => {
                self.reconcile_writes = Some(d.set.len() + d.select.len() + d.remove.len());
                let (entries, selected) = self.counts();
                info!(
                    pinned = current.entries.len(),
                    set = d.set.len(),
                    select = d.select.len(),
                    remove = d.remove.len(),
                    entries,
                    selected,
                    "policy maps reconciled with the pinned ones"
                );
                self.in_step = true;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reconciling the policy maps failed; retried on the next update")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_discovery::policy::{compile, parse_policies};

    /// The maps as a model, counting writes.
    #[derive(Default)]
    struct Model {
        maps: Compiled,
        writes: usize,
        fail: bool,
    }

    impl PolicyMaps for Model {
        fn set(&mut self, e: &PolicyEntry, v: Verdict) -> anyhow::Result<()> {
            anyhow::ensure!(!self.fail, "injected failure");
            self.writes += 1;
            self.maps.entries.insert(*e, v);
            Ok(())
        }
        fn select(&mut self, id: u32, s: Selection) -> anyhow::Result<()> {
            self.writes += 1;
            if s.is_none() {
                self.maps.selected.remove(&id);
            } else {
                self.maps.selected.insert(id, s);
            }
            Ok(())
        }
        fn remove(&mut self, e: &PolicyEntry) -> anyhow::Result<()> {
            self.writes += 1;
            self.maps.entries.remove(e);
            Ok(())
        }
        fn read(&self) -> anyhow::Result<Compiled> {
            Ok(self.maps.clone())
        }
    }

    const POL: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]
";

    fn ids(list: &[(u32, &str, &str)]) -> BTreeMap<u32, Labels> {
        list.iter()
            .map(|(id, app, cluster)| {
                let l: Labels = [
                    ("app".to_string(), app.to_string()),
                    ("io.kubernetes.pod.namespace".into(), "default".into()),
                    ("io.cilium.k8s.policy.cluster".into(), cluster.to_string()),
                ]
                .into();
                (*id, l)
            })
            .collect()
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn identities_then_reload_keep_the_maps_equal_to_a_full_compile() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "p.yaml", POL);
        let files = vec![f.clone()];
        let mut rt =
            PolicyRuntime::new(1, files.clone(), load_files(&files).unwrap().identity).unwrap();
        let mut m = Model::default();
        rt.sync_identities(&mut m, &BTreeMap::new());
        assert_eq!(
            m.writes, 0,
            "nothing is written before identities are known"
        );
        let mut known = ids(&[(65_792, "db", "c1"), (65_793, "web", "c1")]);
        rt.sync_identities(&mut m, &known);
        let want = |k: &BTreeMap<u32, Labels>, text: &str| {
            compile(&Scope::new(1), &parse_policies(text, "x").unwrap(), k)
        };
        assert_eq!(m.maps, want(&known, POL));
        assert_eq!(m.maps.entries.len(), 1);
        known.extend(ids(&[(65_794, "web", "c1")]));
        rt.sync_identities(&mut m, &known);
        assert_eq!(m.maps, want(&known, POL));
        assert_eq!(m.maps.entries.len(), 2);
        // A bad file keeps the old policy whole.
        std::fs::write(&f, "kind: NetworkPolicy\nspec: [").unwrap();
        let before = m.maps.clone();
        assert!(rt.reload(&mut m).is_err());
        assert!(rt.last_error.as_ref().unwrap().contains("p.yaml"));
        assert_eq!((rt.reloads, rt.failed_reloads), (0, 1));
        assert_eq!(m.maps, before);
        // A good one replaces it.
        let other = POL.replace("5432", "80");
        std::fs::write(&f, &other).unwrap();
        rt.reload(&mut m).unwrap();
        assert_eq!(rt.last_error, None);
        assert_eq!(m.maps, want(&known, &other));
        // An identity that goes takes its entries along.
        known.remove(&65_794);
        rt.sync_identities(&mut m, &known);
        assert_eq!(m.maps, want(&known, &other));
    }

    #[test]
    fn a_restart_over_pinned_maps_writes_only_the_difference() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![write(dir.path(), "p.yaml", POL)];
        let known = ids(&[
            (65_792, "db", "c1"),
            (65_793, "web", "c1"),
            (131_328, "web", "c2"),
        ]);
        let mut m = Model::default();
        let mut first =
            PolicyRuntime::new(1, files.clone(), load_files(&files).unwrap().identity).unwrap();
        first.sync_identities(&mut m, &known);
        // A stale entry an older policy left behind.
        let stale = PolicyEntry {
            local_identity: 65_792,
            remote_identity: 0,
            dport: 22,
            proto: 6,
            direction: Direction::Ingress,
        };
        m.maps.entries.insert(stale, Verdict::Allow);
        m.writes = 0;
        let mut second =
            PolicyRuntime::new(1, files.clone(), load_files(&files).unwrap().identity).unwrap();
        second.sync_identities(&mut m, &known);
        assert_eq!(m.writes, 1, "only the stale entry is removed");
        assert_eq!(second.status().reconcile_writes, Some(1));
        assert!(!m.maps.entries.contains_key(&stale));
        assert_eq!(second.counts(), (1, 1));
    }

    #[test]
    fn a_failed_write_is_reconciled_on_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![write(dir.path(), "p.yaml", POL)];
        let mut rt =
            PolicyRuntime::new(1, files.clone(), load_files(&files).unwrap().identity).unwrap();
        let mut m = Model::default();
        let mut known = ids(&[(65_792, "db", "c1")]);
        rt.sync_identities(&mut m, &known);
        known.extend(ids(&[(65_793, "web", "c1")]));
        m.fail = true;
        rt.sync_identities(&mut m, &known);
        m.fail = false;
        rt.sync_identities(&mut m, &known);
        assert_eq!(
            m.maps,
            compile(
                &Scope::new(1),
                &load_files(&files).unwrap().identity,
                &known
            )
        );
    }

    #[test]
    fn entries_convert_both_ways() {
        for e in [
            PolicyEntry {
                local_identity: 5,
                remote_identity: 0,
                dport: 0,
                proto: 0,
                direction: Direction::Egress,
            },
            PolicyEntry {
                local_identity: 5,
                remote_identity: 9,
                dport: 443,
                proto: 132,
                direction: Direction::Ingress,
            },
        ] {
            assert_eq!(entry_of(&rule_of(&e)), e);
        }
    }
}
