//! Loading the object, pinning, attaching, re-attaching and reconciling.
//!
//! Pin layout under the pin directory (on bpffs):
//!
//! ```text
//! maps/mg_*          every map; reused on the next load, so state survives restarts
//! progs/mg_*         the programs of the last load
//! links/HOOK@IFACE   TCX mode: one TCX link per attachment
//! tc/HOOK@IFACE      tc mode: the program put in the attachment's tc filter
//! ```
//!
//! # Two attach modes
//!
//! The mode is chosen once per load ([`AttachChoice`], from
//! `MESHGATE_TC_ATTACH`: `auto` by default) and shown by
//! [`Datapath::attach_mode`]. `auto` probes once: a query for the TCX
//! programs of `lo` (no side effect) succeeds on Linux 6.6+ and fails with
//! `EINVAL` before; any other failure is an error, not a guess.
//!
//! **TCX** (6.6+). Each attachment is a TCX link pinned at
//! `links/HOOK@IFACE`. The pin keeps the program attached while no agent
//! runs; the next load replaces the program inside the live link
//! (`bpf_link_update`): packets see the old or the new program, never none.
//! Unpinning the link detaches it.
//!
//! **tc** (below 6.6, or forced). A `clsact` qdisc on the interface and one
//! cls_bpf filter in direct-action mode per attachment, at a slot fixed per
//! hook ([`Hook::tc_slot`]: priority 28007, handle 1..3). A tc filter is no
//! bpf object: there is no link to pin and no fd whose closing detaches it.
//! The filter lives in the kernel (it holds its program) until deleted, so it
//! survives the agent, and the fixed slot is how the next agent finds it:
//!
//! - attach = `RTM_NEWTFILTER` at the slot *without* `NLM_F_CREATE`, which
//!   makes cls_bpf swap the program of the existing filter in place (an RCU
//!   list replace, as with the TCX link: no window without a program). Only
//!   if the kernel answers `ENOENT` (no filter there: first start, or the
//!   interface was recreated) is the filter created, with `NLM_F_CREATE |
//!   NLM_F_EXCL`. The kernel is asked, not a record, so a stale record
//!   never makes us skip or duplicate a filter.
//! - the record `tc/HOOK@IFACE` (a pin of the program put in the filter)
//!   is what says "this filter is ours": reconcile lists the records to
//!   detach what is no longer wanted, and [`remove_pin_dir`] deletes the
//!   filters it names (by slot) before unpinning. It is written before the
//!   filter, so a crash in between leaves a record without a filter (the
//!   next attach creates it, a detach finds nothing to delete), never an
//!   orphan filter. aya's handle for a netlink
//!   attachment detaches on drop, so it is forgotten, never dropped, once
//!   the filter is made (it holds numbers only, no fd).
//! - the clsact qdisc is left in place on detach: other filters may use it.
//!   Creating it (the first tc attach on an interface) has the kernel graft
//!   it with the device's transmit queues deactivated for a moment, so a
//!   packet leaving that interface then can be lost (never sent unfiltered).
//!   A restart finds it there (`EEXIST`) and touches nothing.
//!
//! A pin directory written in one mode and loaded in the other (the
//! variable changed between two runs) migrates: the attachment is made in
//! the new mode first, then the old record is detached ([`Plan::retire`];
//! while both exist, TCX runs first and its verdict skips tc).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, Link as _, LinkError, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use crate::attach::{
    choose, plan, AttachChoice, AttachMode, Attachment, Hook, Plan, Record, TcxProbe,
};
use crate::bpffs;
use crate::error::{Error, Result};
use crate::maps::{Maps, MAP_SPECS};

/// What [`Datapath::attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// No live link was pinned: a new one was created and pinned.
    Created,
    /// A pinned link was live: its program was replaced atomically.
    Replaced,
}

/// What [`Datapath::reconcile`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub created: Vec<Attachment>,
    pub replaced: Vec<Attachment>,
    pub removed: Vec<Attachment>,
    /// Pins of maps or programs this build no longer has, removed.
    pub stale_pins: Vec<PathBuf>,
    /// Desired attachments that could not be made, with the reason (the
    /// others are made regardless; retry these on the next reconcile).
    pub failed: Vec<(Attachment, String)>,
}

/// The loaded datapath: programs loaded and pinned, maps pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    mode: AttachMode,
    pub maps: Maps,
}

/// The environment variable that picks the attach mode: `auto` (default),
/// `tcx`, or `tc` (also `netlink`).
pub const ATTACH_ENV: &str = "MESHGATE_TC_ATTACH";

impl AttachChoice {
    /// From [`ATTACH_ENV`]; unset is `auto`.
    pub fn from_env() -> Result<Self> {
        match std::env::var(ATTACH_ENV) {
            Ok(v) => Ok(v.parse()?),
            Err(_) => Ok(AttachChoice::Auto),
        }
    }
}

impl Datapath {
    /// Loads the programs, reusing the maps pinned under `pin_dir/maps` (or
    /// creating and pinning them), and pins the programs. Attachments made by
    /// an earlier process stay in force and untouched until [`attach`] or
    /// [`reconcile`] moves them to this load's programs.
    ///
    /// The attach mode comes from `MESHGATE_TC_ATTACH` ([`AttachChoice::from_env`]).
    ///
    /// [`attach`]: Datapath::attach
    /// [`reconcile`]: Datapath::reconcile
    pub fn load(pin_dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(pin_dir, AttachChoice::from_env()?)
    }

    /// [`load`](Datapath::load) with the attach mode given.
    pub fn load_with(pin_dir: impl AsRef<Path>, choice: AttachChoice) -> Result<Self> {
        let pin_dir = pin_dir.as_ref().to_owned();
        // Check before creating anything, so a missing bpffs is named as such
        // rather than as a failed mkdir in sysfs.
        let existing = pin_dir
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if !bpffs::is_bpffs(existing)? {
            return Err(Error::NotBpffs { path: pin_dir });
        }
        for sub in [
            "",
            "maps",
            "progs",
            Record::Link.dir(),
            Record::Filter.dir(),
        ] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                action: "creating the pin directory",
                path: dir.clone(),
                source,
            })?;
        }
        let maps_dir = pin_dir.join("maps");
        // aya reuses a pinned map without comparing it to the object: do it here.
        for spec in MAP_SPECS {
            let path = maps_dir.join(spec.name);
            if path.exists() {
                let info = MapInfo::from_pin(&path).map_err(|source| Error::Map {
                    name: spec.name,
                    action: "opening the pin",
                    source,
                })?;
                match spec.check(&info, &path) {
                    Ok(()) => debug!(map = spec.name, "reusing pinned map"),
                    // mg_config holds nothing but what the agent writes at
                    // every start (before its programs are swapped in): a pin
                    // of an older layout is replaced, not refused, so an
                    // upgraded agent starts over the old pins. The old
                    // programs keep the old map until they are replaced.
                    Err(e) if spec.name == crate::maps::CONFIG_MAP => {
                        tracing::warn!(map = spec.name, error = %e, "pinned map of another layout replaced");
                        remove_if_exists(&path)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(crate::object::object())
            .map_err(|source| Error::Load { source })?;

        for hook in Hook::ALL {
            let name = hook.program();
            let prog = program(&mut ebpf, hook)?;
            prog.load().map_err(|source| Error::Program {
                name,
                action: "loading (verifier)",
                source: source.into(),
            })?;
            let pin = pin_dir.join("progs").join(name);
            remove_if_exists(&pin)?;
            prog.pin(&pin).map_err(|source| Error::Program {
                name,
                action: "pinning",
                source: source.into(),
            })?;
        }

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(Error::MissingMap { name });
        let maps = Maps::from_maps(&mut take)?;
        let mut probe_failed = None;
        let mode = choose(choice, || {
            probe_tcx().unwrap_or_else(|e| {
                probe_failed = Some(e);
                TcxProbe::Missing(0)
            })
        });
        if let Some(e) = probe_failed {
            return Err(e);
        }
        let mode = mode.map_err(|errno| Error::TcxMissing { errno })?;
        info!(pin_dir = %pin_dir.display(), attach = %mode, ?choice, "datapath loaded");
        Ok(Self {
            ebpf,
            pin_dir,
            mode,
            maps,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// How this load attaches its programs.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    fn record_path(&self, record: Record, attachment: &Attachment) -> PathBuf {
        self.pin_dir.join(record.dir()).join(attachment.pin_name())
    }

    /// Attaches `hook`'s program to `iface` in this load's mode. If it is
    /// attached already (by an earlier process, or an earlier call), this
    /// load's program replaces the old one in place: in the pinned TCX link,
    /// or in the tc filter at the hook's slot. Packets see either the old or
    /// the new program, never none. A record of the other mode is left for
    /// [`reconcile`](Datapath::reconcile) to retire.
    pub fn attach(&mut self, attachment: &Attachment) -> Result<AttachOutcome> {
        if !interface_exists(&attachment.iface) {
            return Err(Error::NoSuchInterface {
                iface: attachment.iface.clone(),
            });
        }
        let outcome = match self.mode {
            AttachMode::Tcx => self.attach_tcx(attachment)?,
            AttachMode::Tc => self.attach_tc(attachment)?,
        };
        info!(%attachment, attach = %self.mode, ?outcome, "attached");
        Ok(outcome)
    }

    fn attach_tcx(&mut self, attachment: &Attachment) -> Result<AttachOutcome> {
        let pin = self.record_path(Record::Link, attachment);
        let attach_err = attach_err(attachment, AttachMode::Tcx);
        let live = live_pinned_link(&pin, attachment)?;
        let prog = program(&mut self.ebpf, attachment.hook)?;
        let outcome = match live {
            Some(link) => {
                let id = prog.attach_to_link(link).map_err(|e| {
                    attach_err("replacing the program in the pinned link")(e.into())
                })?;
                // The pin keeps the link; our fd to it can go.
                drop(
                    prog.take_link(id)
                        .map_err(|e| attach_err("taking the link")(e.into()))?,
                );
                AttachOutcome::Replaced
            }
            None => {
                remove_if_exists(&pin)?;
                let id = prog
                    .attach_with_options(
                        &attachment.iface,
                        attachment.hook.attach_type(),
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| attach_err("creating a TCX link")(e.into()))?;
                let link = prog
                    .take_link(id)
                    .map_err(|e| attach_err("taking the link")(e.into()))?;
                let fd_link: FdLink = link
                    .try_into()
                    .map_err(|e: LinkError| attach_err("pinning the link")(e.into()))?;
                fd_link
                    .pin(&pin)
                    .map_err(|e| attach_err("pinning the link")(e.into()))?;
                AttachOutcome::Created
            }
        };
        Ok(outcome)
    }

    /// tc mode: the filter at the hook's slot gets this load's program in
    /// place, or is created if the kernel has none there (module comment).
    fn attach_tc(&mut self, attachment: &Attachment) -> Result<AttachOutcome> {
        let attach_err = attach_err(attachment, AttachMode::Tc);
        let iface = attachment.iface.as_str();
        let side = attachment.hook.attach_type();
        let (priority, handle) = attachment.hook.tc_slot();
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => debug!(iface, "clsact qdisc added"),
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(attach_err("adding the clsact qdisc")(e.into())),
        }
        // The record first: an agent that dies between the two leaves a
        // record without a filter (harmless: the kernel is asked), never a
        // filter no record names (which no reconcile would remove).
        let record = self.record_path(Record::Filter, attachment);
        remove_if_exists(&record)?;
        let prog = program(&mut self.ebpf, attachment.hook)?;
        prog.pin(&record)
            .map_err(|e| attach_err("recording the filter (pinning its program)")(e.into()))?;
        let existing =
            SchedClassifierLink::attached(iface, side, priority, TcHandle::from(handle), None)
                .map_err(|e| attach_err("naming the filter")(e.into()))?;
        let (id, outcome) = match prog.attach_to_link(existing) {
            Ok(id) => (id, AttachOutcome::Replaced),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {
                let options = TcAttachOptions::Netlink(NlOptions {
                    priority,
                    handle: TcHandle::from(handle),
                    classid: None,
                });
                let id = prog
                    .attach_with_options(iface, side, options)
                    .map_err(|e| attach_err("creating the tc filter")(e.into()))?;
                (id, AttachOutcome::Created)
            }
            Err(e) => {
                return Err(attach_err("replacing the program of the tc filter")(
                    e.into(),
                ))
            }
        };
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err("taking the link")(e.into()))?;
        // Dropping aya's handle would delete the filter: it must outlive us.
        // It holds the interface index, slot and side only (no fd).
        std::mem::forget(link);
        Ok(outcome)
    }

    /// Detaches and unpins `attachment` in every mode it is recorded in;
    /// false if it was not recorded.
    pub fn detach(&mut self, attachment: &Attachment) -> Result<bool> {
        let mut found = false;
        for record in Record::ALL {
            found |= remove_record(&self.pin_dir, attachment, record)?;
        }
        if found {
            info!(%attachment, "detached");
        }
        Ok(found)
    }

    /// The attachments recorded now (by this process or an earlier one), in
    /// either mode.
    pub fn pinned_attachments(&self) -> Result<BTreeSet<Attachment>> {
        Ok(self.records()?.into_keys().collect())
    }

    fn records(&self) -> Result<BTreeMap<Attachment, BTreeSet<Record>>> {
        records(&self.pin_dir)
    }

    /// Makes the attachments exactly `desired`: attaches (or atomically
    /// re-attaches this load's programs to) each desired one, detaches and
    /// unpins the pinned ones no longer desired, and removes pins of maps and
    /// programs this build does not have. One attachment failing (say its
    /// interface is gone) does not stop the others: it is listed in
    /// [`ReconcileReport::failed`].
    pub fn reconcile(&mut self, desired: &BTreeSet<Attachment>) -> Result<ReconcileReport> {
        let Plan {
            remove,
            attach,
            retire,
        } = plan(&self.records()?, desired, self.mode);
        let mut report = ReconcileReport::default();
        for (a, record) in remove {
            remove_record(&self.pin_dir, &a, record)?;
            info!(attachment = %a, ?record, "detached");
            if report.removed.last() != Some(&a) {
                report.removed.push(a);
            }
        }
        let mut made = BTreeSet::new();
        for a in attach {
            match self.attach(&a) {
                Ok(outcome) => {
                    made.insert(a.clone());
                    match outcome {
                        AttachOutcome::Created => report.created.push(a),
                        AttachOutcome::Replaced => report.replaced.push(a),
                    }
                }
                Err(e) => {
                    warn!(attachment = %a, error = %e, "attach failed");
                    report.failed.push((a, e.to_string()));
                }
            }
        }
        for (a, record) in retire.into_iter().filter(|(a, _)| made.contains(a)) {
            remove_record(&self.pin_dir, &a, record)?;
            info!(attachment = %a, ?record, attach = %self.mode, "attachment of the other mode retired");
        }
        report.stale_pins = self.remove_stale_pins()?;
        Ok(report)
    }

    fn remove_stale_pins(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let known_maps: BTreeSet<&str> = MAP_SPECS.iter().map(|s| s.name).collect();
        let known_progs: BTreeSet<&str> = Hook::ALL.iter().map(|h| h.program()).collect();
        for (sub, known) in [("maps", &known_maps), ("progs", &known_progs)] {
            let dir = self.pin_dir.join(sub);
            for name in read_dir(&dir)? {
                if !known.contains(name.to_string_lossy().as_ref()) {
                    let path = dir.join(&name);
                    remove_if_exists(&path)?;
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }

    /// Removes everything: detaches every attachment and unpins links,
    /// programs and maps (their state is lost), then the pin directory.
    pub fn uninstall(self) -> Result<()> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        remove_pin_dir(&pin_dir)
    }
}

/// Removes a pin directory made by [`Datapath::load`] and everything pinned
/// in it, detaching its attachments: TCX links go with their pins, tc
/// filters are deleted by slot (so call it in the network namespace of the
/// interfaces).
pub fn remove_pin_dir(pin_dir: &Path) -> Result<()> {
    if pin_dir.join(Record::Filter.dir()).exists() {
        for (a, records) in records(pin_dir)? {
            if records.contains(&Record::Filter) {
                remove_record(pin_dir, &a, Record::Filter)?;
            }
        }
    }
    for sub in [Record::Link.dir(), Record::Filter.dir(), "progs", "maps"] {
        let dir = pin_dir.join(sub);
        if !dir.exists() {
            continue;
        }
        for name in read_dir(&dir)? {
            let pin = dir.join(name);
            if sub == Record::Link.dir() {
                crate::bpffs::detach_pinned_link(&pin)?;
            }
            remove_if_exists(&pin)?;
        }
        std::fs::remove_dir(&dir).map_err(|source| Error::Io {
            action: "removing",
            path: dir.clone(),
            source,
        })?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "removing",
            path: pin_dir.to_owned(),
            source,
        }),
    }
}

/// The attachments recorded under `pin_dir`, with how each is recorded.
fn records(pin_dir: &Path) -> Result<BTreeMap<Attachment, BTreeSet<Record>>> {
    let mut out: BTreeMap<Attachment, BTreeSet<Record>> = BTreeMap::new();
    for record in Record::ALL {
        let dir = pin_dir.join(record.dir());
        if !dir.exists() {
            continue; // a pin directory of an older build has no tc/
        }
        for entry in read_dir(&dir)? {
            let name = entry.to_string_lossy().into_owned();
            let a = Attachment::from_pin_name(&name).ok_or_else(|| Error::BadPinName {
                name: name.clone(),
                dir: dir.clone(),
            })?;
            out.entry(a).or_default().insert(record);
        }
    }
    Ok(out)
}

/// Detaches `attachment` as `record` says and removes the record; false if
/// there was no such record. A TCX link goes with its last reference, the
/// pin; a tc filter is deleted at its slot (nothing to do when the
/// interface, its qdisc or the filter is already gone).
fn remove_record(pin_dir: &Path, attachment: &Attachment, record: Record) -> Result<bool> {
    let pin = pin_dir.join(record.dir()).join(attachment.pin_name());
    if !pin.exists() {
        return Ok(false);
    }
    if record == Record::Filter && interface_exists(&attachment.iface) {
        delete_filter(attachment)?;
    }
    if record == Record::Link {
        crate::bpffs::detach_pinned_link(&pin)?;
    }
    remove_if_exists(&pin)?;
    Ok(true)
}

fn delete_filter(attachment: &Attachment) -> Result<()> {
    let (priority, handle) = attachment.hook.tc_slot();
    let detach_err = |action: &'static str| {
        let attachment = attachment.clone();
        move |source: crate::error::BoxError| Error::Detach {
            attachment,
            mode: AttachMode::Tc,
            action,
            source,
        }
    };
    let link = SchedClassifierLink::attached(
        &attachment.iface,
        attachment.hook.attach_type(),
        priority,
        TcHandle::from(handle),
        None,
    )
    .map_err(|e| detach_err("naming the filter")(e.into()))?;
    match link.detach() {
        Ok(()) => Ok(()),
        // No filter at the slot (ENOENT), or no clsact qdisc any more (EINVAL).
        Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL)) => {
            debug!(%attachment, error = %e, "no tc filter to delete");
            Ok(())
        }
        Err(e) => Err(detach_err("deleting the tc filter")(e.into())),
    }
}

/// Probes once whether the kernel has TCX: querying the TCX programs of
/// `lo` changes nothing, and kernels before 6.6 answer it with `EINVAL`.
fn probe_tcx() -> Result<TcxProbe> {
    match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
        Ok(_) => Ok(TcxProbe::Supported),
        Err(e) => match errno(&e).and_then(TcxProbe::from_errno) {
            Some(missing) => {
                debug!(error = %e, "no TCX: attaching with tc clsact");
                Ok(missing)
            }
            // Not an answer about TCX (say EPERM).
            None => Err(Error::TcxProbe { source: e.into() }),
        },
    }
}

/// The errno inside one of aya's program errors, if it carries one.
fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        ProgramError::NetlinkError(e) | ProgramError::TcError(TcError::NetlinkError(e)) => {
            e.raw_os_error()
        }
        ProgramError::TcError(TcError::IoError(e)) => e.raw_os_error(),
        _ => None,
    }
}

fn attach_err(
    attachment: &Attachment,
    mode: AttachMode,
) -> impl Fn(&'static str) -> Box<dyn FnOnce(crate::error::BoxError) -> Error> + '_ {
    move |action| {
        let attachment = attachment.clone();
        Box::new(move |source| Error::Attach {
            attachment,
            mode,
            action,
            source,
        })
    }
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    let name = hook.program();
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { name })?
        .try_into()
        .map_err(|source: aya::programs::ProgramError| Error::Program {
            name,
            action: "expecting a tc classifier",
            source: source.into(),
        })
}

/// The link pinned at `pin` if it is still attached to `attachment`'s
/// interface (it is not once the interface was deleted, even if one with the
/// same name exists again).
fn live_pinned_link(pin: &Path, attachment: &Attachment) -> Result<Option<SchedClassifierLink>> {
    let pinned = match PinnedLink::from_pin(pin) {
        Ok(p) => p,
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(Error::Attach {
                attachment: attachment.clone(),
                mode: AttachMode::Tcx,
                action: "opening the pinned link",
                source: e.into(),
            })
        }
    };
    let fd_link = FdLink::from(pinned);
    let Ok(info) = fd_link.info() else {
        return Ok(None);
    };
    let attached = SchedClassifier::query_tcx(&attachment.iface, attachment.hook.attach_type())
        .map(|(_, progs)| progs.iter().any(|p| p.id() == info.program_id()))
        .unwrap_or(false);
    if !attached {
        debug!(%attachment, "pinned link is defunct");
        return Ok(None);
    }
    match SchedClassifierLink::try_from(fd_link) {
        Ok(link) => Ok(Some(link)),
        Err(_) => Ok(None), // not a TCX link: replace it
    }
}

/// In the calling thread's network namespace (unlike /sys/class/net, which
/// shows the namespace sysfs was mounted in).
fn interface_exists(iface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn read_dir(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        action: "listing",
        path: dir.to_owned(),
        source,
    })?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|source| Error::Io {
            action: "listing",
            path: dir.to_owned(),
            source,
        })?;
        names.push(e.file_name());
    }
    names.sort();
    Ok(names)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "removing the pin",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_dir_outside_bpffs_is_refused_before_anything_is_created() {
        let dir = std::env::temp_dir().join(format!("mg-not-bpffs-{}", std::process::id()));
        match Datapath::load(&dir) {
            Err(e @ Error::NotBpffs { .. }) => {
                assert!(
                    e.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
                    "{e}"
                );
            }
            Err(e) => panic!("expected NotBpffs, got {e}"),
            Ok(_) => panic!("loaded with pins outside bpffs"),
        }
        assert!(!dir.exists(), "nothing created");
    }
}
