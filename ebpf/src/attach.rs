//! Where programs attach, how their pinned links are named, and what a
//! reconcile must do: pure, no kernel.

use std::collections::BTreeSet;
use std::fmt;

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
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::FromPod, Hook::ToMesh, Hook::FromMesh];

    /// The program's name in the object (and its pin name).
    pub const fn program(self) -> &'static str {
        match self {
            Hook::FromPod => "mg_from_pod",
            Hook::ToMesh => "mg_to_mesh",
            Hook::FromMesh => "mg_from_mesh",
        }
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod | Hook::FromMesh => TcAttachType::Ingress,
            Hook::ToMesh => TcAttachType::Egress,
        }
    }

    const fn pin_prefix(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::ToMesh => "to_mesh",
            Hook::FromMesh => "from_mesh",
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

/// What a reconcile does with the attachments pinned now and the ones wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Attach, or re-attach with this build's program (atomic replace).
    pub attach: Vec<Attachment>,
    /// Pinned but no longer wanted: detach and unpin.
    pub remove: Vec<Attachment>,
}

pub fn plan(pinned: &BTreeSet<Attachment>, desired: &BTreeSet<Attachment>) -> Plan {
    Plan {
        attach: desired.iter().cloned().collect(),
        remove: pinned.difference(desired).cloned().collect(),
    }
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

    #[test]
    fn plan_removes_only_what_is_no_longer_wanted() {
        let a = Attachment::new("veth-a", Hook::FromPod);
        let b = Attachment::new("veth-b", Hook::FromPod);
        let vx_in = Attachment::new("mg-vx0", Hook::FromMesh);
        let vx_out = Attachment::new("mg-vx0", Hook::ToMesh);
        let pinned: BTreeSet<_> = [a.clone(), b.clone(), vx_in.clone()].into();
        let desired: BTreeSet<_> = [a.clone(), vx_in.clone(), vx_out.clone()].into();
        let p = plan(&pinned, &desired);
        assert_eq!(p.remove, vec![b]);
        assert_eq!(p.attach, desired.into_iter().collect::<Vec<_>>());
        assert_eq!(plan(&pinned, &BTreeSet::new()).remove.len(), 3);
    }
}
