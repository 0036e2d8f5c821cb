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
    let ua = || {
        headers
            .get(USER_AGENT)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    };
    let material: Vec<u8> = match policy {
        AccessBinding::None => return None,
        AccessBinding::UserAgent => ua(),
        AccessBinding::Network => network_of(client).into_bytes(),
        AccessBinding::UserAgentAndNetwork => {
            let mut m = ua();
            m.push(0);
            m.extend_from_slice(network_of(client).as_bytes());
            m
        }
    };
    let mut input = Vec::with_capacity(room.len() + 1 + material.len());
    input.extend_from_slice(room.as_bytes());
    input.push(0);
    input.extend_from_slice(&material);
    let d = digest(&SHA256, &input);
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.as_ref()[..12]))
}

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
    fn policies_parse_from_config_words() {
        assert_eq!(
            AccessBinding::parse("user_agent+network"),
            Some(AccessBinding::UserAgentAndNetwork)
        );
        assert_eq!(AccessBinding::parse("ip"), None);
    }
}
