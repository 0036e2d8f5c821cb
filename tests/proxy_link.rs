//! The upstream link: a downstream HTTP/1 connection keeps one upstream
//! connection of its own, and a request the upstream never received (its
//! idle connection had closed) goes over a new one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 upstream that counts the connections it accepts and
/// answers `ok` to each request; with `close_after_answer` it closes the
/// connection after every answer without saying so (no `Connection:
/// close`), as an upstream's idle timeout would.
struct CountingUpstream {
    url: String,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

async fn counting_upstream(close_after_answer: bool) -> CountingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (conns, reqs) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Requests here carry no body: a head ends the request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        if close_after_answer {
                            return;
                        }
                    }
                }
            });
        }
    });
    CountingUpstream {
        url,
        connections,
        requests,
    }
}

/// A client that keeps one keep-alive connection to the gateway.
fn one_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// GETs an exempt static file through the gateway: status and body.
async fn get_static(client: &reqwest::Client, gw: &Gateway, file: &str) -> (u16, String) {
    let res = client
        .get(format!("{}/shop/static/{file}", gw.public))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn exempt_room(upstream: &str) -> String {
    room_toml(
        "shop",
        upstream,
        "path_prefix = \"/shop\"\nexempt_paths = [\"/shop/static/\"]",
    )
}

#[tokio::test]
async fn a_keep_alive_client_has_one_upstream_connection_for_all_its_requests() {
    let up = counting_upstream(false).await;
    let mut gw = Gateway::start(&exempt_room(&up.url)).await;
    let client = one_connection_client();
    for i in 0..5 {
        let (status, body) = get_static(&client, &gw, &format!("{i}.css")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok");
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_request_after_the_upstream_closed_its_connection_goes_over_a_new_one() {
    let up = counting_upstream(true).await;
    let mut gw = Gateway::start(&exempt_room(&up.url)).await;
    let client = one_connection_client();
    for i in 0..4 {
        // Half the time the close is seen before the next request, half
        // the time the request finds the connection already gone.
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = get_static(&client, &gw, &format!("{i}.css")).await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(body, "ok");
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
    assert_eq!(up.connections.load(Ordering::SeqCst), 4);
    gw.stop().await;
}

#[tokio::test]
async fn separate_clients_have_separate_upstream_connections() {
    let up = counting_upstream(false).await;
    let mut gw = Gateway::start(&exempt_room(&up.url)).await;
    for _ in 0..2 {
        let client = one_connection_client();
        for _ in 0..2 {
            let (status, _) = get_static(&client, &gw, "a.css").await;
            assert_eq!(status, 200);
        }
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

#[tokio::test]
async fn http2_clients_still_reach_the_upstream() {
    let up = counting_upstream(false).await;
    let mut gw = Gateway::start(&exempt_room(&up.url)).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answers = futures_util::future::join_all((0..4).map(|i| {
        client
            .get(format!("{}/shop/static/{i}.css", gw.public))
            .send()
    }))
    .await;
    for res in answers {
        let res = res.unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "ok");
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
    gw.stop().await;
}
