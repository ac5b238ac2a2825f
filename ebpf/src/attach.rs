//! Where programs attach, how their attachments are recorded under the pin
//! directory, which attach mode a kernel gets, and what a reconcile must do:
//! pure, no kernel (the loader, `loader.rs`, does the syscalls).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use aya::programs::TcAttachType;

/// One attach point of the datapath: one program on one side of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `mg_from_pod` on the ingress of a pod's host-side veth.
    FromPod,
    /// `mg_to_mesh` on the egress of the VXLAN collect_md device.
    ToMesh,
    /// `mg_from_mesh` on the ingress of the VXLAN device.
    FromMesh,
    /// `mg_to_pod` on the egress of a pod's host-side veth (ingress policy
    /// of what reaches the pod from outside the mesh).
    ToPod,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::FromPod, Hook::ToMesh, Hook::FromMesh, Hook::ToPod];

    /// The program's name in the object (and its pin name).
    pub const fn program(self) -> &'static str {
        match self {
            Hook::FromPod => "mg_from_pod",
            Hook::ToMesh => "mg_to_mesh",
            Hook::FromMesh => "mg_from_mesh",
            Hook::ToPod => "mg_to_pod",
        }
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod | Hook::FromMesh => TcAttachType::Ingress,
            Hook::ToMesh | Hook::ToPod => TcAttachType::Egress,
        }
    }

    /// The tc filter slot (priority, handle) of this hook's program in tc
    /// mode. Fixed, so that a restarted agent finds its filter again and
    /// replaces its program in place. Priority 28007 (0x6d67, "mg", as the
    /// routing table) keeps clear of the priorities tc allocates itself
    /// (49152 down); the handle tells the hooks apart.
    pub const fn tc_slot(self) -> (u16, u32) {
        const PRIORITY: u16 = 28_007;
        match self {
            Hook::FromPod => (PRIORITY, 1),
            Hook::ToMesh => (PRIORITY, 2),
            Hook::FromMesh => (PRIORITY, 3),
            Hook::ToPod => (PRIORITY, 4),
        }
    }

    const fn pin_prefix(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::ToMesh => "to_mesh",
            Hook::FromMesh => "from_mesh",
            Hook::ToPod => "to_pod",
        }
    }

    fn from_pin_prefix(s: &str) -> Option<Self> {
        Hook::ALL.into_iter().find(|h| h.pin_prefix() == s)
    }
}

/// A program attached (or to be attached) to an interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    pub iface: String,
    pub hook: Hook,
}

impl Attachment {
    pub fn new(iface: impl Into<String>, hook: Hook) -> Self {
        Self {
            iface: iface.into(),
            hook,
        }
    }

    /// File name of the pinned link under `<pin dir>/links`: `HOOK@IFACE`.
    pub fn pin_name(&self) -> String {
        format!("{}@{}", self.hook.pin_prefix(), self.iface)
    }

    pub fn from_pin_name(name: &str) -> Option<Self> {
        let (hook, iface) = name.split_once('@')?;
        if iface.is_empty() || iface.contains('/') {
            return None;
        }
        Some(Self::new(iface, Hook::from_pin_prefix(hook)?))
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.hook.attach_type() {
            TcAttachType::Egress => "egress",
            _ => "ingress",
        };
        write!(f, "{} ({side} of {})", self.hook.program(), self.iface)
    }
}

/// How programs are attached to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachMode {
    /// TCX links (Linux 6.6+), pinned; a new program replaces the old one in
    /// the link (`bpf_link_update`).
    Tcx,
    /// tc: a clsact qdisc and a cls_bpf filter in direct-action mode at the
    /// hook's fixed [`Hook::tc_slot`]; a new program replaces the old one in
    /// that filter (`RTM_NEWTFILTER` without `NLM_F_CREATE`).
    Tc,
}

impl AttachMode {
    /// Where this mode records its attachments.
    pub const fn record(self) -> Record {
        match self {
            AttachMode::Tcx => Record::Link,
            AttachMode::Tc => Record::Filter,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        })
    }
}

/// The attach mode asked for (`MESHGATE_TC_ATTACH`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachChoice {
    /// TCX where the kernel has it, else tc.
    #[default]
    Auto,
    /// TCX, or fail.
    Tcx,
    /// tc even where TCX exists (to run the older kernels' path anywhere).
    Tc,
}

/// `MESHGATE_TC_ATTACH` is neither `auto`, `tcx`, `tc` nor `netlink`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "MESHGATE_TC_ATTACH={0:?} is not an attach mode: use auto (TCX where the kernel has it, \
     else tc), tcx, or tc (also spelt netlink: clsact + cls_bpf)"
)]
pub struct BadAttachChoice(pub String);

impl FromStr for AttachChoice {
    type Err = BadAttachChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "auto" => Ok(AttachChoice::Auto),
            "tcx" => Ok(AttachChoice::Tcx),
            "tc" | "netlink" => Ok(AttachChoice::Tc),
            other => Err(BadAttachChoice(other.to_owned())),
        }
    }
}

/// What the TCX probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcxProbe {
    Supported,
    /// The kernel refused the TCX attach type (errno).
    Missing(i32),
}

impl TcxProbe {
    /// Classifies the errno of a TCX query: the kernels before 6.6 answer
    /// an attach type they do not know with `EINVAL`; anything else (say
    /// `EPERM`) is not an answer about TCX.
    pub fn from_errno(errno: i32) -> Option<Self> {
        matches!(errno, libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            .then_some(TcxProbe::Missing(errno))
    }
}

/// The kernel's internal `ENOTSUPP` (not `EOPNOTSUPP`), which leaks from bpf.
const ENOTSUPP: i32 = 524;

/// The mode for `choice` on a kernel where the probe found `probe`; `Err`
/// when TCX is demanded and missing (with the probe's errno).
pub fn choose(choice: AttachChoice, probe: impl FnOnce() -> TcxProbe) -> Result<AttachMode, i32> {
    match choice {
        AttachChoice::Tc => Ok(AttachMode::Tc),
        AttachChoice::Auto => Ok(match probe() {
            TcxProbe::Supported => AttachMode::Tcx,
            TcxProbe::Missing(_) => AttachMode::Tc,
        }),
        AttachChoice::Tcx => match probe() {
            TcxProbe::Supported => Ok(AttachMode::Tcx),
            TcxProbe::Missing(errno) => Err(errno),
        },
    }
}

/// How an attachment is recorded under the pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Record {
    /// `links/HOOK@IFACE`: the pinned TCX link itself.
    Link,
    /// `tc/HOOK@IFACE`: the program put in the hook's tc filter, pinned as
    /// the record that the filter is ours (a tc filter is no bpf object and
    /// cannot be pinned).
    Filter,
}

impl Record {
    pub const ALL: [Record; 2] = [Record::Link, Record::Filter];

    /// The directory under the pin directory.
    pub const fn dir(self) -> &'static str {
        match self {
            Record::Link => "links",
            Record::Filter => "tc",
        }
    }
}

/// What a reconcile does with the attachments recorded now and the ones
/// wanted, in this order: `remove`, `attach`, then `retire` (for each
/// attachment made).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Recorded but no longer wanted: detach and unpin.
    pub remove: Vec<(Attachment, Record)>,
    /// Attach, or re-attach with this build's program (replaced in place).
    pub attach: Vec<Attachment>,
    /// Wanted, but (also) recorded in the other mode (`MESHGATE_TC_ATTACH`
    /// changed between two runs): detached once the attachment in this mode
    /// is made, never before, so that no packet goes without a program.
    /// (With both, TCX runs first and its verdict skips the tc filters.)
    pub retire: Vec<(Attachment, Record)>,
}

pub fn plan(
    recorded: &BTreeMap<Attachment, BTreeSet<Record>>,
    desired: &BTreeSet<Attachment>,
    mode: AttachMode,
) -> Plan {
    let mut p = Plan {
        attach: desired.iter().cloned().collect(),
        ..Plan::default()
    };
    for (a, records) in recorded {
        for r in records {
            if !desired.contains(a) {
                p.remove.push((a.clone(), *r));
            } else if *r != mode.record() {
                p.retire.push((a.clone(), *r));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        for hook in Hook::ALL {
            let a = Attachment::new("mgebpf-x.1", hook);
            assert_eq!(Attachment::from_pin_name(&a.pin_name()), Some(a));
        }
        assert_eq!(Attachment::from_pin_name("from_pod@"), None);
        assert_eq!(Attachment::from_pin_name("bogus@eth0"), None);
        assert_eq!(Attachment::from_pin_name("from_pod"), None);
    }

    fn recorded(entries: &[(&Attachment, Record)]) -> BTreeMap<Attachment, BTreeSet<Record>> {
        let mut m: BTreeMap<Attachment, BTreeSet<Record>> = BTreeMap::new();
        for (a, r) in entries {
            m.entry((*a).clone()).or_default().insert(*r);
        }
        m
    }

    #[test]
    fn plan_removes_only_what_is_no_longer_wanted() {
        let a = Attachment::new("veth-a", Hook::FromPod);
        let b = Attachment::new("veth-b", Hook::FromPod);
        let vx_in = Attachment::new("mg-vx0", Hook::FromMesh);
        let vx_out = Attachment::new("mg-vx0", Hook::ToMesh);
        for mode in [AttachMode::Tcx, AttachMode::Tc] {
            let r = mode.record();
            let pinned = recorded(&[(&a, r), (&b, r), (&vx_in, r)]);
            let desired: BTreeSet<_> = [a.clone(), vx_in.clone(), vx_out.clone()].into();
            let p = plan(&pinned, &desired, mode);
            assert_eq!(p.remove, vec![(b.clone(), r)]);
            assert_eq!(p.attach, desired.into_iter().collect::<Vec<_>>());
            assert!(p.retire.is_empty(), "{p:?}");
            assert_eq!(plan(&pinned, &BTreeSet::new(), mode).remove.len(), 3);
        }
    }

    #[test]
    fn a_mode_change_retires_the_old_record_only_after_the_new_attachment() {
        let a = Attachment::new("veth-a", Hook::FromPod);
        let b = Attachment::new("veth-b", Hook::FromPod);
        // a was attached by TCX, b by tc and TCX (an interrupted migration).
        let pinned = recorded(&[(&a, Record::Link), (&b, Record::Link), (&b, Record::Filter)]);
        let desired: BTreeSet<_> = [a.clone(), b.clone()].into();
        let p = plan(&pinned, &desired, AttachMode::Tc);
        assert!(
            p.remove.is_empty(),
            "nothing detached before attaching: {p:?}"
        );
        assert_eq!(p.attach, vec![a.clone(), b.clone()]);
        assert_eq!(
            p.retire,
            vec![(a.clone(), Record::Link), (b.clone(), Record::Link)]
        );
        let back = plan(&pinned, &desired, AttachMode::Tcx);
        assert_eq!(back.retire, vec![(b.clone(), Record::Filter)]);
        // Not wanted at all: every record goes, whatever its mode.
        let gone = plan(&pinned, &[a.clone()].into(), AttachMode::Tc);
        assert_eq!(
            gone.remove,
            vec![(b.clone(), Record::Link), (b, Record::Filter)]
        );
        assert_eq!(gone.retire, vec![(a, Record::Link)]);
    }

    #[test]
    fn the_mode_follows_the_choice_and_the_probe() {
        let supported = || TcxProbe::Supported;
        let missing = || TcxProbe::Missing(libc::EINVAL);
        assert_eq!(choose(AttachChoice::Auto, supported), Ok(AttachMode::Tcx));
        assert_eq!(choose(AttachChoice::Auto, missing), Ok(AttachMode::Tc));
        assert_eq!(
            choose(AttachChoice::Tc, || panic!("tc needs no probe")),
            Ok(AttachMode::Tc)
        );
        assert_eq!(choose(AttachChoice::Tcx, supported), Ok(AttachMode::Tcx));
        assert_eq!(choose(AttachChoice::Tcx, missing), Err(libc::EINVAL));
        assert_eq!(
            TcxProbe::from_errno(libc::EINVAL),
            Some(TcxProbe::Missing(libc::EINVAL))
        );
        assert_eq!(TcxProbe::from_errno(libc::EPERM), None);
    }

    #[test]
    fn attach_choices_parse_and_name_the_fix() {
        assert_eq!("".parse(), Ok(AttachChoice::Auto));
        assert_eq!("auto".parse(), Ok(AttachChoice::Auto));
        assert_eq!("tcx".parse(), Ok(AttachChoice::Tcx));
        assert_eq!("tc".parse(), Ok(AttachChoice::Tc));
        assert_eq!("netlink".parse(), Ok(AttachChoice::Tc));
        let err = "xdp"
            .parse::<AttachChoice>()
            .expect_err("not a mode")
            .to_string();
        assert!(err.contains("\"xdp\"") && err.contains("use auto"), "{err}");
        assert_eq!(AttachMode::Tcx.to_string(), "tcx");
        assert_eq!(AttachMode::Tc.to_string(), "tc");
    }

    #[test]
    fn tc_slots_are_distinct_per_hook() {
        let slots: BTreeSet<_> = Hook::ALL.iter().map(|h| h.tc_slot()).collect();
        assert_eq!(slots.len(), Hook::ALL.len());
    }
}
