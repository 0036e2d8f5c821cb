//! Configuration: raw TOML → validated [`Config`], parsed once at start-up.
//!
//! ```text
//!   file ─→ raw::RawConfig (serde, deny_unknown_fields)
//!             │     env::EnvOverrides (WAITROOM_*)
//!             ▼     ▼
//!   validate: listen → admin → signing → store → proxy → tls
//!             → server → limits → sse → rooms
//!             ▼
//!   Config, or ConfigError::Invalid with every problem
//! ```
//!
//! The raw structs mirror the file, so a typo is an error, never a silent
//! default. [`Config::from_toml_str`] applies the environment overrides and
//! validates everything at once, returning every problem with the field it
//! concerns. Downstream code only sees the validated types below.
//!
//! `config` is a low layer: it imports helpers that parse one kind of value
//! (`path`, `host`, `csrf` origins, `rfc3339`, `certs`, …) and nothing that
//! runs the gateway.

mod env;
mod raw;
#[cfg(test)]
mod testing;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use env::EnvOverrides;
use raw::RawConfig;

/// How long a drip lease lasts by default (see `store::redis`).
pub const DEFAULT_LEASE_MS: u64 = 2000;
/// Sequence numbers reserved per store write (see `store`).
pub const DEFAULT_SEQ_BLOCK: u64 = 1024;
pub const DEFAULT_QUEUE_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_SESSION_SECS: u64 = 600;
pub const DEFAULT_CLAIM_GRACE_SECS: u64 = 180;
pub const DEFAULT_ABANDON_AFTER_SECS: u64 = 120;
pub const DEFAULT_REJOIN_SECS: u64 = 900;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 20;
pub const DEFAULT_UPSTREAM_HOLD_SECS: u64 = 5;
pub const DEFAULT_SSE_MAX_CONNECTIONS: usize = 50_000;
pub const DEFAULT_SSE_HEARTBEAT_SECS: u64 = 15;
pub const DEFAULT_SSE_RETRY_MS: u64 = 3_000;
/// Open event streams per place on one node: a few tabs plus the app.
pub const DEFAULT_SSE_MAX_STREAMS_PER_PLACE: usize = 4;
/// Open event streams per client address (IPv4, or IPv6 /64) on one node:
/// sized for a carrier NAT, where thousands of phones share one address.
pub const DEFAULT_SSE_MAX_STREAMS_PER_CLIENT: usize = 200;
/// Open connections per listener; beyond it new ones are closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Request head cap (HTTP/1 read buffer, HTTP/2 header list).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Connections the kernel queues for `accept` per listener (Linux caps it
/// at `net.core.somaxconn`). Larger than the usual 511 or 1024: at an
/// on-sale's opening, connection attempts beyond it are dropped and each
/// client retries after 1, 3, 7, 15… seconds.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// hyper refuses an HTTP/1 read buffer smaller than this.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
pub const DEFAULT_JOINS_PER_MIN_PER_CLIENT: u32 = 30;
pub const DEFAULT_JOIN_BURST: u32 = 10;
pub const MIN_SECRET_BYTES: usize = 32;
/// Admin tokens shorter than this are refused when the admin listener is not loopback.
pub const MIN_EXPOSED_ADMIN_TOKEN_BYTES: usize = 24;

/// One validation problem: which field, and what would be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse: {0}")]
    Syntax(String),
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// The validated configuration. Everything downstream uses these types.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_public: SocketAddr,
    pub listen_admin: SocketAddr,
    pub admin_token: String,
    pub signing_keys: Vec<SigningKey>,
    pub queue_token_ttl: Duration,
    pub store: StoreConfig,
    pub proxy: ProxyConfig,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub sse: SseConfig,
    /// Per-connection limits, the same on both listeners.
    pub connections: ConnectionConfig,
    /// `Some`: the public listener speaks TLS only.
    pub tls: Option<TlsConfig>,
    /// `Some`: proxied requests of admitted fans carry a signed admission.
    pub admission: Option<AdmissionConfig>,
    pub limits: LimitsConfig,
    pub rooms: Vec<RoomConfig>,
}

/// `[admission]`: the checkout's proof that a request comes from a fan
/// who waited (see `admission`).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// The tokens' `iss`.
    pub issuer: String,
    pub ttl_secs: u64,
    /// Read at validation: `WAITROOM_ADMISSION_KEY` first, then the file's.
    /// Empty: with the embedded store, a key made once in its directory.
    pub keys: Vec<crate::admission::AdmissionKey>,
}

/// The admission tokens' lifetime when `[admission] ttl_secs` is not set.
pub const DEFAULT_ADMISSION_TTL_SECS: u64 = 600;

/// Certificate and key files of the public listener (reloaded on SIGHUP).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// What one connection may cost the gateway.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Open connections per listener; beyond it new ones are accepted and closed.
    pub max_connections: usize,
    /// Time to send a request head (and, with TLS, to finish the handshake).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving this long is closed.
    pub idle_timeout: Duration,
    /// Cap on a request head: HTTP/1 read buffer and HTTP/2 header list size.
    pub max_header_bytes: usize,
    /// The kernel's accept queue per listener.
    pub listen_backlog: u32,
}

/// Abuse limits on issuing places.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// New places per minute per client address (IPv4, or IPv6 /64); 0 turns it off.
    pub joins_per_min_per_client: u32,
    /// How many new places a client may take at once before the rate applies.
    pub join_burst: u32,
}

/// Server-Sent Events limits and timing.
#[derive(Debug, Clone)]
pub struct SseConfig {
    /// Concurrent event streams per node; beyond it: 503 with Retry-After.
    pub max_connections: usize,
    /// Open streams per place per node; a new one beyond it supersedes the oldest.
    pub max_streams_per_place: usize,
    /// Open streams per client address per node; beyond it: 429 with Retry-After.
    pub max_streams_per_client: usize,
    /// Comment lines this often keep intermediaries from cutting idle streams.
    pub heartbeat: Duration,
    /// The `retry:` reconnect hint sent to clients.
    pub retry_ms: u64,
}

#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
        seq_block: u64,
    },
    /// One queue shared by every replica through Redis (see `store::redis`).
    Redis {
        url: String,
        key_prefix: String,
        on_failure: OnStoreFailure,
        /// How long a replica's drip lease lasts without renewal: the
        /// longest admission pause when the replica driving the drip dies.
        lease_ms: u64,
        /// The primary found (and followed across failovers) through
        /// Sentinel, instead of `url`.
        sentinel: Option<SentinelConfig>,
    },
}

/// `[store] sentinels` and `master_name`: a Redis primary with replicas,
/// watched by Sentinel.
#[derive(Clone, PartialEq)]
pub struct SentinelConfig {
    /// `(host, port)` of each sentinel.
    pub sentinels: Vec<(String, u16)>,
    pub master_name: String,
    /// The Redis primary's password (`AUTH`), if it needs one.
    pub password: Option<String>,
    /// The sentinels' own password, if they need one.
    pub sentinel_password: Option<String>,
}

/// Never the passwords.
impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .finish_non_exhaustive()
    }
}

/// What the gateway does while the shared store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreFailure {
    /// Waiting fans keep their page and last position; nobody new is admitted.
    Hold,
    /// Requests pass straight to the upstream (no queue) until it is back.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub default_upstream: Option<Upstream>,
    pub trusted_proxies: Vec<IpNet>,
    /// `https` when the public URL says so: cookies get `Secure`.
    pub public_https: bool,
    /// The public URL's origin (`scheme://host[:port]`, normalised by
    /// `csrf::normalize_origin`): browsers posting from it are this site.
    pub public_origin: Option<String>,
    /// Other origins whose pages may post to the fan endpoints (`csrf`).
    pub allowed_origins: Vec<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// How long the drip holds after the room's upstream failed.
    pub upstream_hold: Duration,
    /// Extra roots for `https://` upstreams; empty: the system's roots.
    pub upstream_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The public listener speaks TLS: `X-Forwarded-Proto: https` upstream.
    pub listener_tls: bool,
}

/// An upstream origin: scheme + authority, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: hyper::http::uri::Scheme,
    pub authority: hyper::http::uri::Authority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    /// Every arrival takes a place and waits for the drip.
    Always,
    /// Arrivals go straight in while there is room under `max_active` and the rate.
    OverCapacity,
}

#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub id: String,
    pub title: String,
    pub upstream: Upstream,
    pub host: Option<String>,
    pub path_prefix: String,
    /// The admission tokens' `aud` for this room's checkout (default: the
    /// room id).
    pub admission_audience: String,
    pub exempt_paths: Vec<String>,
    pub admit_rate_per_min: u64,
    pub session_secs: u64,
    pub session_max_secs: u64,
    pub max_active: Option<u64>,
    pub queue: QueueMode,
    pub claim_grace_secs: u64,
    pub abandon_after_secs: u64,
    pub rejoin_secs: u64,
    /// A platform's waiting page (file contents), placeholders as in `page::DEFAULT_TEMPLATE`.
    pub page_template: Option<String>,
    /// Scheduled opening (Unix seconds): arrivals before it form a shuffled pre-queue.
    pub opens_at: Option<u64>,
    /// Scheduled closing (Unix seconds).
    pub closes_at: Option<u64>,
    /// What closed rooms tell fans (sold out, …).
    pub closed_message: String,
    /// What an access token is bound to besides the visitor id.
    pub access_binding: crate::binding::AccessBinding,
    /// Proof-of-work difficulty for a new place (0 = off), see `pow`.
    pub pow_bits: u8,
    /// Tickets a buyer takes on average: with the stock, whether the line
    /// ahead of a fan may buy everything first.
    pub tickets_per_order: u64,
    /// Admission that follows the checkout's latency, if a target is set.
    pub capacity: Option<CapacityConfig>,
}

/// A room's checkout-health controller (`upstream_target_p95_ms`): rooms
/// naming the same `capacity_group` share one checkout and one controller.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityConfig {
    /// The room id unless the room names a group.
    pub group: String,
    pub settings: crate::capacity::CapacitySettings,
}

impl Config {
    pub fn load(path: &std::path::Path, env: &EnvOverrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        Config::from_toml_str_at(&text, env, base)
    }

    /// Parses and validates; relative paths are taken from the working directory.
    pub fn from_toml_str(text: &str, env: &EnvOverrides) -> Result<Config, ConfigError> {
        Config::from_toml_str_at(text, env, std::path::Path::new("."))
    }

    /// Parses and validates; relative paths (`page_template`, `tls.*`,
    /// `proxy.upstream_ca`) are taken from `base` (the config file's directory).
    pub fn from_toml_str_at(
        text: &str,
        env: &EnvOverrides,
        base: &std::path::Path,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        validate::validate(raw, env, base)
    }
}
