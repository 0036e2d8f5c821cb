//! Live updates over Server-Sent Events, parsed by a real SSE client
//! (`eventsource-stream`) over real sockets.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn open_events(gw: &Gateway, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "{}/_waitroom/events?room=demo&token={token}",
            gw.public
        ));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

async fn join(gw: &Gateway) -> String {
    let v: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn data(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

#[tokio::test]
async fn stream_sends_position_at_once_then_updates_then_admitted() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 120")).await;
    gw.patch_room("demo", json!({"paused": true})).await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(join(&gw).await);
    }
    let res = open_events(&gw, &tokens[3], None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let mut events = res.bytes_stream().eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "paused");
    assert!(!first.id.is_empty());
    assert_eq!(first.retry, Some(Duration::from_millis(3000)));
    let d = data(&first);
    assert_eq!(d["position"], 4);
    assert_eq!(d["eta_reason"], "paused");
    for key in [
        "room",
        "state",
        "position",
        "eta_seconds",
        "queue_length",
        "admit_rate_per_min",
    ] {
        assert!(d.get(key).is_some(), "{key}");
    }

    // Resuming moves the line: positions only go down, then the turn comes.
    gw.patch_room("demo", json!({"paused": false})).await;
    let mut last_position = 4;
    let admitted = loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        let d = data(&e);
        if e.event == "admitted" {
            break d;
        }
        assert_eq!(e.event, "position", "{d}");
        let p = d["position"].as_u64().unwrap();
        assert!(
            p <= last_position,
            "position went up: {p} after {last_position}"
        );
        last_position = p;
    };
    assert_eq!(admitted["url"], "/");
    assert!(admitted["claim_within_secs"].as_u64().unwrap() > 0);
    assert!(
        events.next().await.is_none(),
        "the stream ends after admitted"
    );
}

#[tokio::test]
async fn last_event_id_is_honoured_and_bad_ones_are_refused() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let _ahead = join(&gw).await;
    let token = join(&gw).await;
    let mut events = open_events(&gw, &token, None)
        .await
        .bytes_stream()
        .eventsource();
    let first = events.next().await.unwrap().unwrap();
    let epoch = first.id.split_once('-').unwrap().0.to_string();
    assert_eq!(data(&first)["position"], 2);

    // Reconnecting with an id that says the fan already saw serving = 1:
    // the position shown never goes back up to 2.
    let res = open_events(&gw, &token, Some(&format!("{epoch}-1"))).await;
    assert_eq!(res.status(), 200);
    let again = res
        .bytes_stream()
        .eventsource()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&again)["position"], 1);
    assert_eq!(again.id, format!("{epoch}-1"));

    // An id from another epoch is ignored, not trusted.
    let res = open_events(&gw, &token, Some("12345-99")).await;
    let other = res
        .bytes_stream()
        .eventsource()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&other)["position"], 2);

    for bad in ["junk", "1-", "x-1", "1-2-3"] {
        let res = open_events(&gw, &token, Some(bad)).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"],
            "invalid_header"
        );
    }
}

#[tokio::test]
async fn bad_tokens_and_methods_on_the_stream_are_answered_cleanly() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = c
        .get(format!(
            "{}/_waitroom/events?room=demo&token=junk",
            gw.public
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["reason"], "malformed");
    let res = c
        .get(format!("{}/_waitroom/events?room=demo", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "missing_token");
    let res = c
        .post(format!("{}/_waitroom/events?room=demo", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let res = c
        .get(format!("{}/_waitroom/events?room=nope&token=x", gw.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // The cookie works as well as ?token= (browsers' EventSource sends it).
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    let res = fan.get("/_waitroom/events?room=demo").await;
    assert_eq!(res.status(), 200);
    assert!(gw.metrics().await.contains("reason=\"malformed\""));
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "admit_rate_per_min = 1"),
        "[sse]\nheartbeat_secs = 1",
    )
    .await;
    gw.patch_room("demo", json!({"paused": true})).await;
    let token = join(&gw).await;
    let mut res = open_events(&gw, &token, None).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains(": keep-alive") {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("a heartbeat in time")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("retry: 3000\n"), "{text}");
}

#[tokio::test]
async fn the_connection_cap_answers_503_with_retry_after() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "admit_rate_per_min = 1"),
        "[sse]\nmax_connections = 2",
    )
    .await;
    let token = join(&gw).await;
    let a = open_events(&gw, &token, None).await;
    let b = open_events(&gw, &token, None).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = open_events(&gw, &token, None).await;
    assert_eq!(c.status(), 503);
    assert!(c.headers().contains_key("retry-after"));
    assert_eq!(
        c.json::<Value>().await.unwrap()["error"],
        "too_many_streams"
    );
    drop(a);
    eventually(5, "a slot frees up when a client leaves", || async {
        let r = open_events(&gw, &token, None).await;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_connects_and_disconnects_leave_no_stream_or_task_behind() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let token = join(&gw).await;
    let app = gw.running.as_ref().unwrap().app.clone();
    let addr = gw.running.as_ref().unwrap().public_addr;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let request =
        format!("GET /_waitroom/events?room=demo&token={token} HTTP/1.1\r\nHost: t\r\n\r\n");
    for _ in 0..10_000 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        drop(s);
    }
    eventually(10, "every stream released", || async {
        (app.sse_open.load(Ordering::Relaxed) == 0 && metrics.num_alive_tasks() <= baseline + 2)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn draining_sends_a_jittered_retry_and_closes_streams() {
    let up = TestUpstream::start().await;
    let mut gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let token = join(&gw).await;
    let mut res = open_events(&gw, &token, None).await;
    let first = res.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"retry: 3000\n"));
    let stop = tokio::spawn(async move {
        gw.stop().await;
        gw
    });
    let mut rest = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(10), res.chunk())
        .await
        .unwrap()
    {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let retry: u64 = rest
        .trim()
        .strip_prefix("retry: ")
        .unwrap_or_else(|| panic!("expected a retry hint, got {rest:?}"))
        .parse()
        .unwrap();
    assert!((3000..6000).contains(&retry), "{retry}");
    stop.await.unwrap();
}

#[tokio::test]
async fn a_rate_cut_says_why_the_wait_grew() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6")).await;
    let _ahead = join(&gw).await;
    let token = join(&gw).await;
    let mut events = open_events(&gw, &token, None)
        .await
        .bytes_stream()
        .eventsource();
    let first = data(&events.next().await.unwrap().unwrap());
    assert_eq!(first["eta_reason"], Value::Null);
    gw.patch_room("demo", json!({"admit_rate_per_min": 1}))
        .await;
    let e = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let d = data(&e);
    assert_eq!(d["eta_reason"], "rate_lowered");
    assert!(
        d["eta_seconds"].as_u64() > first["eta_seconds"].as_u64(),
        "{first} then {d}"
    );
}

#[tokio::test]
async fn a_room_reset_ends_open_streams_with_expired() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let _ahead = join(&gw).await;
    let token = join(&gw).await;
    let mut events = open_events(&gw, &token, None)
        .await
        .bytes_stream()
        .eventsource();
    assert_eq!(data(&events.next().await.unwrap().unwrap())["position"], 2);
    let res = gw
        .admin_client()
        .post(format!("{}/admin/rooms/demo/reset", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let e = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.event, "expired", "{}", e.data);
    assert!(events.next().await.is_none(), "the stream ends");
}

/// A fan far back is told their new position about a tenth of their wait
/// apart, not every second the line moves, yet hears a pause at once.
#[tokio::test]
async fn a_fan_far_back_gets_paced_position_updates_but_hears_a_pause_at_once() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "admit_rate_per_min = 600"),
        "[sse]\nheartbeat_secs = 60",
    )
    .await;
    gw.patch_room("demo", json!({"paused": true})).await;
    // 3,000 fans ahead at ten a second: a wait of about five minutes, so
    // position updates some 30 s apart.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/_waitroom/join?room=demo", gw.public);
    let joined: Vec<u16> = futures_util::stream::iter(0..3000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.post(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(joined.iter().all(|&s| s == 200), "every join answered 200");
    let token = join(&gw).await;
    let mut events = open_events(&gw, &token, None)
        .await
        .bytes_stream()
        .eventsource();
    let wait = Duration::from_secs;
    let first = tokio::time::timeout(wait(5), events.next()).await;
    assert_eq!(first.unwrap().unwrap().unwrap().event, "paused");

    gw.patch_room("demo", json!({"paused": false})).await;
    let e = tokio::time::timeout(wait(5), events.next()).await;
    let e = e.unwrap().unwrap().unwrap();
    assert_eq!(e.event, "position", "the resume itself is told at once");
    let shown = data(&e)["position"].as_u64().unwrap();
    assert!(shown > 2900, "{shown}");

    // The line moves on (the status endpoint says so), the stream holds.
    let held = tokio::time::timeout(wait(4), events.next()).await;
    assert!(
        held.is_err(),
        "no position update a few seconds after the last: {held:?}"
    );
    let url = format!("{}/_waitroom/status?room=demo", gw.public);
    let (_, status) = bearer_json(&client, reqwest::Method::GET, url, &token, None).await;
    let now = status["position"].as_u64().unwrap();
    assert!(now < shown, "the line moved: {now} after {shown}");

    gw.patch_room("demo", json!({"paused": true})).await;
    let e = tokio::time::timeout(wait(10), events.next()).await;
    let e = e.expect("the pause in time").unwrap().unwrap();
    assert_eq!(e.event, "paused", "{}", e.data);
}
