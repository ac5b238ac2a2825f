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
//! Entities and CIDR rules: the reserved identities (host, world,
//! unmanaged, health, init, remote-node, kube-apiserver) and a CIDR identity
//! per prefix the policies name (`meshgate_model::policy::cidr`) go into
//! the state beside the endpoint identities, with their labels. Each CIDR
//! prefix, and each `--kube-apiserver` address (/32, identity 7), is a world
//! entry of the pinned ipcache (none inside a mesh pod CIDR, where the
//! datapath would ignore it). Order, so that no allowed flow is dropped: a
//! new prefix's identity and its policy entries are written before its
//! ipcache entry; a prefix no policy names any more leaves the ipcache
//! before its identity's entries leave the policy map. The numbers are read
//! back from the pinned ipcache at the first sync, so a restart keeps them.
//!
//! The logic works on the [`PolicyMaps`] trait, so it is tested here against
//! an in-memory model; [`meshgate_ebpf::maps::Maps`] is the real one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use ipnet::Ipv4Net;
use meshgate_ebpf::{IpcacheEntry, PolicyRule, Proto};
use meshgate_model::identity::{self, Labels};
use meshgate_model::policy::cidr::{self, CidrError, CidrIdentities};
use meshgate_model::policy::{
    Compiled, Direction, Policy, PolicyDiff, PolicyEntry, PolicyState, Scope, Selection, Verdict,
};
use tracing::{info, warn};

/// What the agent needs of the two policy maps and of the ipcache's world
/// entries.
pub trait PolicyMaps {
    fn set(&mut self, e: &PolicyEntry, v: Verdict) -> anyhow::Result<()>;
    fn select(&mut self, id: u32, s: Selection) -> anyhow::Result<()>;
    fn remove(&mut self, e: &PolicyEntry) -> anyhow::Result<()>;
    /// Everything the maps hold now.
    fn read(&self) -> anyhow::Result<Compiled>;
    /// Writes world prefix `net` into the ipcache with `identity`.
    fn set_world(&mut self, net: Ipv4Net, identity: u32) -> anyhow::Result<()>;
    fn remove_world(&mut self, net: Ipv4Net) -> anyhow::Result<()>;
    /// The world prefixes the ipcache holds, with their identities.
    fn read_world(&self) -> anyhow::Result<BTreeMap<Ipv4Net, u32>>;
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

impl PolicyMaps for meshgate_ebpf::maps::Maps {
    fn set(&mut self, e: &PolicyEntry, v: Verdict) -> anyhow::Result<()> {
        self.policy
            .set(&rule_of(e), ebpf_verdict(v))
            .context("writing an mg_policy entry")
    }

    fn select(&mut self, id: u32, s: Selection) -> anyhow::Result<()> {
        self.policy
            .select(id, s.ingress, s.egress)
            .context("writing an mg_policy_sel entry")
    }

    fn remove(&mut self, e: &PolicyEntry) -> anyhow::Result<()> {
        self.policy
            .remove(&rule_of(e))
            .map(|_| ())
            .context("removing an mg_policy entry")
    }

    fn read(&self) -> anyhow::Result<Compiled> {
        let mut c = Compiled::default();
        for (r, v) in self.policy.rules().context("reading mg_policy")? {
            let v = match v {
                meshgate_ebpf::Verdict::Deny => Verdict::Deny,
                _ => Verdict::Allow,
            };
            c.entries.insert(entry_of(&r), v);
        }
        for (id, ingress, egress) in self.policy.selections().context("reading mg_policy_sel")? {
            c.selected.insert(id, Selection { ingress, egress });
        }
        Ok(c)
    }

    fn set_world(&mut self, net: Ipv4Net, identity: u32) -> anyhow::Result<()> {
        self.ipcache
            .upsert(net.addr(), net.prefix_len(), IpcacheEntry::world(identity))
            .with_context(|| format!("writing the ipcache's world entry {net}"))
    }

    fn remove_world(&mut self, net: Ipv4Net) -> anyhow::Result<()> {
        self.ipcache
            .remove(net.addr(), net.prefix_len())
            .map(|_| ())
            .with_context(|| format!("removing the ipcache's world entry {net}"))
    }

    fn read_world(&self) -> anyhow::Result<BTreeMap<Ipv4Net, u32>> {
        Ok(self
            .ipcache
            .entries()
            .context("reading mg_ipcache")?
            .into_iter()
            .filter(|(_, _, e)| e.world)
            .filter_map(|(ip, len, e)| Some((Ipv4Net::new(ip, len).ok()?, e.identity)))
            .collect())
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

/// What the policy files hold, and the warnings read with it.
pub struct Loaded {
    pub file: meshgate_egress::PolicyFile,
    pub warnings: Vec<meshgate_model::policy::PolicyWarning>,
}

/// Reads and parses every policy file (identity and egress gateway
/// policies) with `opts`; an error lists every problem of every file, each
/// naming its file.
pub fn load_files(
    files: &[PathBuf],
    opts: &meshgate_model::policy::ParseOptions,
) -> anyhow::Result<Loaded> {
    let mut all = meshgate_egress::PolicyFile::default();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let mut r = meshgate_egress::parse_policy_file_report(f, opts);
        errors.extend(r.errors.iter().map(|e| e.to_string()));
        warnings.append(&mut r.warnings);
        all.identity.append(&mut r.file.identity);
        all.egress.append(&mut r.file.egress);
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(twice) = all.egress.iter().find(|p| !names.insert(p.name.clone())) {
        errors.push(format!(
            "CiliumEgressGatewayPolicy {} is given twice across the policy files; give each once",
            twice.name
        ));
    }
    match errors.as_slice() {
        [] => Ok(Loaded {
            file: all,
            warnings,
        }),
        [one] => anyhow::bail!(
            "{one} (fix the policy file; `meshgate policy check` shows what is refused)"
        ),
        many => anyhow::bail!(
            "{} errors in the policy files (fix them; `meshgate policy check` shows what is \
             refused): {}",
            many.len(),
            many.join("; ")
        ),
    }
}

/// Logs each warning of the policy files, once per load.
pub fn log_warnings(warnings: &[meshgate_model::policy::PolicyWarning]) {
    for w in warnings {
        tracing::warn!(kind = w.kind.as_str(), "policy: {w}");
    }
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
    /// The prefixes the policies name (`cidr:` keys; 0.0.0.0/0 included).
    named: BTreeSet<Ipv4Net>,
    /// The CIDR identities, numbered at the first sync after the pinned
    /// ipcache's (`restored`), then kept.
    cidrs: CidrIdentities,
    restored: bool,
    /// World entries the ipcache holds (read at the first sync, then kept).
    world: BTreeMap<Ipv4Net, u32>,
    /// `--kube-apiserver` addresses (identity 7).
    apiservers: BTreeSet<Ipv4Addr>,
    /// The mesh's pod CIDRs: no world entry is written inside one.
    mesh: BTreeSet<Ipv4Net>,
    /// The nodes' addresses (the datapath's `host` and `remote-node`
    /// entries): no world entry is written for one.
    nodes: BTreeSet<Ipv4Addr>,
    /// [`Self::extra_identities`] of `named`, kept between syncs (10,000
    /// prefixes' label sets cost 2% of a core rebuilt at every sync);
    /// dropped wherever `named` or `cidrs` change.
    extra: Option<BTreeMap<u32, Labels>>,
    /// How the files are read (`--strict-policy`, `--l7`), at a reload too.
    options: meshgate_model::policy::ParseOptions,
    /// The warnings of the files as last read.
    warnings: Vec<meshgate_model::policy::PolicyWarning>,
}

/// A diff as three, applied in this order around the world entries: the
/// entries to set (before a prefix's ipcache entry appears), the selections
/// (once the ipcache labels the world as they will), the removals.
fn split(d: PolicyDiff) -> [PolicyDiff; 3] {
    [
        PolicyDiff {
            set: d.set,
            ..PolicyDiff::default()
        },
        PolicyDiff {
            select: d.select,
            ..PolicyDiff::default()
        },
        PolicyDiff {
            remove: d.remove,
            ..PolicyDiff::default()
        },
    ]
}

/// Refuses a policy set naming more prefixes than a node has CIDR identities.
fn check_capacity(named: &BTreeSet<Ipv4Net>) -> Result<(), CidrError> {
    CidrIdentities::default().allocate(named).map(|_| ())
}

impl PolicyRuntime {
    /// With the policies already parsed from `files` (at start, where a
    /// parse error stops the agent).
    pub fn new(cluster_id: u8, files: Vec<PathBuf>, policies: Vec<Policy>) -> anyhow::Result<Self> {
        let named = cidr::cidr_prefixes(&policies);
        check_capacity(&named).context("the --policy files")?;
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
            named,
            cidrs: CidrIdentities::default(),
            restored: false,
            world: BTreeMap::new(),
            apiservers: BTreeSet::new(),
            mesh: BTreeSet::new(),
            nodes: BTreeSet::new(),
            options: meshgate_model::policy::ParseOptions::default(),
            warnings: Vec::new(),
            extra: None,
        };
        rt.recount();
        Ok(rt)
    }

    /// How the files were read at start, and their warnings then: a
    /// reload reads them the same way.
    pub fn with_options(
        mut self,
        options: meshgate_model::policy::ParseOptions,
        warnings: Vec<meshgate_model::policy::PolicyWarning>,
    ) -> Self {
        self.options = options;
        self.warnings = warnings;
        self
    }

    /// The Kubernetes API server's addresses (`--kube-apiserver`): /32
    /// world entries with identity kube-apiserver (7).
    pub fn with_kube_apiservers(mut self, ips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.apiservers = ips.into_iter().collect();
        self
    }

    /// The nodes' addresses now (taken at the next world write).
    pub fn set_node_addresses(&mut self, nodes: BTreeSet<Ipv4Addr>) {
        self.nodes = nodes;
    }

    /// Whether the ipcache holds a world entry of ours for `net`.
    pub fn holds_world(&self, net: Ipv4Net) -> bool {
        self.world.contains_key(&net)
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
    pub fn status(&self) -> crate::status::PolicyStatus {
        let (entries, selected) = self.counts();
        crate::status::PolicyStatus {
            files: self.files.iter().map(|f| f.display().to_string()).collect(),
            entries,
            selected,
            applied: self.in_step,
            reloads: self.reloads,
            failed_reloads: self.failed_reloads,
            last_error: self.last_error.clone(),
            reconcile_writes: self.reconcile_writes,
            warnings: self
                .warnings
                .iter()
                .map(|w| crate::status::PolicyWarningStatus {
                    kind: w.kind.as_str().to_string(),
                    warning: w.to_string(),
                })
                .collect(),
        }
    }

    /// The reserved and CIDR identities with their labels, the containing
    /// prefixes taken from `named`.
    fn extra_identities(&self, named: &BTreeSet<Ipv4Net>) -> BTreeMap<u32, Labels> {
        let mut out = cidr::reserved_identities(named);
        out.extend(self.cidrs.identities(named));
        out
    }

    /// The world entries wanted: every CIDR identity's prefix and the API
    /// servers, none inside a mesh pod CIDR and none a node's address.
    fn wanted_world(&self) -> BTreeMap<Ipv4Net, u32> {
        let mut out: BTreeMap<Ipv4Net, u32> = self.cidrs.iter().collect();
        for ip in &self.apiservers {
            out.insert(Ipv4Net::from(*ip), identity::KUBE_APISERVER);
        }
        out.retain(|net, _| {
            let in_mesh = self.mesh.iter().any(|m| m.contains(net));
            let a_node = net.prefix_len() == 32 && self.nodes.contains(&net.addr());
            !in_mesh && !a_node
        });
        out
    }

    /// Writes the world entries that are missing or differ.
    fn world_upserts(&mut self, maps: &mut dyn PolicyMaps) -> anyhow::Result<()> {
        for (net, id) in self.wanted_world() {
            if self.world.get(&net) != Some(&id) {
                maps.set_world(net, id)?;
                self.world.insert(net, id);
            }
        }
        Ok(())
    }

    /// Removes the world entries no longer wanted.
    fn world_removes(&mut self, maps: &mut dyn PolicyMaps) -> anyhow::Result<()> {
        let wanted = self.wanted_world();
        let gone: Vec<Ipv4Net> = self
            .world
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            maps.remove_world(net)?;
            self.world.remove(&net);
        }
        Ok(())
    }

    /// Numbers the CIDR identities after the pinned ipcache's world entries
    /// (an earlier run's), so the pinned policy entries stay right.
    fn restore(&mut self, maps: &dyn PolicyMaps) -> anyhow::Result<()> {
        let pinned = maps.read_world()?;
        let numbered = pinned
            .iter()
            .filter(|(_, id)| (cidr::CIDR_ID_MIN..=cidr::CIDR_ID_MAX).contains(*id))
            .map(|(n, id)| (*n, *id));
        self.cidrs = CidrIdentities::from_entries(numbered).unwrap_or_else(|e| {
            warn!(error = %e, "the pinned CIDR identities are not usable; numbering afresh");
            CidrIdentities::default()
        });
        // New numbers first, so none a pinned entry still carries is reused
        // for another prefix; then the numbers of prefixes no policy names.
        if self.cidrs.allocate(&self.named).is_err() {
            self.cidrs.release(&self.named);
            self.cidrs
                .allocate(&self.named)
                .context("numbering the policies' CIDR identities")?;
        }
        self.cidrs.release(&self.named);
        self.extra = None;
        self.world = pinned;
        self.restored = true;
        Ok(())
    }

    /// Applies a diff if the maps are in step; a failure puts them out of
    /// step (reconciled on the next sync).
    /// Returns the number of changes the diff holds.
    fn write(&mut self, maps: &mut dyn PolicyMaps, d: &PolicyDiff) -> usize {
        if self.in_step && !d.is_empty() {
            if let Err(e) = apply(maps, d) {
                warn!(error = %format!("{e:#}"), "applying a policy change failed; the maps are reconciled on the next update");
                self.in_step = false;
            }
        }
        d.set.len() + d.select.len() + d.remove.len()
    }

    /// Runs a world entry step if the maps are in step (as [`Self::write`]).
    fn write_world(
        &mut self,
        maps: &mut dyn PolicyMaps,
        step: fn(&mut Self, &mut dyn PolicyMaps) -> anyhow::Result<()>,
    ) {
        if !self.in_step {
            return;
        }
        if let Err(e) = step(self, maps) {
            warn!(error = %format!("{e:#}"), "writing the ipcache's world entries failed; reconciled on the next update");
            self.in_step = false;
        }
    }

    /// Brings the identities in step with `identities` (the ipcache's
    /// endpoint identities, to which the reserved and CIDR identities are
    /// added) and writes what changed; `mesh` are the mesh's pod CIDRs. The
    /// first call with identities (or after a failed write) reconciles the
    /// maps from what they hold.
    pub fn sync_identities(
        &mut self,
        maps: &mut dyn PolicyMaps,
        identities: &BTreeMap<u32, Labels>,
        mesh: &BTreeSet<Ipv4Net>,
    ) {
        if identities.is_empty() && !self.in_step {
            // Nothing known yet (no saved ipcache, no snapshot): leave the
            // pinned maps as an earlier run left them.
            return;
        }
        if !self.restored {
            if let Err(e) = self.restore(maps) {
                warn!(error = %format!("{e:#}"), "reading the pinned ipcache's world entries failed; retried on the next update");
                return;
            }
        }
        self.mesh = mesh.iter().map(|n| n.trunc()).collect();
        let extra = match self.extra.take() {
            Some(e) => e,
            None => self.extra_identities(&self.named),
        };
        // The ipcache's identities and the extra ones (which win for an ID
        // in both), without building their union.
        let all = identities
            .iter()
            .filter(|(id, _)| !extra.contains_key(id))
            .chain(extra.iter());
        let gone: Vec<u32> = self
            .state
            .identities()
            .keys()
            .filter(|id| !identities.contains_key(id) && !extra.contains_key(id))
            .copied()
            .collect();
        let mut diffs = Vec::new();
        for id in gone {
            diffs.push(self.state.remove_identity(id));
        }
        for (id, labels) in all {
            if self.state.identities().get(id) != Some(labels) {
                diffs.push(self.state.add_identity(*id, labels.clone()));
            }
        }
        self.extra = Some(extra);
        if diffs.iter().any(|d| !d.is_empty()) {
            self.recount();
        }
        if !self.in_step {
            self.reconcile(maps);
            return;
        }
        for d in &diffs {
            self.write(maps, d);
        }
        // After the entries of their identities; a mesh CIDR that now
        // covers one takes it out.
        self.write_world(maps, Self::world_upserts);
        self.write_world(maps, Self::world_removes);
    }

    /// Re-reads the files; on success the identity policy set is replaced
    /// ([`Self::replace_policies`]) and the egress gateway policies read
    /// are returned for the caller to apply. On failure nothing changes and
    /// the error is kept for status.
    pub fn reload(
        &mut self,
        maps: &mut dyn PolicyMaps,
    ) -> anyhow::Result<Vec<meshgate_egress::EgressPolicy>> {
        let loaded = match load_files(&self.files, &self.options) {
            Ok(p) => p,
            Err(e) => {
                self.failed_reloads += 1;
                self.last_error = Some(format!("{e:#}"));
                return Err(e.context("reloading the policy files; the previous policy stays"));
            }
        };
        self.apply_parsed(maps, loaded.file.identity, loaded.warnings, &[])?;
        Ok(loaded.file.egress)
    }

    /// Policies as read (from the files, or the Kubernetes API): `identity`
    /// replaces the set (as [`Self::replace_policies`]) and `warnings` are
    /// logged and kept; the objects that were refused (`refused`, each
    /// naming its object, from the API) are kept for status, and the
    /// others apply.
    pub fn apply_parsed(
        &mut self,
        maps: &mut dyn PolicyMaps,
        identity: Vec<Policy>,
        warnings: Vec<meshgate_model::policy::PolicyWarning>,
        refused: &[String],
    ) -> anyhow::Result<()> {
        self.replace_policies(maps, identity)?;
        log_warnings(&warnings);
        self.warnings = warnings;
        self.set_refused(refused);
        Ok(())
    }

    /// The policy objects the API holds that were refused (status and
    /// `meshgate status` show them).
    pub fn set_refused(&mut self, refused: &[String]) {
        if !refused.is_empty() {
            self.last_error = Some(format!(
                "{} policy object(s) refused and skipped: {}",
                refused.len(),
                refused.join("; ")
            ));
        }
    }

    /// Makes `policies` the identity policy set, with the CIDR identities
    /// and world entries it needs, in an order that drops no flow allowed
    /// before and after (every CIDR identity is labelled with the old and
    /// the new prefixes while both sets of entries are in the maps):
    ///
    /// 1. identities for the new prefixes (numbers no entry carries) and
    ///    the entries the old policies give them;
    /// 2. the new policies' entries;
    /// 3. the new prefixes' ipcache entries, then the new selections;
    /// 4. the old policies' entries out;
    /// 5. the ipcache entries of prefixes no policy names any more out;
    /// 6. their identities out, the labels of the others to the new set.
    ///
    /// Refused (nothing changes; the error is kept for status): a policy
    /// named twice, more prefixes than a node has CIDR identities.
    pub fn replace_policies(
        &mut self,
        maps: &mut dyn PolicyMaps,
        policies: Vec<Policy>,
    ) -> anyhow::Result<()> {
        let new_named = cidr::cidr_prefixes(&policies);
        let refused = check_capacity(&new_named)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                PolicyState::new(self.state.scope().clone())
                    .sync_policies(policies.clone())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = refused {
            self.failed_reloads += 1;
            self.last_error = Some(e.clone());
            return Err(anyhow::anyhow!("{e}; the previous policy stays"));
        }
        let mut written = 0;
        self.extra = None; // `cidrs` and `named` change below
        if self.restored {
            if self.cidrs.allocate(&new_named).is_err() {
                // Old and new do not fit together: free the old first.
                self.cidrs.release(&new_named);
                self.cidrs
                    .allocate(&new_named)
                    .context("numbering the policies' CIDR identities")?;
            }
            let union: BTreeSet<Ipv4Net> = self.named.union(&new_named).copied().collect();
            for (id, labels) in self.extra_identities(&union) {
                let d = self.state.add_identity(id, labels);
                written += self.write(maps, &d);
            }
        }
        let d = self
            .state
            .sync_policies(policies)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.named = new_named;
        let [sets, selects, removes] = split(d);
        written += self.write(maps, &sets);
        self.write_world(maps, Self::world_upserts);
        written += self.write(maps, &selects);
        written += self.write(maps, &removes);
        let gone = self.cidrs.release(&self.named);
        self.write_world(maps, Self::world_removes);
        if self.restored {
            for (_, id) in gone {
                let d = self.state.remove_identity(id);
                written += self.write(maps, &d);
            }
            for (id, labels) in self.extra_identities(&self.named) {
                let d = self.state.add_identity(id, labels);
                written += self.write(maps, &d);
            }
        }
        self.reloads += 1;
        self.last_error = None;
        self.recount();
        let (entries, selected) = self.counts();
        info!(
            writes = written,
            entries,
            selected,
            cidr_identities = self.cidrs.len(),
            "policy replaced"
        );
        Ok(())
    }

    /// Reads the maps and applies the diff to what the state wants: entries
    /// and selections first, then the world entries, then the removals.
    fn reconcile(&mut self, maps: &mut dyn PolicyMaps) {
        let current = match maps.read() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the pinned policy maps failed; retried on the next update");
                return;
            }
        };
        match maps.read_world() {
            Ok(w) => self.world = w,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the pinned ipcache's world entries failed; retried on the next update");
                return;
            }
        }
        let d = PolicyDiff::between(&current, &self.state.maps());
        let world_before = self.world.clone();
        let [sets, selects, removes] = split(d.clone());
        let result = apply(maps, &sets)
            .and_then(|()| self.world_upserts(maps))
            .and_then(|()| apply(maps, &selects))
            .and_then(|()| self.world_removes(maps))
            .and_then(|()| apply(maps, &removes));
        match result {
            Ok(()) => {
                let world_writes = world_before
                    .iter()
                    .filter(|(n, id)| self.world.get(*n) != Some(*id))
                    .count()
                    + self
                        .world
                        .keys()
                        .filter(|n| !world_before.contains_key(*n))
                        .count();
                self.reconcile_writes =
                    Some(d.set.len() + d.select.len() + d.remove.len() + world_writes);
                let (entries, selected) = self.counts();
                info!(
                    pinned = current.entries.len(),
                    set = d.set.len(),
                    select = d.select.len(),
                    remove = d.remove.len(),
                    world_writes,
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
mod tests_support {
    //! The in-memory model of the maps the tests run against.
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A flow that must pass at every write: from `local` in egress to
    /// `addr` on (`port`, `proto`).
    #[derive(Clone, Copy, Debug)]
    pub struct Probe {
        pub local: u32,
        pub addr: Ipv4Addr,
        pub port: u16,
        pub proto: u8,
    }

    /// The maps as a model, counting writes; after each write it checks
    /// that every probe still passes, as the datapath would judge it.
    #[derive(Default)]
    pub struct Model {
        pub maps: Compiled,
        pub world: BTreeMap<Ipv4Net, u32>,
        pub writes: usize,
        pub fail: bool,
        pub probes: Vec<Probe>,
        pub violations: Vec<String>,
    }

    impl Model {
        /// The identity the datapath gives `addr`: the longest world prefix
        /// holding it, else world.
        pub fn identity_of(&self, addr: Ipv4Addr) -> u32 {
            self.world
                .iter()
                .filter(|(n, _)| n.contains(&addr))
                .max_by_key(|(n, _)| n.prefix_len())
                .map_or(identity::WORLD, |(_, id)| *id)
        }

        /// `policy_check` of the datapath, in egress.
        pub fn allows(&self, p: &Probe) -> bool {
            let remote = self.identity_of(p.addr);
            let mut allowed = false;
            for (r, port, proto) in [
                (remote, p.port, p.proto),
                (remote, 0, p.proto),
                (remote, 0, 0),
                (0, p.port, p.proto),
                (0, 0, p.proto),
                (0, 0, 0),
            ] {
                let k = PolicyEntry {
                    local_identity: p.local,
                    remote_identity: r,
                    dport: port,
                    proto,
                    direction: Direction::Egress,
                };
                match self.maps.entries.get(&k) {
                    Some(Verdict::Deny) => return false,
                    Some(Verdict::Allow) => allowed = true,
                    None => {}
                }
            }
            allowed || !self.maps.selected.get(&p.local).is_some_and(|s| s.egress)
        }

        fn wrote(&mut self, what: String) {
            self.writes += 1;
            for p in self.probes.clone() {
                if !self.allows(&p) {
                    self.violations.push(format!("{p:?} dropped after {what}"));
                }
            }
        }
    }

    impl PolicyMaps for Model {
        fn set(&mut self, e: &PolicyEntry, v: Verdict) -> anyhow::Result<()> {
            anyhow::ensure!(!self.fail, "injected failure");
            self.maps.entries.insert(*e, v);
            self.wrote(format!("set {e:?} {v:?}"));
            Ok(())
        }
        fn select(&mut self, id: u32, s: Selection) -> anyhow::Result<()> {
            if s.is_none() {
                self.maps.selected.remove(&id);
            } else {
                self.maps.selected.insert(id, s);
            }
            self.wrote(format!("select {id} {s:?}"));
            Ok(())
        }
        fn remove(&mut self, e: &PolicyEntry) -> anyhow::Result<()> {
            self.maps.entries.remove(e);
            self.wrote(format!("remove {e:?}"));
            Ok(())
        }
        fn read(&self) -> anyhow::Result<Compiled> {
            Ok(self.maps.clone())
        }
        fn set_world(&mut self, net: Ipv4Net, identity: u32) -> anyhow::Result<()> {
            anyhow::ensure!(!self.fail, "injected failure");
            self.world.insert(net, identity);
            self.wrote(format!("world {net} = {identity:#x}"));
            Ok(())
        }
        fn remove_world(&mut self, net: Ipv4Net) -> anyhow::Result<()> {
            self.world.remove(&net);
            self.wrote(format!("world {net} removed"));
            Ok(())
        }
        fn read_world(&self) -> anyhow::Result<BTreeMap<Ipv4Net, u32>> {
            Ok(self.world.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_model::policy::{compile, parse_policies};

    use super::tests_support::*;

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

    /// A policy that reads fine but can never select anything: no endpoint
    /// carries the (misspelt) service-account label.
    const NEVER: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: sa, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {io.cilium.k8s.policy.service-account: web}}\n  egress:\n  - toEntities: [world]\n";

    /// A runtime over `files` as the agent starts one (default options).
    fn runtime(files: &[PathBuf]) -> PolicyRuntime {
        let loaded = load_files(files, &Default::default()).unwrap();
        PolicyRuntime::new(1, files.to_vec(), loaded.file.identity).unwrap()
    }

    #[test]
    fn load_files_lists_every_error_and_returns_the_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let never = write(dir.path(), "never.yaml", NEVER);
        let loaded = load_files(std::slice::from_ref(&never), &Default::default()).unwrap();
        assert_eq!(loaded.file.identity.len(), 1);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert_eq!(loaded.warnings[0].kind.as_str(), "never-matches");
        let strict = meshgate_model::policy::ParseOptions {
            strict: true,
            ..Default::default()
        };
        let err = format!(
            "{:#}",
            load_files(std::slice::from_ref(&never), &strict)
                .err()
                .unwrap()
        );
        assert!(
            err.contains("never.yaml") && err.contains("--strict-policy"),
            "{err}"
        );
        let bad1 = write(dir.path(), "bad1.yaml", "kind: NetworkPolicy\n");
        let bad2 = write(dir.path(), "bad2.yaml", ": : :\n");
        let err = format!(
            "{:#}",
            load_files(&[bad1, never, bad2], &strict).err().unwrap()
        );
        assert!(err.starts_with("3 errors in the policy files"), "{err}");
        for f in ["bad1.yaml", "bad2.yaml", "never.yaml"] {
            assert!(err.contains(f), "{f}: {err}");
        }
    }

    #[test]
    fn a_reload_reads_the_files_as_at_start_and_shows_their_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "p.yaml", POL);
        let files = vec![f.clone()];
        let strict = meshgate_model::policy::ParseOptions {
            strict: true,
            ..Default::default()
        };
        let loaded = load_files(&files, &strict).unwrap();
        let mut rt = PolicyRuntime::new(1, files.clone(), loaded.file.identity)
            .unwrap()
            .with_options(strict, loaded.warnings);
        assert!(rt.status().warnings.is_empty());
        let mut m = Model::default();
        // The misspelt selector is refused at the reload, as it would be at
        // start; the policy in force stays.
        std::fs::write(&f, format!("{POL}---\n{NEVER}")).unwrap();
        assert!(rt.reload(&mut m).is_err());
        let st = rt.status();
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("--strict-policy")),
            "{st:?}"
        );
        assert_eq!(st.failed_reloads, 1);
        // Read as warnings, they are shown in status.json.
        let mut rt = runtime(&files);
        rt.reload(&mut m).unwrap();
        let st = rt.status();
        assert_eq!(st.warnings.len(), 1, "{st:?}");
        assert_eq!(st.warnings[0].kind, "never-matches");
        assert!(
            st.warnings[0]
                .warning
                .contains("p.yaml: CiliumNetworkPolicy shop/sa"),
            "{st:?}"
        );
    }

    #[test]
    fn identities_then_reload_keep_the_maps_equal_to_a_full_compile() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "p.yaml", POL);
        let files = vec![f.clone()];
        let mut rt = runtime(&files);
        let mut m = Model::default();
        rt.sync_identities(&mut m, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            m.writes, 0,
            "nothing is written before identities are known"
        );
        let mut known = ids(&[(65_792, "db", "c1"), (65_793, "web", "c1")]);
        rt.sync_identities(&mut m, &known, &BTreeSet::new());
        let want = |k: &BTreeMap<u32, Labels>, text: &str| {
            compile(&Scope::new(1), &parse_policies(text, "x").unwrap(), k)
        };
        assert_eq!(m.maps, want(&known, POL));
        assert_eq!(m.maps.entries.len(), 1);
        known.extend(ids(&[(65_794, "web", "c1")]));
        rt.sync_identities(&mut m, &known, &BTreeSet::new());
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
        rt.sync_identities(&mut m, &known, &BTreeSet::new());
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
        let mut first = runtime(&files);
        first.sync_identities(&mut m, &known, &BTreeSet::new());
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
        let mut second = runtime(&files);
        second.sync_identities(&mut m, &known, &BTreeSet::new());
        assert_eq!(m.writes, 1, "only the stale entry is removed");
        assert_eq!(second.status().reconcile_writes, Some(1));
        assert!(!m.maps.entries.contains_key(&stale));
        assert_eq!(second.counts(), (1, 1));
    }

    #[test]
    fn a_failed_write_is_reconciled_on_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![write(dir.path(), "p.yaml", POL)];
        let mut rt = runtime(&files);
        let mut m = Model::default();
        let mut known = ids(&[(65_792, "db", "c1")]);
        rt.sync_identities(&mut m, &known, &BTreeSet::new());
        known.extend(ids(&[(65_793, "web", "c1")]));
        m.fail = true;
        rt.sync_identities(&mut m, &known, &BTreeSet::new());
        m.fail = false;
        rt.sync_identities(&mut m, &known, &BTreeSet::new());
        assert_eq!(
            m.maps,
            compile(
                &Scope::new(1),
                &load_files(&files, &Default::default())
                    .unwrap()
                    .file
                    .identity,
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

#[cfg(test)]
mod cidr_tests {
    //! Entities, CIDR rules and the ipcache's world entries, against the
    //! model of the maps (which judges probe flows as the datapath does at
    //! every write). Policies are built as the parser gives them: a CIDR
    //! peer is `cidr:<net>` Exists with `cidr:<except>` DoesNotExist, an
    //! entity `reserved:<name>` Exists (plus the cluster label absent, which
    //! holds for reserved and CIDR identities and lets a peer selector reach
    //! cluster 0).
    #![allow(clippy::unwrap_used)]
    use super::tests_support::*;
    use super::*;
    use meshgate_model::policy::selector::{Op, Requirement};
    use meshgate_model::policy::{
        compile, Peers, PolicyKind, PolicyRef, PolicySpec, PortProto, Rule, Selector,
        CLUSTER_LABEL, NAMESPACE_LABEL,
    };

    const DB: u32 = 65_792;

    fn req(key: &str, op: Op) -> Requirement {
        Requirement {
            key: key.into(),
            op,
            values: BTreeSet::new(),
        }
    }

    fn cidr_peer(c: &str, except: &[&str]) -> Selector {
        let mut s = Selector::all()
            .with(req(&format!("cidr:{c}"), Op::Exists))
            .with(req(CLUSTER_LABEL, Op::DoesNotExist));
        for e in except {
            s = s.with(req(&format!("cidr:{e}"), Op::DoesNotExist));
        }
        s
    }

    fn entity(name: &str) -> Selector {
        Selector::all()
            .with(req(&format!("reserved:{name}"), Op::Exists))
            .with(req(CLUSTER_LABEL, Op::DoesNotExist))
    }

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn port(proto: u8, port: u16) -> PortProto {
        PortProto { proto, port }
    }

    /// A policy of `db` (namespace default) with these egress rules.
    fn egress(rules: Vec<(Selector, Verdict, PortProto)>) -> Policy {
        Policy {
            id: PolicyRef {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: "default".into(),
                name: "db-out".into(),
            },
            specs: vec![PolicySpec {
                subject: Selector::all()
                    .with(Requirement::is_in("app", "db"))
                    .with(Requirement::is_in(NAMESPACE_LABEL, "default")),
                selects: Selection {
                    ingress: false,
                    egress: true,
                },
                rules: rules
                    .into_iter()
                    .map(|(sel, verdict, pp)| Rule {
                        direction: Direction::Egress,
                        verdict,
                        peers: Peers::Selected(vec![sel]),
                        ports: vec![pp],
                        dns: vec![],
                    })
                    .collect(),
            }],
        }
    }

    fn known() -> BTreeMap<u32, Labels> {
        BTreeMap::from([(
            DB,
            Labels::from([
                ("app".to_string(), "db".to_string()),
                (NAMESPACE_LABEL.into(), "default".into()),
                (CLUSTER_LABEL.into(), "c1".into()),
            ]),
        )])
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn probe(addr: &str, proto: u8, p: u16) -> Probe {
        Probe {
            local: DB,
            addr: addr.parse().unwrap(),
            port: p,
            proto,
        }
    }

    #[test]
    fn cidr_prefixes_enter_the_ipcache_after_their_entries_and_a_reload_drops_no_allowed_flow() {
        let v1 = egress(vec![(
            cidr_peer("10.0.0.0/8", &[]),
            Verdict::Allow,
            port(TCP, 443),
        )]);
        let mut rt = PolicyRuntime::new(1, vec![], vec![v1]).unwrap();
        // Allowed before (db unselected), during and after the first sync.
        let mut m = Model {
            probes: vec![probe("10.1.2.3", TCP, 443)],
            ..Model::default()
        };
        rt.sync_identities(&mut m, &known(), &BTreeSet::new());
        assert_eq!(m.violations, Vec::<String>::new());
        assert_eq!(m.world, BTreeMap::from([(net("10.0.0.0/8"), 0x100)]));
        assert!(!m.allows(&probe("11.0.0.1", TCP, 443)), "outside 10/8");
        assert!(!m.allows(&probe("10.1.2.3", TCP, 80)), "another port");

        // Only 10.1.2.0/24 now: its identity and entries come before its
        // ipcache entry, 10/8 leaves the ipcache before its entries go.
        let v2 = egress(vec![(
            cidr_peer("10.1.2.0/24", &[]),
            Verdict::Allow,
            port(TCP, 443),
        )]);
        rt.replace_policies(&mut m, vec![v2.clone()]).unwrap();
        assert_eq!(m.violations, Vec::<String>::new());
        assert_eq!(m.world, BTreeMap::from([(net("10.1.2.0/24"), 0x101)]));
        assert!(
            !m.allows(&probe("10.5.0.1", TCP, 443)),
            "10/8 is no longer allowed"
        );
        // The maps are what a full compile of v2 gives over the identities
        // the runtime has: db, the reserved ones and 10.1.2.0/24's.
        let ids = rt.state.identities().clone();
        assert_eq!(
            ids.get(&0x101)
                .map(|l| l.keys().cloned().collect::<Vec<_>>()),
            Some(vec![
                "cidr:10.1.2.0/24".to_string(),
                "reserved:world".to_string()
            ])
        );
        assert!(!ids.contains_key(&0x100), "10/8's identity is gone");
        assert!(ids.contains_key(&identity::KUBE_APISERVER) && ids.contains_key(&identity::HOST));
        assert_eq!(m.maps, compile(&Scope::new(1), [&v2], &ids));

        // Back to 10/8 (a new number: 0x100 was freed after its entries went).
        m.probes.push(probe("10.1.2.9", TCP, 443));
        let v3 = egress(vec![
            (
                cidr_peer("10.0.0.0/8", &["10.1.0.0/16"]),
                Verdict::Allow,
                port(TCP, 443),
            ),
            (
                cidr_peer("10.1.2.0/24", &[]),
                Verdict::Allow,
                port(TCP, 443),
            ),
        ]);
        rt.replace_policies(&mut m, vec![v3]).unwrap();
        assert_eq!(m.violations, Vec::<String>::new());
        assert_eq!(
            m.world,
            BTreeMap::from([
                (net("10.0.0.0/8"), 0x100),
                (net("10.1.0.0/16"), 0x102),
                (net("10.1.2.0/24"), 0x101),
            ]),
            "10.1.2.0/24 keeps its number"
        );
        assert!(m.allows(&probe("10.200.0.1", TCP, 443)), "in 10/8");
        assert!(!m.allows(&probe("10.1.7.1", TCP, 443)), "in the except /16");
        assert!(
            m.allows(&probe("10.1.2.200", TCP, 443)),
            "the /24 inside the except"
        );
    }

    #[test]
    fn entities_except_deny_kube_apiserver_and_mesh_addresses() {
        let p = egress(vec![
            (
                cidr_peer("10.0.0.0/8", &["10.1.0.0/16"]),
                Verdict::Allow,
                PortProto::ANY,
            ),
            (cidr_peer("10.2.0.0/16", &[]), Verdict::Deny, port(TCP, 22)),
            (entity("kube-apiserver"), Verdict::Allow, port(TCP, 443)),
            (cidr_peer("0.0.0.0/0", &[]), Verdict::Allow, port(UDP, 53)),
            (
                cidr_peer("10.77.1.0/24", &[]),
                Verdict::Allow,
                PortProto::ANY,
            ),
            (entity("remote-node"), Verdict::Allow, port(TCP, 10250)),
        ]);
        let mut rt = PolicyRuntime::new(1, vec![], vec![p])
            .unwrap()
            .with_kube_apiservers(["172.16.0.1".parse().unwrap()]);
        let mut m = Model::default();
        let mesh = BTreeSet::from([net("10.77.0.0/16")]);
        rt.sync_identities(&mut m, &known(), &mesh);
        let prefixes: Vec<String> = m.world.keys().map(|n| n.to_string()).collect();
        assert_eq!(
            prefixes,
            ["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "172.16.0.1/32"],
            "0.0.0.0/0 is world itself; nothing inside the mesh CIDR"
        );
        assert_eq!(m.world[&net("172.16.0.1/32")], identity::KUBE_APISERVER);
        for (addr, proto, p, want) in [
            ("10.3.0.1", TCP, 80, true),
            ("10.1.0.1", TCP, 80, false), // except
            ("10.2.0.1", TCP, 22, false), // deny over the 10/8 allow
            ("10.2.0.1", TCP, 80, true),
            ("172.16.0.1", TCP, 443, true), // kube-apiserver
            ("172.16.0.1", TCP, 80, false),
            ("8.8.8.8", UDP, 53, true),  // 0.0.0.0/0 is world
            ("10.1.0.1", UDP, 53, true), // and every CIDR identity
            ("8.8.8.8", TCP, 80, false),
        ] {
            assert_eq!(m.allows(&probe(addr, proto, p)), want, "{addr} {proto}/{p}");
        }
        // The deny is an explicit deny entry, remote-node an entry for 6.
        let key = |remote: u32, proto: u8, dport: u16| PolicyEntry {
            local_identity: DB,
            remote_identity: remote,
            dport,
            proto,
            direction: Direction::Egress,
        };
        let id_10_2 = m.world[&net("10.2.0.0/16")];
        assert_eq!(
            m.maps.entries.get(&key(id_10_2, TCP, 22)),
            Some(&Verdict::Deny)
        );
        assert_eq!(
            m.maps.entries.get(&key(identity::REMOTE_NODE, TCP, 10250)),
            Some(&Verdict::Allow)
        );
        assert_eq!(
            m.maps.entries.get(&key(identity::WORLD, UDP, 53)),
            Some(&Verdict::Allow)
        );
        // 10.77.1.0/24 has an identity but no ipcache entry: the datapath
        // never lets a CIDR entry re-label a mesh address.
        assert!(rt
            .state
            .identities()
            .values()
            .any(|l| l.contains_key("cidr:10.77.1.0/24")));
    }

    #[test]
    fn a_node_address_named_by_a_cidr_rule_gets_no_world_entry_while_the_node_is_there() {
        let p = egress(vec![
            (
                cidr_peer("198.18.1.11/32", &[]),
                Verdict::Allow,
                PortProto::ANY,
            ),
            (
                cidr_peer("198.18.0.0/15", &[]),
                Verdict::Allow,
                PortProto::ANY,
            ),
        ]);
        let mut rt = PolicyRuntime::new(1, vec![], vec![p]).unwrap();
        let mut m = Model::default();
        rt.sync_identities(&mut m, &known(), &BTreeSet::new());
        assert!(m.world.contains_key(&net("198.18.1.11/32")));
        assert!(rt.holds_world(net("198.18.1.11/32")));
        // The node comes: its /32 is taken out (the datapath's node entry
        // holds the key), the /15 stays.
        rt.set_node_addresses(BTreeSet::from(["198.18.1.11".parse().unwrap()]));
        rt.sync_identities(&mut m, &known(), &BTreeSet::new());
        let prefixes: Vec<String> = m.world.keys().map(|n| n.to_string()).collect();
        assert_eq!(prefixes, ["198.18.0.0/15"]);
        assert!(!rt.holds_world(net("198.18.1.11/32")));
        // A reload keeps it out.
        let again = egress(vec![(
            cidr_peer("198.18.1.11/32", &[]),
            Verdict::Allow,
            port(TCP, 22),
        )]);
        rt.replace_policies(&mut m, vec![again]).unwrap();
        assert!(m.world.is_empty(), "{:?}", m.world);
        // The node goes: the rule's world entry is back.
        rt.set_node_addresses(BTreeSet::new());
        rt.sync_identities(&mut m, &known(), &BTreeSet::new());
        assert!(rt.holds_world(net("198.18.1.11/32")));
        assert_eq!(m.world.len(), 1);
    }

    #[test]
    fn a_restart_keeps_the_cidr_numbers_and_rewrites_nothing() {
        let p = || {
            egress(vec![
                (
                    cidr_peer("192.168.0.0/16", &[]),
                    Verdict::Allow,
                    PortProto::ANY,
                ),
                (cidr_peer("10.0.0.0/8", &[]), Verdict::Allow, PortProto::ANY),
            ])
        };
        let mut m = Model::default();
        let mut first = PolicyRuntime::new(1, vec![], vec![p()]).unwrap();
        first.sync_identities(&mut m, &known(), &BTreeSet::new());
        let world = m.world.clone();
        let maps = m.maps.clone();
        m.writes = 0;
        let mut second = PolicyRuntime::new(1, vec![], vec![p()]).unwrap();
        second.sync_identities(&mut m, &known(), &BTreeSet::new());
        assert_eq!(m.writes, 0, "same policy over the pins: nothing written");
        assert_eq!(second.status().reconcile_writes, Some(0));
        assert_eq!((m.world.clone(), m.maps.clone()), (world.clone(), maps));
        // A third run with a prefix that sorts first: the others keep theirs.
        let mut third = PolicyRuntime::new(
            1,
            vec![],
            vec![egress(vec![
                (cidr_peer("1.0.0.0/8", &[]), Verdict::Allow, PortProto::ANY),
                (cidr_peer("10.0.0.0/8", &[]), Verdict::Allow, PortProto::ANY),
                (
                    cidr_peer("192.168.0.0/16", &[]),
                    Verdict::Allow,
                    PortProto::ANY,
                ),
            ])],
        )
        .unwrap();
        m.probes = vec![probe("10.0.0.1", TCP, 1), probe("192.168.3.3", UDP, 9)];
        third.sync_identities(&mut m, &known(), &BTreeSet::new());
        assert_eq!(m.violations, Vec::<String>::new());
        for (n, id) in &world {
            assert_eq!(m.world.get(n), Some(id), "{n} keeps its number");
        }
        assert_eq!(m.world.len(), 3);
    }

    #[test]
    fn more_prefixes_than_identities_is_refused_naming_the_fix() {
        let rules: Vec<(Selector, Verdict, PortProto)> = (0..65_281u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0x0b00_0000 + (i << 8));
                (
                    cidr_peer(&format!("{a}/24"), &[]),
                    Verdict::Allow,
                    PortProto::ANY,
                )
            })
            .collect();
        let e = PolicyRuntime::new(1, vec![], vec![egress(rules)])
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("no CIDR identity is left") && msg.contains("name fewer prefixes"),
            "{msg}"
        );
    }
}
