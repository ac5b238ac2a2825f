//! Policy files holding identity and egress gateway policies together.

use std::collections::BTreeMap;
use std::path::Path;

use meshgate_model::policy::{
    parse_policies_report, OtherDocument, ParseOptions, Policy, PolicyWarning, EGRESS_GATEWAY_KIND,
};

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
/// policies read by `meshgate_model::policy`; two egress gateway
/// policies of one name are an error. Default [`ParseOptions`], the first
/// error only ([`parse_policy_text_report`] gives them all, and warnings).
pub fn parse_policy_text(text: &str, source_name: &str) -> Result<PolicyFile, ParseError> {
    parse_policy_text_report(text, source_name, &ParseOptions::default()).into_result()
}

/// Everything read from one policy source: what was read, every warning
/// and every error (a policy with an error is left out of `file`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileReport {
    pub file: PolicyFile,
    pub warnings: Vec<PolicyWarning>,
    pub errors: Vec<ParseError>,
}

impl FileReport {
    /// The policies if there is no error, else the first error.
    pub fn into_result(self) -> Result<PolicyFile, ParseError> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.file),
        }
    }
}

/// [`parse_policy_text`] with `opts` (`--strict-policy`, `--l7`), going on
/// after an error: the report holds every error and every warning.
pub fn parse_policy_text_report(text: &str, source_name: &str, opts: &ParseOptions) -> FileReport {
    let mut egress: Vec<EgressPolicy> = Vec::new();
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    let report = parse_policies_report(text, source_name, opts, &mut |doc: OtherDocument<'_>| {
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
    });
    FileReport {
        file: PolicyFile {
            identity: report.policies,
            egress,
        },
        warnings: report.warnings,
        errors: report.errors,
    }
}

/// Reads a policy file ([`parse_policy_text_report`] on its text); a file
/// that cannot be read is the report's one error.
pub fn parse_policy_file_report(path: &Path, opts: &ParseOptions) -> FileReport {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_policy_text_report(&text, &name, opts),
        Err(e) => FileReport {
            errors: vec![ParseError::Read {
                path: name,
                message: e.to_string(),
            }],
            ..FileReport::default()
        },
    }
}

/// Reads a policy file ([`parse_policy_text`] on its text).
pub fn parse_policy_file(path: &Path) -> Result<PolicyFile, ParseError> {
    parse_policy_file_report(path, &ParseOptions::default()).into_result()
}
