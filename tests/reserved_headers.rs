//! The headers and cookies the gateway owns cross it in neither direction,
//! whatever their spelling, and the forwarding headers an upstream reads
//! say who the peer was, not what the client claimed.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn exempt_room(upstream: &str) -> String {
    room_toml(
        "demo",
        upstream,
        "exempt_paths = [\"/static/\"]\nadmit_rate_per_min = 6000",
    )
}

#[tokio::test]
async fn client_copies_of_forwarding_and_gateway_headers_do_not_reach_the_upstream() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&exempt_room(&up.url())).await;
    let echo: Value = reqwest::Client::new()
        .get(format!("{}/static/a.css", gw.public))
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-real-ip", "6.6.6.6")
        .header("x_waitroom_token", "forged")
        .header("x-waitroom", "1")
        .header("waitroom-grant", "forged")
        .header("waitroom_grant", "forged")
        .header(
            "cookie",
            "a=1, wr_a_demo=x; \"wr_q_demo\"=y; keep=1;  wr_a_demo =z",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = &echo["headers"];
    assert_eq!(headers["forwarded"], "for=127.0.0.1", "{headers}");
    assert_eq!(headers["x-real-ip"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    for gone in [
        "x_waitroom_token",
        "x-waitroom",
        "waitroom-grant",
        "waitroom_grant",
    ] {
        assert!(headers.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(headers["cookie"], "a=1; keep=1", "{headers}");
}

/// A raw upstream that answers every request with the gateway's headers
/// and cookies forged: `101 Switching Protocols` for paths with `switch`,
/// `200` for the rest.
async fn forging_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // Requests here carry no body: a head ends the request.
                    let end = loop {
                        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    };
                    let switch = String::from_utf8_lossy(&head[..end]).contains("switch");
                    head.drain(..end);
                    let forged = "x-waitroom-token: forged\r\nx_waitroom_state: forged\r\nwaitroom-grant: forged\r\nset-cookie: wr_a_demo=forged; Path=/\r\nset-cookie: \"wr_q_demo\"=forged; Path=/\r\nset-cookie: theirs=1; Path=/\r\n";
                    let answer = if switch {
                        format!("HTTP/1.1 101 Switching Protocols\r\n{forged}\r\n")
                    } else {
                        format!("HTTP/1.1 200 OK\r\n{forged}content-length: 2\r\n\r\nok")
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() || switch {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The head of the gateway's answer to a bodiless GET of `path`, lowercased.
async fn answer_head(gw: &Gateway, path: &str) -> String {
    let mut stream = TcpStream::connect(gw.public.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("an answer");
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test]
async fn upstream_answers_cannot_carry_gateway_headers_or_set_gateway_cookies() {
    let up = forging_upstream().await;
    let gw = Gateway::start(&exempt_room(&up)).await;
    for path in ["/static/page", "/static/switch"] {
        let head = answer_head(&gw, path).await;
        assert!(
            head.starts_with("http/1.1 200") || head.starts_with("http/1.1 101"),
            "{head}"
        );
        assert!(!head.contains("waitroom"), "{path}: {head}");
        assert!(!head.contains("wr_a_") && !head.contains("wr_q_"), "{head}");
        assert!(head.contains("set-cookie: theirs=1"), "{head}");
    }
}

#[tokio::test]
async fn the_gateways_own_access_cookie_survives_an_upstream_forging_it() {
    let up = forging_upstream().await;
    let gw = Gateway::start(&exempt_room(&up)).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    eventually(5, "admitted", || async {
        (fan.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    let res = fan.get("/checkout").await;
    assert_eq!(res.status(), 200);
    let set: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set.iter().any(|c| c.starts_with("wr_a_demo=")),
        "the gateway's own cookie: {set:?}"
    );
    assert!(!set.iter().any(|c| c.contains("forged")), "{set:?}");
    let access = fan.cookie("wr_a_demo").expect("an access cookie");
    assert_ne!(access, "forged");
    assert_eq!(fan.get("/checkout").await.status(), 200, "still admitted");
}
