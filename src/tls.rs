//! TLS: the public listener's certificate (reloadable without dropping
//! connections) and the roots used for `https://` upstreams.
//!
//! ```text
//!   config check ─→ load_certified_key (every problem names tls.cert / tls.key)
//!   start ────────→ CertStore ─→ server_config (ALPN h2, http/1.1)
//!   SIGHUP ───────→ CertStore::reload: new handshakes get the new pair;
//!                   a bad pair is refused and the old one stays
//! ```
//!
//! Everything uses the aws-lc-rs provider explicitly, so nothing depends on
//! which crypto features other crates happen to enable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Which configured file a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
    UpstreamCa,
}

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

/// The public listener's certificate: read by every handshake, replaced on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn load(config: &TlsConfig) -> Result<Arc<CertStore>, TlsError> {
        let key = load_certified_key(&config.cert_path, &config.key_path)?;
        Ok(Arc::new(CertStore {
            cert_path: config.cert_path.clone(),
            key_path: config.key_path.clone(),
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again. On success new handshakes use the new pair
    /// (open connections keep theirs); on error the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(load_certified_key(&self.cert_path, &self.key_path)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The public listener's TLS settings: certificates from `store`, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
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
