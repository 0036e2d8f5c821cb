//! Certificate and key files: read, parse, and check that they belong
//! together, with every problem naming the configuration field it concerns.
//!
//! ```text
//!   config validation ─→ load_certified_key, load_ca_certs  (problems name tls.* / proxy.upstream_ca)
//!   tls::CertStore ────→ load_certified_key                 (start and SIGHUP reload)
//!   proxy ─────────────→ provider                           (client TLS to https:// upstreams)
//! ```
//!
//! It sits below both `config` and `tls` and imports neither: the
//! configuration checks the files with the same code the listener loads them
//! with, without depending on the listener. Everything uses the aws-lc-rs
//! provider explicitly, so nothing depends on which crypto features other
//! crates happen to enable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::InconsistentKeys;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which configured file a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    UpstreamCa,
}

/// A certificate, key or CA file that cannot be used; [`TlsError::field`]
/// says which configuration field points at it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path:?}: {source}")]
    Read {
        part: Part,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path:?} is not valid PEM: {reason}")]
    BadPem {
        part: Part,
        path: PathBuf,
        reason: String,
    },
    #[error("{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { part: Part, path: PathBuf },
    #[error("{path:?} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the private key in {path:?} cannot be used: {reason}")]
    UnusableKey { path: PathBuf, reason: String },
    #[error("the first certificate in {path:?} cannot be parsed: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the private key in {key:?} does not belong to the certificate in {cert:?}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl TlsError {
    /// The configuration field the problem is about.
    pub fn field(&self) -> &'static str {
        let part = match self {
            TlsError::Read { part, .. }
            | TlsError::BadPem { part, .. }
            | TlsError::NoCertificate { part, .. } => *part,
            TlsError::BadCertificate { .. } => Part::Cert,
            TlsError::NoKey { .. } | TlsError::UnusableKey { .. } | TlsError::Mismatch { .. } => {
                Part::Key
            }
        };
        match part {
            Part::Cert => "tls.cert",
            Part::Key => "tls.key",
            Part::UpstreamCa => "proxy.upstream_ca",
        }
    }
}

/// The one crypto provider the gateway uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(part: Part, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        part,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(part: Part, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(part, path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            part,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            part,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Loads a certificate chain and its private key, and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(Part::Cert, cert)?;
    let key_pem = read(Part::Key, key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_path_buf(),
        },
        other => TlsError::BadPem {
            part: Part::Key,
            path: key.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::UnusableKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Some key types cannot tell; rustls itself accepts those.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// CA certificates (PEM) trusted for `https://` upstreams.
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = certificates(Part::UpstreamCa, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in &certs {
        roots.add(c.clone()).map_err(|e| TlsError::BadPem {
            part: Part::UpstreamCa,
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_they_concern() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all").unwrap();
        let e = load_certified_key(&missing, &garbage).unwrap_err();
        assert_eq!(e.field(), "tls.cert", "{e}");
        let e = load_certified_key(&garbage, &garbage).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        assert_eq!(e.field(), "tls.cert");
    }
}
