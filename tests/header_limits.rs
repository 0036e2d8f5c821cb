//! `server.max_header_bytes` holds exactly: for HTTP/1 the bytes of the
//! request head, for HTTP/2 the decoded header list size of RFC 9113
//! §6.5.2 (name + value + 32 per field, pseudo-fields included).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: usize = 65_536;

async fn gateway() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start().await;
    let rooms = room_toml("demo", &up.url(), "exempt_paths = [\"/static/\"]");
    let gw = Gateway::start_with(&rooms, &format!("max_header_bytes = {LIMIT}")).await;
    (up, gw)
}

/// An HTTP/1 request head of exactly `size` bytes (request line, header
/// lines and the empty line), padded with one header.
fn h1_head(size: usize) -> Vec<u8> {
    let start = "GET /static/a.css HTTP/1.1\r\nhost: shop.test\r\nx-pad: ";
    let end = "\r\n\r\n";
    let pad = size - start.len() - end.len();
    format!("{start}{}{end}", "a".repeat(pad)).into_bytes()
}

/// Sends `head` and returns the answer's status (None if the connection
/// closed without one).
async fn h1_status(gw: &Gateway, head: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(gw.public.trim_start_matches("http://"))
        .await
        .unwrap();
    // The server may answer and close before reading it all.
    let _ = stream.write_all(head).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer or a close");
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn an_http1_head_of_max_header_bytes_passes_and_one_byte_more_is_431() {
    let (up, gw) = gateway().await;
    assert_eq!(h1_status(&gw, &h1_head(LIMIT)).await, Some(200));
    assert_eq!(h1_status(&gw, &h1_head(LIMIT - 1)).await, Some(200));
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(h1_status(&gw, &h1_head(LIMIT + 1)).await, Some(431));
    assert_eq!(h1_status(&gw, &h1_head(100_000)).await, Some(431));
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "an oversized head reached the upstream"
    );
}

/// RFC 9113 §6.5.2: a field's size is its name's and value's octets + 32.
fn field_size(name: &str, value: &str) -> usize {
    name.len() + value.len() + 32
}

/// Sends an HTTP/2 (prior knowledge) GET whose header list is exactly
/// `size` long; returns its status (None: the stream failed).
async fn h2_status(gw: &Gateway, size: usize) -> Option<u16> {
    let authority = gw.public.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let path = "/static/a.css";
    let fixed = field_size(":method", "GET")
        + field_size(":scheme", "http")
        + field_size(":authority", &authority)
        + field_size(":path", path)
        + field_size("x-pad", "");
    let req = hyper::Request::get(format!("http://{authority}{path}"))
        .header("x-pad", "a".repeat(size - fixed))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer");
    res.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn an_http2_header_list_of_max_header_bytes_passes_and_one_byte_more_is_refused() {
    let (up, gw) = gateway().await;
    assert_eq!(h2_status(&gw, LIMIT).await, Some(200));
    assert_eq!(h2_status(&gw, LIMIT - 1).await, Some(200));
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(h2_status(&gw, LIMIT + 1).await, Some(431));
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "an oversized header list reached the upstream"
    );
}
