//! `--store`: which store a discovery uses.

use std::fmt;
use std::str::FromStr;

/// The accepted forms, for messages.
pub const STORE_FORMS: &str = "`embedded` (the default: state.redb in --state-dir) or \
     `etcd://HOST:PORT[,HOST:PORT...]` (state shared by several discovery replicas)";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// `state.redb` in the server's state dir.
    #[default]
    Embedded,
    /// etcd at these `HOST:PORT` endpoints.
    Etcd {
        endpoints: Vec<String>,
        /// How the history is compacted (not part of `--store`).
        compaction: Compaction,
    },
}

/// Every `every` writes a replica compacts etcd's history older than the
/// last `keep` revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub every: u32,
    pub keep: i64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            every: 1000,
            keep: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--store {given:?}: {reason}; accepted forms: {STORE_FORMS}")]
pub struct StoreChoiceError {
    given: String,
    reason: String,
}

impl FromStr for StoreChoice {
    type Err = StoreChoiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| StoreChoiceError {
            given: s.to_string(),
            reason: reason.to_string(),
        };
        if s == "embedded" {
            return Ok(StoreChoice::Embedded);
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(bad("unknown store"));
        };
        let endpoints: Vec<String> = rest.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let Some((host, port)) = e.rsplit_once(':') else {
                return Err(bad(&format!("endpoint {e:?} has no port")));
            };
            if host.is_empty() || host.contains('/') {
                return Err(bad(&format!("endpoint {e:?} has no valid host")));
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(&format!("endpoint {e:?} has no valid port")));
            }
        }
        Ok(StoreChoice::Etcd {
            endpoints,
            compaction: Compaction::default(),
        })
    }
}

impl fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Embedded => f.write_str("embedded"),
            StoreChoice::Etcd { endpoints, .. } => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!("embedded".parse::<StoreChoice>(), Ok(StoreChoice::Embedded));
        let etcd: StoreChoice = "etcd://127.0.0.1:2379,10.0.0.2:2379".parse().unwrap();
        assert_eq!(
            etcd,
            StoreChoice::Etcd {
                endpoints: vec!["127.0.0.1:2379".into(), "10.0.0.2:2379".into()],
                compaction: Compaction::default(),
            }
        );
        assert_eq!(etcd.to_string(), "etcd://127.0.0.1:2379,10.0.0.2:2379");
    }

    #[test]
    fn refuses_others_naming_the_accepted_forms() {
        for bad in [
            "etcd:127.0.0.1:2379",
            "http://127.0.0.1:2379",
            "etcd://127.0.0.1",
            "etcd://127.0.0.1:0",
            "etcd://:2379",
            "etcd://h:2379/x",
            "",
        ] {
            let e = bad.parse::<StoreChoice>().unwrap_err().to_string();
            assert!(
                e.contains("embedded") && e.contains("etcd://HOST:PORT"),
                "{bad}: {e}"
            );
        }
    }
}
