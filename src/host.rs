//! The host a request is for, in one form, so that a room bound to a host
//! cannot be missed by spelling the host differently.
//!
//! A host is compared without its port, without one trailing dot (DNS
//! reads `tickets.example.` as `tickets.example`) and ignoring ASCII case.
//! What is not a plain `name[:port]` is refused ([`HostError`], a 400)
//! rather than guessed at: a port that is not a number from 1 to 65535
//! (`tickets.example:80:80`, `tickets.example:x`, `tickets.example:`), a
//! name with characters no host name has, user info (`user@host`), and two
//! `Host` headers. IPv6 literals keep their brackets (`[::1]:8080` is
//! `[::1]`).
//!
//! The request target's authority (HTTP/1 absolute-form, HTTP/2
//! `:authority`) and the `Host` header must name the same host when both
//! are present: RFC 9112 §3.2.3 would have the target win, but the `Host`
//! header is what the upstream receives, and a request decided for one
//! host must not be served as another.

use hyper::Uri;
use hyper::header::{self, HeaderMap};

/// Why a request's host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has more than one Host header")]
    Repeated,
    #[error("the host's port is not a number from 1 to 65535")]
    BadPort,
    #[error("the host is not a valid host name or IP literal")]
    BadName,
    #[error("the Host header and the request target name different hosts")]
    Conflict,
}

impl HostError {
    /// The machine-readable reason (the `reason` field of the 400 answer).
    pub fn label(self) -> &'static str {
        match self {
            HostError::Repeated => "repeated_host",
            HostError::BadPort => "bad_port",
            HostError::BadName => "bad_name",
            HostError::Conflict => "host_conflict",
        }
    }
}

/// Splits `name[:port]` into the name (without one trailing dot, case kept)
/// and the port. The name is never empty.
pub fn split(authority: &str) -> Result<(&str, Option<u16>), HostError> {
    let (name, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(HostError::BadName)?;
        let (literal, rest) = authority.split_at(end + 1);
        let inside = &literal[1..literal.len() - 1];
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(HostError::BadName);
        }
        match rest {
            "" => (literal, None),
            _ => (
                literal,
                Some(rest.strip_prefix(':').ok_or(HostError::BadName)?),
            ),
        }
    } else {
        let (name, port) = match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // One pass: name bytes only, and no empty label (a leading dot
        // counts as one, hence `previous` starting as '.').
        let mut previous = b'.';
        for &b in name.as_bytes() {
            if (b == b'.' && previous == b'.') || (b != b'.' && !is_name_byte(b)) {
                return Err(HostError::BadName);
            }
            previous = b;
        }
        if previous == b'.' {
            return Err(HostError::BadName);
        }
        (name, port)
    };
    let port = port.map(parse_port).transpose()?;
    Ok((name, port))
}

/// The host name a `Host` value or authority names, without port or
/// trailing dot; `None` for an empty value (RFC 9112 §3.2: a request
/// whose target has no authority sends an empty `Host`).
pub fn name(authority: &str) -> Result<Option<&str>, HostError> {
    if authority.is_empty() {
        return Ok(None);
    }
    split(authority).map(|(name, _)| Some(name))
}

/// The host `uri` and `headers` name together (see the module docs):
/// compare it with [`str::eq_ignore_ascii_case`].
pub fn of_request<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Result<Option<&'a str>, HostError> {
    let mut values = headers.get_all(header::HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(HostError::Repeated);
    }
    let from_header = match header {
        Some(v) => name(v.to_str().map_err(|_| HostError::BadName)?)?,
        None => None,
    };
    let Some(authority) = uri.authority() else {
        return Ok(from_header);
    };
    let from_target = name(authority.as_str())?;
    match (from_target, from_header) {
        (Some(t), Some(h)) if !t.eq_ignore_ascii_case(h) => Err(HostError::Conflict),
        (t, h) => Ok(t.or(h)),
    }
}

/// Letters, digits, `-` and `_` (seen in real internal names).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn parse_port(port: &str) -> Result<u16, HostError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(HostError::BadPort),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_port_and_one_trailing_dot_and_keep_case() {
        for (raw, host) in [
            ("tickets.example", "tickets.example"),
            ("tickets.example.", "tickets.example"),
            ("tickets.example.:80", "tickets.example"),
            ("TICKETS.Example:8080", "TICKETS.Example"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
            ("127.0.0.1:65535", "127.0.0.1"),
            ("in_ternal-1", "in_ternal-1"),
        ] {
            assert_eq!(name(raw), Ok(Some(host)), "{raw:?}");
        }
        assert_eq!(name(""), Ok(None));
        assert_eq!(split("a.example:443"), Ok(("a.example", Some(443))));
    }

    #[test]
    fn malformed_ports_and_names_are_refused() {
        for (raw, why) in [
            ("tickets.example:80:80", HostError::BadPort),
            ("tickets.example:x", HostError::BadPort),
            ("tickets.example:", HostError::BadPort),
            ("tickets.example:0", HostError::BadPort),
            ("tickets.example:65536", HostError::BadPort),
            ("tickets.example:000080", HostError::BadPort),
            ("[::1]:", HostError::BadPort),
            ("[::1]:x", HostError::BadPort),
            ("tickets.example..", HostError::BadName),
            ("tickets..example", HostError::BadName),
            (".tickets.example", HostError::BadName),
            (".", HostError::BadName),
            (":80", HostError::BadName),
            ("user@tickets.example", HostError::BadName),
            ("tickets.example/x", HostError::BadName),
            ("tick%65ts.example", HostError::BadName),
            ("[::1", HostError::BadName),
            ("[]", HostError::BadName),
            ("[v1.x]", HostError::BadName),
            ("[::1]x", HostError::BadName),
            ("[::1]]:80", HostError::BadName),
        ] {
            assert_eq!(name(raw), Err(why), "{raw:?}");
        }
    }

    fn request(target: &str, hosts: &[&str]) -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, v.parse().unwrap());
        }
        (target.parse().unwrap(), h)
    }

    #[test]
    fn target_authority_and_host_header_must_agree() {
        let (u, h) = request("/x", &["Tickets.Example."]);
        assert_eq!(of_request(&u, &h), Ok(Some("Tickets.Example")));
        let (u, h) = request("http://tickets.example./x", &[]);
        assert_eq!(of_request(&u, &h), Ok(Some("tickets.example")));
        let (u, h) = request("http://tickets.example:8080/x", &["TICKETS.example."]);
        assert_eq!(of_request(&u, &h), Ok(Some("tickets.example")));
        let (u, h) = request("http://other.example/x", &["tickets.example"]);
        assert_eq!(of_request(&u, &h), Err(HostError::Conflict));
        let (u, h) = request("/x", &["a.example", "b.example"]);
        assert_eq!(of_request(&u, &h), Err(HostError::Repeated));
        let (u, h) = request("/x", &[]);
        assert_eq!(of_request(&u, &h), Ok(None));
    }
}
