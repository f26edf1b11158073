//! Making the cluster CA and the certificates it signs (`gantry tls ca create`, `gantry tls cert
//! create`). Keys are ECDSA P-256, written with mode 0600; certificates are PEM. Operators may
//! bring their own CA instead: any CA works as long as the certificates carry the names in
//! [`crate::identity`].

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::identity::{check_label, Identity, NameError, Role, SUFFIX};

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "{0} names no Gantry cluster (its common name is not `<cluster>.gantry`): pass --cluster"
    )]
    NoCluster(PathBuf),
    #[error("a certificate must be valid for at least one day")]
    Days,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IssueError + '_ {
    move |source| IssueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a CA lives: `ca.pem` and `ca.key` in one directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }
}

/// A certificate and its key, as written.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), IssueError> {
    if days == 0 {
        return Err(IssueError::Days);
    }
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

/// Writes `data` to `path` with `mode`, refusing to replace a file unless `force`.
fn write_file(path: &Path, data: &str, mode: u32, force: bool) -> Result<(), IssueError> {
    if path.exists() && !force {
        return Err(IssueError::Exists(path.to_path_buf()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // Written beside and renamed, so a reloading server never reads half a file.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Creates a cluster CA in `dir`.
pub fn create_ca(dir: &Path, cluster: &str, days: u32, force: bool) -> Result<CaFiles, IssueError> {
    check_label("cluster", cluster)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster}.{SUFFIX}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Gantry cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days)?;
    let cert = params.self_signed(&key)?;
    let files = CaFiles::in_dir(dir);
    write_file(&files.key, &key.serialize_pem(), 0o600, force)?;
    write_file(&files.cert, &cert.pem(), 0o644, force)?;
    Ok(files)
}

/// The cluster a Gantry CA certificate was made for (its common name `<cluster>.gantry`).
pub fn ca_cluster(ca_cert_pem: &str) -> Option<String> {
    let der = crate::material::pem_certs(ca_cert_pem.as_bytes())
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let cluster = cn.strip_suffix(&format!(".{SUFFIX}"))?;
    check_label("cluster", cluster).ok()?;
    Some(cluster.to_string())
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub role: Role,
    /// The cluster; `None` takes it from the CA certificate.
    pub cluster: Option<String>,
    /// Extra names, for operators who also verify by host name.
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: u32,
}

/// Issues a certificate signed by the CA in `ca`, written to `out/<role>-<id>.pem` and `.key`.
pub fn create_cert(
    ca: &CaFiles,
    req: &CertRequest,
    out: &Path,
    force: bool,
) -> Result<CertFiles, IssueError> {
    let ca_pem = std::fs::read_to_string(&ca.cert).map_err(io(&ca.cert))?;
    let ca_key_pem = std::fs::read_to_string(&ca.key).map_err(io(&ca.key))?;
    let cluster = match &req.cluster {
        Some(c) => c.clone(),
        None => ca_cluster(&ca_pem).ok_or_else(|| IssueError::NoCluster(ca.cert.clone()))?,
    };
    check_label("cluster", &cluster)?;
    let stem = match &req.role {
        Role::Coordinator(id) => format!("coordinator-{id}"),
        Role::Agent(id) => {
            check_label("agent id", id)?;
            format!("agent-{id}")
        }
        Role::Client(name) => {
            check_label("client name", name)?;
            format!("client-{name}")
        }
    };
    let identity = Identity {
        role: req.role.clone(),
        cluster,
    };
    let mut params = CertificateParams::new(identity.sans())?;
    for d in &req.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.clone().try_into()?));
    }
    for ip in &req.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, identity.sans()[0].clone());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match req.role {
        // Coordinators serve and also dial their peers.
        Role::Coordinator(_) => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, req.days)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let files = CertFiles {
        cert: out.join(format!("{stem}.pem")),
        key: out.join(format!("{stem}.key")),
    };
    write_file(&files.key, &key.serialize_pem(), 0o600, force)?;
    write_file(&files.cert, &cert.pem(), 0o644, force)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_ca_issues_role_certificates_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(dir.path(), "prod", 30, false).unwrap();
        let pem = std::fs::read_to_string(&ca.cert).unwrap();
        assert_eq!(ca_cluster(&pem).as_deref(), Some("prod"));
        assert!(matches!(
            create_ca(dir.path(), "prod", 30, false),
            Err(IssueError::Exists(_))
        ));
        let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let req = CertRequest {
            role: Role::Agent("gpu07".into()),
            cluster: None,
            dns: vec![],
            ips: vec![],
            days: 10,
        };
        let files = create_cert(&ca, &req, &dir.path().join("certs"), false).unwrap();
        assert!(files.cert.ends_with("agent-gpu07.pem"));
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let der = crate::material::pem_certs(&std::fs::read(&files.cert).unwrap()).unwrap();
        assert_eq!(
            Identity::from_der(&der[0]),
            Some(Identity {
                role: Role::Agent("gpu07".into()),
                cluster: "prod".into()
            })
        );

        let bad = CertRequest {
            role: Role::Agent("GPU_07".into()),
            ..req
        };
        assert!(matches!(
            create_cert(&ca, &bad, dir.path(), false),
            Err(IssueError::Name(_))
        ));
    }
}
