//! The scenario's `dns:` section: the world's upstream DNS server, the
//! address pods' resolv.conf names, and the records the server answers.
//! Each record is read from YAML here, with errors naming its field; the
//! zone-wide checks (CNAME targets and loops, sizes) are the server's own
//! ([`crate::dns_server::zone::check`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::FieldError;
use crate::dns_server::zone::{self, ZoneRecord, DEFAULT_TTL};
use crate::dns_server::Records;

/// `dns.server` when absent.
pub const DEFAULT_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// `dns.clusterIP` when absent.
pub const DEFAULT_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// `dns: {server, clusterIP, minTTL, records}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    /// The upstream DNS server's address on the external network.
    #[serde(default = "default_server")]
    pub server: Ipv4Addr,
    /// What pods' resolv.conf names (the node's DNS proxy takes it).
    #[serde(default = "default_cluster_ip", rename = "clusterIP")]
    pub cluster_ip: Ipv4Addr,
    /// The proxy's `--min-ttl`.
    #[serde(default, rename = "minTTL", skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<u32>,
    /// Name -> record: a list of addresses, `{addresses, ttl}`,
    /// `{cname, ttl}` or `{range, count, rotate, ttl}` (see [`records`]).
    #[serde(default)]
    pub records: BTreeMap<String, Value>,
}

fn default_server() -> Ipv4Addr {
    DEFAULT_SERVER
}

fn default_cluster_ip() -> Ipv4Addr {
    DEFAULT_CLUSTER_IP
}

/// The records of a `dns:` section as the server serves them, or every
/// problem, each at its field (`dns.records["api.example.com"].ttl`).
pub fn records(spec: &DnsSpec) -> Result<Records, Vec<FieldError>> {
    let mut out = Records::new();
    let mut errors = Vec::new();
    for (name, value) in &spec.records {
        let at = format!("dns.records[\"{name}\"]");
        match record(&at, value) {
            Ok(r) => {
                out.insert(name.clone(), r);
            }
            Err(e) => errors.extend(e),
        }
    }
    for e in zone::check(&out) {
        let name = e.name().to_string();
        let key = spec
            .records
            .keys()
            .find(|k| zone::normalise(k) == name || **k == name)
            .cloned()
            .unwrap_or(name);
        errors.push(FieldError {
            field: format!("dns.records[\"{key}\"]"),
            problem: e.to_string(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

const SHAPES: &str = "give a list of addresses, {addresses: [...], ttl: N}, {cname: NAME}, \
                      or {range: FIRST, count: N, rotate: true}";

/// One record: `[ip, ...]` or a mapping.
fn record(at: &str, value: &Value) -> Result<ZoneRecord, Vec<FieldError>> {
    match value {
        Value::Sequence(_) => Ok(ZoneRecord::A {
            addresses: addresses(at, value)?,
            ttl: DEFAULT_TTL,
            rotate: false,
        }),
        Value::Mapping(m) => mapping(at, m),
        other => Err(vec![err(
            at,
            format!("{} is not a record: {SHAPES}", show(other)),
        )]),
    }
}

fn mapping(at: &str, m: &serde_yaml::Mapping) -> Result<ZoneRecord, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut fields: BTreeMap<&str, &Value> = BTreeMap::new();
    for (k, v) in m {
        match k.as_str() {
            Some(key @ ("addresses" | "ttl" | "cname" | "range" | "count" | "rotate")) => {
                fields.insert(key, v);
            }
            _ => errors.push(err(
                at,
                format!(
                    "unknown field {}; the fields are addresses, ttl, cname, range, count, rotate",
                    show(k)
                ),
            )),
        }
    }
    let ttl = match fields.get("ttl") {
        None => DEFAULT_TTL,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => n,
            None => {
                errors.push(err(
                    format!("{at}.ttl"),
                    format!(
                        "{} is not a TTL in seconds (0..={})",
                        show(v),
                        zone::MAX_TTL
                    ),
                ));
                DEFAULT_TTL
            }
        },
    };
    let rotate = match fields.get("rotate") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            errors.push(err(
                format!("{at}.rotate"),
                format!("{} is not true or false", show(v)),
            ));
            false
        }
    };
    let kinds: Vec<&str> = ["addresses", "cname", "range"]
        .into_iter()
        .filter(|k| fields.contains_key(k))
        .collect();
    let record = match kinds.as_slice() {
        ["addresses"] => {
            if fields.contains_key("count") {
                errors.push(err(
                    format!("{at}.count"),
                    "count goes with range, not with addresses",
                ));
            }
            match fields
                .get("addresses")
                .map(|v| addresses(&format!("{at}.addresses"), v))
            {
                Some(Ok(addresses)) => Some(ZoneRecord::A {
                    addresses,
                    ttl,
                    rotate,
                }),
                Some(Err(e)) => {
                    errors.extend(e);
                    None
                }
                None => None,
            }
        }
        ["cname"] => {
            for f in ["count", "rotate"] {
                if fields.contains_key(f) {
                    errors.push(err(
                        format!("{at}.{f}"),
                        format!("{f} does not go with cname (an alias has no addresses)"),
                    ));
                }
            }
            match fields.get("cname").and_then(|v| v.as_str()) {
                Some(target) => Some(ZoneRecord::Cname {
                    target: target.to_string(),
                    ttl,
                }),
                None => {
                    errors.push(err(format!("{at}.cname"), "must be a name"));
                    None
                }
            }
        }
        ["range"] => range(at, &fields, ttl, rotate, &mut errors),
        [] => {
            errors.push(err(at, format!("no addresses, cname or range: {SHAPES}")));
            None
        }
        several => {
            errors.push(err(
                at,
                format!("{} are exclusive: give one of them", several.join(", ")),
            ));
            None
        }
    };
    match record {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    }
}

fn range(
    at: &str,
    fields: &BTreeMap<&str, &Value>,
    ttl: u32,
    rotate: bool,
    errors: &mut Vec<FieldError>,
) -> Option<ZoneRecord> {
    let start = match fields
        .get("range")
        .and_then(|v| v.as_str())
        .map(str::parse::<Ipv4Addr>)
    {
        Some(Ok(ip)) => Some(ip),
        _ => {
            let shown = fields.get("range").map(|v| show(v)).unwrap_or_default();
            errors.push(err(
                format!("{at}.range"),
                format!("{shown} is not an IPv4 address (the range's first address)"),
            ));
            None
        }
    };
    let count = match fields.get("count") {
        None => {
            errors.push(err(
                format!("{at}.count"),
                format!("a range needs count (1..={})", zone::MAX_RANGE),
            ));
            None
        }
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(zone::MAX_RANGE)).contains(&n) => u32::try_from(n).ok(),
            _ => {
                errors.push(err(
                    format!("{at}.count"),
                    format!("{} is not in 1..={}", show(v), zone::MAX_RANGE),
                ));
                None
            }
        },
    };
    Some(ZoneRecord::Range {
        start: start?,
        count: count?,
        ttl,
        rotate,
    })
}

/// `[ip, ...]`: each an IPv4 address.
fn addresses(at: &str, value: &Value) -> Result<Vec<Ipv4Addr>, Vec<FieldError>> {
    let Value::Sequence(items) = value else {
        return Err(vec![err(
            at,
            format!("{} is not a list of addresses", show(value)),
        )]);
    };
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        match v.as_str().map(str::parse::<Ipv4Addr>) {
            Some(Ok(ip)) => out.push(ip),
            _ => errors.push(err(
                format!("{at}[{i}]"),
                format!("{} is not an IPv4 address", show(v)),
            )),
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(err(at, "no addresses"));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A YAML value as the user wrote it, roughly.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| "this value".to_string()),
    }
}
