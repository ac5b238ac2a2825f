//! The mesh CA and the certificates it signs (rcgen, ring backend, ECDSA
//! P-256): one per cluster's discovery (server) and one per node's agent
//! (client). The identity is in the subject CN: `discovery.<cluster>` for a
//! discovery, `<cluster>/<node>` for an agent. Files and their layout are in
//! [`files`].
//!
//! Key material is only ever returned as PEM to be written to files; it is
//! never logged, and [`Issued`]'s `Debug` leaves the key out.

pub mod files;

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// How long the mesh CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long discovery and agent certificates are valid.
pub const LEAF_VALIDITY_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{what} name {name:?} is not usable in a certificate: {problem}")]
    BadName {
        what: &'static str,
        name: String,
        problem: &'static str,
    },
    #[error("cannot {what}: {error}")]
    Rcgen { what: String, error: rcgen::Error },
    #[error("the CA certificate or key in {dir} cannot be used: {problem}")]
    BadCa { dir: String, problem: String },
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
}

/// The DNS name in a discovery's certificate, and the name agents verify by
/// default: `discovery.<cluster>.meshgate`.
pub fn discovery_server_name(cluster: &str) -> String {
    format!("discovery.{cluster}.meshgate")
}

/// The subject CN of a discovery's certificate: `discovery.<cluster>`.
pub fn discovery_cn(cluster: &str) -> String {
    format!("discovery.{cluster}")
}

/// The subject CN of an agent's certificate: `<cluster>/<node>`.
pub fn agent_cn(cluster: &str, node: &str) -> String {
    format!("{cluster}/{node}")
}

/// Checks a cluster, node or mesh name can be a CN part, a DNS label and a
/// file name: ASCII letters, digits, `-`, `_`, `.`, not starting with `.`.
pub fn check_name(what: &'static str, name: &str) -> Result<(), CertError> {
    let bad = |problem| {
        Err(CertError::BadName {
            what,
            name: name.to_string(),
            problem,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 63 {
        return bad("it is longer than 63 characters");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("use only ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// A certificate and its private key, PEM. `Debug` does not show the key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The mesh CA: its certificate and the issuer that signs with its key.
pub struct MeshCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |error| CertError::Rcgen { what, error }
}

fn params(cn: &str, validity_days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshgate");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    // An hour back, so a slightly slow clock elsewhere still accepts it.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(validity_days);
    p.use_authority_key_identifier_extension = true;
    p
}

impl MeshCa {
    /// Makes a new CA for mesh `mesh` (CN `meshgate CA <mesh>`).
    pub fn generate(mesh: &str) -> Result<MeshCa, CertError> {
        check_name("mesh", mesh)?;
        let mut p = params(&format!("meshgate CA {mesh}"), CA_VALIDITY_DAYS);
        p.use_authority_key_identifier_extension = false;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
        let cert = p
            .self_signed(&key)
            .map_err(rc("self-sign the CA certificate"))?;
        Ok(MeshCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// Loads an existing CA from its certificate and key (PEM); `dir` is
    /// only used in messages.
    pub fn from_pem(cert_pem: &str, key_pem: &str, dir: &str) -> Result<MeshCa, CertError> {
        let bad = |problem: String| CertError::BadCa {
            dir: dir.to_string(),
            problem,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| bad(format!("certificate: {e}")))?;
        Ok(MeshCa {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM (to be written to a 0600 file only).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Issued, CertError> {
        let mut p = params(cn, LEAF_VALIDITY_DAYS);
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = eku;
        let key = KeyPair::generate().map_err(rc(format!("generate a key for {cn}")))?;
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(rc(format!("sign the certificate of {cn}")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for a cluster's discovery (server, and client towards
    /// other discoveries): CN `discovery.<cluster>`, SANs
    /// `discovery.<cluster>.meshgate` and `ips`.
    pub fn discovery_cert(&self, cluster: &str, ips: &[IpAddr]) -> Result<Issued, CertError> {
        check_name("cluster", cluster)?;
        let dns = discovery_server_name(cluster);
        let mut sans = vec![SanType::DnsName(
            dns.clone()
                .try_into()
                .map_err(rc(format!("use {dns} as a DNS name")))?,
        )];
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue(
            &discovery_cn(cluster),
            sans,
            // Client too: a discovery connects to others (federation).
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate for a node's agent: CN `<cluster>/<node>`.
    pub fn agent_cert(&self, cluster: &str, node: &str) -> Result<Issued, CertError> {
        check_name("cluster", cluster)?;
        check_name("node", node)?;
        self.issue(
            &agent_cn(cluster, node),
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }
}

#[cfg(test)]
mod tests;
