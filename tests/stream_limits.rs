//! Event streams are limited per place and per client address, so one
//! token or one machine cannot take a node's whole `sse.max_connections`;
//! the oldest stream of a place gives way to the newest with a terminal
//! `superseded` event. Real sockets, real SSE parsing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn join(gw: &Gateway) -> String {
    let v: Value = client()
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}

async fn open_events(c: &reqwest::Client, gw: &Gateway, token: &str) -> reqwest::Response {
    c.get(format!(
        "{}/_waitroom/events?room=demo&token={token}",
        gw.public
    ))
    .send()
    .await
    .unwrap()
}

/// `waitroom_sse_streams_total{outcome}` from the metrics page.
async fn streams_total(gw: &Gateway, outcome: &str) -> u64 {
    let text = gw.metrics().await;
    let key = format!("waitroom_sse_streams_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn paused_room(extra_top: &str) -> (TestUpstream, Gateway) {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&room_toml("demo", &up.url(), ""), extra_top).await;
    gw.patch_room("demo", json!({"paused": true})).await;
    (up, gw)
}

#[tokio::test]
async fn six_hundred_streams_on_one_token_leave_room_for_other_fans() {
    let (_up, gw) =
        paused_room("[sse]\nmax_connections = 600\nmax_streams_per_client = 100000").await;
    let token = join(&gw).await;
    let c = client();
    let mut held = Vec::new();
    for i in 0..600 {
        let res = open_events(&c, &gw, &token).await;
        assert_eq!(res.status(), 200, "stream {i} on the one token");
        held.push(res);
    }
    // Another fan still gets a stream: the token holds at most 4 of the 600.
    let other = join(&gw).await;
    let app = gw.running.as_ref().unwrap().app.clone();
    eventually(10, "superseded streams give their slots back", || async {
        (app.sse_open.load(Ordering::Relaxed) <= 4).then_some(())
    })
    .await;
    let res = open_events(&client(), &gw, &other).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_eq!(streams_total(&gw, "superseded").await, 596);
}

#[tokio::test]
async fn the_fifth_stream_of_a_place_supersedes_the_first_which_ends_without_a_retry() {
    let (_up, gw) = paused_room("").await;
    let token = join(&gw).await;
    let c = client();
    let mut first = open_events(&c, &gw, &token)
        .await
        .bytes_stream()
        .eventsource();
    assert_eq!(first.next().await.unwrap().unwrap().event, "paused");
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(open_events(&c, &gw, &token).await);
    }
    assert_eq!(streams_total(&gw, "superseded").await, 0, "four fit");
    later.push(open_events(&c, &gw, &token).await);

    let last = tokio::time::timeout(Duration::from_secs(10), first.next())
        .await
        .expect("the first stream hears of it in time")
        .expect("an event before the end")
        .unwrap();
    assert_eq!(last.event, "superseded");
    assert_eq!(last.retry, None, "nothing invites a reconnect");
    let data: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(data["state"], "superseded");
    assert_eq!(data["room"], "demo");
    assert!(
        data["message"].as_str().unwrap().contains("another tab"),
        "{data}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), first.next())
        .await
        .expect("the stream ends in time");
    assert!(end.is_none(), "the superseded stream ends: {end:?}");
    assert_eq!(streams_total(&gw, "superseded").await, 1);
    for res in &later {
        assert_eq!(res.status(), 200);
    }

    // Every count drops when the streams go: no leak per place or address.
    drop(later);
    let app = gw.running.as_ref().unwrap().app.clone();
    eventually(15, "closed streams leave nothing behind", || async {
        (app.sse_open.load(Ordering::Relaxed) == 0
            && app.streams.places() == 0
            && app.streams.clients() == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn one_address_gets_its_stream_budget_then_429_until_one_closes() {
    // A heartbeat a second: a closed client is noticed at the next write.
    let (_up, gw) = paused_room("[sse]\nmax_streams_per_client = 3\nheartbeat_secs = 1").await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(join(&gw).await);
    }
    let c = client();
    let mut open = Vec::new();
    for t in &tokens[..3] {
        let res = open_events(&c, &gw, t).await;
        assert_eq!(res.status(), 200);
        open.push(res);
    }
    let refused = open_events(&c, &gw, &tokens[3]).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_client_streams");
    assert_eq!(streams_total(&gw, "refused_client_budget").await, 1);

    // The client hangs up one stream: its share comes back.
    drop(open.remove(0));
    let app = gw.running.as_ref().unwrap().app.clone();
    eventually(15, "the closed stream is given back", || async {
        (app.sse_open.load(Ordering::Relaxed) == 2).then_some(())
    })
    .await;
    let res = open_events(&c, &gw, &tokens[3]).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn draining_releases_every_stream_count() {
    let (_up, mut gw) = paused_room("").await;
    let token = join(&gw).await;
    let c = client();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut events = open_events(&c, &gw, &token)
            .await
            .bytes_stream()
            .eventsource();
        assert_eq!(events.next().await.unwrap().unwrap().event, "paused");
        streams.push(events);
    }
    let app = gw.running.as_ref().unwrap().app.clone();
    assert_eq!((app.streams.places(), app.streams.clients()), (1, 1));
    gw.stop().await;
    assert_eq!(app.sse_open.load(Ordering::Relaxed), 0);
    assert_eq!((app.streams.places(), app.streams.clients()), (0, 0));
}
