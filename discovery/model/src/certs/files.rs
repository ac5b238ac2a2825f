//! The certificate directory of a mesh and writing it:
//!
//! ```text
//! DIR/ca.pem  DIR/ca-key.pem                       (mesh CA)
//! DIR/clusters/<cluster>.pem  <cluster>-key.pem    (discovery server certs)
//! DIR/agents/<cluster>/<node>.pem  <node>-key.pem  (agent client certs)
//! ```
//!
//! Key files are mode 0600. Every file is written to a temporary file and
//! renamed, so an existing file is never half-overwritten. An existing CA is
//! reused to sign new certificates and only replaced with `force`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{check_name, CertError, Issued, MeshCa};

/// Paths inside a mesh's certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertLayout {
    pub dir: PathBuf,
}

impl CertLayout {
    pub fn new(dir: impl Into<PathBuf>) -> CertLayout {
        CertLayout { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn discovery_cert(&self, cluster: &str) -> PathBuf {
        self.dir.join("clusters").join(format!("{cluster}.pem"))
    }
    pub fn discovery_key(&self, cluster: &str) -> PathBuf {
        self.dir.join("clusters").join(format!("{cluster}-key.pem"))
    }
    pub fn agent_cert(&self, cluster: &str, node: &str) -> PathBuf {
        self.dir
            .join("agents")
            .join(cluster)
            .join(format!("{node}.pem"))
    }
    pub fn agent_key(&self, cluster: &str, node: &str) -> PathBuf {
        self.dir
            .join("agents")
            .join(cluster)
            .join(format!("{node}-key.pem"))
    }
}

/// What to make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertRequest {
    /// The mesh name (in the CA's CN).
    pub mesh: String,
    /// Clusters to make a discovery certificate for, with extra IP SANs.
    pub clusters: Vec<(String, Vec<IpAddr>)>,
    /// `(cluster, node)` pairs to make an agent certificate for.
    pub agents: Vec<(String, String)>,
    /// Replace an existing CA.
    pub force: bool,
}

/// What [`write_certs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertReport {
    /// Whether a new CA was made (false: the existing one signed).
    pub new_ca: bool,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.display().to_string();
    move |error| CertError::Io { what, path, error }
}

/// Writes `data` to `path` through a temporary file in the same directory
/// and a rename; `mode` applies to the new file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(data).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_pair(
    issued: &Issued,
    cert: PathBuf,
    key: PathBuf,
    report: &mut CertReport,
) -> Result<(), CertError> {
    write_atomic(&key, issued.key_pem.as_bytes(), 0o600)?;
    report.written.push(key);
    write_atomic(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    report.written.push(cert);
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(io("reading", path))
}

/// The CA in `layout`: an existing CA is never replaced without `force`,
/// it signs the new certificates instead; otherwise a new CA is written.
fn ca(
    layout: &CertLayout,
    req: &CertRequest,
    report: &mut CertReport,
) -> Result<MeshCa, CertError> {
    let cert = layout.ca_cert();
    if cert.exists() && !req.force {
        let key = layout.ca_key();
        let dir = layout.dir.display().to_string();
        if !key.exists() {
            return Err(CertError::BadCa {
                dir,
                problem: format!(
                    "{} exists but {} does not; pass --force to make a new CA",
                    cert.display(),
                    key.display()
                ),
            });
        }
        return MeshCa::from_pem(&read(&cert)?, &read(&key)?, &dir);
    }
    let ca = MeshCa::generate(&req.mesh)?;
    write_pair(
        &Issued {
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem(),
        },
        cert,
        layout.ca_key(),
        report,
    )?;
    report.new_ca = true;
    Ok(ca)
}

/// Makes (or reuses) the CA in `dir` and writes the requested discovery
/// and agent certificates, all signed by it. Names are checked before any
/// file is written.
pub fn write_certs(dir: &Path, req: &CertRequest) -> Result<CertReport, CertError> {
    check_name("mesh", &req.mesh)?;
    for (cluster, _) in &req.clusters {
        check_name("cluster", cluster)?;
    }
    for (cluster, node) in &req.agents {
        check_name("cluster", cluster)?;
        check_name("node", node)?;
    }
    let layout = CertLayout::new(dir);
    let mut report = CertReport::default();
    let ca = ca(&layout, req, &mut report)?;
    for (cluster, ips) in &req.clusters {
        let issued = ca.discovery_cert(cluster, ips)?;
        write_pair(
            &issued,
            layout.discovery_cert(cluster),
            layout.discovery_key(cluster),
            &mut report,
        )?;
    }
    for (cluster, node) in &req.agents {
        let issued = ca.agent_cert(cluster, node)?;
        write_pair(
            &issued,
            layout.agent_cert(cluster, node),
            layout.agent_key(cluster, node),
            &mut report,
        )?;
    }
    Ok(report)
}
