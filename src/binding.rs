//! Binding an access token to the client that claimed it, so a shared or
//! resold access cookie fails for anyone else.
//!
//! The claim records a short hash of the client's binding material in the
//! signed access token (`bnd`); every admitted request must present the
//! same material. Material, per room (`access_binding`):
//!
//! - `user_agent` (default): the `User-Agent` header. Stops casual sharing
//!   (a cookie pasted into another browser); a determined reseller can copy
//!   the header too.
//! - `network`: the client's network — IPv4 /24, IPv6 /64 (the client
//!   address as `proxy.trusted_proxies` allows it to be known). Stops use
//!   from elsewhere, but a fan whose phone moves from Wi-Fi to mobile data
//!   mid-checkout loses their session (they see the session-ended page).
//! - `user_agent+network`: both.
//! - `none`.
//!
//! The hash is truncated SHA-256 over the room id and the material: it
//! keeps the raw header or address out of the token, but a /24 is small
//! enough to be guessed by whoever holds the token (only the fan, who knows
//! their own address anyway).

use std::net::IpAddr;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use hyper::header::{HeaderMap, USER_AGENT};
use serde::{Deserialize, Serialize};

use crate::memo::LastOne;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessBinding {
    None,
    UserAgent,
    Network,
    #[serde(rename = "user_agent+network")]
    UserAgentAndNetwork,
}

impl AccessBinding {
    pub fn parse(s: &str) -> Option<AccessBinding> {
        match s {
            "none" => Some(AccessBinding::None),
            "user_agent" => Some(AccessBinding::UserAgent),
            "network" => Some(AccessBinding::Network),
            "user_agent+network" => Some(AccessBinding::UserAgentAndNetwork),
            _ => None,
        }
    }
}

/// The client's network for binding and per-client limits: IPv4 /24, IPv6 /64.
pub fn network_of(ip: IpAddr) -> String {
    // IPv4 clients on a dual-stack listener arrive as ::ffff:a.b.c.d.
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The binding value for a request, or `None` when the room binds nothing.
pub fn fingerprint(
    policy: AccessBinding,
    room: &str,
    headers: &HeaderMap,
    client: IpAddr,
) -> Option<String> {
    fingerprint_with(None, policy, room, headers, client)
}

/// [`fingerprint`], remembering on `memo` the last input and its value: a
/// keep-alive connection sends the same User-Agent from the same address
/// with every request, and the SHA-256 was ~7% of an admitted request's
/// instructions (callgrind). Any change to the input is hashed afresh.
pub fn fingerprint_with(
    memo: Option<&FingerprintMemo>,
    policy: AccessBinding,
    room: &str,
    headers: &HeaderMap,
    client: IpAddr,
) -> Option<String> {
    let ua = || headers.get(USER_AGENT).map_or(&[][..], |v| v.as_bytes());
    let mut input = Vec::with_capacity(room.len() + 80);
    input.extend_from_slice(room.as_bytes());
    input.push(0);
    match policy {
        AccessBinding::None => return None,
        AccessBinding::UserAgent => input.extend_from_slice(ua()),
        AccessBinding::Network => input.extend_from_slice(network_of(client).as_bytes()),
        AccessBinding::UserAgentAndNetwork => {
            input.extend_from_slice(ua());
            input.push(0);
            input.extend_from_slice(network_of(client).as_bytes());
        }
    }
    if let Some(value) = memo.and_then(|m| m.recall(&input)) {
        return Some(value);
    }
    let d = digest(&SHA256, &input);
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..12]);
    // A connection may send a huge User-Agent; it is not worth holding.
    if let Some(m) = memo.filter(|_| input.len() <= MEMO_MAX_INPUT) {
        m.remember(input, value.clone());
    }
    Some(value)
}

/// Inputs longer than this are hashed every time, not remembered.
const MEMO_MAX_INPUT: usize = 512;

/// One connection's last binding input and its fingerprint (see
/// [`fingerprint_with`]).
pub type FingerprintMemo = LastOne<Vec<u8>, String>;

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(ua: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(USER_AGENT, HeaderValue::from_str(ua).unwrap());
        h
    }

    #[test]
    fn networks_aggregate_to_24_and_64() {
        assert_eq!(network_of("10.1.2.3".parse().unwrap()), "10.1.2.0/24");
        assert_eq!(
            network_of("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn the_same_client_matches_and_another_does_not() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let same_net: IpAddr = "192.0.2.99".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let ua = headers("Firefox/130");
        let fp = |p, h: &HeaderMap, ip| fingerprint(p, "demo", h, ip);
        assert_eq!(fp(AccessBinding::None, &ua, ip), None);
        assert_eq!(
            fp(AccessBinding::UserAgent, &ua, ip),
            fp(AccessBinding::UserAgent, &ua, other)
        );
        assert_ne!(
            fp(AccessBinding::UserAgent, &ua, ip),
            fp(AccessBinding::UserAgent, &headers("Chrome/140"), ip)
        );
        assert_eq!(
            fp(AccessBinding::Network, &ua, ip),
            fp(AccessBinding::Network, &headers("x"), same_net)
        );
        assert_ne!(
            fp(AccessBinding::Network, &ua, ip),
            fp(AccessBinding::Network, &ua, other)
        );
        assert_ne!(
            fp(AccessBinding::UserAgentAndNetwork, &ua, ip),
            fp(
                AccessBinding::UserAgentAndNetwork,
                &headers("Chrome/140"),
                ip
            )
        );
        assert_ne!(
            fingerprint(AccessBinding::UserAgent, "a", &ua, ip),
            fingerprint(AccessBinding::UserAgent, "b", &ua, ip)
        );
    }

    #[test]
    fn the_memo_gives_the_same_values_and_notices_any_change() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let memo = FingerprintMemo::default();
        let with = |p, room, h: &HeaderMap, ip| fingerprint_with(Some(&memo), p, room, h, ip);
        let cases = [
            (AccessBinding::UserAgent, "demo", headers("Firefox/130"), ip),
            (AccessBinding::UserAgent, "demo", headers("Firefox/130"), ip),
            (AccessBinding::UserAgent, "demo", headers("Firefox/131"), ip),
            (
                AccessBinding::UserAgent,
                "other",
                headers("Firefox/131"),
                ip,
            ),
            (AccessBinding::Network, "other", headers("Firefox/131"), ip),
            (
                AccessBinding::Network,
                "other",
                headers("x"),
                "198.51.100.1".parse().unwrap(),
            ),
            (
                AccessBinding::UserAgentAndNetwork,
                "other",
                headers("x"),
                ip,
            ),
            (AccessBinding::None, "other", headers("x"), ip),
        ];
        for (policy, room, h, ip) in &cases {
            assert_eq!(
                with(*policy, room, h, *ip),
                fingerprint(*policy, room, h, *ip),
                "{policy:?} {room} {h:?} {ip}"
            );
        }
    }

    #[test]
    fn a_huge_user_agent_is_hashed_but_not_held() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let memo = FingerprintMemo::default();
        let huge = headers(&"x".repeat(4096));
        let value = fingerprint_with(Some(&memo), AccessBinding::UserAgent, "demo", &huge, ip);
        assert_eq!(
            value,
            fingerprint(AccessBinding::UserAgent, "demo", &huge, ip)
        );
        assert!(memo.is_empty());
    }

    #[test]
    fn policies_parse_from_config_words() {
        assert_eq!(
            AccessBinding::parse("user_agent+network"),
            Some(AccessBinding::UserAgentAndNetwork)
        );
        assert_eq!(AccessBinding::parse("ip"), None);
    }
}
