//! Small HTTP helpers shared by the gateway's handlers: the body type,
//! response builders, and parsers for cookies and queries. Parsers return
//! typed errors; nothing here panics on client input.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

/// The body of every response the gateway sends (its own or the upstream's).
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Our own responses are never cached: positions and sessions are per fan.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    response(status, "application/json", body)
}

/// A page the gateway renders itself, with its security headers: the CSP
/// (see [`crate::page::content_security_policy`]), no framing, and no
/// referrer to other origins. `same-origin` rather than `no-referrer`:
/// under `no-referrer` a browser sends `Origin: null` with the page's own
/// form POSTs (the "join again" button), which a browser without
/// `Sec-Fetch-Site` could then not tell from another site's (see `csrf`).
pub fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut res = response(status, "text/html; charset=utf-8", body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::page::content_security_policy()),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

pub fn add_cookie(res: &mut Response<Body>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the Cookie header is not valid text")]
    CookieNotText,
    #[error("the query string is not valid UTF-8 after percent-decoding")]
    QueryNotUtf8,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
}

/// Finds a cookie by name across all `Cookie` headers. A header that is not
/// text is an error; a pair without `=` is skipped, as browsers do.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ParseError> {
    for value in headers.get_all(header::COOKIE) {
        let text = value.to_str().map_err(|_| ParseError::CookieNotText)?;
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k.trim() == name
            {
                return Ok(Some(v.trim().trim_matches('"')));
            }
        }
    }
    Ok(None)
}

/// The Bearer token of the `Authorization` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ParseError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ParseError::NotBearer)?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ParseError::NotBearer),
    }
}

/// Decoded query pairs. Invalid UTF-8 after percent-decoding is an error
/// rather than silently replaced.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ParseError> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, ParseError> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ParseError::QueryNotUtf8)
}

/// Whether the client prefers JSON (apps) over HTML (browsers).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_headers_and_junk_pairs_are_skipped() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; junk; b = 2"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("wr_q_demo=\"tok\""),
        );
        assert_eq!(cookie(&h, "b"), Ok(Some("2")));
        assert_eq!(cookie(&h, "wr_q_demo"), Ok(Some("tok")));
        assert_eq!(cookie(&h, "missing"), Ok(None));
    }

    #[test]
    fn non_text_cookie_header_is_an_error() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_bytes(b"a=\xff").unwrap());
        assert_eq!(cookie(&h, "a"), Err(ParseError::CookieNotText));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Ok(Some("abc")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), Err(ParseError::NotBearer));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), Err(ParseError::NotBearer));
    }

    #[test]
    fn query_decoding_refuses_invalid_utf8() {
        assert_eq!(
            query_pairs(Some("room=demo&next=%2Fa%20b&flag")).unwrap(),
            vec![
                ("room".into(), "demo".into()),
                ("next".into(), "/a b".into()),
                ("flag".into(), "".into())
            ]
        );
        assert_eq!(query_pairs(Some("room=%ff")), Err(ParseError::QueryNotUtf8));
    }
}
