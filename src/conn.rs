//! What the gateway keeps per client connection, for the requests on it.
//!
//! The server makes one [`Connection`] when it accepts a connection and
//! hands it to the handler with every request on it (an argument, not a
//! request extension: extensions cost a hashed insert, a box and a removal
//! per request). It holds the connection's own upstream link and the memos
//! that let a keep-alive connection's repeated requests skip repeated work,
//! plus its peer address already written as header text.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::header::HeaderValue;

use crate::binding::FingerprintMemo;
use crate::proxy::UpstreamLink;
use crate::token::TokenMemo;

/// One client connection's state, shared by its requests.
pub struct Connection {
    /// The peer's address, as accepted.
    pub addr: SocketAddr,
    /// Its own upstream HTTP/1.1 connection (see `proxy::UpstreamLink`).
    pub link: UpstreamLink,
    /// The last token verified on it (see `token::TokenMemo`).
    pub memo: TokenMemo,
    /// The last access-binding fingerprint (see `binding::fingerprint_with`).
    pub binding: FingerprintMemo,
    /// The peer's address as the forwarding headers write it: formatting
    /// an address was ~2% of an admitted request's instructions (callgrind).
    pub peer: PeerHeaders,
}

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

impl Connection {
    pub fn new(addr: SocketAddr) -> Arc<Connection> {
        Arc::new(Connection {
            addr,
            link: UpstreamLink::new(),
            memo: TokenMemo::default(),
            binding: FingerprintMemo::default(),
            peer: PeerHeaders::new(addr.ip()),
        })
    }
}

/// An IP address as header text.
pub fn peer_header(ip: IpAddr) -> HeaderValue {
    // An address's text is digits, dots, colons and hex: always a valid value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
