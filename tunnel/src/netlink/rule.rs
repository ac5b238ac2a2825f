//! Policy-routing rules: `ip rule add pref N [fwmark M/MASK] lookup T`,
//! deleted and listed by priority.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::RouteHeader;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError};

/// An IPv4 rule that looks `table` up at `priority`, for every packet or
/// for packets whose mark matches `fwmark` (value, mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub priority: u32,
    /// The table looked up; 0 for rules of another action.
    pub table: u32,
    /// Only packets with `mark & mask == value`.
    pub fwmark: Option<(u32, u32)>,
}

impl Rule {
    /// `pref PRIORITY lookup TABLE`, for every packet.
    pub fn lookup(priority: u32, table: u32) -> Rule {
        Rule {
            priority,
            table,
            fwmark: None,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pref {}", self.priority)?;
        if let Some((mark, mask)) = self.fwmark {
            write!(f, " fwmark {mark:#x}/{mask:#x}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

fn message(priority: u32, lookup: Option<u32>, fwmark: Option<(u32, u32)>) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.attributes.push(RuleAttribute::Priority(priority));
    if let Some((mark, mask)) = fwmark {
        m.attributes.push(RuleAttribute::FwMark(mark));
        m.attributes.push(RuleAttribute::FwMask(mask));
    }
    if let Some(table) = lookup {
        m.header.action = RuleAction::ToTable;
        m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.attributes.push(RuleAttribute::Table(table));
    }
    m
}

impl Netlink {
    /// Adds `rule` (EEXIST if the same rule is there).
    pub fn add_rule(&mut self, rule: &Rule) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewRule(message(rule.priority, Some(rule.table), rule.fwmark)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding rule {rule}"),
        )
        .map(drop)
    }

    /// Deletes the first IPv4 rule at `priority` (ENOENT if there is none).
    pub fn delete_rule(&mut self, priority: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelRule(message(priority, None, None)),
            0,
            || format!("deleting rule pref {priority}"),
        )
        .map(drop)
    }

    /// The IPv4 rules, in priority order.
    pub fn rules(&mut self) -> Result<Vec<Rule>, NetlinkError> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        let answer = self.dump(RouteNetlinkMessage::GetRule(req), || {
            "listing the routing rules".to_string()
        })?;
        let mut rules: Vec<Rule> = answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) if r.header.family == AddressFamily::Inet => {
                    Some(parse(&r))
                }
                _ => None,
            })
            .collect();
        rules.sort();
        Ok(rules)
    }
}

fn parse(r: &RuleMessage) -> Rule {
    // Priority 0 (the local table's rule) comes without the attribute.
    let mut rule = Rule::lookup(0, 0);
    let (mut mark, mut mask) = (None, None);
    if r.header.action == RuleAction::ToTable {
        rule.table = u32::from(r.header.table);
    }
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Table(t) if r.header.action == RuleAction::ToTable => rule.table = *t,
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = Some(*m),
            _ => {}
        }
    }
    if let Some(mark) = mark {
        rule.fwmark = Some((mark, mask.unwrap_or(u32::MAX)));
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_back_as_it_was_written_and_deletes_match_by_priority() {
        let r = Rule::lookup(28_007, 28_007);
        let m = message(r.priority, Some(r.table), None);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert_eq!(parse(&m), r);
        assert_eq!(r.to_string(), "pref 28007 lookup 28007");
        let marked = Rule {
            fwmark: Some((0x6c00_0000, 0xff00_0000)),
            ..Rule::lookup(28_006, 28_009)
        };
        let m = message(marked.priority, Some(marked.table), marked.fwmark);
        assert_eq!(parse(&m), marked);
        assert_eq!(
            marked.to_string(),
            "pref 28006 fwmark 0x6c000000/0xff000000 lookup 28009"
        );
        let main = message(32_766, Some(254), None);
        assert_eq!(main.header.table, 254);
        let del = message(28_007, None, None);
        assert_eq!(del.header.action, RuleAction::Unspec);
        assert_eq!(del.attributes, vec![RuleAttribute::Priority(28_007)]);
    }
}
