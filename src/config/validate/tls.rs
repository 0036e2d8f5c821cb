//! `[tls]`: the public listener's certificate and key.

use std::path::Path;

use super::Problems;
use crate::config::TlsConfig;
use crate::config::raw::RawTls;

/// The files, relative to `base`, loaded once here so a pair the listener
/// would refuse is a configuration problem naming `tls.cert` or `tls.key`.
pub(super) fn check(
    raw: Option<&RawTls>,
    base: &Path,
    problems: &mut Problems,
) -> Option<TlsConfig> {
    let raw = raw?;
    let tls = TlsConfig {
        cert_path: base.join(&raw.cert),
        key_path: base.join(&raw.key),
    };
    match crate::certs::load_certified_key(&tls.cert_path, &tls.key_path) {
        Ok(_) => Some(tls),
        Err(e) => {
            problems.push(e.field(), e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::GOOD;
    use crate::config::{Config, ConfigError, EnvOverrides};

    #[test]
    fn tls_and_upstream_ca_paths_are_read_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[tls]\ncert = \"certs/full.pem\"\nkey = \"certs/key.pem\"\n",
            GOOD.replace(
                "[signing]",
                "[proxy]\nupstream_ca = \"certs/ca.pem\"\n[signing]"
            )
        );
        let p = match Config::from_toml_str_at(&text, &EnvOverrides::default(), dir.path()) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        };
        let cert = p.iter().find(|p| p.field == "tls.cert").expect("tls.cert");
        assert!(
            cert.reason
                .contains(&dir.path().join("certs/full.pem").display().to_string()),
            "{cert}"
        );
        assert!(p.iter().any(|p| p.field == "proxy.upstream_ca"), "{p:?}");
    }
}
