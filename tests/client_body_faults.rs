//! A fault in a client's own request body is the client's: it is answered
//! 400 (or 408 for a body too slow to arrive) and never counted against
//! the upstream, so no client can hold the drip by sending broken bodies.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upstream failures hold the drip for a minute here: one counted wrongly
/// freezes the serving counter for longer than any test waits.
const HOLD: &str = "[proxy]\nupstream_hold_secs = 60";

fn room(upstream: &str) -> String {
    room_toml(
        "demo",
        upstream,
        "exempt_paths = [\"/static/\"]\nadmit_rate_per_min = 600",
    )
}

/// Writes `request` on a fresh connection (then half-closes when asked)
/// and reads whatever comes back until the server closes or 10 s pass.
async fn raw_exchange(gw: &Gateway, request: &[u8], half_close: bool) -> String {
    let addr = gw.public.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    // One answer is all these tests want.
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && !half_close {
                        break;
                    }
                }
            }
        }
    });
    let _ = read.await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The hostile bodies: bad chunk size, bad chunk extension, and a
/// `Content-Length` body cut short by a half-close.
fn hostile_requests(path: &str, cookie: &str) -> Vec<(Vec<u8>, bool)> {
    let head = |framing: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: shop.test\r\ncookie: {cookie}\r\naccept: application/json\r\n{framing}\r\n"
        )
    };
    vec![
        (
            format!("{}zz\r\n\r\n", head("transfer-encoding: chunked\r\n")).into_bytes(),
            false,
        ),
        (
            format!(
                "{}5;a\nb\r\nhello\r\n0\r\n\r\n",
                head("transfer-encoding: chunked\r\n")
            )
            .into_bytes(),
            false,
        ),
        (
            format!("{}only-part", head("content-length: 100\r\n")).into_bytes(),
            true,
        ),
    ]
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends every hostile request `rounds` times; each is answered 400 (or,
/// when the client has half-closed, at most closed without an answer).
async fn send_hostile(gw: &Gateway, path: &str, cookie: &str, rounds: usize) {
    for _ in 0..rounds {
        for (request, half_close) in hostile_requests(path, cookie) {
            let answer = raw_exchange(gw, &request, half_close).await;
            match status_of(&answer) {
                Some(status) => assert_eq!(status, 400, "{answer}"),
                None => assert!(half_close, "no answer to a full request: {answer:?}"),
            }
        }
    }
}

/// The room's upstream is still healthy, nothing was counted against it,
/// and the drip still admits: fans who joined get their turn.
async fn assert_upstream_untouched_and_drip_runs(gw: &Gateway, waiting: &[Fan]) {
    let room = gw.admin_get("/admin/rooms/demo").await;
    assert_eq!(room["upstream_healthy"], true, "{room}");
    let metrics = gw.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("waitroom_upstream_responses_total")
                && (l.contains("class=\"error\"") || l.contains("class=\"timeout\""))),
        "an upstream failure was counted:\n{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("waitroom_errors_total{origin=\"upstream\"}")),
        "an upstream error was counted:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("waitroom_errors_total{origin=\"client\"}")),
        "the faults were not counted as the client's:\n{metrics}"
    );
    for fan in waiting {
        eventually(10, "a waiting fan is admitted", || async {
            (fan.status("demo").await["state"] == "admitted").then_some(())
        })
        .await;
    }
    let serving = gw.admin_get("/admin/rooms/demo").await["serving_counter"].clone();
    assert!(
        serving.as_u64().unwrap() >= waiting.len() as u64,
        "{serving}"
    );
}

async fn paused_fans(gw: &Gateway, n: usize) -> Vec<Fan> {
    gw.patch_room("demo", serde_json::json!({"paused": true}))
        .await;
    let mut fans = Vec::new();
    for _ in 0..n {
        let fan = Fan::new(&gw.public);
        fan.get("/").await;
        fans.push(fan);
    }
    fans
}

#[tokio::test]
async fn broken_request_bodies_on_an_exempt_path_are_the_clients_and_do_not_hold_the_drip() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room(&up.url()), HOLD).await;
    let waiting = paused_fans(&gw, 3).await;

    send_hostile(&gw, "/static/a.js", "x=1", 3).await;

    gw.patch_room("demo", serde_json::json!({"paused": false}))
        .await;
    assert_upstream_untouched_and_drip_runs(&gw, &waiting).await;
}

#[tokio::test]
async fn broken_request_bodies_from_an_admitted_fan_are_the_clients_and_do_not_hold_the_drip() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room(&up.url()), HOLD).await;
    let inside = Fan::new(&gw.public);
    inside.get("/").await;
    eventually(5, "admitted", || async {
        (inside.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    // The page claims the place; this request does it the same way.
    assert_eq!(inside.get("/checkout").await.status(), 200);
    let access = inside.cookie("wr_a_demo").expect("an access cookie");
    let waiting = paused_fans(&gw, 3).await;

    send_hostile(&gw, "/checkout", &format!("wr_a_demo={access}"), 3).await;

    gw.patch_room("demo", serde_json::json!({"paused": false}))
        .await;
    assert_upstream_untouched_and_drip_runs(&gw, &waiting).await;
}

#[tokio::test]
async fn a_body_trickled_past_the_response_timeout_is_a_408_not_an_upstream_timeout() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room(&up.url()),
        "[proxy]\nupstream_hold_secs = 60\nresponse_timeout_secs = 1",
    )
    .await;
    let waiting = paused_fans(&gw, 2).await;

    // Ten bytes of a hundred, then nothing: the upstream waits for the
    // rest until the response timeout runs out.
    let request = b"POST /static/upload HTTP/1.1\r\nhost: shop.test\r\naccept: application/json\r\ncontent-length: 100\r\n\r\n0123456789";
    let answer = raw_exchange(&gw, request, false).await;
    assert_eq!(status_of(&answer), Some(408), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        assert_eq!(v["error"], "body_timeout");
    }

    gw.patch_room("demo", serde_json::json!({"paused": false}))
        .await;
    assert_upstream_untouched_and_drip_runs(&gw, &waiting).await;
}

#[tokio::test]
async fn a_complete_request_that_the_upstream_never_answers_still_counts_against_it() {
    // The other side of the rule: with the whole request delivered, a
    // timeout is the upstream's, and the drip holds.
    let up = TestUpstream::start().await;
    let rooms = room_toml(
        "demo",
        &up.url(),
        "exempt_paths = [\"/slow\"]\nadmit_rate_per_min = 600",
    );
    let gw = Gateway::start_with(
        &rooms,
        "[proxy]\nupstream_hold_secs = 60\nresponse_timeout_secs = 1",
    )
    .await;
    let res = reqwest::Client::new()
        .post(format!("{}/slow", gw.public))
        .body("complete")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    let room = gw.admin_get("/admin/rooms/demo").await;
    assert_eq!(room["upstream_healthy"], false, "{room}");
}

#[tokio::test]
async fn an_http2_stream_reset_mid_body_does_not_hold_the_drip() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    type Item = Result<Frame<bytes::Bytes>, std::io::Error>;
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room(&up.url()), HOLD).await;
    let waiting = paused_fans(&gw, 2).await;

    let authority = gw.public.trim_start_matches("http://").to_string();
    for _ in 0..3 {
        let stream = TcpStream::connect(&authority).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // The body's frames come from this channel, then its error.
        let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Item>(1);
        let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
            body_rx,
            |mut rx| async { rx.recv().await.map(|item| (item, rx)) },
        )));
        let req = hyper::Request::post(format!("http://{authority}/static/upload"))
            .header("content-length", "100")
            .body(body)
            .unwrap();
        let answer = tokio::spawn(sender.send_request(req));
        body_tx
            .send(Ok(Frame::data(bytes::Bytes::from_static(b"part of it"))))
            .await
            .unwrap();
        // Give the gateway time to start forwarding, then reset the stream.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = body_tx
            .send(Err(std::io::Error::other("client gives up")))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), answer).await;
    }

    gw.patch_room("demo", serde_json::json!({"paused": false}))
        .await;
    let room = gw.admin_get("/admin/rooms/demo").await;
    assert_eq!(room["upstream_healthy"], true, "{room}");
    for fan in &waiting {
        eventually(10, "a waiting fan is admitted", || async {
            (fan.status("demo").await["state"] == "admitted").then_some(())
        })
        .await;
    }
}
