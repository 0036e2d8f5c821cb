//! The file as written: one struct per TOML table, nothing checked yet.
//!
//! `deny_unknown_fields` everywhere, so a misspelt key is a parse error
//! naming it, never a silent default. Optional keys are `Option` here; their
//! defaults and ranges live in `validate`, section by section.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: RawListen,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) signing: RawSigning,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) proxy: RawProxy,
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) sse: RawSse,
    pub(super) tls: Option<RawTls>,
    pub(super) admission: Option<RawAdmission>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) rooms: Vec<RawRoom>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmission {
    pub(super) issuer: Option<String>,
    pub(super) ttl_secs: Option<u64>,
    #[serde(default)]
    pub(super) keys: Vec<RawAdmissionKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmissionKey {
    pub(super) kid: String,
    pub(super) private_key: String,
    #[serde(default)]
    pub(super) publish_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) joins_per_min_per_client: Option<u32>,
    pub(super) join_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSse {
    pub(super) max_connections: Option<usize>,
    pub(super) max_streams_per_place: Option<usize>,
    pub(super) max_streams_per_client: Option<usize>,
    pub(super) heartbeat_secs: Option<u64>,
    pub(super) retry_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) public: String,
    pub(super) admin: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    #[serde(default)]
    pub(super) keys: Vec<RawKey>,
    pub(super) queue_token_ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) kid: String,
    pub(super) secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) kind: Option<String>,
    pub(super) path: Option<String>,
    pub(super) seq_block: Option<u64>,
    pub(super) url: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) on_store_failure: Option<String>,
    pub(super) lease_ms: Option<u64>,
    #[serde(default)]
    pub(super) sentinels: Vec<String>,
    pub(super) master_name: Option<String>,
    pub(super) password: Option<String>,
    pub(super) sentinel_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) default_upstream: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) public_url: Option<String>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) response_timeout_secs: Option<u64>,
    pub(super) upstream_hold_secs: Option<u64>,
    pub(super) upstream_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) log_format: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_read_timeout_secs: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) listen_backlog: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoom {
    pub(super) id: String,
    pub(super) title: Option<String>,
    pub(super) upstream: String,
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) admission_audience: Option<String>,
    #[serde(default)]
    pub(super) exempt_paths: Vec<String>,
    pub(super) admit_rate_per_min: u64,
    pub(super) session_secs: Option<u64>,
    pub(super) session_max_secs: Option<u64>,
    pub(super) max_active: Option<u64>,
    pub(super) queue: Option<String>,
    pub(super) claim_grace_secs: Option<u64>,
    pub(super) abandon_after_secs: Option<u64>,
    pub(super) rejoin_secs: Option<u64>,
    pub(super) page_template: Option<String>,
    pub(super) opens_at: Option<String>,
    pub(super) closes_at: Option<String>,
    pub(super) closed_message: Option<String>,
    pub(super) access_binding: Option<String>,
    pub(super) pow_bits: Option<u8>,
    pub(super) tickets_per_order: Option<u64>,
    pub(super) upstream_target_p95_ms: Option<u64>,
    pub(super) upstream_rate_floor_per_min: Option<u64>,
    pub(super) control_interval_secs: Option<u64>,
    pub(super) control_min_samples: Option<u64>,
    pub(super) capacity_group: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::GOOD;
    use crate::config::{Config, ConfigError, EnvOverrides};

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let text = GOOD.replace(
            "admit_rate_per_min = 600",
            "admit_rate_per_min = 600\nadmit_rate = 5",
        );
        let err = Config::from_toml_str(&text, &EnvOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("admit_rate"), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        assert!(matches!(
            Config::from_toml_str("[listen\n", &EnvOverrides::default()),
            Err(ConfigError::Syntax(_))
        ));
    }
}
