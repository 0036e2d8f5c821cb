//! Durability with the real binary: `kill -9` and restart lose no issued
//! place, never reissue a sequence number, never admit a claimed place
//! twice; SIGTERM drains and persists.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn write_config(dir: &std::path::Path, upstream: &str) -> std::path::PathBuf {
    let text = config_toml(
        &dir.join("state"),
        &room_toml("demo", upstream, "admit_rate_per_min = 6000"),
        "",
    );
    let path = dir.join("waitroom.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn status_with(base: &str, token: &str) -> Value {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{base}/_waitroom/status?room=demo");
    let (_, v) = bearer_json(&c, reqwest::Method::GET, url, token, None).await;
    v
}

#[tokio::test]
async fn kill_9_and_restart_keeps_places_claims_and_never_reuses_numbers() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let gw = Proc::start(&config);

    // Fan A gets in and claims.
    let a = Fan::new(&gw.public);
    a.get("/").await;
    eventually(5, "A admitted", || async {
        (a.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    assert_eq!(a.get("/buy").await.status(), 200);
    let a_queue_token = a.cookie("wr_q_demo").unwrap();

    // The room pauses; B, C, D wait.
    gw.admin(
        reqwest::Method::PATCH,
        "/admin/rooms/demo",
        Some(json!({"paused": true})),
    )
    .await;
    let mut waiting: Vec<Fan> = (0..3).map(|_| Fan::new(&gw.public)).collect();
    for f in &waiting {
        f.get("/").await;
    }
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for f in &waiting {
            v.push(f.status("demo").await["position"].clone());
        }
        v
    };
    assert_eq!(before, vec![json!(1), json!(2), json!(3)]);
    let issued_before = gw
        .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
        .await["issued"]
        .as_u64()
        .unwrap();

    gw.kill_9();
    let gw = Proc::start(&config);
    for (f, pos) in waiting.iter_mut().zip(&before) {
        f.base = gw.public.clone();
        let s = f.status("demo").await;
        assert_eq!(&s["position"], pos, "place kept across kill -9");
        assert_eq!(s["state"], "paused", "the pause survived too");
    }
    // A's session still works; A's place cannot be claimed again.
    let mut a = a;
    a.base = gw.public.clone();
    assert_eq!(
        a.get("/buy").await.status(),
        200,
        "access token still valid after restart"
    );
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/_waitroom/claim?room=demo", gw.public))
        .bearer_auth(&a_queue_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "a claimed place is never admitted twice");

    // A newcomer gets a number above every number issued before the crash.
    let e = Fan::new(&gw.public);
    e.get("/").await;
    let room = gw
        .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
        .await;
    assert!(room["issued"].as_u64().unwrap() > issued_before, "{room}");
    let e_token = e.cookie("wr_q_demo").unwrap();
    let e_pos = status_with(&gw.public, &e_token).await["position"]
        .as_u64()
        .unwrap();
    assert!(e_pos > 3, "behind everyone who was waiting: {e_pos}");
    gw.kill_9();
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_persists_progress() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &up.url());
    let gw = Proc::start(&config);
    let fans: Vec<Fan> = (0..3).map(|_| Fan::new(&gw.public)).collect();
    for f in &fans {
        f.get("/").await;
    }
    eventually(5, "all admitted", || async {
        for f in &fans {
            if f.status("demo").await["state"] != "admitted" {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(fans[0].get("/").await.status(), 200);
    let serving = gw
        .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
        .await["serving_counter"]
        .clone();

    // A slow request is in flight when SIGTERM arrives: it still completes.
    let slow = {
        let client = fans[0].client.clone();
        let url = format!("{}/slow", gw.public);
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || gw.sigterm())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "in-flight request finished during drain"
    );

    let gw = Proc::start(&config);
    let room = gw
        .admin(reqwest::Method::GET, "/admin/rooms/demo", None)
        .await;
    assert_eq!(
        room["serving_counter"], serving,
        "progress persisted on shutdown"
    );
    for f in &fans[1..] {
        let token = f.cookie("wr_q_demo").unwrap();
        let s = status_with(&gw.public, &token).await;
        assert_eq!(s["state"], "admitted", "called places keep their turn: {s}");
    }
    gw.kill_9();
}
