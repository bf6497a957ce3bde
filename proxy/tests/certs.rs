//! `meridian certs`: a CA and per-datacenter certificates that openssl accepts.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::Path;
use std::process::{Command, Output};

fn meridian(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .expect("run meridian")
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn topology(dir: &Path) -> std::path::PathBuf {
    let mut file = meridian_testbed::TopologyFile::new("shop");
    file.tls = Some(meridian_testbed::TlsSection {
        ca: "pki/ca.pem".into(),
    });
    for (i, id) in ["us-east", "eu-west"].iter().enumerate() {
        file.datacenter(id, [7001 + i as u16, 7101 + i as u16, 7201 + i as u16]);
    }
    let path = dir.join("topology.toml");
    file.write(&path).unwrap();
    path
}

#[test]
fn certificates_are_signed_by_the_ca_and_name_their_datacenter() {
    let dir = tempfile::tempdir().unwrap();
    let file = topology(dir.path());
    let out = meridian(&["certs", "--config", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pki = dir.path().join("pki");
    let ca = pki.join("ca.pem");
    for id in ["us-east", "eu-west"] {
        let cert = pki.join(format!("{id}.pem"));
        let verified = openssl(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            "-purpose",
            "sslserver",
            cert.to_str().unwrap(),
        ]);
        assert!(verified.trim_end().ends_with(": OK"), "{verified}");
        openssl(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            "-purpose",
            "sslclient",
            cert.to_str().unwrap(),
        ]);
        let text = openssl(&[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
        ]);
        assert!(
            text.contains(&format!("CN = {id}")) && text.contains(&format!("DNS:{id}")),
            "{text}"
        );
        // The key matches the certificate.
        let key = pki.join(format!("{id}-key.pem"));
        let from_cert = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
        let from_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        assert_eq!(from_cert, from_key);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "keys are private"
        );
    }
    assert!(pki.join("ca-key.pem").exists());
}

/// Every certificate, and every extension in it, decodes with a second parser that
/// holds to strict DER (as Python's `cryptography`, and so aioquic, does): a
/// `BasicConstraints` with `cA` FALSE written out, its default, is not DER.
#[test]
fn certificates_are_strict_der_for_an_independent_parser() {
    use x509_cert::der::{Decode, DecodePem, Encode};
    use x509_cert::ext::pkix::BasicConstraints;
    let dir = tempfile::tempdir().unwrap();
    let file = topology(dir.path());
    assert!(
        meridian(&["certs", "--config", file.to_str().unwrap()])
            .status
            .success()
    );
    for name in ["ca", "us-east", "eu-west"] {
        let pem = std::fs::read(dir.path().join("pki").join(format!("{name}.pem"))).unwrap();
        let cert =
            x509_cert::Certificate::from_pem(&pem).unwrap_or_else(|e| panic!("{name}.pem: {e}"));
        for ext in cert.tbs_certificate.extensions.iter().flatten() {
            // 2.5.29.19: basicConstraints.
            if ext.extn_id.to_string() == "2.5.29.19" {
                let bc = BasicConstraints::from_der(ext.extn_value.as_bytes())
                    .unwrap_or_else(|e| panic!("{name}.pem basicConstraints: {e}"));
                assert_eq!(bc.ca, name == "ca", "{name}.pem");
                // DER is canonical: decoding and encoding again gives the same bytes
                // (a default value written out does not survive that).
                assert_eq!(
                    bc.to_der().unwrap(),
                    ext.extn_value.as_bytes(),
                    "{name}.pem: basicConstraints is not in DER"
                );
            }
        }
    }
}

#[test]
fn existing_files_are_not_overwritten_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let file = topology(dir.path());
    let config = file.to_str().unwrap();
    assert!(meridian(&["certs", "--config", config]).status.success());
    let ca = dir.path().join("pki/ca.pem");
    let before = std::fs::read(&ca).unwrap();

    let again = meridian(&["certs", "--config", config]);
    assert_eq!(again.status.code(), Some(73));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("ca.pem"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&ca).unwrap(), before, "nothing was written");

    assert!(
        meridian(&["certs", "--config", config, "--force"])
            .status
            .success()
    );
    assert_ne!(
        std::fs::read(&ca).unwrap(),
        before,
        "--force makes a new CA"
    );
}
