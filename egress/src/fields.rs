//! Field access for one egress policy document: every error names the
//! source, the document, the policy and the field path.

use serde_yaml::{Mapping, Value};

use crate::ParseError;

/// Which policy of which document the fields belong to.
pub(crate) struct Ctx<'a> {
    pub source_name: &'a str,
    pub index: usize,
    pub policy: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, field: &str, message: impl Into<String>) -> ParseError {
        ParseError::Invalid {
            source_name: self.source_name.to_string(),
            index: self.index,
            policy: self.policy.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The map at `field`; `None` when absent or null.
    pub fn map<'v>(
        &self,
        field: &str,
        v: Option<&'v Value>,
    ) -> Result<Option<&'v Mapping>, ParseError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Mapping(m)) => Ok(Some(m)),
            Some(other) => {
                Err(self.err(field, format!("is {}, not a map of fields", shape(other))))
            }
        }
    }

    /// The items of the list at `field` with their paths (`field[i]`);
    /// absent or null is no items.
    pub fn list<'v>(
        &self,
        field: &str,
        v: Option<&'v Value>,
    ) -> Result<Vec<(String, &'v Value)>, ParseError> {
        match v {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(items)) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{field}[{i}]"), v))
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

    /// The string at `field`; `None` when absent, null or empty.
    pub fn string(&self, field: &str, v: Option<&Value>) -> Result<Option<String>, ParseError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.err(field, format!("is {}, not a string", shape(other)))),
        }
    }

    /// Refuses every key of `m` not in `known`, naming its full path
    /// (`hint` explains known-but-unsupported keys).
    pub fn only(
        &self,
        field: &str,
        m: &Mapping,
        known: &[&str],
        hint: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ParseError> {
        for k in m.keys() {
            let name = match k {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            if known.contains(&name.as_str()) {
                continue;
            }
            let path = if field.is_empty() {
                name.clone()
            } else {
                format!("{field}.{name}")
            };
            let msg = hint(&name).unwrap_or_else(|| {
                format!(
                    "is not a field meshgate knows here; supported fields: {}",
                    known.join(", ")
                )
            });
            return Err(self.err(&path, msg));
        }
        Ok(())
    }
}

/// What a YAML value is, for messages.
pub(crate) fn shape(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// No hint for any key.
pub(crate) fn no_hint(_: &str) -> Option<String> {
    None
}
