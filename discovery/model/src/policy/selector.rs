//! Label selectors (Kubernetes `matchLabels` + `matchExpressions`) matched
//! against identity label sets.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::identity::Labels;

/// A selector operator, as in Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// The key is present with one of the values.
    In,
    /// The key is absent or has none of the values.
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement on one label key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn is_in(key: &str, value: &str) -> Self {
        Requirement {
            key: key.to_string(),
            op: Op::In,
            values: BTreeSet::from([value.to_string()]),
        }
    }

    pub fn exists(key: &str) -> Self {
        Requirement {
            key: key.to_string(),
            op: Op::Exists,
            values: BTreeSet::new(),
        }
    }

    pub fn does_not_exist(key: &str) -> Self {
        Requirement {
            key: key.to_string(),
            op: Op::DoesNotExist,
            values: BTreeSet::new(),
        }
    }

    /// True for `In` and `Exists`: the requirement needs the label.
    pub fn needs_label(&self) -> bool {
        matches!(self.op, Op::In | Op::Exists)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Op::In => v.is_some_and(|v| self.values.contains(v)),
            Op::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// All requirements must hold; no requirement selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn all() -> Self {
        Selector::default()
    }

    pub fn with(mut self, r: Requirement) -> Self {
        self.requirements.push(r);
        self
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True if some requirement is on `key`.
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let vals = r.values.iter().cloned().collect::<Vec<_>>().join(",");
                match r.op {
                    Op::In if r.values.len() == 1 => format!("{}={vals}", r.key),
                    Op::In => format!("{} in ({vals})", r.key),
                    Op::NotIn => format!("{} notin ({vals})", r.key),
                    Op::Exists => r.key.clone(),
                    Op::DoesNotExist => format!("!{}", r.key),
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The YAML form: `matchLabels` and `matchExpressions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LabelSelectorYaml {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<ExpressionYaml>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExpressionYaml {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_yaml::Value>,
}

/// A problem in a selector: the field (relative to the selector) and message.
pub(crate) type SelectorProblem = (String, String);

impl LabelSelectorYaml {
    /// Converts to a [`Selector`], mapping each label key through `key`
    /// (which may refuse a key with a message).
    pub(crate) fn to_selector(
        &self,
        key: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Selector, SelectorProblem> {
        Ok(Selector {
            requirements: self
                .to_requirements(key)?
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
        })
    }

    /// The requirements of [`LabelSelectorYaml::to_selector`], each with the
    /// field it comes from (`matchLabels.app`, `matchExpressions[0]`).
    pub(crate) fn to_requirements(
        &self,
        key: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<(String, Requirement)>, SelectorProblem> {
        if let Some(k) = self.extra.keys().next() {
            return Err((
                k.clone(),
                "unknown selector field; a selector has matchLabels and matchExpressions".into(),
            ));
        }
        let mut sel = Vec::new();
        for (k, v) in self.match_labels.iter().flatten() {
            let field = format!("matchLabels.{k}");
            let mapped = key(k).map_err(|m| (field.clone(), m))?;
            sel.push((field, Requirement::is_in(&mapped, v)));
        }
        for (i, e) in self.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            if let Some(k) = e.extra.keys().next() {
                return Err((
                    format!("{field}.{k}"),
                    "unknown field; an expression has key, operator and values".into(),
                ));
            }
            let mapped = key(&e.key).map_err(|m| (format!("{field}.key"), m))?;
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err((
                        format!("{field}.operator"),
                        format!(
                            "operator {other:?} is not known; use In, NotIn, Exists or DoesNotExist"
                        ),
                    ))
                }
            };
            match op {
                Op::In | Op::NotIn if values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ))
                }
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {} takes no values; remove them", e.operator),
                    ))
                }
                _ => {}
            }
            sel.push((
                field,
                Requirement {
                    key: mapped,
                    op,
                    values,
                },
            ));
        }
        Ok(sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let req = |key: &str, op, vals: &[&str]| Requirement {
            key: key.into(),
            op,
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        assert!(req("app", Op::In, &["web", "db"]).matches(&l));
        assert!(!req("app", Op::In, &["db"]).matches(&l));
        assert!(!req("zone", Op::In, &["a"]).matches(&l));
        assert!(req("app", Op::NotIn, &["db"]).matches(&l));
        assert!(!req("app", Op::NotIn, &["web"]).matches(&l));
        assert!(req("zone", Op::NotIn, &["a"]).matches(&l), "absent key");
        assert!(req("tier", Op::Exists, &[]).matches(&l));
        assert!(!req("zone", Op::Exists, &[]).matches(&l));
        assert!(req("zone", Op::DoesNotExist, &[]).matches(&l));
        assert!(!req("app", Op::DoesNotExist, &[]).matches(&l));
        assert!(Selector::all().matches(&l));
    }
}
