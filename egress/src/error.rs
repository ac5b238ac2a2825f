//! What can go wrong reading policy files.

use meshgate_model::policy::PolicyError;

/// A policy file that cannot be read. Each names the source, the document,
/// the policy and the field, and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An identity policy (or the document splitting) failed, as
    /// `meshgate_model::policy` says.
    #[error(transparent)]
    Identity(#[from] PolicyError),
    #[error("cannot read policy file {path}: {message}")]
    Read { path: String, message: String },
    /// A document that is not a policy yet (no name...).
    #[error("{source_name}: document {index}: {message}")]
    Document {
        source_name: String,
        index: usize,
        message: String,
    },
    /// A field of a `CiliumEgressGatewayPolicy`.
    #[error(
        "{source_name}: document {index}: CiliumEgressGatewayPolicy/{policy}: {field}: {message}"
    )]
    Invalid {
        source_name: String,
        index: usize,
        policy: String,
        field: String,
        message: String,
    },
    #[error(
        "{source_name}: document {index}: CiliumEgressGatewayPolicy/{policy} is already defined \
         in document {first}; egress gateway policy names are unique (the kind is cluster-scoped): \
         rename or remove one"
    )]
    Duplicate {
        source_name: String,
        index: usize,
        policy: String,
        first: usize,
    },
}

impl ParseError {
    /// The field path the error is about, if it is about a field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ParseError::Invalid { field, .. } => Some(field),
            ParseError::Identity(e) => e.field(),
            ParseError::Read { .. }
            | ParseError::Document { .. }
            | ParseError::Duplicate { .. } => None,
        }
    }
}
