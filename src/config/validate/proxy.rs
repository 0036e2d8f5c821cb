//! `[proxy]`: the upstream side (default upstream, timeouts, CA roots) and
//! what the gateway believes about its public face (trusted proxies, public
//! URL, allowed origins).

use std::path::Path;
use std::time::Duration;

use hyper::Uri;
use ipnet::IpNet;

use super::Problems;
use crate::config::raw::RawProxy;
use crate::config::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_RESPONSE_TIMEOUT_SECS, DEFAULT_UPSTREAM_HOLD_SECS,
    ProxyConfig,
};

/// The proxy settings. `tls_listener`: the file has a `[tls]` section, so
/// fans use https (cookies get `Secure`) and upstreams are told so; if that
/// section does not validate there is no `Config` at all.
pub(super) fn check(
    proxy: &RawProxy,
    tls_listener: bool,
    base: &Path,
    problems: &mut Problems,
) -> ProxyConfig {
    let default_upstream = proxy
        .default_upstream
        .as_deref()
        .and_then(|u| super::upstream(u, "proxy.default_upstream", problems));
    let mut trusted_proxies = Vec::new();
    for (i, t) in proxy.trusted_proxies.iter().enumerate() {
        match parse_net(t) {
            Some(net) => trusted_proxies.push(net),
            None => problems.push(
                &format!("proxy.trusted_proxies[{i}]"),
                format!("{t:?} is not an IP address or CIDR network (e.g. \"10.0.0.0/8\")"),
            ),
        }
    }
    let public_https = match proxy.public_url.as_deref() {
        None => false,
        Some(u) => match u.parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => true,
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => false,
            _ => {
                problems.push(
                    "proxy.public_url",
                    format!("{u:?} is not an absolute http:// or https:// URL"),
                );
                false
            }
        },
    };
    let public_origin = proxy
        .public_url
        .as_deref()
        .and_then(|u| u.parse::<Uri>().ok())
        .and_then(|uri| {
            let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
            crate::csrf::normalize_origin(&format!("{scheme}://{authority}"))
        });
    let mut allowed_origins = Vec::new();
    for (i, o) in proxy.allowed_origins.iter().enumerate() {
        match crate::csrf::normalize_origin(o) {
            Some(origin) => allowed_origins.push(origin),
            None => problems.push(
                &format!("proxy.allowed_origins[{i}]"),
                format!(
                    "{o:?} is not an origin like \"https://www.example.com\" (scheme and host, no path)"
                ),
            ),
        }
    }
    let connect_timeout_ms = proxy
        .connect_timeout_ms
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    if !(1..=60_000).contains(&connect_timeout_ms) {
        problems.push(
            "proxy.connect_timeout_ms",
            "must be between 1 and 60000".into(),
        );
    }
    let response_timeout_secs = proxy
        .response_timeout_secs
        .unwrap_or(DEFAULT_RESPONSE_TIMEOUT_SECS);
    if !(1..=3600).contains(&response_timeout_secs) {
        problems.push(
            "proxy.response_timeout_secs",
            "must be between 1 and 3600".into(),
        );
    }
    let upstream_hold_secs = proxy
        .upstream_hold_secs
        .unwrap_or(DEFAULT_UPSTREAM_HOLD_SECS);
    if upstream_hold_secs > 600 {
        problems.push("proxy.upstream_hold_secs", "must be at most 600".into());
    }
    let upstream_ca = match &proxy.upstream_ca {
        None => Vec::new(),
        Some(path) => match crate::certs::load_ca_certs(&base.join(path)) {
            Ok(certs) => certs,
            Err(e) => {
                problems.push("proxy.upstream_ca", e.to_string());
                Vec::new()
            }
        },
    };
    ProxyConfig {
        default_upstream,
        trusted_proxies,
        // A TLS listener means fans use https: cookies get `Secure`.
        public_https: public_https || tls_listener,
        public_origin,
        allowed_origins,
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        response_timeout: Duration::from_secs(response_timeout_secs),
        upstream_hold: Duration::from_secs(upstream_hold_secs),
        upstream_ca,
        listener_tls: tls_listener,
    }
}

/// A CIDR network, or a single address as its own network.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, problems};
    use crate::config::{
        Config, DEFAULT_SSE_MAX_STREAMS_PER_CLIENT, DEFAULT_SSE_MAX_STREAMS_PER_PLACE, EnvOverrides,
    };

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
}
