//! IPsec keys, pure: the mesh secret, the per-direction keys of every node
//! pair derived from it, and the SPIs that carry the key generation.
//!
//! Every node holds the same mesh secret (a file, like a Kubernetes
//! Secret). The key for ESP from node A to node B is
//! HKDF-SHA256(secret; info = generation, A, B): each direction of each
//! pair has its own key, so no two pairs share one and no nonce of
//! rfc4106(gcm(aes)) is ever used under one key by two senders. The SPI is
//! the generation in its top four bits and a hash of (A, B) below, so both
//! ends compute it alone and a receiver tells the generations apart.

use std::fmt;
use std::path::Path;

use base64::Engine;
use ring::{digest, hkdf};

/// AES-GCM key sizes (rfc4106, 16-byte ICV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    AesGcm128,
    AesGcm256,
}

impl Cipher {
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::AesGcm128 => 16,
            Cipher::AesGcm256 => 32,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Cipher::AesGcm128 => "aes-gcm-128",
            Cipher::AesGcm256 => "aes-gcm-256",
        }
    }
}

/// The secret every node of the mesh holds, with its generation.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshSecret {
    /// 1..=15; a rotation installs the next one (15 wraps to 1).
    pub generation: u8,
    pub cipher: Cipher,
    secret: Vec<u8>,
}

impl fmt::Debug for MeshSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshSecret")
            .field("generation", &self.generation)
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// A mesh secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the IPsec mesh secret {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the IPsec mesh secret {path} is not `<generation 1-15> <aes-gcm-128|aes-gcm-256> \
         <base64 secret of 32 bytes or more>`: {problem} (make one with \
         `echo \"1 aes-gcm-128 $(head -c 32 /dev/urandom | base64)\" > {path}`)"
    )]
    Malformed { path: String, problem: String },
}

impl MeshSecret {
    pub fn new(generation: u8, cipher: Cipher, secret: Vec<u8>) -> Self {
        MeshSecret {
            generation,
            cipher,
            secret,
        }
    }

    /// Parses `<generation> <cipher> <base64 secret>`; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, SecretError> {
        let bad = |problem: &str| SecretError::Malformed {
            path: path.to_string(),
            problem: problem.to_string(),
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [generation, cipher, secret] = fields.as_slice() else {
            return Err(bad("expected three fields"));
        };
        let generation: u8 = generation
            .parse()
            .ok()
            .filter(|g| (1..=15).contains(g))
            .ok_or_else(|| bad("the generation must be 1 to 15"))?;
        let cipher = match *cipher {
            "aes-gcm-128" => Cipher::AesGcm128,
            "aes-gcm-256" => Cipher::AesGcm256,
            _ => return Err(bad("the cipher must be aes-gcm-128 or aes-gcm-256")),
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret)
            .map_err(|_| bad("the secret is not base64"))?;
        if secret.len() < 32 {
            return Err(bad("the secret is shorter than 32 bytes"));
        }
        Ok(MeshSecret::new(generation, cipher, secret))
    }

    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The key and salt for ESP from node `from` to node `to`.
    pub fn sa_key(&self, from: &str, to: &str) -> SaKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"meshgate ipsec v1").extract(&self.secret);
        let generation = [self.generation];
        let (fl, tl) = (len_prefix(from), len_prefix(to));
        let info: [&[u8]; 5] = [&generation, &fl, from.as_bytes(), &tl, to.as_bytes()];
        let len = self.cipher.key_len() + 4;
        let mut okm = [0u8; 36];
        // HKDF-SHA256 expands to 36 bytes without fail (limit 255 * 32).
        if let Ok(out) = prk.expand(&info, OkmLen(len)) {
            let _ = out.fill(&mut okm[..len]);
        }
        SaKey {
            spi: spi(self.generation, from, to),
            key: okm[..self.cipher.key_len()].to_vec(),
            salt: [okm[len - 4], okm[len - 3], okm[len - 2], okm[len - 1]],
        }
    }
}

fn len_prefix(s: &str) -> [u8; 2] {
    (s.len().min(usize::from(u16::MAX)) as u16).to_be_bytes()
}

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// One direction's ESP key material.
#[derive(Clone, PartialEq, Eq)]
pub struct SaKey {
    pub spi: u32,
    pub key: Vec<u8>,
    pub salt: [u8; 4],
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaKey(spi {:#010x})", self.spi)
    }
}

impl SaKey {
    /// The key as the kernel takes it for rfc4106: the key then the salt.
    pub fn kernel_key(&self) -> Vec<u8> {
        let mut k = self.key.clone();
        k.extend_from_slice(&self.salt);
        k
    }
}

/// The SPI of ESP from `from` to `to` under `generation`: the generation
/// in the top four bits, a hash of the pair below (never a reserved SPI
/// under 256).
pub fn spi(generation: u8, from: &str, to: &str) -> u32 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"meshgate spi");
    ctx.update(&len_prefix(from));
    ctx.update(from.as_bytes());
    ctx.update(&len_prefix(to));
    ctx.update(to.as_bytes());
    let h = ctx.finish();
    let d = h.as_ref();
    let low = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) & 0x0FFF_FFFF;
    (u32::from(generation & 0x0F) << 28) | low.max(0x100)
}

/// The generation an SPI carries.
pub const fn generation_of(spi: u32) -> u8 {
    (spi >> 28) as u8
}

/// The generation after `g` (15 wraps to 1; 0 is never used).
pub const fn next_generation(g: u8) -> u8 {
    if g >= 15 {
        1
    } else {
        g + 1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secret(generation: u8) -> MeshSecret {
        MeshSecret::new(generation, Cipher::AesGcm128, vec![7u8; 32])
    }

    #[test]
    fn every_direction_of_every_pair_has_its_own_key_and_spi() {
        let s = secret(1);
        let nodes = ["c1/n1", "c1/n2", "c2/n1", "c1/n10"];
        let mut keys = std::collections::BTreeSet::new();
        let mut spis = std::collections::BTreeSet::new();
        for a in nodes {
            for b in nodes {
                if a != b {
                    let k = s.sa_key(a, b);
                    assert_eq!(k.key.len(), 16);
                    assert!(keys.insert(k.kernel_key()), "{a}->{b} repeats a key");
                    assert!(spis.insert(k.spi), "{a}->{b} repeats an SPI");
                }
            }
        }
        // Both ends compute the same thing alone.
        assert_eq!(
            s.sa_key("c1/n1", "c1/n2"),
            secret(1).sa_key("c1/n1", "c1/n2")
        );
        // Names cannot be shifted into one another ("c1/n1"+"0" vs "c1/n10").
        assert_ne!(s.sa_key("a", "bc"), s.sa_key("ab", "c"));
    }

    #[test]
    fn a_new_generation_or_secret_gives_new_keys_and_the_spi_tells_the_generation() {
        let (a, b) = ("c1/n1", "c1/n2");
        let k1 = secret(1).sa_key(a, b);
        let k2 = secret(2).sa_key(a, b);
        assert_ne!(k1.key, k2.key);
        assert_eq!(generation_of(k1.spi), 1);
        assert_eq!(generation_of(k2.spi), 2);
        assert_eq!(k1.spi & 0x0FFF_FFFF, k2.spi & 0x0FFF_FFFF);
        let other = MeshSecret::new(1, Cipher::AesGcm128, vec![8u8; 32]).sa_key(a, b);
        assert_ne!(other.key, k1.key);
        let wide = MeshSecret::new(1, Cipher::AesGcm256, vec![7u8; 32]).sa_key(a, b);
        assert_eq!(wide.key.len(), 32);
        assert_eq!(wide.kernel_key().len(), 36);
        assert_eq!(next_generation(15), 1);
        assert_eq!(next_generation(3), 4);
    }

    #[test]
    fn a_malformed_secret_names_the_problem_and_the_fix() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let ok = MeshSecret::parse(&format!("3 aes-gcm-256 {b64}\n"), "s").unwrap();
        assert_eq!((ok.generation, ok.cipher), (3, Cipher::AesGcm256));
        for (text, problem) in [
            (format!("0 aes-gcm-128 {b64}"), "1 to 15"),
            (format!("1 des {b64}"), "aes-gcm-128 or aes-gcm-256"),
            ("1 aes-gcm-128 c2hvcnQ=".to_string(), "shorter than 32"),
            ("1 aes-gcm-128".to_string(), "three fields"),
        ] {
            let e = MeshSecret::parse(&text, "/etc/mg/ipsec")
                .unwrap_err()
                .to_string();
            assert!(e.contains(problem), "{e}");
            assert!(
                e.contains("/etc/mg/ipsec") && e.contains("head -c 32"),
                "{e}"
            );
        }
        assert!(
            !format!("{ok:?}").contains(&b64),
            "Debug must not show the secret"
        );
    }
}
