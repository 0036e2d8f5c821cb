//! The `WAITROOM_*` environment overrides, read in one place.
//!
//! They carry the secrets an operator would rather not write into the file;
//! the `admin` and `signing` checks in `validate` apply them.

/// Environment overrides, read in one place.
#[derive(Debug, Default, Clone)]
pub struct EnvOverrides {
    pub admin_token: Option<String>,
    pub signing_key: Option<String>,
    pub signing_kid: Option<String>,
    /// An Ed25519 private key (PKCS#8 PEM text) that signs admissions.
    pub admission_key: Option<String>,
    pub admission_kid: Option<String>,
}

impl EnvOverrides {
    pub fn from_process_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        EnvOverrides {
            admin_token: get("WAITROOM_ADMIN_TOKEN"),
            signing_key: get("WAITROOM_SIGNING_KEY"),
            signing_kid: get("WAITROOM_SIGNING_KID"),
            admission_key: get("WAITROOM_ADMISSION_KEY"),
            admission_kid: get("WAITROOM_ADMISSION_KID"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::GOOD;
    use crate::config::{Config, ConfigError, EnvOverrides};

    #[test]
    fn env_overrides_supply_secrets() {
        let text = GOOD.replace("token = \"change-me\"", "").replace(
            "keys = [{ kid = \"k1\", secret = \"0123456789abcdef0123456789abcdef\" }]",
            "",
        );
        let env = EnvOverrides {
            admin_token: Some("from-env".into()),
            signing_key: Some("x".repeat(40)),
            signing_kid: None,
            ..Default::default()
        };
        let c = Config::from_toml_str(&text, &env).unwrap();
        assert_eq!(c.admin_token, "from-env");
        assert_eq!(c.signing_keys[0].kid, "env");
        assert!(matches!(
            Config::from_toml_str(&text, &EnvOverrides::default()),
            Err(ConfigError::Invalid(_))
        ));
    }
}
