//! A scratch directory removed on drop, for the files a test hands the lab.
//!
//! Our own rather than the `tempfile` crate: `tempfile` is not among the
//! libraries `meshgate` links, and a test crate that links it resolves
//! `bitflags`' and `fastrand`'s features differently from the release build
//! of `meshgate`, so `cargo test --release -p meshgate-e2e` compiled ~70
//! crates a second time (see tests/Cargo.toml's [dev-dependencies]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A new empty directory under the system's temporary directory.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Makes a [`TempDir`]; its name holds the process id and a counter, and an
/// existing directory of that name is never reused.
pub fn tempdir() -> TempDir {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("meshgate-e2e-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return TempDir { path },
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot make a scratch directory {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_is_new_and_empty_and_goes_on_drop() {
        let a = tempdir();
        let b = tempdir();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), "x").unwrap();
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists(), "{} outlived its TempDir", kept.display());
        assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0);
    }
}
