//! `[server]`: shutdown, log format, and what one connection may cost.

use std::time::Duration;

use super::Problems;
use crate::config::raw::RawServer;
use crate::config::{
    ConnectionConfig, DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS,
    DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_SHUTDOWN_GRACE_SECS, LogFormat, MIN_MAX_HEADER_BYTES,
};

/// The `[server]` table, which `Config` keeps as three fields.
pub(super) struct Server {
    pub(super) shutdown_grace: Duration,
    pub(super) log_format: LogFormat,
    pub(super) connections: ConnectionConfig,
}

pub(super) fn check(server: &RawServer, problems: &mut Problems) -> Server {
    let shutdown_grace_secs = server
        .shutdown_grace_secs
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
    if shutdown_grace_secs > 3600 {
        problems.push("server.shutdown_grace_secs", "must be at most 3600".into());
    }
    let log_format = match server.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            problems.push(
                "server.log_format",
                format!("unknown format {other:?}; expected \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };

    let max_connections = server.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=10_000_000).contains(&max_connections) {
        problems.push(
            "server.max_connections",
            "must be between 1 and 10000000".into(),
        );
    }
    let header_read_timeout_secs = server
        .header_read_timeout_secs
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_SECS);
    if !(1..=300).contains(&header_read_timeout_secs) {
        problems.push(
            "server.header_read_timeout_secs",
            "must be between 1 and 300".into(),
        );
    }
    let idle_timeout_secs = server
        .idle_timeout_secs
        .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
    if !(1..=3600).contains(&idle_timeout_secs) {
        problems.push(
            "server.idle_timeout_secs",
            "must be between 1 and 3600".into(),
        );
    }
    let max_header_bytes = server.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(MIN_MAX_HEADER_BYTES..=1024 * 1024).contains(&max_header_bytes) {
        problems.push(
            "server.max_header_bytes",
            format!("must be between {MIN_MAX_HEADER_BYTES} and 1048576"),
        );
    }
    let listen_backlog = server.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG);
    if !(1..=65_535).contains(&listen_backlog) {
        problems.push(
            "server.listen_backlog",
            "must be between 1 and 65535".into(),
        );
    }

    Server {
        shutdown_grace: Duration::from_secs(shutdown_grace_secs),
        log_format,
        connections: ConnectionConfig {
            max_connections,
            header_read_timeout: Duration::from_secs(header_read_timeout_secs),
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            max_header_bytes,
            listen_backlog,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{GOOD, problems};
    use crate::config::{
        Config, DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
        EnvOverrides,
    };

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
}
