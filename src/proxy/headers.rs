//! The header rewriting a reverse proxy owes both ends: hop-by-hop headers,
//! the headers and cookies the gateway owns, `X-Forwarded-*`, `Forwarded`
//! and `X-Real-IP` (see the `proxy` module docs), and the client's address
//! as far as forwarded headers may be believed.

use std::net::{IpAddr, SocketAddr};

use hyper::Version;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub use crate::cookies::COOKIE_PREFIXES;
/// Header name prefixes the gateway owns (after `_` is read as `-`, as
/// CGI and WSGI servers do): see [`is_reserved_header`].
pub const RESERVED_HEADER_PREFIXES: [&str; 2] = ["x-waitroom", "waitroom-"];

// Header names built once: a `&str` name is parsed and validated again on
// every map operation (seen in callgrind on the per-request path).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

// A static, not a const: a const array is built and dropped again at every
// use, which was most of `strip_hop_by_hop`'s cost (callgrind).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    // The framing is this hop's own; hyper sets it again for the next.
    header::TRANSFER_ENCODING,
];

/// A peer's address as header text, made once per connection.
pub struct PeerHeaders {
    /// As `X-Forwarded-For` and `X-Real-IP` write it: `192.0.2.1`, `2001:db8::1`.
    pub ip: HeaderValue,
    /// As a `Forwarded` element (RFC 7239): `for=192.0.2.1`, `for="[2001:db8::1]"`.
    pub forwarded: HeaderValue,
}

impl PeerHeaders {
    pub fn new(ip: IpAddr) -> PeerHeaders {
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            // An IPv6 node is bracketed and quoted (RFC 7239 §6).
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        PeerHeaders {
            ip: peer_header(ip),
            forwarded: HeaderValue::from_str(&forwarded)
                .unwrap_or_else(|_| HeaderValue::from_static("for=unknown")),
        }
    }
}

/// An IP address as header text.
fn peer_header(ip: IpAddr) -> HeaderValue {
    // An address's text is digits, dots, colons and hex: always a valid value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, and only those present are removed (usually
    // none on a request, `connection` alone on an upstream's answer): a
    // removal costs a hashed lookup even for a name that is not there.
    let mut present: Vec<HeaderName> = h
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k))
        .cloned()
        .collect();
    if present.is_empty() {
        // No Connection header either: nothing more can be hop-by-hop.
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    for named in h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if h.contains_key(named)
            && let Ok(name) = HeaderName::from_bytes(named.as_bytes())
        {
            present.push(name);
        }
    }
    for n in present {
        h.remove(n);
    }
}

/// The client's address for rate limiting. From an untrusted peer that is
/// the peer: its `X-Forwarded-For` is ignored. From a trusted proxy it is
/// the right-most address in `X-Forwarded-For` that is not itself a
/// trusted proxy (entries to its left could have been written by anyone).
/// If the chain is empty, malformed at that point, or all trusted, the
/// last address we can vouch for is used.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_addr(entry) else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Applies the request-side rewriting (see the `proxy` module docs).
/// `scheme` is what the client used to reach us (`http` or `https`).
#[inline]
pub fn rewrite_request_headers(
    h: &mut HeaderMap,
    peer: &PeerHeaders,
    trusted: bool,
    original_host: Option<HeaderValue>,
    scheme: &'static str,
) {
    strip_hop_by_hop(h);
    strip_reserved_headers(h);
    strip_gateway_cookies(h);

    append_or_set(h, X_FORWARDED_FOR, &peer.ip, trusted);
    append_or_set(h, FORWARDED, &peer.forwarded, trusted);
    if !trusted || !h.contains_key(X_REAL_IP) {
        h.insert(X_REAL_IP, peer.ip.clone());
    }
    if !trusted || !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if !trusted || !h.contains_key(X_FORWARDED_HOST) {
        match &original_host {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
    if let Some(host) = original_host {
        h.insert(header::HOST, host);
    }
}

/// The `Upgrade` value of an HTTP/1.1 request asking to switch to
/// WebSocket (`Connection` names `upgrade`, `Upgrade` names `websocket`):
/// the one upgrade the gateway tunnels. Any other `Upgrade` (`h2c`, say) is
/// hop-by-hop like the rest and never reaches the upstream.
pub(super) fn websocket_upgrade(version: Version, h: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let names_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = h.get(header::UPGRADE)?;
    let websocket = upgrade
        .to_str()
        .ok()?
        .split(',')
        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"));
    (names_upgrade && websocket).then(|| upgrade.clone())
}

/// Puts back, after the hop-by-hop headers were dropped, exactly the two
/// an upgrade needs on its next hop: `Connection: upgrade` and `Upgrade`.
pub(super) fn keep_upgrade(h: &mut HeaderMap, upgrade: HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade);
}

/// Applies the answer-side rewriting: an upstream's hop-by-hop headers,
/// the headers the gateway owns and its `Set-Cookie`s for the gateway's
/// cookies are dropped.
#[inline]
pub(super) fn rewrite_response_headers(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    strip_reserved_headers(h);
    strip_gateway_set_cookies(h);
}

/// A list header of hops (`X-Forwarded-For`, `Forwarded`): from a trusted
/// proxy, its values with `ours` appended; from anyone else, `ours` alone.
fn append_or_set(h: &mut HeaderMap, name: HeaderName, ours: &HeaderValue, trusted: bool) {
    let prior = if trusted {
        h.get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        String::new()
    };
    if prior.trim().is_empty() {
        h.insert(name, ours.clone());
    } else {
        // Ours is an address or a `for=` node: always text.
        let ours = ours.to_str().unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("{prior}, {ours}")) {
            h.insert(name, v);
        }
    }
}

/// Whether the gateway owns a header of this name: one that starts, with
/// `_` read as `-` and case ignored, with `x-waitroom` (a bare
/// `X-Waitroom` too) or `waitroom-`. CGI and WSGI servers read
/// `X_Waitroom_Token` as `X-Waitroom-Token`, so both spellings are ours.
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.as_bytes();
    // Most names start with neither letter: one comparison for them.
    if !matches!(name.first(), Some(b'x' | b'X' | b'w' | b'W')) {
        return false;
    }
    RESERVED_HEADER_PREFIXES.iter().any(|prefix| {
        name.len() >= prefix.len()
            && name.iter().zip(prefix.as_bytes()).all(|(&n, &p)| {
                let n = if n == b'_' { b'-' } else { n };
                n.eq_ignore_ascii_case(&p)
            })
    })
}

/// Removes the headers the gateway owns (see [`is_reserved_header`]).
/// Nothing is allocated when there are none, the usual case.
fn strip_reserved_headers(h: &mut HeaderMap) {
    if !h.keys().any(|k| is_reserved_header(k.as_str())) {
        return;
    }
    let reserved: Vec<HeaderName> = h
        .keys()
        .filter(|k| is_reserved_header(k.as_str()))
        .cloned()
        .collect();
    for k in reserved {
        h.remove(k);
    }
}

/// Whether a cookie name is one of the gateway's as any upstream might
/// read it: surrounding blanks and quotes dropped, case ignored,
/// percent-escapes decoded, and `.`, `[` and space read as `_` (PHP reads
/// `wr.a.demo` as `wr_a_demo`).
pub fn is_gateway_cookie(name: &str) -> bool {
    let name = name
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '"')
        .as_bytes();
    // Every prefix is this long: only this much of the name is compared.
    let mut start = [0u8; 5];
    let (mut i, mut n) = (0, 0);
    while n < start.len() && i < name.len() {
        let mut b = name[i];
        i += 1;
        if b == b'%'
            && let Some(hex) = name.get(i..i + 2)
            && let Ok(text) = std::str::from_utf8(hex)
            && let Ok(v) = u8::from_str_radix(text, 16)
        {
            b = v;
            i += 2;
        }
        start[n] = match b {
            b'.' | b'[' | b' ' => b'_',
            other => other.to_ascii_lowercase(),
        };
        n += 1;
    }
    n == start.len() && COOKIE_PREFIXES.iter().any(|p| p.as_bytes() == start)
}

/// The name of one `name=value` cookie pair (all of it if it has no `=`).
fn cookie_pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// Whether a `;`-separated part of a Cookie header holds one of the
/// gateway's cookies, also as a `,`-separated pair (RFC 2965's separator,
/// which some servers still split on).
fn cookie_part_is_ours(part: &str) -> bool {
    part.split(',')
        .any(|pair| is_gateway_cookie(cookie_pair_name(pair)))
}

/// Removes the gateway's cookies, keeping the upstream's own. Nothing is
/// rebuilt when none is present.
fn strip_gateway_cookies(h: &mut HeaderMap) {
    // UTF-8, not `to_str`'s visible ASCII: browsers send UTF-8 values.
    let ours = h
        .get_all(header::COOKIE)
        .iter()
        .any(|v| match std::str::from_utf8(v.as_bytes()) {
            Ok(text) => text.split(';').any(cookie_part_is_ours),
            // Not text: no one can be sure what an upstream would read in it.
            Err(_) => true,
        });
    if !ours {
        return;
    }
    let mut kept: Vec<&str> = Vec::new();
    for text in h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
    {
        for part in text.split(';') {
            if cookie_part_is_ours(part) {
                // The upstream's pairs that shared a part with ours stay.
                kept.extend(
                    part.split(',')
                        .filter(|pair| !is_gateway_cookie(cookie_pair_name(pair)))
                        .map(str::trim)
                        .filter(|pair| !pair.is_empty()),
                );
            } else if !part.trim().is_empty() {
                kept.push(part.trim());
            }
        }
    }
    let kept = kept.join("; ");
    h.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept)
    {
        h.insert(header::COOKIE, v);
    }
}

/// Removes an upstream's `Set-Cookie` for any of the gateway's cookie
/// names: only the gateway sets (or clears) its own cookies.
fn strip_gateway_set_cookies(h: &mut HeaderMap) {
    let ours = |v: &HeaderValue| {
        let pair = v.as_bytes();
        let name_end = pair
            .iter()
            .position(|&b| b == b'=' || b == b';')
            .unwrap_or(pair.len());
        std::str::from_utf8(&pair[..name_end]).is_ok_and(is_gateway_cookie)
    };
    if !h.get_all(header::SET_COOKIE).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    h.remove(header::SET_COOKIE);
    for v in kept {
        h.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites `h` as for a request from `peer`.
    fn rewrite(h: &mut HeaderMap, peer: &str, trusted: bool, scheme: &'static str) {
        let peer = PeerHeaders::new(peer.parse().unwrap());
        rewrite_request_headers(h, &peer, trusted, None, scheme);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_forwarded_for_is_replaced_not_appended() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        rewrite_request_headers(
            &mut h,
            &PeerHeaders::new("10.1.2.3".parse().unwrap()),
            false,
            Some(HeaderValue::from_static("shop.test")),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.test");
    }

    #[test]
    fn trusted_forwarded_for_is_appended() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        rewrite(&mut h, "10.0.0.1", true, "http");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn gateway_cookies_hop_by_hop_and_reserved_headers_are_stripped() {
        let mut h = headers(&[
            ("cookie", "wr_q_demo=abc; session=keep"),
            ("cookie", "wr_a_demo=def"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-waitroom-token", "t"),
            ("accept", "*/*"),
        ]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "session=keep");
        for gone in ["connection", "x-secret", "keep-alive", "x-waitroom-token"] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn a_tls_listener_forwards_https_as_the_proto() {
        let mut h = headers(&[("x-forwarded-proto", "http")]);
        rewrite(&mut h, "10.1.2.3", false, "https");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn client_ip_is_the_right_most_untrusted_forwarded_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn client_ip_ignores_forwarded_for_from_untrusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn client_ip_stops_at_garbage_and_handles_ports_and_all_trusted_chains() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip, 10.0.0.7")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn untrusted_forwarded_and_real_ip_are_replaced_by_the_peer() {
        let mut h = headers(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        rewrite(&mut h, "10.1.2.3", false, "http");
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(h["forwarded"], "for=10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        let mut h = HeaderMap::new();
        rewrite(&mut h, "2001:db8::1", false, "http");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\"");
        assert_eq!(h["x-real-ip"], "2001:db8::1");
    }

    #[test]
    fn trusted_forwarded_is_appended_and_real_ip_kept() {
        let mut h = headers(&[
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        rewrite(&mut h, "10.0.0.1", true, "http");
        assert_eq!(h["forwarded"], "for=1.2.3.4;proto=https, for=10.0.0.1");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        let mut h = HeaderMap::new();
        rewrite(&mut h, "10.0.0.1", true, "http");
        assert_eq!(h["forwarded"], "for=10.0.0.1");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
    }

    #[test]
    fn every_spelling_of_a_gateway_header_is_reserved() {
        for name in [
            "x-waitroom-token",
            "x_waitroom_token",
            "x-waitroom_token",
            "x-waitroom",
            "x_waitroom",
            "X-Waitroom-Pow",
            "waitroom-grant",
            "waitroom_grant",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "waitroom",
            "x-wait",
            "accept",
            "x-forwarded-for",
            "wait-room-x",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }

    #[test]
    fn reserved_headers_are_stripped_in_every_spelling() {
        let mut h = headers(&[
            ("x_waitroom_token", "t"),
            ("x-waitroom", "1"),
            ("waitroom-grant", "g"),
            ("waitroom_grant", "g"),
            ("x-request-id", "keep"),
        ]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        for gone in [
            "x_waitroom_token",
            "x-waitroom",
            "waitroom-grant",
            "waitroom_grant",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["x-request-id"], "keep");
    }

    #[test]
    fn gateway_cookies_are_stripped_however_quoted_or_separated() {
        for (sent, kept) in [
            ("a=1, wr_a_demo=x", Some("a=1")),
            ("\"wr_a_demo\"=x; b=2", Some("b=2")),
            ("  wr_q_demo =x;c=3", Some("c=3")),
            ("WR_A_demo=x; d=4", Some("d=4")),
            ("wr.a.demo=x; e=5", Some("e=5")),
            ("wr%5Fa_demo=x; f=6", Some("f=6")),
            ("a=1,wr_q_demo=x, b=2; wr_a_demo=y", Some("a=1; b=2")),
            ("wr_a_demo", None),
        ] {
            let mut h = headers(&[("cookie", sent)]);
            rewrite(&mut h, "127.0.0.1", false, "http");
            assert_eq!(h.get("cookie").map(|v| v.to_str().unwrap()), kept, "{sent}");
        }
    }

    #[test]
    fn cookies_without_ours_are_left_as_they_are() {
        let sent = "session=a,b; theme=\"dark\";x=wr_a_demo";
        let mut h = headers(&[("cookie", sent)]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        assert_eq!(h["cookie"], sent);
    }

    #[test]
    fn upstream_answers_lose_reserved_headers_and_gateway_set_cookies() {
        let mut h = headers(&[
            ("x-waitroom-token", "forged"),
            ("waitroom-grant", "g"),
            ("set-cookie", "wr_a_demo=forged; Path=/"),
            ("set-cookie", "\"wr_q_demo\"=forged"),
            ("set-cookie", "session=s; Path=/"),
            ("content-type", "text/plain"),
        ]);
        strip_reserved_headers(&mut h);
        strip_gateway_set_cookies(&mut h);
        assert!(!h.contains_key("x-waitroom-token"));
        assert!(!h.contains_key("waitroom-grant"));
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["session=s; Path=/"]);
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn only_gateway_cookies_means_no_cookie_header() {
        let mut h = headers(&[("cookie", "wr_q_demo=abc")]);
        rewrite(&mut h, "127.0.0.1", false, "http");
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn only_an_http11_websocket_upgrade_is_kept_and_with_exactly_its_two_headers() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        let upgrade = websocket_upgrade(Version::HTTP_11, &ws).expect("a WebSocket upgrade");
        let mut h = ws.clone();
        rewrite(&mut h, "127.0.0.1", false, "http");
        keep_upgrade(&mut h, upgrade);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h.get_all("connection").iter().count(), 1);
        assert!(!h.contains_key("x-secret") && !h.contains_key("keep-alive"));
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h["sec-websocket-version"], "13");

        assert!(websocket_upgrade(Version::HTTP_10, &ws).is_none());
        assert!(websocket_upgrade(Version::HTTP_2, &ws).is_none());
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(websocket_upgrade(Version::HTTP_11, &h2c).is_none());
        let unnamed = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert!(websocket_upgrade(Version::HTTP_11, &unnamed).is_none());
    }
}
