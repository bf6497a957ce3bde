//! `meridian certs`: the cluster's certificate authority and each datacenter's
//! certificate and key, at the paths the topology file names.
//!
//! Every datacenter's certificate is signed by the cluster CA, names the datacenter
//! (common name and DNS subject alternative name), and serves both ends of a link
//! (server and client authentication), as mutual TLS between proxies needs. The CA's
//! key is written beside its certificate (`<ca>-key.pem`) to sign future datacenters.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use meridian_topology::Topology;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Files that exist already; nothing was written.
    #[error("refusing to overwrite existing files (pass --force to replace them): {}", list(.0))]
    Exists(Vec<PathBuf>),
    /// Generating a key or certificate failed.
    #[error("generating certificates failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CA key's path: `<ca stem>-key.pem` beside the CA certificate.
pub fn ca_key_path(ca: &Path) -> PathBuf {
    let stem = ca.file_stem().and_then(|s| s.to_str()).unwrap_or("ca");
    ca.with_file_name(format!("{stem}-key.pem"))
}

/// Creates the CA and every datacenter's certificate and key; returns the files
/// written. Refuses, writing nothing, if any exists and `force` is false.
pub fn generate(topology: &Topology, force: bool) -> Result<Vec<PathBuf>, CertsError> {
    let ca_cert_path = topology.tls.ca.clone();
    let ca_key_path = ca_key_path(&ca_cert_path);
    let mut targets = vec![ca_cert_path.clone(), ca_key_path.clone()];
    for dc in &topology.datacenters {
        targets.push(dc.cert.clone());
        targets.push(dc.key.clone());
    }
    let existing: Vec<PathBuf> = targets.iter().filter(|p| p.exists()).cloned().collect();
    if !existing.is_empty() && !force {
        return Err(CertsError::Exists(existing));
    }

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name(&format!("meridian cluster {} CA", topology.cluster_name));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&ca_cert_path, &ca_cert.pem(), false)?;
    write(&ca_key_path, &ca_key.serialize_pem(), true)?;

    let issuer = Issuer::from_params(&ca, &ca_key);
    for dc in &topology.datacenters {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dc.id.clone()])?;
        params.distinguished_name = name(&dc.id);
        // No basicConstraints at all: written out with cA FALSE (its default) it is
        // not DER, and strict parsers refuse the certificate.
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        write(&dc.cert, &cert.pem(), false)?;
        write(&dc.key, &key.serialize_pem(), true)?;
    }
    Ok(targets)
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn.push(DnType::OrganizationName, "meridian");
    dn
}

/// Writes `text` to `path`, creating its directory; private keys are readable by
/// their owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<(), CertsError> {
    let fail = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(fail)?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(fail)
}
