//! `mg_policy` and `mg_policy_sel`: identity-based L3/L4 policy, one hash
//! entry per (local identity, remote identity, port, protocol, direction).
//! The datapath does a fixed number of lookups per packet (exact, any port,
//! any protocol; each for the remote identity and for any identity), so its
//! cost does not grow with the number of rules.
//!
//! ICMP has no ports: a rule for one ICMP type has `port` =
//! [`icmp_type_port`]`(type)` (`MG_ICMP_TYPE_BASE` + type), the port the
//! datapath looks ICMP packets up with; `port: None` is any ICMP type.

use aya::maps::{HashMap, Map, MapData};

use super::{is_not_found, map_err, typed};
use crate::error::Result;
use crate::layout::{PolicyKey, PolicySelValue, PolicyValue, SEL_EGRESS, SEL_INGRESS};
use crate::reason::{Direction, Verdict};

pub(crate) const NAME: &str = "mg_policy";
pub(crate) const SEL_NAME: &str = "mg_policy_sel";

/// An IP protocol a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
    Other(u8),
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Any => 0,
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Other(n) => n,
        }
    }
}

/// The `port` of a rule for ICMP type `icmp_type` (echo request = 8).
pub const fn icmp_type_port(icmp_type: u8) -> u16 {
    crate::layout::ICMP_TYPE_BASE + icmp_type as u16
}

/// One rule: what `local_identity` may exchange with `remote_identity` in
/// `direction` (seen from the local endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRule {
    pub local_identity: u32,
    /// `None` = any identity.
    pub remote_identity: Option<u32>,
    /// Destination port; `None` = any port of `proto`.
    pub port: Option<u16>,
    pub proto: Proto,
    pub direction: Direction,
}

impl PolicyRule {
    fn key(&self) -> PolicyKey {
        let any_proto = self.proto == Proto::Any;
        PolicyKey {
            local_identity: self.local_identity,
            remote_identity: self.remote_identity.unwrap_or(0),
            dport: if any_proto { 0 } else { self.port.unwrap_or(0) },
            proto: self.proto.number(),
            direction: self.direction as u8,
        }
    }
}

pub struct Policy {
    rules: HashMap<MapData, PolicyKey, PolicyValue>,
    selected: HashMap<MapData, u32, PolicySelValue>,
}

impl Policy {
    pub(crate) fn new(rules: Map, selected: Map) -> Result<Self> {
        Ok(Self {
            rules: typed(NAME, rules, HashMap::try_from)?,
            selected: typed(SEL_NAME, selected, HashMap::try_from)?,
        })
    }

    /// Adds or replaces a rule. A deny entry wins over any allow entry.
    pub fn set(&mut self, rule: &PolicyRule, verdict: Verdict) -> Result<()> {
        self.rules
            .insert(
                rule.key(),
                PolicyValue {
                    verdict: verdict as u32,
                },
                0,
            )
            .map_err(map_err(NAME, "inserting a rule"))
    }

    pub fn allow(&mut self, rule: &PolicyRule) -> Result<()> {
        self.set(rule, Verdict::Allow)
    }

    /// Removes a rule; false if it was not there.
    pub fn remove(&mut self, rule: &PolicyRule) -> Result<bool> {
        match self.rules.remove(&rule.key()) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err(NAME, "removing a rule")(e)),
        }
    }

    /// The verdict stored for exactly this rule.
    pub fn get(&self, rule: &PolicyRule) -> Result<Option<Verdict>> {
        match self.rules.get(&rule.key(), 0) {
            Ok(v) => Ok(u8::try_from(v.verdict).ok().and_then(Verdict::from_raw)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(NAME, "looking up a rule")(e)),
        }
    }

    /// Every rule with its verdict (walks the map), e.g. for an agent
    /// restarted over pinned maps to compare them with what it wants.
    /// An entry with a verdict this build does not know is skipped.
    pub fn rules(&self) -> Result<Vec<(PolicyRule, Verdict)>> {
        let mut out = Vec::new();
        for item in self.rules.iter() {
            let (k, v) = item.map_err(map_err(NAME, "reading the rules"))?;
            let Some(verdict) = u8::try_from(v.verdict).ok().and_then(Verdict::from_raw) else {
                continue;
            };
            let Some(direction) = Direction::from_raw(k.direction) else {
                continue;
            };
            let proto = match k.proto {
                0 => Proto::Any,
                6 => Proto::Tcp,
                17 => Proto::Udp,
                1 => Proto::Icmp,
                n => Proto::Other(n),
            };
            out.push((
                PolicyRule {
                    local_identity: k.local_identity,
                    remote_identity: (k.remote_identity != 0).then_some(k.remote_identity),
                    port: (k.dport != 0).then_some(k.dport),
                    proto,
                    direction,
                },
                verdict,
            ));
        }
        Ok(out)
    }

    /// Every selected identity with its (ingress, egress) selection.
    pub fn selections(&self) -> Result<Vec<(u32, bool, bool)>> {
        let mut out = Vec::new();
        for item in self.selected.iter() {
            let (id, v) = item.map_err(map_err(SEL_NAME, "reading the selections"))?;
            out.push((id, v.flags & SEL_INGRESS != 0, v.flags & SEL_EGRESS != 0));
        }
        Ok(out)
    }

    /// Number of rules (walks the map).
    pub fn len(&self) -> usize {
        self.rules.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Says in which directions policy selects `identity`. In a direction it
    /// is not selected in, everything is allowed (as for a Kubernetes pod no
    /// policy selects); once selected, only what a rule allows passes.
    pub fn select(&mut self, identity: u32, ingress: bool, egress: bool) -> Result<()> {
        let flags = if ingress { SEL_INGRESS } else { 0 } | if egress { SEL_EGRESS } else { 0 };
        if flags == 0 {
            return match self.selected.remove(&identity) {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(map_err(SEL_NAME, "unselecting an identity")(e)),
            };
        }
        self.selected
            .insert(identity, PolicySelValue { flags }, 0)
            .map_err(map_err(SEL_NAME, "selecting an identity"))
    }

    /// (ingress, egress) selection of `identity`.
    pub fn selected(&self, identity: u32) -> Result<(bool, bool)> {
        match self.selected.get(&identity, 0) {
            Ok(v) => Ok((v.flags & SEL_INGRESS != 0, v.flags & SEL_EGRESS != 0)),
            Err(e) if is_not_found(&e) => Ok((false, false)),
            Err(e) => Err(map_err(SEL_NAME, "reading a selection")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_protocol_has_no_port() {
        let r = PolicyRule {
            local_identity: 5,
            remote_identity: None,
            port: Some(80),
            proto: Proto::Any,
            direction: Direction::Egress,
        };
        let k = r.key();
        assert_eq!(
            (k.remote_identity, k.dport, k.proto, k.direction),
            (0, 0, 0, 1)
        );
        let t = PolicyRule {
            proto: Proto::Tcp,
            remote_identity: Some(9),
            ..r
        };
        assert_eq!(
            (t.key().remote_identity, t.key().dport, t.key().proto),
            (9, 80, 6)
        );
    }
}
