//! Flow events as `meshgate observe` shows them: a datapath event resolved
//! to pods, identities and clusters with the agent's ipcache, the filters of
//! `observe`, and the line format. Pure: no sockets, no maps, no clock.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use meshgate_ebpf::{identity, FlowEvent, Reason, Verdict};
use serde::{Deserialize, Serialize};

use crate::ipcache::IpCache;

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    pub ip: Ipv4Addr,
    /// 0 when the protocol has no ports.
    pub port: u16,
    /// The identity the datapath saw; when it had not looked it up yet (0),
    /// the one the ipcache holds for the address.
    pub identity: u32,
    /// `host`, `world`, `remote-node` or `unknown` for reserved identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<String>,
    /// `namespace/name` of the pod holding the address, if the ipcache knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The identity's labels, if known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A flow event, resolved (the JSON of `meshgate observe --json`, and of the
/// agent's observe socket; docs/contracts.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub unix_ms: u64,
    /// `cluster/node` whose datapath took the verdict.
    pub node: String,
    /// `from-pod`, `to-mesh` or `from-mesh`.
    pub point: String,
    /// `allowed` or `denied`.
    pub verdict: String,
    /// The drop reason (`source-spoofed`, ...); absent for allowed flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub proto: String,
    pub src: FlowEnd,
    pub dst: FlowEnd,
}

pub const ALLOWED: &str = "allowed";
pub const DENIED: &str = "denied";

fn verdict_name(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Allow) => ALLOWED,
        Some(Verdict::Deny) => DENIED,
        None => "unknown",
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

fn reserved_name(id: u32) -> Option<&'static str> {
    match id {
        identity::UNKNOWN => Some("unknown"),
        identity::HOST => Some("host"),
        identity::WORLD => Some("world"),
        identity::REMOTE_NODE => Some("remote-node"),
        _ => None,
    }
}

fn end(ip: Ipv4Addr, port: u16, seen_identity: u32, cache: &IpCache) -> FlowEnd {
    let entry = cache.entries.get(&IpAddr::V4(ip));
    let identity = match (seen_identity, entry) {
        (identity::UNKNOWN, Some(e)) => e.identity,
        _ => seen_identity,
    };
    let pod = entry
        .filter(|e| !e.name.is_empty())
        .map(|e| format!("{}/{}", e.namespace, e.name));
    FlowEnd {
        ip,
        port,
        identity,
        reserved: reserved_name(identity).map(str::to_string),
        pod,
        cluster: entry.map(|e| e.cluster.clone()),
        node: entry.map(|e| e.node.clone()),
        labels: cache.identities.get(&identity).cloned().unwrap_or_default(),
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn format_time(unix_ms: u64) -> String {
    let secs = i64::try_from(unix_ms / 1000).unwrap_or(0);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            unix_ms % 1000
        ),
        Err(_) => unix_ms.to_string(),
    }
}

/// Resolves a datapath event seen by `node`. `unix_ms` is the event's time
/// on the wall clock (the event carries CLOCK_MONOTONIC).
pub fn resolve(ev: &FlowEvent, node: &str, unix_ms: u64, cache: &IpCache) -> Flow {
    let verdict = verdict_name(ev.verdict);
    Flow {
        time: format_time(unix_ms),
        unix_ms,
        node: node.to_string(),
        point: ev
            .point
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into()),
        verdict: verdict.to_string(),
        reason: ev
            .reason
            .filter(|r| *r != Reason::None)
            .map(|r| r.to_string()),
        proto: proto_name(ev.proto),
        src: end(ev.src, ev.sport, ev.src_identity, cache),
        dst: end(ev.dst, ev.dport, ev.dst_identity, cache),
    }
}

/// The filters of `meshgate observe`; every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `namespace/name` or `name`: the source or the destination pod.
    pub pod: Option<String>,
    pub verdict: Option<String>,
    pub reason: Option<String>,
}

/// The reason names `--reason` takes (every drop reason of the datapath).
pub fn reason_names() -> Vec<String> {
    Reason::ALL
        .iter()
        .filter(|r| **r != Reason::None)
        .map(|r| r.to_string())
        .collect()
}

impl Filter {
    /// Checks the values; a bad one is refused with the valid ones listed.
    pub fn new(
        pod: Option<String>,
        verdict: Option<String>,
        reason: Option<String>,
    ) -> Result<Filter, String> {
        if let Some(v) = &verdict {
            if v != ALLOWED && v != DENIED {
                return Err(format!(
                    "--verdict {v:?} is not a verdict: use {ALLOWED} or {DENIED}"
                ));
            }
        }
        if let Some(r) = &reason {
            let names = reason_names();
            if !names.contains(r) {
                return Err(format!(
                    "--reason {r:?} is not a drop reason: use one of {}",
                    names.join(", ")
                ));
            }
        }
        if let Some(p) = &pod {
            let bad = p.is_empty()
                || p.split('/').count() > 2
                || p.split('/').any(str::is_empty)
                || p.contains(char::is_whitespace);
            if bad {
                return Err(format!(
                    "--pod {p:?} is not a pod: give NAMESPACE/NAME or NAME (e.g. default/web-1)"
                ));
            }
        }
        Ok(Filter {
            pod,
            verdict,
            reason,
        })
    }

    fn pod_matches(want: &str, end: &FlowEnd) -> bool {
        let Some(pod) = &end.pod else {
            return false;
        };
        if want.contains('/') {
            pod == want
        } else {
            pod.rsplit('/').next() == Some(want)
        }
    }

    pub fn matches(&self, f: &Flow) -> bool {
        self.verdict.as_ref().is_none_or(|v| *v == f.verdict)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| f.reason.as_ref() == Some(r))
            && self
                .pod
                .as_ref()
                .is_none_or(|p| Self::pod_matches(p, &f.src) || Self::pod_matches(p, &f.dst))
    }
}

fn end_text(e: &FlowEnd) -> String {
    let who = e.pod.clone().unwrap_or_else(|| e.ip.to_string());
    let port = if e.port == 0 {
        String::new()
    } else {
        format!(":{}", e.port)
    };
    let mut id = format!("id {}", e.identity);
    if let Some(r) = &e.reserved {
        id.push_str(&format!(" {r}"));
    }
    if let Some(c) = &e.cluster {
        id.push_str(&format!(", {c}"));
    }
    format!("{who}{port} ({id})")
}

/// The human-readable line of a flow.
pub fn line(f: &Flow) -> String {
    let verdict = match &f.reason {
        Some(r) => format!("{} {r}", f.verdict.to_uppercase()),
        None => f.verdict.to_uppercase(),
    };
    format!(
        "{} {} {:<9} {} -> {} {} {}",
        f.time,
        f.node,
        f.point,
        end_text(&f.src),
        end_text(&f.dst),
        f.proto,
        verdict
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipcache::IpCacheEntry;
    use meshgate_ebpf::Point;

    fn cache() -> IpCache {
        let mut c = IpCache::default();
        for (ip, name, id) in [
            ("10.1.0.10", "web-1", 65_792),
            ("10.1.1.10", "db-1", 65_793),
        ] {
            c.entries.insert(
                ip.parse().unwrap(),
                IpCacheEntry {
                    identity: id,
                    node: "n1".into(),
                    cluster: "c1".into(),
                    namespace: "default".into(),
                    name: name.into(),
                },
            );
        }
        c.identities
            .insert(65_792, [("app".to_string(), "web".to_string())].into());
        c
    }

    fn event(src: &str, dst: &str, verdict: Verdict, reason: Reason) -> FlowEvent {
        FlowEvent {
            ts_ns: 1,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_identity: 65_792,
            dst_identity: 0,
            sport: 40_000,
            dport: 5201,
            proto: 17,
            verdict: Some(verdict),
            reason: Some(reason),
            point: Some(Point::FromPod),
            ifindex: 3,
        }
    }

    #[test]
    fn events_resolve_to_pods_identities_and_clusters() {
        let ev = event(
            "10.1.0.10",
            "10.1.1.10",
            Verdict::Deny,
            Reason::SourceSpoofed,
        );
        let f = resolve(&ev, "c1/n1", 1_795_485_121_123, &cache());
        assert_eq!(f.time, "2026-11-24T01:52:01.123Z");
        assert_eq!(f.verdict, "denied");
        assert_eq!(f.reason.as_deref(), Some("source-spoofed"));
        assert_eq!(f.point, "from-pod");
        assert_eq!(f.proto, "udp");
        assert_eq!(f.src.pod.as_deref(), Some("default/web-1"));
        assert_eq!(f.src.labels["app"], "web");
        // 0 from the datapath: the ipcache's identity.
        assert_eq!(f.dst.identity, 65_793);
        assert_eq!(f.dst.cluster.as_deref(), Some("c1"));
        assert_eq!(
            line(&f),
            "2026-11-24T01:52:01.123Z c1/n1 from-pod  default/web-1:40000 (id 65792, c1) -> \
             default/db-1:5201 (id 65793, c1) udp DENIED source-spoofed"
        );
        // An address nobody holds stays an address, with its reserved identity.
        let mut ev = event(
            "10.1.0.99",
            "10.1.1.10",
            Verdict::Deny,
            Reason::UnknownSource,
        );
        ev.src_identity = 0;
        let f = resolve(&ev, "c1/n1", 0, &cache());
        assert_eq!(f.src.pod, None);
        assert_eq!(f.src.reserved.as_deref(), Some("unknown"));
        assert!(
            line(&f).contains("10.1.0.99:40000 (id 0 unknown)"),
            "{}",
            line(&f)
        );
        let allowed = resolve(
            &event("10.1.0.10", "10.1.1.10", Verdict::Allow, Reason::None),
            "c1/n1",
            0,
            &cache(),
        );
        assert_eq!(allowed.reason, None);
        let json = serde_json::to_string(&allowed).unwrap();
        assert_eq!(serde_json::from_str::<Flow>(&json).unwrap(), allowed);
    }

    #[test]
    fn filters_match_pod_verdict_and_reason() {
        let c = cache();
        let denied = resolve(
            &event(
                "10.1.0.10",
                "10.1.1.10",
                Verdict::Deny,
                Reason::SourceSpoofed,
            ),
            "c1/n1",
            0,
            &c,
        );
        let allowed = resolve(
            &event("10.1.0.99", "10.1.1.10", Verdict::Allow, Reason::None),
            "c1/n1",
            0,
            &c,
        );
        let f = |pod: Option<&str>, verdict: Option<&str>, reason: Option<&str>| {
            Filter::new(
                pod.map(Into::into),
                verdict.map(Into::into),
                reason.map(Into::into),
            )
            .unwrap()
        };
        assert!(f(None, None, None).matches(&allowed));
        assert!(f(None, Some("denied"), None).matches(&denied));
        assert!(!f(None, Some("denied"), None).matches(&allowed));
        assert!(f(None, None, Some("source-spoofed")).matches(&denied));
        assert!(!f(None, None, Some("unknown-source")).matches(&denied));
        assert!(!f(None, None, Some("source-spoofed")).matches(&allowed));
        assert!(f(Some("web-1"), None, None).matches(&denied));
        assert!(f(Some("default/web-1"), None, None).matches(&denied));
        assert!(!f(Some("other/web-1"), None, None).matches(&denied));
        assert!(!f(Some("web-1"), None, None).matches(&allowed));
        // the destination counts too
        assert!(f(Some("db-1"), Some("allowed"), None).matches(&allowed));
    }

    #[test]
    fn bad_filter_values_list_the_valid_ones() {
        let e = Filter::new(None, Some("dropped".into()), None).unwrap_err();
        assert!(e.contains("allowed or denied"), "{e}");
        let e = Filter::new(None, None, Some("spoofed".into())).unwrap_err();
        for r in ["policy-ingress", "source-spoofed", "strict-unencrypted"] {
            assert!(e.contains(r), "{e}");
        }
        assert!(!e.contains("none"), "{e}");
        for bad in ["a/b/c", "/x", "x/", ""] {
            assert!(Filter::new(Some(bad.into()), None, None).is_err(), "{bad}");
        }
    }
}
