//! YAML documents → [`Policy`]: splitting (`---`, or a `kind: List`),
//! dispatch on `kind`, and what both kinds share (field checks, errors).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{
    ParseOptions, ParseReport, Policy, PolicyError, PolicyKind, PolicyRef, PolicyWarning,
    WarningKind,
};

/// The kind of the egress gateway policies that `meshgate-egress` reads.
pub const EGRESS_GATEWAY_KIND: &str = "CiliumEgressGatewayPolicy";

/// Reads every policy of one or more YAML documents (`---` separated, as
/// kubectl accepts; a `kind: List` with `items` is read item by item; empty
/// documents are skipped). `source_name` (a file name) prefixes errors.
/// Default [`ParseOptions`]; the first error only, warnings dropped (see
/// [`parse_policies_report`] for all of them).
///
/// Identity policies only: any other kind is an error (a
/// `CiliumEgressGatewayPolicy` one saying that `meshgate-egress` reads
/// them). To read files that mix kinds, use [`parse_policies_with`].
pub fn parse_policies(yaml: &str, source_name: &str) -> Result<Vec<Policy>, PolicyError> {
    parse_policies_with(yaml, source_name, &mut |_: OtherDocument<'_>| {
        Ok::<bool, PolicyError>(false)
    })
}

/// A document (or `List` item) whose kind is not an identity policy, as
/// handed to the `other` callback of [`parse_policies_with`].
#[derive(Debug, Clone, Copy)]
pub struct OtherDocument<'a> {
    pub source_name: &'a str,
    /// 1-based index of the `---` document (a `List`'s items share it).
    pub index: usize,
    /// Its `kind`.
    pub kind: &'a str,
    /// The whole document.
    pub value: &'a serde_yaml::Value,
}

/// [`parse_policies`], handing every document of a kind other than
/// `NetworkPolicy` / `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy`
/// to `other`, which returns `Ok(true)` when it took the document and
/// `Ok(false)` when the kind is not its either (then the document is refused
/// as by [`parse_policies`]). Splitting, `List`s, empty documents and
/// documents without `kind` are handled here as in [`parse_policies`].
pub fn parse_policies_with<E: From<PolicyError>>(
    yaml: &str,
    source_name: &str,
    other: &mut dyn FnMut(OtherDocument<'_>) -> Result<bool, E>,
) -> Result<Vec<Policy>, E> {
    parse_policies_report(yaml, source_name, &ParseOptions::default(), other).into_result()
}

/// Reads every document as [`parse_policies_with`] does, with `opts`, and
/// goes on after an error: the report holds every error (each policy's, and
/// each of the `other` callback) and every warning of the source. A policy
/// with an error is not in [`ParseReport::policies`]. Invalid YAML stops the
/// reading at that document (what follows cannot be split reliably).
pub fn parse_policies_report<E: From<PolicyError>>(
    yaml: &str,
    source_name: &str,
    opts: &ParseOptions,
    other: &mut dyn FnMut(OtherDocument<'_>) -> Result<bool, E>,
) -> ParseReport<E> {
    let mut report = ParseReport {
        policies: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let index = i + 1;
        match serde_yaml::Value::deserialize(doc) {
            Ok(value) => parse_value(value, source_name, index, opts, &mut report, other),
            Err(e) => {
                report.errors.push(
                    PolicyError::Document {
                        source_name: source_name.to_string(),
                        index,
                        message: format!("not valid YAML: {e}"),
                    }
                    .into(),
                );
                break;
            }
        }
    }
    report
}

/// A problem in a label selector read by [`parse_label_selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorFieldError {
    /// The field relative to the selector (`matchLabels.app`,
    /// `matchExpressions[0].operator`); empty for the selector itself.
    pub field: String,
    pub message: String,
}

/// Reads a Kubernetes label selector (`matchLabels` + `matchExpressions`,
/// nothing else) into a [`super::Selector`], mapping each label key through
/// `key` (which may refuse a key with a message): the parsing the identity
/// policies use, for other kinds that hold label selectors.
pub fn parse_label_selector(
    value: &serde_yaml::Value,
    key: &dyn Fn(&str) -> Result<String, String>,
) -> Result<super::Selector, SelectorFieldError> {
    let s: super::selector::LabelSelectorYaml =
        serde_yaml::from_value(value.clone()).map_err(|e| SelectorFieldError {
            field: String::new(),
            message: e.to_string(),
        })?;
    s.to_selector(key)
        .map_err(|(field, message)| SelectorFieldError { field, message })
}

/// Reads a policy file ([`parse_policies`] on its text).
pub fn parse_policy_file(path: &Path) -> Result<Vec<Policy>, PolicyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: name.clone(),
        message: e.to_string(),
    })?;
    parse_policies(&text, &name)
}

fn parse_value<E: From<PolicyError>>(
    value: serde_yaml::Value,
    source_name: &str,
    index: usize,
    opts: &ParseOptions,
    report: &mut ParseReport<E>,
    other: &mut dyn FnMut(OtherDocument<'_>) -> Result<bool, E>,
) {
    if let Err(e) = parse_one(value, source_name, index, opts, report, other) {
        report.errors.push(e);
    }
}

fn parse_one<E: From<PolicyError>>(
    value: serde_yaml::Value,
    source_name: &str,
    index: usize,
    opts: &ParseOptions,
    report: &mut ParseReport<E>,
    other: &mut dyn FnMut(OtherDocument<'_>) -> Result<bool, E>,
) -> Result<(), E> {
    let doc_err = |message: String| PolicyError::Document {
        source_name: source_name.to_string(),
        index,
        message,
    };
    if value.is_null() {
        return Ok(());
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| {
            doc_err(
                "has no `kind`; policy documents are kind NetworkPolicy (networking.k8s.io/v1), \
                 CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy (cilium.io/v2), or \
                 CiliumEgressGatewayPolicy (cilium.io/v2)"
                    .into(),
            )
        })?
        .to_string();
    let api = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let (kind, want_api) = match kind.as_str() {
        "List" => {
            let items = value
                .get("items")
                .and_then(|i| i.as_sequence())
                .ok_or_else(|| doc_err("is a List without `items`".into()))?;
            for item in items {
                parse_value(item.clone(), source_name, index, opts, report, other);
            }
            return Ok(());
        }
        "NetworkPolicy" => (PolicyKind::NetworkPolicy, "networking.k8s.io/v1"),
        "CiliumNetworkPolicy" => (PolicyKind::CiliumNetworkPolicy, "cilium.io/v2"),
        "CiliumClusterwideNetworkPolicy" => {
            (PolicyKind::CiliumClusterwideNetworkPolicy, "cilium.io/v2")
        }
        kind_name => {
            let doc = OtherDocument {
                source_name,
                index,
                kind: kind_name,
                value: &value,
            };
            if other(doc)? {
                return Ok(());
            }
            if kind_name == EGRESS_GATEWAY_KIND {
                return Err(doc_err(format!(
                    "kind {EGRESS_GATEWAY_KIND} is an egress gateway policy, which this \
                     identity policy reader does not take: egress gateway policies are read by \
                     meshgate-egress's parser (meshgate_egress::parse_policy_text), which reads \
                     identity policies too"
                ))
                .into());
            }
            return Err(doc_err(format!(
                "kind {kind_name:?} is not a policy meshgate reads; supported kinds are \
                 NetworkPolicy (networking.k8s.io/v1), CiliumNetworkPolicy and \
                 CiliumClusterwideNetworkPolicy (cilium.io/v2), and {EGRESS_GATEWAY_KIND} \
                 (cilium.io/v2) through meshgate-egress's parser"
            ))
            .into());
        }
    };
    let meta: Metadata = match value.get("metadata") {
        Some(m) => serde_yaml::from_value(m.clone())
            .map_err(|e| doc_err(format!("{kind}: metadata: {e}")))?,
        None => Metadata::default(),
    };
    let name = meta
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| doc_err(format!("{kind} has no metadata.name; give it a name")))?;
    let namespace = match kind {
        // Cluster-scoped: a namespace in its metadata means nothing (as
        // kubectl drops it).
        PolicyKind::CiliumClusterwideNetworkPolicy => String::new(),
        // As kubectl with a context on the default namespace.
        PolicyKind::NetworkPolicy | PolicyKind::CiliumNetworkPolicy => meta
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string()),
    };
    let id = PolicyRef {
        kind,
        namespace,
        name,
    };
    let ctx = Ctx::new(source_name, &id, *opts);
    if api != want_api {
        ctx.report(ctx.err(
            "apiVersion",
            format!("is {api:?}; {kind} is read in version {want_api}"),
        ));
    }
    let spec = value.get("spec").cloned();
    let policy = match kind {
        PolicyKind::NetworkPolicy => super::k8s::translate(&ctx, id, spec),
        PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy => {
            let specs = value.get("specs").cloned();
            super::cilium::translate(&ctx, id, spec, specs)
        }
    };
    if let Err(e) = policy.as_ref() {
        ctx.report(e.clone());
    }
    let (errors, warnings) = ctx.take();
    report.warnings.extend(warnings);
    match policy {
        Ok(p) if errors.is_empty() => report.policies.push(p),
        _ => report.errors.extend(errors.into_iter().map(E::from)),
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

/// The context of one policy being read: which policy of which source, the
/// options, and the problems found so far (every one is kept, so that one
/// reading reports them all).
pub(crate) struct Ctx {
    pub source_name: String,
    pub policy: String,
    pub opts: ParseOptions,
    errors: RefCell<Vec<PolicyError>>,
    warnings: RefCell<Vec<PolicyWarning>>,
}

impl Ctx {
    pub fn new(source_name: &str, id: &PolicyRef, opts: ParseOptions) -> Self {
        Ctx {
            source_name: source_name.to_string(),
            policy: id.to_string(),
            opts,
            errors: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
        }
    }

    pub fn err(&self, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            source_name: self.source_name.clone(),
            policy: self.policy.clone(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Records an error and goes on (the policy is refused at the end).
    pub fn report(&self, e: PolicyError) {
        let mut errors = self.errors.borrow_mut();
        if !errors.contains(&e) {
            errors.push(e);
        }
    }

    /// The value, or `None` with the error recorded.
    pub fn attempt<T>(&self, r: Result<T, PolicyError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.report(e);
                None
            }
        }
    }

    /// Records a warning; with [`ParseOptions::strict`], an error if the
    /// kind is one strict refuses ([`WarningKind::strict_refuses`]).
    pub fn warn(&self, kind: WarningKind, field: &str, message: impl Into<String>) {
        let message = message.into();
        if self.opts.strict && kind.strict_refuses() {
            self.report(self.err(field, format!("{message} (refused by --strict-policy)")));
            return;
        }
        let w = PolicyWarning {
            kind,
            source_name: self.source_name.clone(),
            policy: self.policy.clone(),
            field: field.to_string(),
            message,
        };
        let mut warnings = self.warnings.borrow_mut();
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }

    /// The errors and warnings recorded.
    pub fn take(self) -> (Vec<PolicyError>, Vec<PolicyWarning>) {
        (self.errors.into_inner(), self.warnings.into_inner())
    }

    /// Deserializes `value` at `field` into `T`.
    pub fn typed<T: DeserializeOwned>(
        &self,
        field: &str,
        value: serde_yaml::Value,
    ) -> Result<T, PolicyError> {
        serde_yaml::from_value(value).map_err(|e| self.err(field, format!("{e}")))
    }

    /// The items of the list at `field` with their paths (`field[i]`);
    /// absent or null is no items; anything but a list is an error.
    pub fn list(
        &self,
        field: &str,
        v: Option<&serde_yaml::Value>,
    ) -> Result<Vec<(String, serde_yaml::Value)>, PolicyError> {
        match v {
            None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
            Some(serde_yaml::Value::Sequence(items)) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{field}[{i}]"), v.clone()))
                .collect()),
            Some(other) => Err(self.err(
                field,
                format!(
                    "is {}, not a list; write its items as a YAML list (lines starting with `- `)",
                    shape(other)
                ),
            )),
        }
    }

    /// [`Ctx::typed`] for an optional field; absent or null is `None`.
    pub fn opt<T: DeserializeOwned>(
        &self,
        field: &str,
        v: Option<&serde_yaml::Value>,
    ) -> Result<Option<T>, PolicyError> {
        match v {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(v) => self.typed(field, v.clone()).map(Some),
        }
    }

    /// Records an error for every field that was not recognised: a known
    /// unsupported one with its hint, any other as unknown, listing the
    /// supported ones.
    pub fn no_extra(
        &self,
        field: &str,
        extra: &BTreeMap<String, serde_yaml::Value>,
        supported: &[&str],
    ) {
        for k in extra.keys() {
            let path = if field.is_empty() {
                k.clone()
            } else {
                format!("{field}.{k}")
            };
            let msg = match unsupported_hint(k) {
                Some(hint) => format!("is not supported: {hint}"),
                None => format!(
                    "is not a field meshgate knows here; supported fields: {}",
                    supported.join(", ")
                ),
            };
            self.report(self.err(&path, msg));
        }
    }
}

/// What a YAML value is, for messages.
fn shape(v: &serde_yaml::Value) -> &'static str {
    match v {
        serde_yaml::Value::Null => "empty",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a map",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

/// Why a known field of either kind is refused, and what to do instead.
fn unsupported_hint(field: &str) -> Option<&'static str> {
    Some(match field {
        "toServices" | "toGroups" | "fromGroups" | "fromNodes" | "toNodes" => {
            "service, group and node peers are not supported; select endpoints \
             (fromEndpoints/toEndpoints), entities (fromEntities/toEntities) or addresses \
             (fromCIDRSet/toCIDRSet)"
        }
        "cidrGroupRef" | "cidrGroupSelector" => {
            "CiliumCIDRGroup references are not supported; write the prefix as `cidr:`"
        }
        "serverNames" | "originatingTLS" | "terminatingTLS" | "listener" => {
            "TLS and listener rules are not enforced by meshgate; remove them (L3/L4 \
             toPorts.ports and rules.dns on egress are supported)"
        }
        "authentication" => "mutual authentication is not supported; remove it",
        "nodeSelector" => "node policies are not supported; use endpointSelector",
        _ => return None,
    })
}

/// Most ports one `port`..`endPort` range may expand to (one entry each).
pub(crate) const MAX_RANGE: u32 = 1024;

/// The entries of `port` (0 = any) up to `end_port` for each of `protos`.
pub(crate) fn expand_ports(
    ctx: &Ctx,
    field: &str,
    protos: &[u8],
    port: u16,
    end_port: Option<u32>,
) -> Result<Vec<super::PortProto>, PolicyError> {
    let last = match end_port {
        None => port,
        Some(_) if port == 0 => {
            return Err(ctx.err(
                &format!("{field}.endPort"),
                "needs a port: endPort ends the range that port starts",
            ))
        }
        Some(e) if e < u32::from(port) || e > 65_535 => {
            return Err(ctx.err(
                &format!("{field}.endPort"),
                format!("{e} must be between port ({port}) and 65535"),
            ))
        }
        Some(e) if e - u32::from(port) + 1 > MAX_RANGE => {
            return Err(ctx.err(
                &format!("{field}.endPort"),
                format!(
                    "the range {port}..={e} has {} ports; meshgate makes one map entry per \
                     port and takes at most {MAX_RANGE} per range: split the rule or allow \
                     all ports",
                    e - u32::from(port) + 1
                ),
            ))
        }
        // Checked above: e <= 65535.
        Some(e) => u16::try_from(e).unwrap_or(u16::MAX),
    };
    let mut out = Vec::new();
    for &proto in protos {
        for p in port..=last {
            out.push(super::PortProto { proto, port: p });
        }
    }
    Ok(out)
}

/// A port given as a number or a numeric string; `None` for no port.
/// Named ports are refused (identities carry no container ports).
pub(crate) fn port_number(
    ctx: &Ctx,
    field: &str,
    v: Option<&serde_yaml::Value>,
    zero_ok: bool,
) -> Result<u16, PolicyError> {
    let Some(v) = v else { return Ok(0) };
    let n = match v {
        serde_yaml::Value::Number(n) => n.as_u64(),
        serde_yaml::Value::String(s) if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
            s.parse::<u64>().ok()
        }
        serde_yaml::Value::String(s) => {
            return Err(ctx.err(
                field,
                format!(
                    "named port {s:?} is not supported (meshgate does not know container \
                     port names); write the port number"
                ),
            ))
        }
        _ => None,
    };
    match n {
        Some(0) if zero_ok => Ok(0),
        Some(n @ 1..=65_535) => Ok(n as u16),
        _ => Err(ctx.err(
            field,
            format!(
                "{} is not a port; use a number 1..=65535",
                serde_yaml::to_string(v).unwrap_or_default().trim()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EGRESS: &str = "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\n\
                          metadata: {name: out}\nspec: {}\n";
    const NETPOL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                          metadata: {name: web, namespace: shop}\nspec: {podSelector: {}}\n";

    #[test]
    fn identity_reader_points_egress_policies_to_meshgate_egress() {
        let e = parse_policies(EGRESS, "p.yaml").expect_err("egress kind refused");
        let m = e.to_string();
        assert!(m.starts_with("p.yaml: document 1:"), "{m}");
        assert!(m.contains("read by meshgate-egress's parser"), "{m}");
    }

    #[test]
    fn other_kinds_go_to_the_callback_lists_included() {
        let text = format!(
            "{NETPOL}---\n{EGRESS}---\napiVersion: v1\nkind: List\nitems:\n- {{kind: X, n: 1}}\n"
        );
        let mut seen = Vec::new();
        let got = parse_policies_with(&text, "p.yaml", &mut |d: OtherDocument<'_>| {
            seen.push((d.index, d.kind.to_string()));
            Ok::<bool, PolicyError>(true)
        })
        .expect("parses");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id.name, "web");
        assert_eq!(
            seen,
            vec![(2, EGRESS_GATEWAY_KIND.to_string()), (3, "X".to_string())]
        );
        // A callback that does not take a kind leaves it refused.
        let e = parse_policies_with(&text, "p.yaml", &mut |_: OtherDocument<'_>| {
            Ok::<bool, PolicyError>(false)
        })
        .expect_err("refused");
        assert!(e.to_string().contains("document 2"), "{e}");
    }

    #[test]
    fn label_selectors_parse_with_key_mapping_and_name_the_field() {
        let v: serde_yaml::Value = serde_yaml::from_str(
            "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: Exists}]}",
        )
        .expect("yaml");
        let s = parse_label_selector(&v, &|k| Ok(k.to_string())).expect("selector");
        assert_eq!(s.to_string(), "app=web,tier");
        let bad: serde_yaml::Value =
            serde_yaml::from_str("{matchLabels: {zone: a}}").expect("yaml");
        let e = parse_label_selector(&bad, &|k| Err(format!("no {k}"))).expect_err("refused");
        assert_eq!(e.field, "matchLabels.zone");
        assert_eq!(e.message, "no zone");
    }
}
