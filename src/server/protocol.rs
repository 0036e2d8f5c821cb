//! Which protocol a connection speaks, and hyper's builder for each:
//! a plaintext connection's first bytes are peeked at (the HTTP/2 preface
//! or not); over TLS, ALPN has already said.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ConnectionConfig;

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a plaintext connection whose first bytes are part of the
/// HTTP/2 preface is looked at again: unread bytes keep a socket readable,
/// so only a timer can wait for more.
const PREFACE_RECHECK: Duration = Duration::from_millis(50);

/// What a plaintext connection's first bytes say about its protocol.
#[derive(Debug, PartialEq)]
enum Sniffed {
    Http1,
    Http2,
    /// Part of the HTTP/2 preface so far.
    Partial,
}

/// Judges bytes peeked at the start of a connection: once they differ from
/// the HTTP/2 preface it is HTTP/1 (the rule hyper-util's auto builder
/// applies too); the whole preface is HTTP/2.
fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Sniffed::Http1
    } else if n == H2_PREFACE.len() {
        Sniffed::Http2
    } else {
        Sniffed::Partial
    }
}

/// The protocol a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// How the start of a plaintext connection went.
pub(super) enum Opening {
    Speaks(Protocol),
    /// Closed (or failed) before saying anything.
    Closed,
    /// No byte within `idle_timeout`.
    Idle,
    /// The HTTP/2 preface began but was not complete within
    /// `header_read_timeout`.
    SlowPreface,
}

/// Peeks (without consuming) at a plaintext connection's first bytes until
/// they tell HTTP/1 from HTTP/2.
///
/// Peeking, not reading: handing hyper the first bytes apart (as the auto
/// builder's own detection does) makes its first read return only those,
/// and its read buffer grows from 8 to 16 KiB on every connection (seen
/// with heaptrack; it stays that size while an event stream is open).
/// Knowing the protocol first also lets each connection be served by that
/// protocol's own builder, with its exact header limits.
pub(super) async fn peek_protocol(stream: &TcpStream, limits: &ConnectionConfig) -> Opening {
    let mut first = [0u8; 24];
    let mut n = match tokio::time::timeout(limits.idle_timeout, stream.peek(&mut first)).await {
        Err(_) => return Opening::Idle,
        Ok(Ok(0) | Err(_)) => return Opening::Closed,
        Ok(Ok(n)) => n,
    };
    let deadline = Instant::now() + limits.header_read_timeout;
    loop {
        match sniff(&first[..n]) {
            Sniffed::Http1 => return Opening::Speaks(Protocol::Http1),
            Sniffed::Http2 => return Opening::Speaks(Protocol::Http2),
            Sniffed::Partial if Instant::now() >= deadline => return Opening::SlowPreface,
            Sniffed::Partial => tokio::time::sleep(PREFACE_RECHECK).await,
        }
        n = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Opening::Closed,
            Ok(n) => n,
        };
    }
}

/// The HTTP machinery of one listener, one builder per protocol. HTTP/1
/// heads are timed by the connection task (see `Activity`), not by hyper.
pub(super) struct Builders {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    pub(super) fn new(limits: &ConnectionConfig) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            // The head's bytes, request line to the empty line, exactly.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // The h2 crate refuses a header list that reaches its limit; one
        // more lets a list of exactly `max_header_bytes` through, as HTTP/1.
        let list_limit =
            u32::try_from(limits.max_header_bytes.saturating_add(1)).unwrap_or(u32::MAX);
        h2.timer(TokioTimer::new()).max_header_list_size(list_limit);
        Builders {
            http1: h1,
            http2: h2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_unlike_the_http2_preface_mean_http1() {
        let requests: [&[u8]; 4] = [b"GET / HTTP/1.1\r\n", b"POST", b"PUT /x", b"PRI * HTTP/1.1"];
        for first in requests {
            assert_eq!(sniff(first), Sniffed::Http1, "{first:?}");
        }
    }

    #[test]
    fn the_whole_http2_preface_means_http2_and_part_of_it_waits_for_more() {
        let mut longer = H2_PREFACE.to_vec();
        longer.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(sniff(H2_PREFACE), Sniffed::Http2);
        assert_eq!(sniff(&longer[..24]), Sniffed::Http2);
        for first in [&H2_PREFACE[..10], b"P", &H2_PREFACE[..23]] {
            assert_eq!(sniff(first), Sniffed::Partial, "{first:?}");
        }
    }
}
