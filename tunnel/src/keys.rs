//! The node's WireGuard key pair.
//!
//! The private key lives in a file of mode 0600 and is never logged: the
//! `Debug` impl of [`NodeKey`] prints only the public key.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use boringtun::x25519::StaticSecret;
use rand_core::OsRng;

/// Errors about keys and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is not a base64 X25519 key (32 bytes): delete it to generate a new key"
    )]
    Malformed { path: PathBuf },
    #[error(
        "key file {path} has mode {mode:o}: it must be readable by its owner only (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{what} is not a base64 WireGuard public key of 32 bytes: {value:?}")]
    BadPublicKey { what: String, value: String },
}

/// A WireGuard public key (32 bytes), shown in base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses a base64 public key; `what` names the value in the error.
    pub fn parse(value: &str, what: &str) -> Result<Self, KeyError> {
        let bytes = B64.decode(value.trim()).ok();
        match bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()) {
            Some(key) => Ok(PublicKey(key)),
            None => Err(KeyError::BadPublicKey {
                what: what.to_string(),
                value: value.to_string(),
            }),
        }
    }

    /// The key in base64, as WireGuard tools print it.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// The first characters of the base64 form, for logs and tables.
    pub fn short(&self) -> String {
        self.to_base64().chars().take(8).collect()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

/// The node's static key pair.
#[derive(Clone)]
pub struct NodeKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random_from_rng(OsRng))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey(*boringtun::x25519::PublicKey::from(&secret).as_bytes());
        NodeKey { secret, public }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// Loads the key at `path`, or generates one and saves it there (mode 0600).
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path);
        }
        let key = Self::generate();
        key.save(path)?;
        Ok(key)
    }

    /// Loads a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        let bytes = B64.decode(text.trim()).ok();
        let raw = bytes
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| KeyError::Malformed {
                path: path.to_path_buf(),
            })?;
        Ok(Self::from_secret(StaticSecret::from(raw)))
    }

    /// Saves the key atomically: a temporary file of mode 0600, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let write_err = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(B64.encode(self.secret.to_bytes()).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(write_err)?;
        fs::rename(&tmp, path).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_is_saved_private_and_reloads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        let key = NodeKey::load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(key.public(), again.public());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = NodeKey::generate();
        let secret_b64 = B64.encode(key.secret().to_bytes());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&secret_b64), "{shown}");
        assert!(shown.contains(&key.public().short()));
    }

    #[test]
    fn readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        NodeKey::generate().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn malformed_key_file_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = NodeKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
    }

    #[test]
    fn public_key_parse_rejects_wrong_length() {
        assert!(PublicKey::parse("AAAA", "peer n2 key").is_err());
        let key = NodeKey::generate().public();
        assert_eq!(PublicKey::parse(&key.to_base64(), "k").unwrap(), key);
    }
}
