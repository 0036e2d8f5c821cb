//! The gateway end to end over real sockets: a real upstream, real HTTP
//! clients with cookie jars, the admin API.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn first_visit_gets_a_place_a_waiting_page_and_a_safe_cookie() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let fan = Fan::new(&gw.public);
    let res = fan.get("/tickets").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("wr_q_demo="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    assert!(!set_cookie.contains("Secure"), "plain http: no Secure");
    let body = res.text().await.unwrap();
    assert!(body.contains("Your place in line"), "{body}");
    assert!(body.contains("aria-live"));
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );

    // A refresh keeps the same place.
    let first = fan.status("demo").await;
    fan.get("/tickets").await;
    let again = fan.status("demo").await;
    assert_eq!(first["position"], again["position"]);
    assert_eq!(again["state"], "waiting");
}

#[tokio::test]
async fn json_clients_get_the_status_document_on_the_protected_route() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let fan = Fan::new(&gw.public);
    let v: Value = fan.get_json("/").await.json().await.unwrap();
    for key in [
        "room",
        "state",
        "position",
        "eta_seconds",
        "queue_length",
        "admit_rate_per_min",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["room"], "demo");
    assert_eq!(v["state"], "waiting");
}

#[tokio::test]
async fn fans_are_admitted_in_fifo_order_and_reach_the_upstream() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 600")).await;
    gw.patch_room("demo", json!({"paused": true})).await;
    let mut fans = Vec::new();
    for _ in 0..20 {
        let f = Fan::new(&gw.public);
        assert_eq!(f.get("/").await.status(), 200);
        fans.push(f);
    }
    let positions: Vec<u64> = {
        let mut p = Vec::new();
        for f in &fans {
            p.push(f.status("demo").await["position"].as_u64().unwrap());
        }
        p
    };
    assert_eq!(
        positions,
        (1..=20).collect::<Vec<_>>(),
        "places follow arrival order"
    );
    gw.patch_room("demo", json!({"paused": false})).await;

    // Whenever fan i has been admitted, every fan before i has been too.
    let mut admitted = vec![false; fans.len()];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !admitted.iter().all(|a| *a) {
        assert!(
            std::time::Instant::now() < deadline,
            "not all admitted: {admitted:?}"
        );
        for (i, f) in fans.iter().enumerate() {
            if f.status("demo").await["state"] == "admitted" {
                admitted[i] = true;
            }
        }
        let first_waiting = admitted.iter().position(|a| !a).unwrap_or(admitted.len());
        assert!(
            admitted[first_waiting..].iter().all(|a| !a),
            "admission out of order: {admitted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Their next request goes through to the upstream.
    let res = fans[0].get("/checkout").await;
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["upstream"], true);
    assert_eq!(echo["path"], "/checkout");
}

#[tokio::test]
async fn entries_never_exceed_rate_times_time_plus_one_second_of_burst() {
    let up = TestUpstream::start().await;
    // 120/min = 2 a second; burst 2.
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 120")).await;
    let started = std::time::Instant::now();
    let mut fans = Vec::new();
    for _ in 0..30 {
        let f = Fan::new(&gw.public);
        f.get("/").await;
        fans.push(f);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let room = gw.admin_get("/admin/rooms/demo").await;
    let elapsed = started.elapsed().as_secs_f64();
    let called = room["serving_counter"].as_f64().unwrap();
    assert!(
        called <= 2.0 * elapsed + 2.0 + 1.0,
        "{called} called in {elapsed:.2}s"
    );
    assert!(called >= 1.0, "the drip moves");
}

#[tokio::test]
async fn pause_freezes_the_line_and_resume_moves_it_again() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let paused = gw.patch_room("demo", json!({"paused": true})).await;
    assert_eq!(paused["state"], "paused");
    let fans: Vec<Fan> = (0..5).map(|_| Fan::new(&gw.public)).collect();
    for f in &fans {
        f.get("/").await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        gw.admin_get("/admin/rooms/demo").await["serving_counter"],
        0
    );
    assert_eq!(fans[0].status("demo").await["state"], "paused");
    gw.patch_room("demo", json!({"paused": false})).await;
    eventually(10, "line moves after resume", || async {
        (fans[4].status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
}

#[tokio::test]
async fn max_active_caps_concurrent_sessions() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 6000\nmax_active = 3",
    ))
    .await;
    let fans: Vec<Fan> = (0..8).map(|_| Fan::new(&gw.public)).collect();
    for f in &fans {
        f.get("/").await;
    }
    // Admitted fans claim by visiting; the rest keep polling.
    eventually(10, "three fans inside", || async {
        for f in &fans {
            let s = f.status("demo").await;
            if s["state"] == "admitted" {
                let res = f.get("/").await;
                assert_eq!(res.status(), 200);
            }
        }
        let inside = gw.admin_get("/admin/rooms/demo").await["active_sessions"]
            .as_u64()
            .unwrap();
        (inside == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let room = gw.admin_get("/admin/rooms/demo").await;
    assert_eq!(room["active_sessions"], 3);
    assert_eq!(room["called_unclaimed"], 0);
    assert_eq!(
        room["serving_counter"], 3,
        "nobody else is called while the room is full"
    );
    // Raising the cap lets the next fan in.
    gw.patch_room("demo", json!({"max_active": 4})).await;
    eventually(5, "a fourth fan called", || async {
        (gw.admin_get("/admin/rooms/demo").await["serving_counter"] == 4).then_some(())
    })
    .await;
}

#[tokio::test]
async fn copied_queue_token_is_refused_after_claim() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    let token = fan.cookie("wr_q_demo").unwrap();
    eventually(5, "fan admitted", || async {
        (fan.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    let res = fan.get("/buy").await;
    assert_eq!(res.status(), 200, "claimed and proxied");
    assert!(fan.cookie("wr_a_demo").is_some(), "access cookie set");

    // A second browser with a copy of the queue cookie only.
    let copy = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = copy
        .get(format!("{}/buy", gw.public))
        .header("cookie", format!("wr_q_demo={token}"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("already been used"));

    // And through the app endpoint.
    let url = format!("{}/_waitroom/claim?room=demo", gw.public);
    let (status, v) = bearer_json(&copy, reqwest::Method::POST, url, &token, None).await;
    assert_eq!(status, 403);
    assert_eq!(v["error"], "place_already_used");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn app_flow_join_status_claim_then_access_header() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let app = reqwest::Client::builder().no_proxy().build().unwrap();
    let joined: Value = app
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = joined["token"].as_str().unwrap().to_string();
    assert_eq!(joined["position"], 1);

    // Joining again with the token gives the same place back.
    let url = format!("{}/_waitroom/join?room=demo", gw.public);
    let (_, again) = bearer_json(&app, reqwest::Method::POST, url, &token, None).await;
    assert!(
        again["position"] == 1 || again["state"] == "admitted",
        "{again}"
    );

    eventually(5, "admitted", || async {
        let url = format!("{}/_waitroom/status?room=demo", gw.public);
        let (_, s) = bearer_json(&app, reqwest::Method::GET, url, &token, None).await;
        (s["state"] == "admitted").then_some(())
    })
    .await;
    let url = format!("{}/_waitroom/claim?room=demo", gw.public);
    let (_, claimed) = bearer_json(&app, reqwest::Method::POST, url, &token, None).await;
    let access = claimed["access_token"].as_str().unwrap();
    assert!(claimed["expires_in"].as_u64().unwrap() > 0);
    let echo: Value = app
        .get(format!("{}/api/cart", gw.public))
        .header("x-waitroom-token", access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["upstream"], true);
    assert!(
        echo["headers"].get("x-waitroom-token").is_none(),
        "gateway token never reaches the upstream"
    );
}

#[tokio::test]
async fn the_same_place_from_browser_cookie_and_app_bearer() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let browser = Fan::new(&gw.public);
    browser.get("/").await;
    browser.get("/").await;
    let other = Fan::new(&gw.public);
    other.get("/").await;
    let token = other.cookie("wr_q_demo").unwrap();
    let app = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/_waitroom/status?room=demo", gw.public);
    let (_, s) = bearer_json(&app, reqwest::Method::GET, url, &token, None).await;
    assert_eq!(s["position"], other.status("demo").await["position"]);
    assert_eq!(s["position"], 2);
}

#[tokio::test]
async fn proxied_requests_carry_forwarded_headers_and_lose_gateway_cookies() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 6000\nqueue = \"over_capacity\"\nmax_active = 100",
    ))
    .await;
    let fan = Fan::new(&gw.public);
    // The drip starts empty (no burst at start-up) and earns a token every
    // 10 ms at this rate: let it earn a few before the fan arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // over_capacity with room to spare: straight through on the first request.
    let res = fan.get("/first").await;
    assert_eq!(res.status(), 200);
    let cookies: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("upstream_session=")),
        "upstream cookies pass: {cookies:?}"
    );
    assert!(
        cookies.iter().any(|c| c.starts_with("wr_a_demo=")),
        "{cookies:?}"
    );

    let body = vec![7u8; 1 << 20];
    // An explicit Cookie header replaces the jar's, so send ours along by hand.
    let jar_cookies = format!(
        "theirs=1; wr_a_demo={}; wr_q_demo={}; upstream_session=u1",
        fan.cookie("wr_a_demo").unwrap(),
        fan.cookie("wr_q_demo").unwrap()
    );
    let res = fan
        .client
        .post(format!("{}/pay", gw.public))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-waitroom-seq", "1")
        .header("cookie", jar_cookies)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 1 << 20, "body streamed through whole");
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "untrusted XFF replaced");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(h.get("x-waitroom-seq").is_none());
    let cookie = h["cookie"].as_str().unwrap_or("");
    assert!(
        !cookie.contains("wr_q_") && !cookie.contains("wr_a_"),
        "{cookie}"
    );
    assert!(
        cookie.contains("theirs=1") && cookie.contains("upstream_session=u1"),
        "{cookie}"
    );
}

#[tokio::test]
async fn upstream_down_is_a_clear_502_and_waiting_fans_keep_their_places() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let inside = Fan::new(&gw.public);
    inside.get("/").await;
    eventually(5, "admitted", || async {
        (inside.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    assert_eq!(inside.get("/").await.status(), 200);
    gw.patch_room("demo", json!({"paused": true})).await;
    let waiting = Fan::new(&gw.public);
    waiting.get("/").await;
    let before = waiting.status("demo").await["position"].clone();

    up.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let res = inside.get_json("/").await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "upstream_unavailable"
    );
    let res = inside.get("/").await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("keep your place"));
    assert_eq!(waiting.status("demo").await["position"], before);
    assert_eq!(
        gw.admin_get("/admin/rooms/demo").await["upstream_healthy"],
        false
    );
}

#[tokio::test]
async fn exempt_paths_and_unprotected_routes() {
    let up = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let rooms = room_toml(
        "shop",
        &up.url(),
        "path_prefix = \"/shop\"\nexempt_paths = [\"/shop/static/\"]\nadmit_rate_per_min = 1",
    );
    let gw = Gateway::start_with(
        &rooms,
        &format!("[proxy]\ndefault_upstream = \"{}\"", other.url()),
    )
    .await;
    let fan = Fan::new(&gw.public);
    let echo: Value = fan.get("/shop/static/app.css").await.json().await.unwrap();
    assert_eq!(echo["path"], "/shop/static/app.css");
    let echo: Value = fan.get("/about").await.json().await.unwrap();
    assert_eq!(echo["path"], "/about", "default upstream");
    assert_eq!(other.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        fan.get("/shopping").await.status(),
        200,
        "not the /shop route"
    );
    assert!(
        fan.get("/shop/x")
            .await
            .text()
            .await
            .unwrap()
            .contains("Your place in line")
    );
    // Each request counted once, by room and how it ended.
    let m = gw.metrics().await;
    assert_eq!(requests_total(&m, "shop", "exempt"), 1);
    assert_eq!(requests_total(&m, "shop", "waiting"), 1);
    assert_eq!(requests_total(&m, "shop", "admitted"), 0);
    assert_eq!(requests_total(&m, "-", "passthrough"), 2);

    let gw2 = Gateway::start(&room_toml("shop", &up.url(), "path_prefix = \"/shop\"")).await;
    let res = Fan::new(&gw2.public).get_json("/about").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "no_route");
    assert_eq!(requests_total(&gw2.metrics().await, "-", "error"), 1);
}

/// `waitroom_requests_total{room, outcome}` from the metrics page.
fn requests_total(metrics: &str, room: &str, outcome: &str) -> u64 {
    let (room, outcome) = (format!("room=\"{room}\""), format!("outcome=\"{outcome}\""));
    metrics
        .lines()
        .filter(|l| l.starts_with("waitroom_requests_total{"))
        .find(|l| l.contains(&room) && l.contains(&outcome))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn two_rooms_have_separate_lines_and_cookies() {
    let up = TestUpstream::start().await;
    let rooms = room_toml(
        "a",
        &up.url(),
        "path_prefix = \"/a\"\nadmit_rate_per_min = 1",
    ) + &room_toml(
        "b",
        &up.url(),
        "path_prefix = \"/b\"\nadmit_rate_per_min = 1",
    );
    let gw = Gateway::start(&rooms).await;
    let fan = Fan::new(&gw.public);
    fan.get("/a/").await;
    Fan::new(&gw.public).get("/b/").await;
    fan.get("/b/").await;
    assert!(fan.cookie("wr_q_a").is_some() && fan.cookie("wr_q_b").is_some());
    assert_eq!(fan.status("a").await["position"], 1);
    assert_eq!(fan.status("b").await["position"], 2);
}

#[tokio::test]
async fn an_ended_session_shows_the_ended_page_never_a_new_place_at_the_back() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 6000\nsession_secs = 10\nsession_max_secs = 10",
    ))
    .await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    eventually(5, "admitted", || async {
        (fan.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
    assert_eq!(fan.get("/cart").await.status(), 200);
    // Sliding activity cannot stretch past session_max_secs.
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    assert_eq!(fan.get("/cart").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let res = fan.get("/cart").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("set-cookie").is_none(),
        "no new place handed out"
    );
    let body = res.text().await.unwrap();
    assert!(body.contains("Your session has ended"), "{body}");
    let v: Value = fan.get_json("/cart").await.json().await.unwrap();
    assert_eq!(v["state"], "ended");

    // The page's button takes a new place on purpose and returns to the route.
    let res = fan
        .client
        .post(format!("{}/_waitroom/join?room=demo&next=/cart", gw.public))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/cart");
    let cookies: Vec<&str> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("wr_a_demo=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );
    assert!(fan.cookie("wr_a_demo").is_none());
    eventually(5, "readmitted", || async {
        (fan.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
}

/// A burst of arrivals far larger than one reserved block of sequence
/// numbers (16 in tests) still gets a place each: arrivals that find the
/// block empty wait for the next reservation, however many others wait too.
/// And one store write reserves for every arrival waiting, not one block
/// per write: 3,000 arrivals would otherwise take 188 writes in a row (an
/// `fsync` each), and on a slow disk the last of a burst would wait for
/// all of them.
#[tokio::test]
async fn a_burst_of_arrivals_beyond_the_reserved_block_all_get_places_in_few_writes() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/_waitroom/join?room=demo", gw.public);
    let answers: Vec<(u16, u64)> = futures_util::stream::iter(0..3000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let res = client.post(url).send().await.unwrap();
                let status = res.status().as_u16();
                let v: Value = res.json().await.unwrap();
                (status, v["position"].as_u64().unwrap_or(0))
            }
        })
        .buffer_unordered(500)
        .collect()
        .await;
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    let mut positions: Vec<u64> = answers.iter().map(|&(_, p)| p).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 3000, "every fan a place of their own");

    let journal = std::fs::read_to_string(gw.state_dir.path().join("journal.jsonl")).unwrap();
    let writes = journal
        .lines()
        .filter(|l| l.contains(r#""t":"reserve""#))
        .count();
    assert!(
        writes < 3000 / 16 / 2,
        "{writes} reservation writes for 3,000 arrivals"
    );
}
