//! Mutual TLS between agents and discovery (rustls through tonic, ring).
//!
//! - [`ServerTls`]: discovery's certificate, key and the CA its clients'
//!   certificates must chain to (client certificates are required).
//! - [`ClientTls`]: the CA that signs discovery's certificate, this client's
//!   certificate and key, and the name to verify (`discovery.<cluster>.meshgate`).
//! - [`authorize`]: the pure check that an agent's certificate names the node
//!   it acts for, in the cluster this discovery serves.
//! - [`explain_failure`]: turns a handshake failure into a sentence.
//!
//! PEM files are read and checked when loaded; errors name the file. Key
//! material is never logged (`Debug` leaves it out).

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::certs::{agent_cn, discovery_server_name};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the {what} {path} is not valid: {problem}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{0}")]
    Incomplete(String),
}

/// A PEM file's text after checking it holds what it should.
fn load(what: &'static str, path: &Path, key: bool) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })?;
    let invalid = |problem: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        problem,
    };
    if key {
        rcgen::KeyPair::from_pem(&text)
            .map_err(|e| invalid(format!("no usable PEM private key ({e})")))?;
    } else {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
            .map_err(|e| invalid(format!("no PEM certificate ({e})")))?;
        if pem.label != "CERTIFICATE" {
            return Err(invalid(format!(
                "its first PEM block is {:?}, not CERTIFICATE",
                pem.label
            )));
        }
        pem.parse_x509()
            .map_err(|e| invalid(format!("the certificate does not parse ({e})")))?;
    }
    Ok(text)
}

/// Discovery's side: its certificate and key, and the client CA.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: String,
    client_ca_pem: String,
    client_ca_file: PathBuf,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            cert_pem: load("TLS certificate (--tls-cert)", cert, false)?,
            key_pem: load("TLS key (--tls-key)", key, true)?,
            client_ca_pem: load("client CA (--client-ca)", client_ca, false)?,
            client_ca_file: client_ca.to_path_buf(),
        })
    }

    /// The client side of this discovery towards the discovery of cluster
    /// `remote` (federation): its own certificate (EKU clientAuth too), the
    /// mesh CA, and `discovery.<remote>.meshgate` as the name to verify.
    pub fn client_for(&self, remote: &str) -> ClientTls {
        ClientTls {
            ca_pem: self.client_ca_pem.clone(),
            ca_file: self.client_ca_file.clone(),
            identity: Some((self.cert_pem.clone(), self.key_pem.clone())),
            server_name: discovery_server_name(remote),
        }
    }

    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.client_ca_pem))
            .client_auth_optional(false)
    }
}

/// An agent's (or `meshgate nodes`') side.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: String,
    /// Where the CA came from, for messages.
    pub ca_file: PathBuf,
    /// This client's certificate and key (PEM); `None` sends no certificate
    /// (which discovery refuses).
    pub identity: Option<(String, String)>,
    /// The name discovery's certificate must carry.
    pub server_name: String,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca_file)
            .field("has_identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Loads the CA and (if both are given) the certificate and key;
    /// `server_name` defaults to `discovery.<cluster>.meshgate`.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        server_name: Option<String>,
        cluster: &str,
    ) -> Result<ClientTls, TlsError> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((
                load("TLS certificate (--tls-cert)", c, false)?,
                load("TLS key (--tls-key)", k, true)?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Incomplete(
                    "--tls-cert needs --tls-key (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete(
                    "--tls-key needs --tls-cert (the certificate of that key)".into(),
                ))
            }
        };
        Ok(ClientTls {
            ca_pem: load("CA certificate (--tls-ca)", ca, false)?,
            ca_file: ca.to_path_buf(),
            identity,
            server_name: server_name.unwrap_or_else(|| discovery_server_name(cluster)),
        })
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone())
            .assume_http2(true);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// Why a request was refused by [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate has no usable subject CN ({0})")]
    BadCertificate(String),
    #[error("the client certificate is for {cn}, which is not an agent (CN cluster/node)")]
    NotAnAgent { cn: String },
    #[error("the client certificate is for {cn} of cluster {cert_cluster}, but this discovery serves cluster {served}")]
    OtherCluster {
        cn: String,
        cert_cluster: String,
        served: String,
    },
    #[error("the client certificate is for {cn}, but the request is for {requested}")]
    OtherNode { cn: String, requested: String },
}

/// The subject CN of a DER certificate.
pub fn subject_cn(der: &[u8]) -> Result<String, Denied> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Denied::BadCertificate(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| Denied::BadCertificate("no CN".into()))?;
    cn.as_str()
        .map(str::to_string)
        .map_err(|e| Denied::BadCertificate(e.to_string()))
}

/// Whether a client whose certificate CN is `cn` may act for node
/// `req_node` of `req_cluster` at the discovery of `served` (pure).
pub fn authorize(
    cn: Option<&str>,
    served: &str,
    req_cluster: &str,
    req_node: &str,
) -> Result<(), Denied> {
    let cn = cn.ok_or(Denied::NoCertificate)?;
    let Some((cert_cluster, _)) = cn.split_once('/') else {
        return Err(Denied::NotAnAgent { cn: cn.to_string() });
    };
    if cert_cluster != served {
        return Err(Denied::OtherCluster {
            cn: cn.to_string(),
            cert_cluster: cert_cluster.to_string(),
            served: served.to_string(),
        });
    }
    if cn != agent_cn(req_cluster, req_node) {
        return Err(Denied::OtherNode {
            cn: cn.to_string(),
            requested: agent_cn(req_cluster, req_node),
        });
    }
    Ok(())
}

/// A sentence for a TLS failure talking to discovery at `endpoint`, from the
/// error text (rustls' reasons); `None` if it does not look like one.
pub fn explain_failure(text: &str, endpoint: &str, tls: &ClientTls) -> Option<String> {
    let ca = tls.ca_file.display();
    let t = text.to_ascii_lowercase();
    if t.contains("unknownissuer") || t.contains("unknown issuer") || t.contains("badsignature") {
        return Some(format!(
            "the certificate of discovery at {endpoint} is not signed by the CA in {ca}"
        ));
    }
    if t.contains("notvalidforname") || t.contains("not valid for name") {
        return Some(format!(
            "the certificate of discovery at {endpoint} is not valid for the name {} \
             (is this the discovery of another cluster? set --tls-server-name to override)",
            tls.server_name
        ));
    }
    if t.contains("invalid peer certificate")
        && (t.contains("expired") || t.contains("notvalidyet"))
    {
        return Some(format!(
            "the certificate of discovery at {endpoint} has expired or is not valid yet (check the clocks, or make new certificates)"
        ));
    }
    if t.contains("certificaterequired") || t.contains("certificate required") {
        return Some(format!(
            "discovery at {endpoint} requires a client certificate: pass --tls-cert and --tls-key"
        ));
    }
    if t.contains("alert")
        && (t.contains("unknownca")
            || t.contains("badcertificate")
            || t.contains("decrypterror")
            || t.contains("certificate"))
    {
        return Some(format!(
            "discovery at {endpoint} refused our certificate (is it signed by the mesh CA that discovery trusts?)"
        ));
    }
    if t.contains("invalidcontenttype")
        || t.contains("corrupt message")
        || t.contains("invalid content type")
    {
        return Some(format!(
            "discovery at {endpoint} did not answer with TLS (is it running without --tls-cert? then use http://)"
        ));
    }
    None
}

#[cfg(test)]
mod tests;
