//! Policy files holding identity and egress gateway policies together.

use std::collections::BTreeMap;
use std::path::Path;

use meshgate_discovery::policy::{parse_policies_with, OtherDocument, Policy, EGRESS_GATEWAY_KIND};

use crate::{cegp, EgressPolicy, ParseError};

/// Every policy of one source, by kind, in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFile {
    /// `NetworkPolicy` and `CiliumNetworkPolicy` objects.
    pub identity: Vec<Policy>,
    /// `CiliumEgressGatewayPolicy` objects (names unique).
    pub egress: Vec<EgressPolicy>,
}

/// Reads the policies of one or more YAML documents (`---` separated, or a
/// `kind: List`), identity and egress gateway kinds mixed; `source_name`
/// (a file name) prefixes errors. Documents are split and identity
/// policies read by `meshgate_discovery::policy`; two egress gateway
/// policies of one name are an error.
pub fn parse_policy_text(text: &str, source_name: &str) -> Result<PolicyFile, ParseError> {
    let mut egress: Vec<EgressPolicy> = Vec::new();
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    let identity = parse_policies_with(text, source_name, &mut |doc: OtherDocument<'_>| {
        if doc.kind != EGRESS_GATEWAY_KIND {
            return Ok(false);
        }
        let p = cegp::parse_document(&doc)?;
        if let Some(&at) = first.get(&p.name) {
            return Err(ParseError::Duplicate {
                source_name: source_name.to_string(),
                index: doc.index,
                policy: p.name,
                first: at,
            });
        }
        first.insert(p.name.clone(), doc.index);
        egress.push(p);
        Ok(true)
    })?;
    Ok(PolicyFile { identity, egress })
}

/// Reads a policy file ([`parse_policy_text`] on its text).
pub fn parse_policy_file(path: &Path) -> Result<PolicyFile, ParseError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ParseError::Read {
        path: name.clone(),
        message: e.to_string(),
    })?;
    parse_policy_text(&text, &name)
}
