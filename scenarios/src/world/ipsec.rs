//! The world's IPsec mesh secret (`encryption: ipsec`): one file that every
//! agent of the world reads, made at `lab up` and replaced by
//! `meshgate lab rotate-secret` with the next generation, so all agents
//! see the new one within their half-second poll of each other.

use std::io::Read;
use std::path::Path;

use base64::Engine;

use crate::error::LabError;
use crate::plan::Plan;
use crate::scenario::Encryption;

type Result<T> = std::result::Result<T, LabError>;

fn io(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

/// Writes generation `generation` with a fresh random secret, atomically.
pub fn write(path: &Path, generation: u8) -> Result<()> {
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(io("reading /dev/urandom for the IPsec secret".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{generation} aes-gcm-128 {b64}\n"))
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io(format!("writing the IPsec secret {}", path.display())))
}

/// At `lab up`: generation 1, when any cluster uses IPsec.
pub fn make(plan: &Plan) -> Result<()> {
    let Some(c) = plan
        .clusters
        .iter()
        .find(|c| c.encryption == Encryption::Ipsec)
    else {
        return Ok(());
    };
    write(&c.ipsec_secret(), 1)
}

/// The generation in the secret file (its first field).
pub fn generation(path: &Path) -> Result<u8> {
    let text = std::fs::read_to_string(path)
        .map_err(io(format!("reading the IPsec secret {}", path.display())))?;
    text.split_whitespace()
        .next()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| LabError::BadFile {
            path: path.to_path_buf(),
            problem: "no generation in the first field".into(),
        })
}
