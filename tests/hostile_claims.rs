//! Claims under attack on the embedded store: a copied queue token never
//! buys a second entry, a lost answer stays recoverable for the claimant
//! alone, and a pause or closing holds fans who were already called.
//! (The same rules on three Redis replicas are in `tests/shared.rs`.)

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A browser request to `path` carrying exactly these cookies.
async fn get_with_cookies(base: &str, path: &str, cookies: &str) -> reqwest::Response {
    client()
        .get(format!("{base}{path}"))
        .header("accept", "text/html")
        .header("cookie", cookies)
        .send()
        .await
        .unwrap()
}

/// `POST /_waitroom/claim` as an app, with an optional `Idempotency-Key`.
async fn claim(base: &str, token: &str, key: Option<&str>) -> (reqwest::StatusCode, Value) {
    let mut req = client()
        .post(format!("{base}/_waitroom/claim?room=demo"))
        .bearer_auth(token)
        .header("accept", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn app_join(base: &str) -> String {
    let v: Value = client()
        .post(format!("{base}/_waitroom/join?room=demo"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().expect("a token").to_string()
}

async fn app_status(base: &str, token: &str) -> Value {
    let url = format!("{base}/_waitroom/status?room=demo");
    bearer_json(&client(), reqwest::Method::GET, url, token, None)
        .await
        .1
}

async fn until_called(base: &str, token: &str) {
    eventually(10, "the fan's turn comes", || async {
        (app_status(base, token).await["state"] == "admitted").then_some(())
    })
    .await;
}

/// Set-Cookie values of a response, as `name=value` pairs.
fn set_cookies(res: &reqwest::Response) -> Vec<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_browser_whose_claim_answer_was_lost_gets_in_again_but_a_copy_of_its_queue_cookie_does_not()
 {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let fan = Fan::new(&gw.public);
    let first = fan.get("/buy").await;
    assert_eq!(first.status(), 200);
    let queue = fan.cookie("wr_q_demo").expect("queue cookie");
    let key = fan
        .cookie("wr_k_demo")
        .expect("the waiting page gives the browser its claim key before its turn");
    eventually(5, "called", || async {
        (fan.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;

    // The claim: let through, but the answer (and its access cookie) is lost.
    let both = format!("wr_q_demo={queue}; wr_k_demo={key}");
    let res = get_with_cookies(&gw.public, "/buy", &both).await;
    assert_eq!(res.status(), 200);
    assert!(set_cookies(&res).iter().any(|(k, _)| k == "wr_a_demo"));
    // Asked again by the same browser: the same place's session again.
    let res = get_with_cookies(&gw.public, "/buy", &both).await;
    assert_eq!(
        res.status(),
        200,
        "a retry with the claim key is let through"
    );
    assert!(set_cookies(&res).iter().any(|(k, _)| k == "wr_a_demo"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["upstream"], true);

    // Copies of the queue cookie: alone, or with a claim key of their own.
    let other_key = format!("{:032x}", rand::random::<u128>());
    for cookies in [
        format!("wr_q_demo={queue}"),
        format!("wr_q_demo={queue}; wr_k_demo={other_key}"),
        format!("wr_q_demo={queue}; wr_k_demo=not-a-key"),
    ] {
        let res = get_with_cookies(&gw.public, "/buy", &cookies).await;
        assert_eq!(res.status(), 403, "{cookies}");
        assert!(res.text().await.unwrap().contains("already been used"));
    }
    let (status, v) = claim(&gw.public, &queue, None).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (403, Some("place_already_used"))
    );
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "only the fan got through"
    );
}

#[tokio::test]
async fn an_app_retries_a_lost_claim_with_its_idempotency_key_and_nobody_else_can() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let token = app_join(&gw.public).await;
    until_called(&gw.public, &token).await;
    let key = "app-attempt-7f3a9c2e";
    let (status, first) = claim(&gw.public, &token, Some(key)).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = claim(&gw.public, &token, Some(key)).await;
    assert_eq!(status, 200, "the same key again is the same claim: {again}");
    let access = again["access_token"].as_str().unwrap();
    let res = client()
        .get(format!("{}/cart", gw.public))
        .header("x-waitroom-token", access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["upstream"], true);

    for copier_key in [None, Some("someone-elses-key-123")] {
        let (status, v) = claim(&gw.public, &token, copier_key).await;
        assert_eq!(status, 403, "{copier_key:?}: {v}");
        assert_eq!(v["error"], "place_already_used");
    }
    let refused = gw.metrics().await;
    assert!(
        refused
            .contains(r#"waitroom_refused_claims_total{reason="already_claimed",room="demo"} 2"#),
        "{refused}"
    );
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_a_400_that_costs_no_place() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let token = app_join(&gw.public).await;
    until_called(&gw.public, &token).await;
    for bad in ["short", "has space in it", &"x".repeat(129)] {
        let (status, v) = claim(&gw.public, &token, Some(bad)).await;
        assert_eq!(status, 400, "{bad:?}: {v}");
        assert_eq!(v["error"], "invalid_header");
        assert!(v["message"].as_str().unwrap().contains("Idempotency-Key"));
    }
    let (status, _) = claim(&gw.public, &token, Some("a-good-key-at-last")).await;
    assert_eq!(status, 200, "the place was still there to claim");
}

#[tokio::test]
async fn a_pause_holds_called_fans_and_stops_their_claim_window_until_it_resumes() {
    let up = TestUpstream::start().await;
    // The shortest claim window config allows.
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 6000\nclaim_grace_secs = 5",
    ))
    .await;
    let browser = Fan::new(&gw.public);
    browser.get("/buy").await;
    let app = app_join(&gw.public).await;
    until_called(&gw.public, &app).await;
    eventually(5, "browser called", || async {
        (browser.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;

    gw.patch_room("demo", json!({"paused": true})).await;
    let s = app_status(&gw.public, &app).await;
    assert_eq!(s["state"], "paused", "{s}");
    assert!(s["url"].is_null(), "nowhere to go while paused: {s}");
    let (status, v) = claim(&gw.public, &app, Some("app-key-000001")).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (409, Some("room_paused"))
    );
    let res = browser.get("/buy").await;
    assert_eq!(res.status(), 200);
    assert!(
        !res.text().await.unwrap().contains("\"upstream\""),
        "the waiting page, not the checkout"
    );
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        0,
        "nobody got in while paused"
    );

    // Longer than the whole claim window: a stopped clock loses nothing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    gw.patch_room("demo", json!({"paused": false})).await;
    eventually(5, "called again after the pause", || async {
        (app_status(&gw.public, &app).await["state"] == "admitted").then_some(())
    })
    .await;
    let (status, v) = claim(&gw.public, &app, Some("app-key-000001")).await;
    assert_eq!(status, 200, "{v}");
    let res = browser.get("/buy").await;
    assert_eq!(res.json::<Value>().await.unwrap()["upstream"], true);
}

#[tokio::test]
async fn a_closed_room_shows_called_fans_the_closed_message_and_lets_none_in() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 6000\nclosed_message = \"Sold out, thank you\"",
    ))
    .await;
    let browser = Fan::new(&gw.public);
    browser.get("/buy").await;
    let app = app_join(&gw.public).await;
    until_called(&gw.public, &app).await;

    gw.patch_room("demo", json!({"closed": true})).await;
    let s = app_status(&gw.public, &app).await;
    assert_eq!(s["state"], "closed", "{s}");
    assert_eq!(s["message"], "Sold out, thank you");
    let (status, v) = claim(&gw.public, &app, None).await;
    assert_eq!(
        (status.as_u16(), v["error"].as_str()),
        (409, Some("room_closed"))
    );
    let res = browser.get("/buy").await;
    assert!(res.text().await.unwrap().contains("Sold out, thank you"));
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}
