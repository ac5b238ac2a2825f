//! The agent's policy file as the proxy follows it.
//!
//! The proxy reads the file once at start and then every
//! [`POLL`]; a poll parses it only when its bytes differ from the last
//! ones read. Comparing the bytes, not the file's time stamp and length,
//! sees every rewrite: two rewrites within one clock tick of the file
//! system, of the same length (revision 9 → 10 is not, 1 → 2 is), look
//! the same to a stamp. And the watch starts from what the first read
//! saw, so a rewrite between the first read and the first poll is read
//! (it was missed once: the proxy answered SERVFAIL for a new pod until
//! the next, unrelated change of the file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use meshgate_egress::dnsproxy::state::ProxyPolicy;

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_millis(200);

/// The file and the bytes last read from it.
pub struct PolicyFile {
    path: PathBuf,
    /// `None` until the file could be read once.
    last: Option<Vec<u8>>,
}

impl PolicyFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
        }
    }

    /// The policy, if the file's bytes changed since the last read (the
    /// first time: if it can be read). A file that does not parse is
    /// reported once per content; the caller keeps its previous policy.
    /// A file that cannot be read is `None`: the agent has not written it
    /// yet (or it was just being replaced); the next poll looks again.
    pub fn changed(&mut self) -> Option<anyhow::Result<ProxyPolicy>> {
        self.load().ok().flatten().map(|bytes| self.parse(bytes))
    }

    /// The policy now, or why there is none (the file missing, or not
    /// parsing). The first call; later ones go through [`Self::changed`].
    pub fn first(&mut self) -> anyhow::Result<ProxyPolicy> {
        let bytes = self.load()?.unwrap_or_default();
        self.parse(bytes)
    }

    /// The file's bytes if they differ from the last read.
    fn load(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok((self.last.as_deref() != Some(bytes.as_slice())).then_some(bytes))
    }

    fn parse(&mut self, bytes: Vec<u8>) -> anyhow::Result<ProxyPolicy> {
        let parsed = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", self.path.display()));
        self.last = Some(bytes);
        parsed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Writes `p` as the agent does: a temporary file renamed over.
    fn write(path: &Path, p: &ProxyPolicy) {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(p).unwrap()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn policy(revision: u64, identities: &[u32]) -> ProxyPolicy {
        ProxyPolicy {
            revision,
            identities: identities
                .iter()
                .map(|i| (*i, Default::default()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_rewrite_right_after_the_first_read_is_read_at_the_next_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnsproxy-policy.json");
        write(&path, &policy(1, &[100]));
        let mut f = PolicyFile::new(&path);
        assert_eq!(f.first().unwrap().revision, 1);
        // Within the same clock tick, the same length: a new pod's identity
        // in place of another's.
        write(&path, &policy(2, &[101]));
        let p = f.changed().expect("the rewrite is seen").unwrap();
        assert_eq!(
            (p.revision, p.identities.keys().copied().collect::<Vec<_>>()),
            (2, vec![101])
        );
        assert!(f.changed().is_none(), "nothing new: nothing parsed");
        write(&path, &policy(3, &[101]));
        write(&path, &policy(4, &[102]));
        assert_eq!(f.changed().unwrap().unwrap().revision, 4);
    }

    #[test]
    fn a_missing_file_is_an_error_at_first_and_read_once_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnsproxy-policy.json");
        let mut f = PolicyFile::new(&path);
        let e = f.first().unwrap_err();
        assert!(format!("{e:#}").contains("dnsproxy-policy.json"), "{e:#}");
        assert!(f.changed().is_none());
        write(&path, &policy(1, &[100]));
        assert_eq!(f.changed().unwrap().unwrap().revision, 1);
    }

    #[test]
    fn a_file_that_does_not_parse_is_reported_once_and_then_its_fix_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnsproxy-policy.json");
        write(&path, &policy(1, &[100]));
        let mut f = PolicyFile::new(&path);
        f.first().unwrap();
        std::fs::write(&path, b"{ not json").unwrap();
        let e = f.changed().unwrap().unwrap_err();
        assert!(format!("{e:#}").contains("parsing"), "{e:#}");
        assert!(
            f.changed().is_none(),
            "the same bad bytes are not reported again"
        );
        write(&path, &policy(2, &[100]));
        assert_eq!(f.changed().unwrap().unwrap().revision, 2);
    }
}
