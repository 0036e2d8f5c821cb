//! TLS: the public listener's certificate, reloadable without dropping
//! connections.
//!
//! ```text
//!   start ──→ CertStore ─→ server_config (ALPN h2, http/1.1)
//!   SIGHUP ─→ CertStore::reload: new handshakes get the new pair;
//!             a bad pair is refused and the old one stays
//! ```
//!
//! Reading and checking the files is `certs`, which config validation uses
//! too: `check-config` refuses exactly the pairs the listener would.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certs::load_certified_key;
use crate::config::TlsConfig;

/// The listener's error is the certificate loader's, and its crypto provider
/// is the one the upstream client uses too.
pub use crate::certs::{TlsError, provider};

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
