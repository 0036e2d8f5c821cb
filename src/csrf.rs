//! Cross-site requests: which requests may change a fan's state.
//!
//! A browser sends a top-level form POST to any site with that site's
//! cookies only when they allow it; ours are `SameSite=Lax`, so a page on
//! another site that posts to `/_waitroom/join` arrives *without* the fan's
//! place, and the answer's `Set-Cookie` would still replace it. Every
//! state-changing endpoint therefore asks [`check`] first:
//!
//! ```text
//!   Sec-Fetch-Site (set by the browser, not by page scripts)
//!     same-origin | none (typed, bookmarked) ─────────────→ ok
//!     same-site | cross-site ── Origin in allowed_origins → ok, else refused
//!     anything else ──────────────────────────────────────→ refused
//!   no Sec-Fetch-Site (older browsers): Origin
//!     this request's own origin or proxy.public_url ──────→ ok
//!     in proxy.allowed_origins ───────────────────────────→ ok
//!     null, or any other ─────────────────────────────────→ refused
//!   neither header (apps, curl, servers) ─────────────────→ ok
//! ```
//!
//! Sibling subdomains (`same-site`) are refused too unless listed: on
//! shared-suffix hosting a "sibling" may belong to someone else, and the
//! fan's cookies would reach us from it.

use hyper::header::{self, HeaderMap};

/// Why a request was taken for a cross-site one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CrossSite {
    #[error("this endpoint takes requests only from this site's own pages (Sec-Fetch-Site: {0})")]
    FetchSite(&'static str),
    #[error("this endpoint takes requests only from this site's own pages (Origin: null)")]
    NullOrigin,
    #[error(
        "this endpoint takes requests only from this site's own pages (Origin is another site)"
    )]
    ForeignOrigin,
}

impl CrossSite {
    /// The metric / log label.
    pub fn label(self) -> &'static str {
        match self {
            CrossSite::FetchSite("same-site") => "same_site",
            CrossSite::FetchSite("cross-site") => "cross_site",
            CrossSite::FetchSite(_) => "fetch_site_unknown",
            CrossSite::NullOrigin => "null_origin",
            CrossSite::ForeignOrigin => "foreign_origin",
        }
    }
}

/// What the gateway knows about its own origin for one request.
#[derive(Debug, Clone, Copy)]
pub struct OwnSite<'a> {
    /// The fan reached us over https (TLS listener, `public_url`, or a
    /// trusted `X-Forwarded-Proto`).
    pub https: bool,
    /// The request's `Host` header, or its URI authority (HTTP/2).
    pub host: Option<&'a str>,
    /// `proxy.public_url`'s origin, normalised by [`normalize_origin`].
    pub public_origin: Option<&'a str>,
    /// `proxy.allowed_origins`, normalised by [`normalize_origin`].
    pub allowed: &'a [String],
}

/// The request's host as the client addressed it: `Host`, else the URI's
/// authority (HTTP/2 sends `:authority` instead of `Host`).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a hyper::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// `Ok` unless the request comes from another site's page (module docs).
pub fn check(headers: &HeaderMap, own: &OwnSite<'_>) -> Result<(), CrossSite> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    let allowed = |origin: &str| normalize_origin(origin).is_some_and(|o| own.allowed.contains(&o));
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => Ok(()),
            b"same-site" | b"cross-site" if origin.is_some_and(allowed) => Ok(()),
            b"same-site" => Err(CrossSite::FetchSite("same-site")),
            b"cross-site" => Err(CrossSite::FetchSite("cross-site")),
            _ => Err(CrossSite::FetchSite("an unknown value")),
        };
    }
    let Some(origin) = origin else {
        return Ok(());
    };
    if origin.trim() == "null" {
        return Err(CrossSite::NullOrigin);
    }
    let Some(origin) = normalize_origin(origin) else {
        return Err(CrossSite::ForeignOrigin);
    };
    let scheme = if own.https { "https" } else { "http" };
    let own_origin = own
        .host
        .and_then(|h| normalize_origin(&format!("{scheme}://{h}")));
    if own_origin.as_deref() == Some(origin.as_str())
        || own.public_origin == Some(origin.as_str())
        || own.allowed.contains(&origin)
    {
        Ok(())
    } else {
        Err(CrossSite::ForeignOrigin)
    }
}

/// `scheme://host[:port]` lowercased, without the scheme's default port;
/// `None` for anything that is not an http(s) origin (a path other than
/// `/`, a query, user info, an empty host).
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim();
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    if !authority.starts_with('[') && authority.matches(':').count() > 1 {
        // An IPv6 literal without brackets is not an origin.
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const OWN: OwnSite<'static> = OwnSite {
        https: false,
        host: Some("127.0.0.1:8080"),
        public_origin: Some("https://tickets.example"),
        allowed: &[],
    };

    #[test]
    fn fetch_metadata_decides_when_present() {
        for ok in ["same-origin", "none"] {
            assert_eq!(check(&headers(&[("sec-fetch-site", ok)]), &OWN), Ok(()));
        }
        // Even with a matching Origin: the browser's own word wins.
        let h = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(check(&h, &OWN), Err(CrossSite::FetchSite("cross-site")));
        let h = headers(&[("sec-fetch-site", "same-site")]);
        assert_eq!(check(&h, &OWN), Err(CrossSite::FetchSite("same-site")));
        let h = headers(&[("sec-fetch-site", "bogus")]);
        assert!(check(&h, &OWN).is_err());
    }

    #[test]
    fn listed_sibling_origins_may_post() {
        let allowed = vec!["https://www.example.com".to_string()];
        let own = OwnSite {
            allowed: &allowed,
            ..OWN
        };
        let h = headers(&[
            ("sec-fetch-site", "same-site"),
            ("origin", "https://WWW.example.com:443"),
        ]);
        assert_eq!(check(&h, &own), Ok(()));
        let h = headers(&[
            ("sec-fetch-site", "same-site"),
            ("origin", "https://shop.example.com"),
        ]);
        assert!(check(&h, &own).is_err());
    }

    #[test]
    fn without_fetch_metadata_the_origin_must_be_ours() {
        assert_eq!(check(&HeaderMap::new(), &OWN), Ok(()));
        for ok in [
            "http://127.0.0.1:8080",
            "HTTP://127.0.0.1:8080",
            "https://tickets.example",
            "https://tickets.example:443",
        ] {
            assert_eq!(check(&headers(&[("origin", ok)]), &OWN), Ok(()), "{ok}");
        }
        assert_eq!(
            check(&headers(&[("origin", "null")]), &OWN),
            Err(CrossSite::NullOrigin)
        );
        for bad in [
            "http://evil.test",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8080.evil.test",
            "http://tickets.example",
            "",
        ] {
            assert_eq!(
                check(&headers(&[("origin", bad)]), &OWN),
                Err(CrossSite::ForeignOrigin),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_ports_are_the_same_origin() {
        let own = OwnSite {
            https: true,
            host: Some("tickets.example:443"),
            public_origin: None,
            allowed: &[],
        };
        assert_eq!(
            check(&headers(&[("origin", "https://tickets.example")]), &own),
            Ok(())
        );
        assert_eq!(
            normalize_origin("http://[::1]:80/").as_deref(),
            Some("http://[::1]")
        );
        for bad in ["ftp://x", "https://", "https://a/b", "https://u@a", "a"] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }
}
