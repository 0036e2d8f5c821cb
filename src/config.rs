//! Configuration: raw TOML → validated [`Config`], parsed once at start-up.
//!
//! The raw structs mirror the file (`deny_unknown_fields`, so a typo is an
//! error, never a silent default). [`Config::from_toml_str`] applies the
//! `WAITROOM_*` environment overrides and validates everything at once,
//! returning every problem with the field it concerns.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;
use ipnet::IpNet;
use serde::Deserialize;

/// How long a drip lease lasts by default (see `shared`).
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

// ---------------------------------------------------------------- raw file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListen,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    sse: RawSse,
    tls: Option<RawTls>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    rooms: Vec<RawRoom>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    joins_per_min_per_client: Option<u32>,
    join_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSse {
    max_connections: Option<usize>,
    max_streams_per_place: Option<usize>,
    max_streams_per_client: Option<usize>,
    heartbeat_secs: Option<u64>,
    retry_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    public: String,
    admin: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    #[serde(default)]
    keys: Vec<RawKey>,
    queue_token_ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: String,
    secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    path: Option<String>,
    seq_block: Option<u64>,
    url: Option<String>,
    key_prefix: Option<String>,
    on_store_failure: Option<String>,
    lease_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    default_upstream: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    public_url: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    connect_timeout_ms: Option<u64>,
    response_timeout_secs: Option<u64>,
    upstream_hold_secs: Option<u64>,
    upstream_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    shutdown_grace_secs: Option<u64>,
    log_format: Option<String>,
    max_connections: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    listen_backlog: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoom {
    id: String,
    title: Option<String>,
    upstream: String,
    host: Option<String>,
    path_prefix: Option<String>,
    #[serde(default)]
    exempt_paths: Vec<String>,
    admit_rate_per_min: u64,
    session_secs: Option<u64>,
    session_max_secs: Option<u64>,
    max_active: Option<u64>,
    queue: Option<String>,
    claim_grace_secs: Option<u64>,
    abandon_after_secs: Option<u64>,
    rejoin_secs: Option<u64>,
    page_template: Option<String>,
    opens_at: Option<String>,
    closes_at: Option<String>,
    closed_message: Option<String>,
    access_binding: Option<String>,
    pow_bits: Option<u8>,
}

// ---------------------------------------------------------- validated types

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
    pub limits: LimitsConfig,
    pub rooms: Vec<RoomConfig>,
}

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
    /// One queue shared by every replica through Redis (see `shared`).
    Redis {
        url: String,
        key_prefix: String,
        on_failure: OnStoreFailure,
        /// How long a replica's drip lease lasts without renewal: the
        /// longest admission pause when the replica driving the drip dies.
        lease_ms: u64,
    },
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
}

/// Environment overrides, read in one place.
#[derive(Debug, Default, Clone)]
pub struct EnvOverrides {
    pub admin_token: Option<String>,
    pub signing_key: Option<String>,
    pub signing_kid: Option<String>,
}

impl EnvOverrides {
    pub fn from_process_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        EnvOverrides {
            admin_token: get("WAITROOM_ADMIN_TOKEN"),
            signing_key: get("WAITROOM_SIGNING_KEY"),
            signing_kid: get("WAITROOM_SIGNING_KID"),
        }
    }
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
        validate(raw, env, base)
    }
}

fn validate(
    raw: RawConfig,
    env: &EnvOverrides,
    base: &std::path::Path,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, reason: String| {
        problems.push(ConfigProblem {
            field: field.to_string(),
            reason,
        })
    };

    let listen_public = parse_addr(&raw.listen.public, "listen.public", &mut problem);
    let listen_admin = parse_addr(&raw.listen.admin, "listen.admin", &mut problem);
    if let (Some(p), Some(a)) = (listen_public, listen_admin)
        && p == a
        && p.port() != 0
    {
        problem(
            "listen.admin",
            "must differ from listen.public: the admin API never shares the public listener".into(),
        );
    }

    let admin_token = env
        .admin_token
        .clone()
        .or(raw.admin.token)
        .unwrap_or_default();
    if admin_token.trim().is_empty() {
        problem(
            "admin.token",
            "is required (or set WAITROOM_ADMIN_TOKEN)".into(),
        );
    } else if let Some(a) = listen_admin
        && !a.ip().is_loopback()
        && admin_token.len() < MIN_EXPOSED_ADMIN_TOKEN_BYTES
    {
        problem(
            "admin.token",
            format!(
                "must be at least {MIN_EXPOSED_ADMIN_TOKEN_BYTES} bytes when listen.admin is not a loopback address"
            ),
        );
    }

    let mut signing_keys = Vec::new();
    if let Some(secret) = &env.signing_key {
        signing_keys.push(SigningKey {
            kid: env.signing_kid.clone().unwrap_or_else(|| "env".into()),
            secret: secret.as_bytes().to_vec(),
        });
    }
    for (i, k) in raw.signing.keys.iter().enumerate() {
        signing_keys.push(SigningKey {
            kid: k.kid.clone(),
            secret: k.secret.as_bytes().to_vec(),
        });
        let field = format!("signing.keys[{i}]");
        if k.kid.is_empty() || k.kid.len() > 64 {
            problem(&format!("{field}.kid"), "must be 1 to 64 characters".into());
        }
    }
    if signing_keys.is_empty() {
        problem(
            "signing.keys",
            "at least one key is required (or set WAITROOM_SIGNING_KEY)".into(),
        );
    }
    let mut kids = HashSet::new();
    for (i, k) in signing_keys.iter().enumerate() {
        if k.secret.len() < MIN_SECRET_BYTES {
            problem(
                &format!("signing.keys[{i}].secret"),
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (kid {:?} has {})",
                    k.kid,
                    k.secret.len()
                ),
            );
        }
        if !kids.insert(k.kid.clone()) {
            problem(
                &format!("signing.keys[{i}].kid"),
                format!("duplicate kid {:?}", k.kid),
            );
        }
    }
    let queue_token_ttl_secs = raw
        .signing
        .queue_token_ttl_secs
        .unwrap_or(DEFAULT_QUEUE_TOKEN_TTL_SECS);
    if queue_token_ttl_secs < 3600 {
        problem(
            "signing.queue_token_ttl_secs",
            "must be at least 3600: a fan must never be dropped from the line for waiting long"
                .into(),
        );
    }

    let store = match raw.store.kind.as_deref().unwrap_or("embedded") {
        "embedded" => {
            let seq_block = raw.store.seq_block.unwrap_or(DEFAULT_SEQ_BLOCK);
            if !(1..=1_000_000).contains(&seq_block) {
                problem("store.seq_block", "must be between 1 and 1000000".into());
            }
            let path = raw
                .store
                .path
                .clone()
                .unwrap_or_else(|| "./waitroom-state".into());
            if path.is_empty() {
                problem("store.path", "must not be empty".into());
            }
            for (field, set) in [
                ("store.url", raw.store.url.is_some()),
                ("store.key_prefix", raw.store.key_prefix.is_some()),
                (
                    "store.on_store_failure",
                    raw.store.on_store_failure.is_some(),
                ),
                ("store.lease_ms", raw.store.lease_ms.is_some()),
            ] {
                if set {
                    problem(field, "only applies to kind = \"redis\"".into());
                }
            }
            StoreConfig::Embedded {
                path: PathBuf::from(path),
                seq_block,
            }
        }
        "redis" => {
            let url = raw
                .store
                .url
                .clone()
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                problem(
                    "store.url",
                    format!("{url:?} is not a Redis URL (redis://, rediss:// or unix://)"),
                );
            }
            let key_prefix = raw
                .store
                .key_prefix
                .clone()
                .unwrap_or_else(|| "waitroom".into());
            if key_prefix.is_empty()
                || key_prefix.len() > 64
                || !key_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
            {
                problem(
                    "store.key_prefix",
                    "must be 1 to 64 characters of a-z A-Z 0-9 - _ : .".into(),
                );
            }
            let on_failure = match raw.store.on_store_failure.as_deref().unwrap_or("hold") {
                "hold" => OnStoreFailure::Hold,
                "open" => OnStoreFailure::Open,
                other => {
                    problem(
                        "store.on_store_failure",
                        format!("unknown value {other:?}; expected \"hold\" or \"open\""),
                    );
                    OnStoreFailure::Hold
                }
            };
            let lease_ms = raw.store.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
            if !(500..=60_000).contains(&lease_ms) {
                problem("store.lease_ms", "must be between 500 and 60000".into());
            }
            for (field, set) in [
                ("store.path", raw.store.path.is_some()),
                ("store.seq_block", raw.store.seq_block.is_some()),
            ] {
                if set {
                    problem(field, "only applies to kind = \"embedded\"".into());
                }
            }
            StoreConfig::Redis {
                url,
                key_prefix,
                on_failure,
                lease_ms,
            }
        }
        other => {
            problem(
                "store.kind",
                format!("unknown store kind {other:?}; expected \"embedded\" or \"redis\""),
            );
            StoreConfig::Embedded {
                path: PathBuf::new(),
                seq_block: DEFAULT_SEQ_BLOCK,
            }
        }
    };

    let default_upstream = raw
        .proxy
        .default_upstream
        .as_deref()
        .and_then(|u| parse_upstream(u, "proxy.default_upstream", &mut problem));
    let mut trusted_proxies = Vec::new();
    for (i, t) in raw.proxy.trusted_proxies.iter().enumerate() {
        match parse_net(t) {
            Some(net) => trusted_proxies.push(net),
            None => problem(
                &format!("proxy.trusted_proxies[{i}]"),
                format!("{t:?} is not an IP address or CIDR network (e.g. \"10.0.0.0/8\")"),
            ),
        }
    }
    let public_https = match raw.proxy.public_url.as_deref() {
        None => false,
        Some(u) => match u.parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => true,
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => false,
            _ => {
                problem(
                    "proxy.public_url",
                    format!("{u:?} is not an absolute http:// or https:// URL"),
                );
                false
            }
        },
    };
    let public_origin = raw
        .proxy
        .public_url
        .as_deref()
        .and_then(|u| u.parse::<Uri>().ok())
        .and_then(|uri| {
            let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
            crate::csrf::normalize_origin(&format!("{scheme}://{authority}"))
        });
    let mut allowed_origins = Vec::new();
    for (i, o) in raw.proxy.allowed_origins.iter().enumerate() {
        match crate::csrf::normalize_origin(o) {
            Some(origin) => allowed_origins.push(origin),
            None => problem(
                &format!("proxy.allowed_origins[{i}]"),
                format!(
                    "{o:?} is not an origin like \"https://www.example.com\" (scheme and host, no path)"
                ),
            ),
        }
    }
    let connect_timeout_ms = raw
        .proxy
        .connect_timeout_ms
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    if !(1..=60_000).contains(&connect_timeout_ms) {
        problem(
            "proxy.connect_timeout_ms",
            "must be between 1 and 60000".into(),
        );
    }
    let response_timeout_secs = raw
        .proxy
        .response_timeout_secs
        .unwrap_or(DEFAULT_RESPONSE_TIMEOUT_SECS);
    if !(1..=3600).contains(&response_timeout_secs) {
        problem(
            "proxy.response_timeout_secs",
            "must be between 1 and 3600".into(),
        );
    }
    let upstream_hold_secs = raw
        .proxy
        .upstream_hold_secs
        .unwrap_or(DEFAULT_UPSTREAM_HOLD_SECS);
    if upstream_hold_secs > 600 {
        problem("proxy.upstream_hold_secs", "must be at most 600".into());
    }
    let upstream_ca = match &raw.proxy.upstream_ca {
        None => Vec::new(),
        Some(path) => match crate::certs::load_ca_certs(&base.join(path)) {
            Ok(certs) => certs,
            Err(e) => {
                problem("proxy.upstream_ca", e.to_string());
                Vec::new()
            }
        },
    };

    let tls = match &raw.tls {
        None => None,
        Some(t) => {
            let tls = TlsConfig {
                cert_path: base.join(&t.cert),
                key_path: base.join(&t.key),
            };
            match crate::certs::load_certified_key(&tls.cert_path, &tls.key_path) {
                Ok(_) => Some(tls),
                Err(e) => {
                    problem(e.field(), e.to_string());
                    None
                }
            }
        }
    };
    // A TLS listener means fans use https: cookies get `Secure`.
    let public_https = public_https || raw.tls.is_some();

    let shutdown_grace_secs = raw
        .server
        .shutdown_grace_secs
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
    if shutdown_grace_secs > 3600 {
        problem("server.shutdown_grace_secs", "must be at most 3600".into());
    }
    let log_format = match raw.server.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            problem(
                "server.log_format",
                format!("unknown format {other:?}; expected \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };

    let max_connections = raw
        .server
        .max_connections
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=10_000_000).contains(&max_connections) {
        problem(
            "server.max_connections",
            "must be between 1 and 10000000".into(),
        );
    }
    let header_read_timeout_secs = raw
        .server
        .header_read_timeout_secs
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_SECS);
    if !(1..=300).contains(&header_read_timeout_secs) {
        problem(
            "server.header_read_timeout_secs",
            "must be between 1 and 300".into(),
        );
    }
    let idle_timeout_secs = raw
        .server
        .idle_timeout_secs
        .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
    if !(1..=3600).contains(&idle_timeout_secs) {
        problem(
            "server.idle_timeout_secs",
            "must be between 1 and 3600".into(),
        );
    }
    let max_header_bytes = raw
        .server
        .max_header_bytes
        .unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(MIN_MAX_HEADER_BYTES..=1024 * 1024).contains(&max_header_bytes) {
        problem(
            "server.max_header_bytes",
            format!("must be between {MIN_MAX_HEADER_BYTES} and 1048576"),
        );
    }
    let listen_backlog = raw.server.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG);
    if !(1..=65_535).contains(&listen_backlog) {
        problem(
            "server.listen_backlog",
            "must be between 1 and 65535".into(),
        );
    }

    let joins_per_min_per_client = raw
        .limits
        .joins_per_min_per_client
        .unwrap_or(DEFAULT_JOINS_PER_MIN_PER_CLIENT);
    let join_burst = raw.limits.join_burst.unwrap_or(DEFAULT_JOIN_BURST);
    if !(1..=1_000_000).contains(&join_burst) {
        problem(
            "limits.join_burst",
            "must be between 1 and 1000000 (set joins_per_min_per_client = 0 to turn the limit off)"
                .into(),
        );
    }

    let sse_max_connections = raw
        .sse
        .max_connections
        .unwrap_or(DEFAULT_SSE_MAX_CONNECTIONS);
    if !(1..=10_000_000).contains(&sse_max_connections) {
        problem(
            "sse.max_connections",
            "must be between 1 and 10000000".into(),
        );
    }
    let sse_max_streams_per_place = raw
        .sse
        .max_streams_per_place
        .unwrap_or(DEFAULT_SSE_MAX_STREAMS_PER_PLACE);
    if !(1..=10_000_000).contains(&sse_max_streams_per_place) {
        problem(
            "sse.max_streams_per_place",
            "must be between 1 and 10000000 (a fan's tabs plus the app: a handful)".into(),
        );
    }
    let sse_max_streams_per_client = raw
        .sse
        .max_streams_per_client
        .unwrap_or(DEFAULT_SSE_MAX_STREAMS_PER_CLIENT);
    if !(1..=10_000_000).contains(&sse_max_streams_per_client) {
        problem(
            "sse.max_streams_per_client",
            "must be between 1 and 10000000 (size it for a carrier NAT: many fans share one address)"
                .into(),
        );
    }
    let sse_heartbeat_secs = raw.sse.heartbeat_secs.unwrap_or(DEFAULT_SSE_HEARTBEAT_SECS);
    if !(1..=300).contains(&sse_heartbeat_secs) {
        problem("sse.heartbeat_secs", "must be between 1 and 300".into());
    }
    let sse_retry_ms = raw.sse.retry_ms.unwrap_or(DEFAULT_SSE_RETRY_MS);
    if !(100..=600_000).contains(&sse_retry_ms) {
        problem("sse.retry_ms", "must be between 100 and 600000".into());
    }

    if raw.rooms.is_empty() {
        problem("rooms", "at least one [[rooms]] entry is required".into());
    }
    let mut rooms = Vec::new();
    let mut ids = HashSet::new();
    let mut routes = HashSet::new();
    for (i, r) in raw.rooms.iter().enumerate() {
        let f = |name: &str| format!("rooms[{i}].{name}");
        let id_ok = !r.id.is_empty()
            && r.id.len() <= 48
            && r.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            problem(
                &f("id"),
                format!(
                    "{:?} must be 1-48 characters of a-z, A-Z, 0-9, '-' or '_' (it is used in cookie names)",
                    r.id
                ),
            );
        }
        if !ids.insert(r.id.clone()) {
            problem(&f("id"), format!("duplicate room id {:?}", r.id));
        }
        let upstream = parse_upstream(&r.upstream, &f("upstream"), &mut problem);
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') || path_prefix.starts_with("/_waitroom") {
            problem(
                &f("path_prefix"),
                format!("{path_prefix:?} must start with '/' and not with /_waitroom"),
            );
        } else if let Err(e) = check_route_path(&path_prefix) {
            problem(&f("path_prefix"), e);
        }
        let host = r.host.as_ref().map(|h| match crate::host::split(h) {
            Ok((name, None)) => name.to_ascii_lowercase(),
            Ok((_, Some(_))) => {
                problem(
                    &f("host"),
                    format!("{h:?} must be a host name without a port (rooms match any port)"),
                );
                h.clone()
            }
            Err(_) => {
                problem(&f("host"), format!("{h:?} is not a valid host name"));
                h.clone()
            }
        });
        // Room prefixes match ignoring case, so two rooms differing only in
        // case would protect the same route.
        if !routes.insert((host.clone(), path_prefix.to_ascii_lowercase())) {
            problem(
                &f("path_prefix"),
                format!("another room already protects {path_prefix:?} on this host"),
            );
        }
        for (j, e) in r.exempt_paths.iter().enumerate() {
            if !e.starts_with('/') {
                problem(
                    &format!("rooms[{i}].exempt_paths[{j}]"),
                    format!("{e:?} must start with '/'"),
                );
            } else if let Err(why) = check_route_path(e) {
                problem(&format!("rooms[{i}].exempt_paths[{j}]"), why);
            }
        }
        if !(1..=6_000_000).contains(&r.admit_rate_per_min) {
            problem(
                &f("admit_rate_per_min"),
                "must be between 1 and 6000000 (pause the room to stop admissions)".into(),
            );
        }
        let session_secs = r.session_secs.unwrap_or(DEFAULT_SESSION_SECS);
        if !(10..=86_400).contains(&session_secs) {
            problem(&f("session_secs"), "must be between 10 and 86400".into());
        }
        let session_max_secs = r.session_max_secs.unwrap_or(session_secs.saturating_mul(3));
        if session_max_secs < session_secs || session_max_secs > 7 * 86_400 {
            problem(
                &f("session_max_secs"),
                "must be at least session_secs and at most 604800".into(),
            );
        }
        if r.max_active == Some(0) {
            problem(
                &f("max_active"),
                "must be at least 1 (or left out for no cap)".into(),
            );
        }
        let queue = match r.queue.as_deref().unwrap_or("always") {
            "always" => QueueMode::Always,
            "over_capacity" => {
                if r.max_active.is_none() {
                    problem(
                        &f("queue"),
                        "\"over_capacity\" needs max_active: without a cap there is no capacity to be over".into(),
                    );
                }
                QueueMode::OverCapacity
            }
            other => {
                problem(
                    &f("queue"),
                    format!("unknown mode {other:?}; expected \"always\" or \"over_capacity\""),
                );
                QueueMode::Always
            }
        };
        let claim_grace_secs = r.claim_grace_secs.unwrap_or(DEFAULT_CLAIM_GRACE_SECS);
        if !(5..=3600).contains(&claim_grace_secs) {
            problem(&f("claim_grace_secs"), "must be between 5 and 3600".into());
        }
        let abandon_after_secs = r.abandon_after_secs.unwrap_or(DEFAULT_ABANDON_AFTER_SECS);
        if !(10..=86_400).contains(&abandon_after_secs) {
            problem(
                &f("abandon_after_secs"),
                "must be between 10 and 86400".into(),
            );
        }
        let rejoin_secs = r.rejoin_secs.unwrap_or(DEFAULT_REJOIN_SECS);
        if rejoin_secs > 86_400 {
            problem(&f("rejoin_secs"), "must be at most 86400".into());
        }
        let page_template = match &r.page_template {
            None => None,
            Some(path) => match std::fs::read_to_string(base.join(path)) {
                Ok(text) if text.contains("{{script}}") => Some(text),
                Ok(_) => {
                    problem(
                        &f("page_template"),
                        format!(
                            "{path:?} has no {{{{script}}}} placeholder: the page could not update or forward the fan"
                        ),
                    );
                    None
                }
                Err(e) => {
                    problem(&f("page_template"), format!("cannot read {path:?}: {e}"));
                    None
                }
            },
        };
        let mut time = |name: &str, v: &Option<String>| match v {
            None => None,
            Some(t) => match crate::rfc3339::parse(t) {
                Ok(secs) => Some(secs),
                Err(e) => {
                    problem(&f(name), e);
                    None
                }
            },
        };
        let opens_at = time("opens_at", &r.opens_at);
        let closes_at = time("closes_at", &r.closes_at);
        if let (Some(o), Some(c)) = (opens_at, closes_at)
            && c <= o
        {
            problem(&f("closes_at"), "must be after opens_at".into());
        }
        let closed_message = r
            .closed_message
            .clone()
            .unwrap_or_else(|| "This sale is closed.".into());
        if closed_message.len() > 500 {
            problem(&f("closed_message"), "must be at most 500 bytes".into());
        }
        let access_binding = match r.access_binding.as_deref() {
            None => crate::binding::AccessBinding::UserAgent,
            Some(b) => crate::binding::AccessBinding::parse(b).unwrap_or_else(|| {
                problem(
                    &f("access_binding"),
                    format!("{b:?} is not one of \"user_agent\", \"network\", \"user_agent+network\", \"none\""),
                );
                crate::binding::AccessBinding::None
            }),
        };
        let pow_bits = r.pow_bits.unwrap_or(0);
        if pow_bits > crate::pow::MAX_BITS {
            problem(
                &f("pow_bits"),
                format!(
                    "must be at most {} (0 turns proof of work off)",
                    crate::pow::MAX_BITS
                ),
            );
        }
        if let Some(upstream) = upstream {
            rooms.push(RoomConfig {
                id: r.id.clone(),
                title: r.title.clone().unwrap_or_else(|| r.id.clone()),
                upstream,
                host,
                path_prefix,
                exempt_paths: r.exempt_paths.clone(),
                admit_rate_per_min: r.admit_rate_per_min,
                session_secs,
                session_max_secs,
                max_active: r.max_active,
                queue,
                claim_grace_secs,
                abandon_after_secs,
                rejoin_secs,
                page_template,
                opens_at,
                closes_at,
                closed_message,
                access_binding,
                pow_bits,
            });
        }
    }

    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Config {
        listen_public: listen_public.expect("validated above"),
        listen_admin: listen_admin.expect("validated above"),
        admin_token,
        signing_keys,
        queue_token_ttl: Duration::from_secs(queue_token_ttl_secs),
        store,
        proxy: ProxyConfig {
            default_upstream,
            trusted_proxies,
            public_https,
            public_origin,
            allowed_origins,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            response_timeout: Duration::from_secs(response_timeout_secs),
            upstream_hold: Duration::from_secs(upstream_hold_secs),
            upstream_ca,
            listener_tls: tls.is_some(),
        },
        shutdown_grace: Duration::from_secs(shutdown_grace_secs),
        log_format,
        sse: SseConfig {
            max_connections: sse_max_connections,
            max_streams_per_place: sse_max_streams_per_place,
            max_streams_per_client: sse_max_streams_per_client,
            heartbeat: Duration::from_secs(sse_heartbeat_secs),
            retry_ms: sse_retry_ms,
        },
        connections: ConnectionConfig {
            max_connections,
            header_read_timeout: Duration::from_secs(header_read_timeout_secs),
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            max_header_bytes,
            listen_backlog,
        },
        tls,
        limits: LimitsConfig {
            joins_per_min_per_client,
            join_burst,
        },
        rooms,
    })
}

fn parse_addr(s: &str, field: &str, problem: &mut impl FnMut(&str, String)) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problem(
                field,
                format!("{s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
            );
            None
        }
    }
}

/// A room's `path_prefix` or exempt path must be written in the normal form
/// requests are decided on (see `path`), without `;` parameters (routing
/// ignores them): in any other spelling it would never match, or match
/// something other than what it says. It is refused, not rewritten, so the
/// file says what the gateway does.
fn check_route_path(value: &str) -> Result<(), String> {
    if value.contains(';') {
        return Err(format!(
            "{value:?} must not contain ';' (routing ignores ';' parameters)"
        ));
    }
    match crate::path::normalize(value) {
        Err(e) => Err(format!("{value:?}: {e}")),
        Ok(normal) if normal != value => {
            Err(format!("{value:?} is not in normal form: write {normal:?}"))
        }
        Ok(_) => Ok(()),
    }
}

fn parse_upstream(
    s: &str,
    field: &str,
    problem: &mut impl FnMut(&str, String),
) -> Option<Upstream> {
    let uri: Uri = match s.parse() {
        Ok(u) => u,
        Err(e) => {
            problem(field, format!("{s:?} is not a URL: {e}"));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        problem(
            field,
            format!("{s:?} must be an absolute URL like \"http://127.0.0.1:9090\""),
        );
        return None;
    };
    if scheme != hyper::http::uri::Scheme::HTTP && scheme != hyper::http::uri::Scheme::HTTPS {
        problem(
            field,
            format!("{s:?}: the scheme must be http:// or https://"),
        );
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        problem(
            field,
            format!("{s:?} must not have a path or query: requests keep their own path"),
        );
        return None;
    }
    Some(Upstream { scheme, authority })
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [listen]
        public = "127.0.0.1:0"
        admin = "127.0.0.1:0"
        [admin]
        token = "change-me"
        [signing]
        keys = [{ kid = "k1", secret = "0123456789abcdef0123456789abcdef" }]
        [[rooms]]
        id = "demo"
        upstream = "http://127.0.0.1:9090"
        admit_rate_per_min = 600
    "#;

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match Config::from_toml_str(text, &EnvOverrides::default()) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(GOOD, &EnvOverrides::default()).unwrap();
        let r = &c.rooms[0];
        assert_eq!(r.path_prefix, "/");
        assert_eq!(r.session_secs, DEFAULT_SESSION_SECS);
        assert_eq!(r.session_max_secs, DEFAULT_SESSION_SECS * 3);
        assert_eq!(r.queue, QueueMode::Always);
        assert_eq!(r.claim_grace_secs, DEFAULT_CLAIM_GRACE_SECS);
    }

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
    fn every_problem_is_reported_with_its_field() {
        let text = GOOD
            .replace("public = \"127.0.0.1:0\"", "public = \"nope\"")
            .replace("0123456789abcdef0123456789abcdef", "short")
            .replace(
                "admit_rate_per_min = 600",
                "admit_rate_per_min = 0\nqueue = \"over_capacity\"",
            );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert!(fields.contains(&"listen.public".to_string()), "{fields:?}");
        assert!(
            fields.contains(&"signing.keys[0].secret".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"rooms[0].admit_rate_per_min".to_string()),
            "{fields:?}"
        );
        assert!(fields.contains(&"rooms[0].queue".to_string()), "{fields:?}");
    }

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
        };
        let c = Config::from_toml_str(&text, &env).unwrap();
        assert_eq!(c.admin_token, "from-env");
        assert_eq!(c.signing_keys[0].kid, "env");
        assert!(matches!(
            Config::from_toml_str(&text, &EnvOverrides::default()),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn upstream_must_be_an_origin() {
        let text = GOOD.replace("http://127.0.0.1:9090", "http://127.0.0.1:9090/checkout");
        assert_eq!(problems(&text)[0].field, "rooms[0].upstream");
        let text = GOOD.replace("http://127.0.0.1:9090", "127.0.0.1:9090");
        assert_eq!(problems(&text)[0].field, "rooms[0].upstream");
    }

    #[test]
    fn edge_limits_have_documented_defaults_and_bad_values_name_their_field() {
        let c = Config::from_toml_str(GOOD, &EnvOverrides::default()).unwrap();
        assert_eq!(c.connections.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.connections.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(c.connections.listen_backlog, DEFAULT_LISTEN_BACKLOG);
        assert_eq!(c.limits.joins_per_min_per_client, 30);
        assert_eq!(c.limits.join_burst, 10);
        assert!(c.tls.is_none() && !c.proxy.public_https && !c.proxy.listener_tls);
        let text = format!(
            "{GOOD}\n[server]\nmax_connections = 0\nmax_header_bytes = 100\nidle_timeout_secs = 0\nlisten_backlog = 0\n[limits]\njoin_burst = 0\n"
        );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        for f in [
            "server.max_connections",
            "server.max_header_bytes",
            "server.idle_timeout_secs",
            "server.listen_backlog",
            "limits.join_burst",
        ] {
            assert!(fields.contains(&f.to_string()), "{f}: {fields:?}");
        }
    }

    #[test]
    fn https_upstreams_are_accepted_and_other_schemes_refused() {
        let text = GOOD.replace("http://127.0.0.1:9090", "https://checkout.test");
        let c = Config::from_toml_str(&text, &EnvOverrides::default()).unwrap();
        assert_eq!(c.rooms[0].upstream.scheme, hyper::http::uri::Scheme::HTTPS);
        let text = GOOD.replace("http://127.0.0.1:9090", "ftp://checkout.test");
        assert_eq!(problems(&text)[0].field, "rooms[0].upstream");
    }

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

    #[test]
    fn bad_room_id_and_duplicate_routes_are_refused() {
        let text = format!(
            "{GOOD}\n[[rooms]]\nid = \"bad id;\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 1\n"
        );
        let p = problems(&text);
        assert!(p.iter().any(|p| p.field == "rooms[1].id"), "{p:?}");
        assert!(p.iter().any(|p| p.field == "rooms[1].path_prefix"), "{p:?}");
    }

    #[test]
    fn route_paths_must_be_normal_and_hosts_are_names_without_ports() {
        let room = |extra: &str| {
            format!(
                "{GOOD}\n[[rooms]]\nid = \"r\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 1\n{extra}\n"
            )
        };
        for (extra, field) in [
            ("path_prefix = \"/shop/../admin\"", "rooms[1].path_prefix"),
            ("path_prefix = \"//shop\"", "rooms[1].path_prefix"),
            ("path_prefix = \"/%73hop\"", "rooms[1].path_prefix"),
            ("path_prefix = \"/shop;x\"", "rooms[1].path_prefix"),
            ("path_prefix = \"/a%2fb\"", "rooms[1].path_prefix"),
            (
                "exempt_paths = [\"/static/./\"]",
                "rooms[1].exempt_paths[0]",
            ),
            (
                "exempt_paths = [\"/st%61tic/\"]",
                "rooms[1].exempt_paths[0]",
            ),
            (
                "exempt_paths = [\"/static;v/\"]",
                "rooms[1].exempt_paths[0]",
            ),
            ("host = \"tickets.example:443\"", "rooms[1].host"),
            ("host = \"tickets..example\"", "rooms[1].host"),
            ("host = \"\"", "rooms[1].host"),
        ] {
            let p = problems(&room(extra));
            assert!(p.iter().any(|p| p.field == field), "{extra}: {p:?}");
        }
        let p = problems(&room("path_prefix = \"/%73hop\""));
        assert!(p[0].reason.contains("write \"/shop\""), "{p:?}");
        let text = room("host = \"Tickets.Example.\"\npath_prefix = \"/shop/\"");
        let c = Config::from_toml_str(&text, &EnvOverrides::default()).unwrap();
        assert_eq!(c.rooms[1].host.as_deref(), Some("tickets.example"));
        // Prefixes match ignoring case: two rooms differing only in case collide.
        let p = problems(&format!(
            "{}[[rooms]]\nid = \"s\"\nupstream = \"http://127.0.0.1:1\"\nadmit_rate_per_min = 1\npath_prefix = \"/SHOP/\"\n",
            room("path_prefix = \"/shop/\"")
        ));
        assert!(p.iter().any(|p| p.field == "rooms[2].path_prefix"), "{p:?}");
    }

    /// Regression (found by the property tests): a huge `session_secs`
    /// overflowed while deriving the default `session_max_secs`.
    #[test]
    fn huge_numbers_are_range_errors_not_overflows() {
        let text = GOOD.replace(
            "admit_rate_per_min = 600",
            "admit_rate_per_min = 600\nsession_secs = 18446744073709551615",
        );
        let fields: Vec<String> = problems(&text).into_iter().map(|p| p.field).collect();
        assert!(
            fields.contains(&"rooms[0].session_secs".to_string()),
            "{fields:?}"
        );
    }

    #[test]
    fn origins_and_stream_limits_are_validated_and_normalised() {
        let with = |extra: &str| GOOD.replace("        [[rooms]]", &format!("{extra}\n[[rooms]]"));
        let c = Config::from_toml_str(
            &with(
                "[proxy]\npublic_url = \"https://Tickets.Example.com:443/shop\"\n\
                 allowed_origins = [\"https://WWW.example.com/\"]",
            ),
            &EnvOverrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.proxy.public_origin.as_deref(),
            Some("https://tickets.example.com")
        );
        assert_eq!(c.proxy.allowed_origins, ["https://www.example.com"]);
        assert_eq!(
            c.sse.max_streams_per_place,
            DEFAULT_SSE_MAX_STREAMS_PER_PLACE
        );
        assert_eq!(
            c.sse.max_streams_per_client,
            DEFAULT_SSE_MAX_STREAMS_PER_CLIENT
        );
        let fields: Vec<String> = problems(&with(
            "[proxy]\nallowed_origins = [\"https://a.example/path\", \"*\"]\n\
             [sse]\nmax_streams_per_place = 0\nmax_streams_per_client = 0",
        ))
        .into_iter()
        .map(|p| p.field)
        .collect();
        assert_eq!(
            fields,
            [
                "proxy.allowed_origins[0]",
                "proxy.allowed_origins[1]",
                "sse.max_streams_per_place",
                "sse.max_streams_per_client"
            ]
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        assert!(matches!(
            Config::from_toml_str("[listen\n", &EnvOverrides::default()),
            Err(ConfigError::Syntax(_))
        ));
    }
}
