//! Node label syntax, roughly as Kubernetes checks it: a key is
//! `[prefix/]name` (prefix a DNS subdomain, name at most 63 characters of
//! `A-Za-z0-9-_.`, starting and ending with a letter or digit); a value is
//! empty or like a name.

use crate::scenario::{CLUSTER_LABEL, HOSTNAME_LABEL};

const MAX_LABEL_NAME: usize = 63;
const MAX_LABEL_PREFIX: usize = 253;

fn name_problem(what: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("{what} must not be empty"));
    }
    if name.len() > MAX_LABEL_NAME {
        return Some(format!(
            "{what} is {} characters long; at most {MAX_LABEL_NAME} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{what} contains {c:?}; only A-Z, a-z, 0-9, -, _ and . are allowed"
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Some(format!("{what} must start and end with a letter or digit"));
    }
    None
}

fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() || prefix.len() > MAX_LABEL_PREFIX {
        return Some(format!(
            "its prefix must be a DNS name of 1 to {MAX_LABEL_PREFIX} characters"
        ));
    }
    let bad_label = prefix.split('.').any(|l| {
        l.is_empty()
            || l.starts_with('-')
            || l.ends_with('-')
            || !l
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    bad_label.then(|| {
        format!("its prefix {prefix:?} is not a DNS name (a-z, 0-9, - and . between labels)")
    })
}

/// What is wrong with one label, if anything (the key is named).
pub(super) fn label_problem(key: &str, value: &str) -> Option<String> {
    if key == HOSTNAME_LABEL || key == CLUSTER_LABEL {
        return Some(format!(
            "label {key:?} is set by the lab (to the node's {} name); leave it out",
            if key == HOSTNAME_LABEL {
                "own"
            } else {
                "cluster's"
            }
        ));
    }
    let key_problem = match key.rsplit_once('/') {
        _ if key.is_empty() => Some("a label key must not be empty".to_string()),
        Some((prefix, name)) => {
            prefix_problem(prefix).or_else(|| name_problem("its name after the prefix", name))
        }
        None => name_problem("it", key),
    };
    if let Some(p) = key_problem {
        return Some(format!("label key {key:?}: {p}"));
    }
    if value.is_empty() {
        return None;
    }
    name_problem("the value", value).map(|p| format!("label {key:?}: {p}"))
}

#[cfg(test)]
mod tests {
    use super::label_problem;

    #[test]
    fn kubernetes_like_keys_and_values_pass() {
        for (k, v) in [
            ("egress", "true"),
            ("app", ""),
            ("topology.kubernetes.io/zone", "eu-1a"),
            ("a_b.c-d", "X.y_z-9"),
        ] {
            assert_eq!(label_problem(k, v), None, "{k}={v}");
        }
    }

    #[test]
    fn spaces_equals_commas_and_empty_keys_are_refused() {
        let p = |k: &str, v: &str| label_problem(k, v).unwrap_or_default();
        assert_eq!(p("", "x"), "label key \"\": a label key must not be empty");
        assert_eq!(
            p("a b", "x"),
            "label key \"a b\": it contains ' '; only A-Z, a-z, 0-9, -, _ and . are allowed"
        );
        assert!(p("a=b", "x").contains("contains '='"), "{}", p("a=b", "x"));
        assert!(p("egress", "a,b").starts_with("label \"egress\": the value contains ','"));
        assert!(p("-x", "y").contains("must start and end with a letter or digit"));
        assert!(p("Bad_Prefix/x", "y").contains("is not a DNS name"));
        assert!(p("/x", "y").contains("prefix must be a DNS name"));
        assert!(p("x", &"v".repeat(64)).contains("64 characters long"));
        assert!(p("kubernetes.io/hostname", "n1").contains("is set by the lab"));
        assert!(p("io.cilium.k8s.policy.cluster", "c1").contains("cluster's name"));
    }
}
