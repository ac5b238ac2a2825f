//! Cilium's `icmps` rules → [`PortProto`] entries: one ICMP type is
//! `{proto: PROTO_ICMP, port: ICMP_TYPE_BASE + type}` (the datapath looks
//! ICMP packets up with that port), as `ebpf/` and the agent agree.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::yaml::Ctx;
use super::{PolicyError, PortProto, PROTO_ICMP};

/// `PortProto::port` of ICMP type `t` is `ICMP_TYPE_BASE + t`; port 0 with
/// [`PROTO_ICMP`] is any ICMP.
pub const ICMP_TYPE_BASE: u16 = 256;

/// The entry of one ICMP type.
pub fn icmp_type(t: u8) -> PortProto {
    PortProto {
        proto: PROTO_ICMP,
        port: ICMP_TYPE_BASE + u16::from(t),
    }
}

/// ICMP (IPv4) type names as Cilium's policy language accepts them.
const NAMES: [(&str, u8); 14] = [
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("EchoRequest", 8),
    ("Echo", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// The name of ICMP type `t`, if it has one (the first of Cilium's).
pub fn icmp_type_name(t: u8) -> Option<&'static str> {
    NAMES.iter().find(|(_, n)| *n == t).map(|(s, _)| *s)
}

#[derive(Debug, Deserialize)]
struct IcmpRule {
    fields: Option<Value>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct IcmpField {
    #[serde(rename = "type")]
    kind: Option<Value>,
    family: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// The entries of the `icmps` list at `field`.
pub(crate) fn icmps(ctx: &Ctx, field: &str, v: &Value) -> Result<Vec<PortProto>, PolicyError> {
    let mut out = Vec::new();
    for (f, r) in ctx.list(field, Some(v))? {
        let r: IcmpRule = ctx.typed(&f, r)?;
        ctx.no_extra(&f, &r.extra, &["fields"]);
        let fields = ctx.list(&format!("{f}.fields"), r.fields.as_ref())?;
        if fields.is_empty() {
            return Err(ctx.err(
                &format!("{f}.fields"),
                "is empty; list the ICMP types (`- {type: EchoRequest, family: IPv4}`), or \
                 remove the icmps rule",
            ));
        }
        for (ff, x) in fields {
            let x: IcmpField = ctx.typed(&ff, x)?;
            ctx.no_extra(&ff, &x.extra, &["type", "family"]);
            match x.family.as_deref().unwrap_or("IPv4") {
                "IPv4" => {}
                "IPv6" => {
                    return Err(ctx.err(
                        &format!("{ff}.family"),
                        "is IPv6, and the mesh is IPv4-only: remove the IPv6 ICMP types",
                    ))
                }
                other => {
                    return Err(ctx.err(
                        &format!("{ff}.family"),
                        format!("{other:?} is not a family; use IPv4"),
                    ))
                }
            }
            let t = type_number(ctx, &format!("{ff}.type"), x.kind.as_ref())?;
            let pp = icmp_type(t);
            if !out.contains(&pp) {
                out.push(pp);
            }
        }
    }
    Ok(out)
}

fn type_number(ctx: &Ctx, field: &str, v: Option<&Value>) -> Result<u8, PolicyError> {
    let names = || NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    match v {
        None => Err(ctx.err(
            field,
            "is missing; give the ICMP type, a number 0..=255 or a name (EchoRequest)",
        )),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| {
                ctx.err(
                    field,
                    format!("{n} is not an ICMP type; use a number 0..=255"),
                )
            }),
        Some(Value::String(s)) => {
            if let Ok(n) = s.parse::<u8>() {
                return Ok(n);
            }
            NAMES
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    ctx.err(
                        field,
                        format!(
                            "{s:?} is not an ICMP type name; use a number 0..=255 or one of {}",
                            names()
                        ),
                    )
                })
        }
        Some(_) => Err(ctx.err(field, "is not an ICMP type; use a number 0..=255 or a name")),
    }
}
