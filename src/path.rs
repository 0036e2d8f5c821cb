//! Request paths in one normal form, decided once before anything looks at
//! them.
//!
//! The gateway decides on a path (the `/_waitroom/` endpoints, the room,
//! the exempt paths) and an upstream then serves a path. If the two read the
//! same bytes differently, a request can be decided as one route and served
//! as another: `/static/../checkout/seats` passes an exempt `/static/` here
//! and is `/checkout/seats` to nginx. So the path is normalised first, the
//! decision is taken on the normal form, and the normal form is what is
//! forwarded (the query is kept byte for byte):
//!
//! ```text
//!   raw path ─→ decode %XX of unreserved characters (ALPHA DIGIT - . _ ~),
//!               upper-case the hex of every other escape
//!            ─→ resolve "." and ".." (RFC 3986 §5.2.4), collapse "//"
//!            ─→ normal path (forwarded) ─→ without ";params" (routing view)
//! ```
//!
//! What has no safe normal form is refused ([`PathError`], a 400): an
//! encoded slash inside a segment (servers disagree on whether it splits),
//! a backslash (some servers read it as `/`), an encoded NUL or control
//! character, a malformed escape, `..` that climbs above the root, and a
//! dot-segment carrying `;` parameters (`..;` is `..` to Tomcat and Spring).
//!
//! `;` parameters stay in the forwarded path, but routing looks at each
//! segment without them ([`without_params`]), as servlet containers do, so
//! `/checkout;x/seats` is in the `/checkout` room.
//!
//! A path that is already normal costs one scan and no allocation.

use std::borrow::Cow;

use hyper::Uri;

/// Why a path has no safe normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains an encoded slash (%2F) inside a segment")]
    EncodedSlash,
    #[error("the path contains a backslash (raw or %5C)")]
    Backslash,
    #[error("the path contains a control character or NUL (raw or percent-encoded)")]
    Control,
    #[error("the path contains a '%' that does not start a two-digit hex escape")]
    MalformedEscape,
    #[error("the path's '..' segments climb above the root")]
    AboveRoot,
    #[error("the path contains a '.' or '..' segment with ';' parameters")]
    DotSegmentWithParams,
}

impl PathError {
    /// The machine-readable reason (the `reason` field of the 400 answer).
    pub fn label(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::Control => "control_character",
            PathError::MalformedEscape => "malformed_escape",
            PathError::AboveRoot => "above_root",
            PathError::DotSegmentWithParams => "dot_segment_with_params",
        }
    }
}

/// The normal form of `path` (see the module docs), borrowed when `path`
/// is already normal. `*` (asterisk-form) and the empty path
/// (authority-form) are no paths to route and come back as they are.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() || path == "*" || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    rewrite(path).map(Cow::Owned)
}

/// `path` as routing and exempt matching read it: each segment without its
/// `;` parameters, and segments left empty by that dropped (servlet
/// containers read `/;x/checkout` as `/checkout`). Borrowed when there is
/// no `;`. For a normal path the result is normal too.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or("");
        if name.is_empty() {
            trailing_slash = true;
        } else {
            out.push('/');
            out.push_str(name);
            trailing_slash = false;
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether `path` lies inside the room route `prefix`, on a segment
/// boundary and ignoring ASCII case: when the gateway and an upstream that
/// ignores case disagree, the request is queued rather than let through.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    let prefix = prefix.trim_end_matches('/').as_bytes();
    let path = path.as_bytes();
    path.len() >= prefix.len()
        && path[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(path.get(prefix.len()), None | Some(b'/'))
}

/// Whether a request is inside the exempt path `exempt`: its normal path
/// (as forwarded) and its routing view must both start with it, case
/// included. Exemption lets a request past the queue, so every reading of
/// the path must agree before it applies: `/static;x/…` is not under
/// `/static/` to an upstream that keeps `;` in the name.
pub fn exempt_matches(exempt: &str, path: &str, view: &str) -> bool {
    path.starts_with(exempt) && view.starts_with(exempt)
}

/// `uri` with its path replaced by `path` (a normal form of its own path):
/// scheme, authority and query are kept byte for byte.
pub fn with_path(uri: &Uri, path: &str) -> Uri {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .expect("normalising only removes bytes or writes unreserved ones"),
    );
    Uri::from_parts(parts).expect("the same parts as a valid URI, with a path")
}

/// The unreserved characters of RFC 3986 §2.3: an escape of one of these
/// means the character itself.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// What an escape `%hi lo` stands for, or why it is refused.
fn decode_escape(hi: Option<&u8>, lo: Option<&u8>) -> Result<u8, PathError> {
    let (Some(hi), Some(lo)) = (
        hi.copied().and_then(hex_value),
        lo.copied().and_then(hex_value),
    ) else {
        return Err(PathError::MalformedEscape);
    };
    let byte = hi << 4 | lo;
    match byte {
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::Backslash),
        0x00..=0x1F | 0x7F => Err(PathError::Control),
        _ => Ok(byte),
    }
}

/// Whether a segment is `.` or `..` once its `;` parameters are removed.
fn is_dot_name(segment: &[u8]) -> bool {
    let name = segment.split(|&b| b == b';').next().unwrap_or(&[]);
    name == b"." || name == b".."
}

/// The fast check: true only if [`rewrite`] would return `path` unchanged.
/// Anything it is unsure of goes to [`rewrite`], which decides.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    let mut i = 1;
    while i <= bytes.len() {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                let segment = &bytes[segment_start..i];
                // An empty segment is fine only at the very end ("/a/").
                if (segment.is_empty() && b.is_some()) || is_dot_name(segment) {
                    return false;
                }
                segment_start = i + 1;
            }
            Some(b'%') => {
                let (hi, lo) = (bytes.get(i + 1), bytes.get(i + 2));
                if hi.is_some_and(u8::is_ascii_lowercase) || lo.is_some_and(u8::is_ascii_lowercase)
                {
                    return false;
                }
                match decode_escape(hi, lo) {
                    Ok(c) if !is_unreserved(c) => i += 2,
                    _ => return false,
                }
            }
            Some(b'\\' | 0x00..=0x1F | 0x7F) => return false,
            Some(_) => {}
        }
        i += 1;
    }
    true
}

/// The full normalisation, for a path [`is_normal`] did not accept.
fn rewrite(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // 1. Escapes. Decoding yields no '/' and no '%', so segment boundaries
    //    and the remaining escapes are exactly those of the input.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let c = decode_escape(bytes.get(i + 1), bytes.get(i + 2))?;
                if is_unreserved(c) {
                    decoded.push(c);
                } else {
                    decoded.push(b'%');
                    decoded.extend_from_slice(&bytes[i + 1..i + 3]);
                    let n = decoded.len();
                    decoded[n - 2..].make_ascii_uppercase();
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x1F | 0x7F => return Err(PathError::Control),
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. Dot-segments and empty segments. `segments` holds the output;
    //    the trailing slash survives when the last input segment is empty,
    //    "." or ".." (RFC 3986 §5.2.4: "/a/b/.." is "/a/").
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split(|&b| b == b'/') {
        match segment {
            b"" | b"." => trailing_slash = true,
            b".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            _ if is_dot_name(segment) => return Err(PathError::DotSegmentWithParams),
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Only ASCII bytes were replaced or removed whole: still UTF-8.
    Ok(String::from_utf8(out).expect("normalising keeps UTF-8 sequences whole"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/checkout",
            "/checkout/",
            "/checkout/seats?x",
            "/a/b.c/..d/.e/d..",
            "/caf%C3%A9/%20x",
            "/a;x/b;y=1",
            "/~user/%25",
            "/\"{}\"",
            "*",
            "",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p:?}"
            );
        }
    }

    #[test]
    fn dot_segments_resolve_as_rfc_3986_says() {
        for (raw, normal) in [
            ("/checkout/static/../seats", "/checkout/seats"),
            ("/static/../checkout/seats", "/checkout/seats"),
            ("/./checkout/seats", "/checkout/seats"),
            ("/x/../checkout/seats", "/checkout/seats"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/../", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a/./b/./", "/a/b/"),
            ("/a;p/../b", "/b"),
        ] {
            assert_eq!(norm(raw), Ok(normal.into()), "{raw:?}");
        }
    }

    #[test]
    fn encoded_dots_are_dots() {
        for raw in [
            "/checkout/static/%2e%2e/seats",
            "/checkout/static/%2E%2E/seats",
            "/checkout/static/.%2e/seats",
            "/checkout/static/%2e./seats",
        ] {
            assert_eq!(norm(raw), Ok("/checkout/seats".into()), "{raw:?}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_upper_cased() {
        assert_eq!(norm("/%63heckout/seats"), Ok("/checkout/seats".into()));
        assert_eq!(norm("/%7Euser/%41-%5f"), Ok("/~user/A-_".into()));
        assert_eq!(norm("/caf%c3%a9/%3b%25"), Ok("/caf%C3%A9/%3B%25".into()));
        // An escaped '%' stays escaped: no second round of decoding.
        assert_eq!(norm("/%252e%252e/x"), Ok("/%252e%252e/x".into()));
    }

    #[test]
    fn repeated_slashes_collapse() {
        assert_eq!(norm("//checkout/seats"), Ok("/checkout/seats".into()));
        assert_eq!(norm("/checkout///seats//"), Ok("/checkout/seats/".into()));
        assert_eq!(norm("//"), Ok("/".into()));
    }

    #[test]
    fn what_has_no_safe_normal_form_is_refused_with_its_reason() {
        for (raw, why) in [
            ("/checkout%2fseats", PathError::EncodedSlash),
            ("/checkout/static/..%2fseats", PathError::EncodedSlash),
            ("/checkout/static/..%2Fseats", PathError::EncodedSlash),
            ("/checkout\\seats", PathError::Backslash),
            ("/checkout%5cseats", PathError::Backslash),
            ("/checkout%5C..%5Cseats", PathError::Backslash),
            ("/a%00b", PathError::Control),
            ("/a%0Ab", PathError::Control),
            ("/a%7fb", PathError::Control),
            ("/a\u{1}b", PathError::Control),
            ("/a%zzb", PathError::MalformedEscape),
            ("/a%4", PathError::MalformedEscape),
            ("/a%", PathError::MalformedEscape),
            ("/..", PathError::AboveRoot),
            ("/../checkout", PathError::AboveRoot),
            ("/a/../../checkout", PathError::AboveRoot),
            ("/%2e%2e/checkout", PathError::AboveRoot),
            (
                "/static/..;/checkout/seats",
                PathError::DotSegmentWithParams,
            ),
            ("/static/..;x/checkout", PathError::DotSegmentWithParams),
            ("/static/.;/checkout", PathError::DotSegmentWithParams),
            ("/static/%2e%2e;/checkout", PathError::DotSegmentWithParams),
            ("checkout", PathError::NotAbsolute),
        ] {
            assert_eq!(norm(raw), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn the_routing_view_drops_params_and_the_segments_they_leave_empty() {
        assert_eq!(without_params("/checkout;x/seats"), "/checkout/seats");
        assert_eq!(without_params("/checkout;jsessionid=1"), "/checkout");
        assert_eq!(without_params("/;x/checkout/"), "/checkout/");
        assert_eq!(without_params("/a/;x"), "/a/");
        assert_eq!(without_params("/;x"), "/");
        assert!(matches!(without_params("/plain/x"), Cow::Borrowed(_)));
    }

    #[test]
    fn room_prefixes_match_on_segment_boundaries_ignoring_case() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/shop", "/shop"));
        assert!(prefix_matches("/shop", "/shop/cart"));
        assert!(prefix_matches("/shop/", "/shop/cart"));
        assert!(prefix_matches("/shop", "/SHOP/cart"));
        assert!(prefix_matches("/Shop", "/shOP"));
        assert!(!prefix_matches("/shop", "/shopping"));
        assert!(!prefix_matches("/shop", "/"));
        assert!(!prefix_matches("/", "*"));
    }

    #[test]
    fn exempt_paths_match_case_sensitively_and_only_when_both_readings_agree() {
        assert!(exempt_matches("/static/", "/static/a.js", "/static/a.js"));
        assert!(exempt_matches(
            "/static/",
            "/static/a.js;v=2",
            "/static/a.js"
        ));
        assert!(!exempt_matches("/static/", "/STATIC/a.js", "/STATIC/a.js"));
        assert!(!exempt_matches(
            "/static/",
            "/static;x/a.js",
            "/static/a.js"
        ));
    }

    proptest::proptest! {
        /// The fast check never accepts a path the full normalisation
        /// would change or refuse, and accepts everything it produces.
        #[test]
        fn the_fast_check_agrees_with_the_full_normalisation(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "/", "/", "a", "B", ".", "..", "%2e", "%2E", "%2f", "%5C", "\\",
                "%41", "%7e", "%25", "%3b", "%c3%a9", "é", ";", ";x=1", "%00", "%", "%g1",
            ]), 0..14)
        ) {
            let path = format!("/{}", parts.concat());
            if is_normal(&path) {
                proptest::prop_assert_eq!(rewrite(&path), Ok(path.clone()));
            }
            if let Ok(normal) = rewrite(&path) {
                proptest::prop_assert!(is_normal(&normal), "{:?} -> {:?}", path, normal);
            }
        }
    }
}
