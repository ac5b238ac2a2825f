//! Loading the object, pinning, attaching, re-attaching and reconciling.
//!
//! Pin layout under the pin directory (on bpffs):
//!
//! ```text
//! maps/mg_*          every map; reused on the next load, so state survives restarts
//! progs/mg_*         the programs of the last load
//! links/HOOK@IFACE   one TCX link per attachment; it keeps the program attached
//!                    while no agent runs, and a new program replaces the old one
//!                    in it atomically (bpf_link_update), with no unfiltered gap
//! ```

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use crate::attach::{plan, Attachment, Hook};
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
    pub maps: Maps,
}

impl Datapath {
    /// Loads the programs, reusing the maps pinned under `pin_dir/maps` (or
    /// creating and pinning them), and pins the programs. Attachments made by
    /// an earlier process stay in force and untouched until [`attach`] or
    /// [`reconcile`] moves them to this load's programs.
    ///
    /// [`attach`]: Datapath::attach
    /// [`reconcile`]: Datapath::reconcile
    pub fn load(pin_dir: impl AsRef<Path>) -> Result<Self> {
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
        for sub in ["", "maps", "progs", "links"] {
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
                spec.check(&info, &path)?;
                debug!(map = spec.name, "reusing pinned map");
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
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Self {
            ebpf,
            pin_dir,
            maps,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    /// Attaches `hook`'s program to `iface` as a pinned TCX link. If a live
    /// link is already pinned for it (an earlier process, or an earlier call),
    /// this load's program replaces the old one inside that link atomically:
    /// packets see either the old or the new program, never none.
    pub fn attach(&mut self, attachment: &Attachment) -> Result<AttachOutcome> {
        let pin = self.links_dir().join(attachment.pin_name());
        let attach_err = |action: &'static str| {
            let attachment = attachment.clone();
            move |source: crate::error::BoxError| Error::Attach {
                attachment,
                action,
                source,
            }
        };
        if !interface_exists(&attachment.iface) {
            return Err(Error::NoSuchInterface {
                iface: attachment.iface.clone(),
            });
        }
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
        info!(%attachment, ?outcome, "attached");
        Ok(outcome)
    }

    /// Detaches and unpins `attachment`; false if it was not pinned.
    pub fn detach(&mut self, attachment: &Attachment) -> Result<bool> {
        let pin = self.links_dir().join(attachment.pin_name());
        if !pin.exists() {
            return Ok(false);
        }
        // Removing the last reference to a TCX link detaches it.
        remove_if_exists(&pin)?;
        info!(%attachment, "detached");
        Ok(true)
    }

    /// The attachments pinned now (by this process or an earlier one).
    pub fn pinned_attachments(&self) -> Result<BTreeSet<Attachment>> {
        let dir = self.links_dir();
        let mut out = BTreeSet::new();
        for entry in read_dir(&dir)? {
            let name = entry.to_string_lossy().into_owned();
            let a = Attachment::from_pin_name(&name).ok_or_else(|| Error::BadPinName {
                name: name.clone(),
                dir: dir.clone(),
            })?;
            out.insert(a);
        }
        Ok(out)
    }

    /// Makes the attachments exactly `desired`: attaches (or atomically
    /// re-attaches this load's programs to) each desired one, detaches and
    /// unpins the pinned ones no longer desired, and removes pins of maps and
    /// programs this build does not have. One attachment failing (say its
    /// interface is gone) does not stop the others: it is listed in
    /// [`ReconcileReport::failed`].
    pub fn reconcile(&mut self, desired: &BTreeSet<Attachment>) -> Result<ReconcileReport> {
        let pinned = self.pinned_attachments()?;
        let plan = plan(&pinned, desired);
        let mut report = ReconcileReport::default();
        for a in plan.remove {
            self.detach(&a)?;
            report.removed.push(a);
        }
        for a in plan.attach {
            match self.attach(&a) {
                Ok(AttachOutcome::Created) => report.created.push(a),
                Ok(AttachOutcome::Replaced) => report.replaced.push(a),
                Err(e) => {
                    warn!(attachment = %a, error = %e, "attach failed");
                    report.failed.push((a, e.to_string()));
                }
            }
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

/// Removes a pin directory made by [`Datapath::load`] and everything pinned in it.
pub fn remove_pin_dir(pin_dir: &Path) -> Result<()> {
    for sub in ["links", "progs", "maps"] {
        let dir = pin_dir.join(sub);
        if !dir.exists() {
            continue;
        }
        for name in read_dir(&dir)? {
            remove_if_exists(&dir.join(name))?;
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
