//! WebSocket pass-through, with a real WebSocket client (tokio-tungstenite)
//! and a real WebSocket echo server as the room's upstream: only an
//! admitted fan (or an exempt path) gets a tunnel, and the tunnel lasts as
//! long as the fan's session.
//!
//! Access tokens are bound to the `User-Agent`: a test [`Fan`] sends none,
//! and neither does the WebSocket client, so its cookies are the fan's own.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use reqwest::cookie::CookieStore;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The room's upstream: a WebSocket echo server on any upgrade, and
/// [`TestUpstream`]'s JSON echo for everything else. Its `101` carries
/// headers the gateway must not pass on.
struct WsUpstream {
    addr: SocketAddr,
    /// Upgrade requests that reached it.
    handshakes: Arc<AtomicU64>,
    /// WebSockets open on it now.
    open: Arc<AtomicUsize>,
    /// The last upgrade request's headers.
    last: Arc<Mutex<Option<HeaderMap>>>,
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = WsUpstream {
            addr: listener.local_addr().unwrap(),
            handshakes: Arc::default(),
            open: Arc::default(),
            last: Arc::default(),
        };
        let (handshakes, open, last) = (up.handshakes.clone(), up.open.clone(), up.last.clone());
        let count = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handshakes, open, last, count) = (
                    handshakes.clone(),
                    open.clone(),
                    last.clone(),
                    count.clone(),
                );
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (handshakes, open, last, count) = (
                        handshakes.clone(),
                        open.clone(),
                        last.clone(),
                        count.clone(),
                    );
                    async move {
                        let res = match req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() {
                            Some(key) => {
                                handshakes.fetch_add(1, Ordering::SeqCst);
                                *last.lock().unwrap() = Some(req.headers().clone());
                                accept(req, &key, open)
                            }
                            None => echo(req, &count).await,
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades(),
                );
            }
        });
        up
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Answers an upgrade with `101` and echoes every message on the WebSocket.
fn accept(
    mut req: Request<Incoming>,
    key: &HeaderValue,
    open: Arc<AtomicUsize>,
) -> Response<Full<Bytes>> {
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        open.fetch_add(1, Ordering::SeqCst);
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .header("x-waitroom-forged", "1")
        .header(header::SET_COOKIE, "wr_a_shop=forged; Path=/")
        .header(header::SET_COOKIE, "upstream_ws=ok; Path=/")
        .body(Full::default())
        .unwrap()
}

fn shop(up: &WsUpstream, extra: &str) -> String {
    room_toml(
        "shop",
        &up.url(),
        &format!(
            "path_prefix = \"/shop\"\nexempt_paths = [\"/shop/public/\"]\nadmit_rate_per_min = 6000\n{extra}"
        ),
    )
}

/// The echo upstream, a gateway with the `shop` room in front of it
/// (`room_extra`, `server_extra` added to the room's and `[server]`'s
/// config), and a fan admitted to the room.
async fn admitted_fan(room_extra: &str, server_extra: &str) -> (WsUpstream, Gateway, Fan) {
    let up = WsUpstream::start().await;
    let gw = Gateway::start_with(&shop(&up, room_extra), server_extra).await;
    let fan = Fan::new(&gw.public);
    admitted(&fan, "/shop/basket").await;
    (up, gw, fan)
}

/// Waits until the upstream's side of every tunnel is closed too.
async fn upstream_closed(up: &WsUpstream) {
    eventually(5, "the upstream's WebSockets close", || async {
        (up.open.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
}

/// A WebSocket handshake to `path` on the gateway, with the fan's cookies
/// (if any) and `accept` (if any).
async fn connect(
    gw: &Gateway,
    fan: Option<&Fan>,
    path: &str,
    accept: Option<&str>,
) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
    let ws_url = format!("{}{path}", gw.public.replacen("http://", "ws://", 1));
    let mut req = ws_url.into_client_request().unwrap();
    if let Some(cookies) = fan.and_then(|f| f.jar.cookies(&f.base.parse().unwrap())) {
        req.headers_mut().insert(header::COOKIE, cookies);
    }
    if let Some(accept) = accept {
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}

async fn echoes(ws: &mut Client, text: &str) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.as_str() == text,
        _ => false,
    }
}

/// Whether the gateway closed `ws` within `secs` (no close frame is owed:
/// the gateway cuts the connection).
async fn closed_within(ws: &mut Client, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_))) => return true,
            Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test]
async fn an_admitted_fan_s_websocket_echoes_through_and_its_101_is_hardened() {
    let (up, gw, fan) = admitted_fan("", "").await;

    let (mut ws, res) = connect(&gw, Some(&fan), "/shop/live?seat=1", None)
        .await
        .expect("the upgrade is accepted");
    assert_eq!(res.status(), 101);
    assert!(echoes(&mut ws, "hello").await);
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("no binary echo: {other:?}"),
    }

    // The 101 is rewritten like any answer: the gateway's headers and
    // cookies never come from the upstream; the upstream's own stay.
    assert!(res.headers().get("x-waitroom-forged").is_none());
    let set_cookies: Vec<_> = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set_cookies.iter().all(|c| !c.starts_with("wr_")),
        "{set_cookies:?}"
    );
    assert!(set_cookies.iter().any(|c| c.starts_with("upstream_ws=ok")));

    // The upstream sees the upgrade with exactly its two hop-by-hop
    // headers, the WebSocket ones, and none of the gateway's cookies.
    let seen = up.last.lock().unwrap().clone().unwrap();
    assert_eq!(seen[header::CONNECTION], "upgrade");
    assert_eq!(seen[header::UPGRADE], "websocket");
    assert!(seen.contains_key(header::SEC_WEBSOCKET_KEY));
    assert_eq!(seen[header::SEC_WEBSOCKET_VERSION], "13");
    let cookie = seen
        .get(header::COOKIE)
        .map(|c| c.to_str().unwrap().to_string());
    assert!(
        cookie.as_deref().is_none_or(|c| !c.contains("wr_")),
        "{cookie:?}"
    );

    ws.close(None).await.unwrap();
    upstream_closed(&up).await;
}

#[tokio::test]
async fn an_upgrade_without_access_gets_the_gate_s_answer_and_never_reaches_the_upstream() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&shop(&up, "")).await;
    // A browser's upgrade, and an app's (JSON): each answered as the same
    // request without the upgrade is (the waiting page, the JSON status).
    for accept in ["text/html", "application/json"] {
        let plain = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}/shop/live", gw.public))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let content_type = |h: &HeaderMap| h[header::CONTENT_TYPE].to_str().unwrap().to_string();
        match connect(&gw, None, "/shop/live", Some(accept)).await {
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), plain.status());
                assert_eq!(content_type(res.headers()), content_type(plain.headers()));
                let body = String::from_utf8(res.body().clone().unwrap_or_default()).unwrap();
                let expected = if accept == "application/json" {
                    "\"state\""
                } else {
                    "<html"
                };
                assert!(body.contains(expected), "{body}");
            }
            Err(e) => panic!("not the gate's answer: {e}"),
            Ok(_) => panic!("a fan without access got a WebSocket"),
        }
    }
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 0);
    // An exempt path upgrades without access, like any exempt request.
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 0);
    let (mut ws, _) = connect(&gw, None, "/shop/public/feed", None)
        .await
        .expect("an exempt path upgrades like any exempt request");
    assert!(echoes(&mut ws, "open to all").await);
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_tunnel_is_cut_when_the_checkout_ends_the_session() {
    let (up, gw, fan) = admitted_fan("", "").await;
    let (mut ws, _) = connect(&gw, Some(&fan), "/shop/live", None).await.unwrap();
    assert!(echoes(&mut ws, "before").await);

    let done = fan.get("/shop/confirm?set=waitroom-session:end").await;
    assert_eq!(done.status(), 200);
    assert!(
        closed_within(&mut ws, 4).await,
        "the tunnel outlived the session"
    );
    upstream_closed(&up).await;
    // And the fan cannot open another.
    assert!(connect(&gw, Some(&fan), "/shop/live", None).await.is_err());
}

#[tokio::test]
async fn the_tunnel_is_cut_at_session_max_secs_however_busy() {
    let (_up, gw, fan) = admitted_fan("session_secs = 10\nsession_max_secs = 10", "").await;
    let started = Instant::now();
    let (mut ws, _) = connect(&gw, Some(&fan), "/shop/live", None).await.unwrap();
    // Busy all along: activity slides an idle end, never the maximum.
    let mut echoed = 0;
    while echoes(&mut ws, "busy").await {
        echoed += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(started.elapsed() < Duration::from_secs(13), "never cut");
    }
    assert!(
        started.elapsed() > Duration::from_secs(7),
        "cut early, after {echoed} echoes in {:?}",
        started.elapsed()
    );
}

/// Open file descriptors of this process (the gateway runs in it).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_thousand_open_close_cycles_leave_no_connection_task_or_descriptor_behind() {
    let (up, gw, fan) = admitted_fan("", "").await;
    let gauge = "waitroom_connections_open{listener=\"public\"}";
    let runtime = tokio::runtime::Handle::current().metrics();
    let (connections, tasks, fds) = (
        metric(&gw.metrics().await, gauge),
        runtime.num_alive_tasks(),
        open_fds(),
    );

    for i in 0..1000 {
        let (mut ws, _) = connect(&gw, Some(&fan), "/shop/live", None)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        assert!(echoes(&mut ws, "ping").await, "cycle {i}");
        ws.close(None).await.unwrap();
        assert!(closed_within(&mut ws, 5).await, "cycle {i}");
    }

    eventually(10, "every tunnel, task and descriptor is gone", || async {
        let now = (
            metric(&gw.metrics().await, gauge),
            runtime.num_alive_tasks(),
            open_fds(),
            up.open.load(Ordering::SeqCst),
        );
        // The metrics request's own connection may still be open.
        (now.0 <= connections + 1 && now.1 <= tasks + 2 && now.2 <= fds + 4 && now.3 == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_quiet_tunnel_counts_as_in_flight_and_outlives_the_idle_timeout() {
    let (_up, gw, fan) = admitted_fan("", "idle_timeout_secs = 1").await;
    let (mut ws, _) = connect(&gw, Some(&fan), "/shop/live", None).await.unwrap();
    assert!(
        !closed_within(&mut ws, 3).await,
        "closed as an idle connection"
    );
    assert!(echoes(&mut ws, "still here").await);
}

#[tokio::test]
async fn a_drain_lets_a_tunnel_run_through_the_grace_period_then_cuts_it() {
    // The test config's grace period is 5 s.
    let (_up, mut gw, fan) = admitted_fan("", "").await;
    let (mut ws, _) = connect(&gw, Some(&fan), "/shop/live", None).await.unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(async move { gw.stop().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(echoes(&mut ws, "during the drain").await);
    assert!(!stopping.is_finished(), "the drain waits for the tunnel");
    assert!(closed_within(&mut ws, 6).await, "never cut");
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "cut before the grace period ended: {:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the gateway stops once its tunnels are cut")
        .unwrap();
}
