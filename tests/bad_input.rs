//! Every kind of bad input gets a precise 4xx (or, on a protected route, a
//! fresh place) — never a 500, a panic or lost state.

mod common;

use common::*;
use serde_json::{Value, json};

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens that must never be accepted, with the reason the gateway should name.
fn bad_tokens(real: &str) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = real.split('.').collect();
    let payload = parts[1];
    // Flip a character in the middle: the last one also carries padding bits.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
    let tampered_sig: String = sig.into_iter().collect();
    vec![
        ("malformed", "not-a-token".to_string()),
        ("malformed", "a.b.c".to_string()),
        ("too_long", "x".repeat(3000)),
        (
            "bad_signature",
            format!("{}.{}.{}", parts[0], payload, tampered_sig),
        ),
        (
            "wrong_algorithm",
            format!("{}.{}.", b64url(br#"{"alg":"none","kid":"t1"}"#), payload),
        ),
        (
            "wrong_algorithm",
            format!(
                "{}.{}.{}",
                b64url(br#"{"alg":"HS512","kid":"t1"}"#),
                payload,
                parts[2]
            ),
        ),
        (
            "unknown_key",
            format!(
                "{}.{}.{}",
                b64url(br#"{"alg":"HS256","kid":"nope"}"#),
                payload,
                parts[2]
            ),
        ),
    ]
}

#[tokio::test]
async fn bad_queue_cookies_on_a_protected_route_get_a_new_place_and_are_counted() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    let real = fan.cookie("wr_q_demo").unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (reason, token) in bad_tokens(&real) {
        let res = client
            .get(format!("{}/", gw.public))
            .header("cookie", format!("wr_q_demo={token}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{reason}");
        assert!(
            res.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .starts_with("wr_q_demo="),
            "{reason}: new place"
        );
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["state"], "waiting", "{reason}");
        assert!(
            v["position"].as_u64().unwrap() > 1,
            "{reason}: a new place, not the forged one"
        );
    }
    let metrics = gw.metrics().await;
    for reason in [
        "malformed",
        "too_long",
        "bad_signature",
        "wrong_algorithm",
        "unknown_key",
    ] {
        assert!(
            metrics.contains(&format!(
                "waitroom_rejected_tokens_total{{reason=\"{reason}\",room=\"demo\"}}"
            )),
            "metric for {reason}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn bad_bearer_tokens_on_the_api_are_401_naming_the_reason() {
    let up = TestUpstream::start().await;
    let rooms = room_toml("demo", &up.url(), "admit_rate_per_min = 1")
        + &room_toml("other", &up.url(), "path_prefix = \"/other\"");
    let gw = Gateway::start(&rooms).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    let real = fan.cookie("wr_q_demo").unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut cases = bad_tokens(&real);
    cases.push(("wrong_room", real.clone()));
    for (reason, token) in cases {
        let room = if reason == "wrong_room" {
            "other"
        } else {
            "demo"
        };
        for (method, path) in [("GET", "status"), ("POST", "claim"), ("POST", "join")] {
            let url = format!("{}/_waitroom/{path}?room={room}", gw.public);
            let (status, v) =
                bearer_json(&client, method.parse().unwrap(), url, &token, None).await;
            assert_eq!(status, 401, "{reason} on {path}");
            assert_eq!(v["error"], "invalid_token", "{reason} on {path}");
            assert_eq!(v["reason"], reason, "{path}");
        }
    }
    // A bad cookie on status is a 401 too (the page reloads to get a new place).
    let res = client
        .get(format!("{}/_waitroom/status?room=demo", gw.public))
        .header("cookie", "wr_q_demo=garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Non-Bearer authorization.
    let res = client
        .get(format!("{}/_waitroom/status?room=demo", gw.public))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_authorization"
    );
    // The real place was not disturbed.
    assert_eq!(fan.status("demo").await["position"], 1);
}

#[tokio::test]
async fn access_token_from_another_visitor_or_kind_is_not_admitted() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    let queue_token = fan.cookie("wr_q_demo").unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // A queue token presented as an access token is the wrong kind: new place, not access.
    let res = client
        .get(format!("{}/", gw.public))
        .header("x-waitroom-token", &queue_token)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert!(
        v.get("upstream").is_none(),
        "wrong-kind token reached the upstream: {v}"
    );
    assert!(gw.metrics().await.contains("reason=\"wrong_kind\""));
}

#[tokio::test]
async fn malformed_queries_headers_and_methods_get_precise_errors() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "path_prefix = \"/shop\"")).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.get(format!("{}/_waitroom/status", gw.public)),
            400,
            "missing_parameter",
        ),
        (
            c.get(format!("{}/_waitroom/status?room=nope", gw.public)),
            404,
            "unknown_room",
        ),
        (
            c.get(format!("{}/_waitroom/status?room=%ff%fe", gw.public)),
            400,
            "invalid_query",
        ),
        (
            c.get(format!(
                "{}/_waitroom/status?room=demo&next=https://evil.test/",
                gw.public
            )),
            400,
            "invalid_parameter",
        ),
        (
            c.get(format!(
                "{}/_waitroom/status?room=demo&next=/elsewhere",
                gw.public
            )),
            400,
            "invalid_parameter",
        ),
        (
            c.get(format!(
                "{}/_waitroom/status?room=demo&next=//evil.test",
                gw.public
            )),
            400,
            "invalid_parameter",
        ),
        (
            c.get(format!("{}/_waitroom/join?room=demo", gw.public)),
            405,
            "method_not_allowed",
        ),
        (
            c.delete(format!("{}/_waitroom/status?room=demo", gw.public)),
            405,
            "method_not_allowed",
        ),
        (
            c.post(format!("{}/_waitroom/claim?room=demo", gw.public)),
            401,
            "missing_token",
        ),
        (
            c.get(format!("{}/_waitroom/nothing", gw.public)),
            404,
            "not_found",
        ),
        (
            c.get(format!("{}/_waitroom/status?room=demo", gw.public))
                .header(
                    "cookie",
                    reqwest::header::HeaderValue::from_bytes(b"wr_q_demo=\xff\xfe").unwrap(),
                ),
            400,
            "invalid_cookie",
        ),
    ];
    for (req, status, code) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{code}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"], code);
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A non-text Cookie header on a protected route: treated as no cookie, a new place.
    let res = c
        .get(format!("{}/shop", gw.public))
        .header(
            "cookie",
            reqwest::header::HeaderValue::from_bytes(b"wr_q_demo=\xff").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn claiming_before_your_turn_is_a_409_and_keeps_the_place() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let v: Value = c
            .post(format!("{}/_waitroom/join?room=demo", gw.public))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    let url = format!("{}/_waitroom/claim?room=demo", gw.public);
    let (status, v) = bearer_json(&c, reqwest::Method::POST, url, &tokens[2], None).await;
    assert_eq!(status, 409);
    assert_eq!(v["error"], "not_your_turn");
    let url = format!("{}/_waitroom/status?room=demo", gw.public);
    let (_, s) = bearer_json(&c, reqwest::Method::GET, url, &tokens[2], None).await;
    assert_eq!(s["position"], 3);
}

#[tokio::test]
async fn admin_api_refuses_missing_and_wrong_tokens_and_is_not_on_the_public_listener() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "path_prefix = \"/shop\"")).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/admin/rooms", "/admin/rooms/demo", "/metrics"] {
        let res = c.get(format!("{}{path}", gw.admin)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path} without token");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let res = c
            .get(format!("{}{path}", gw.admin))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path} with a wrong token");
        let res = c
            .get(format!("{}{path}", gw.admin))
            .bearer_auth(format!("{ADMIN_TOKEN}x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path} with a longer token");
        // The public listener does not serve it, even with the right token.
        let res = c
            .get(format!("{}{path}", gw.public))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path} on the public listener");
    }
    let res = c
        .patch(format!("{}/admin/rooms/demo", gw.admin))
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        gw.admin_get("/admin/rooms/demo").await["paused"],
        false,
        "unauthorised PATCH changed nothing"
    );
    // Health endpoints need no token.
    assert_eq!(
        c.get(format!("{}/healthz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = c
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
}

#[tokio::test]
async fn admin_patch_bodies_are_validated_field_by_field() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "")).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/admin/rooms/demo", gw.admin);
    let send = |body: Vec<u8>, ct: &'static str| {
        c.patch(&url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            400,
            "invalid_json",
        ),
        (b"[1,2]".to_vec(), "application/json", 400, "invalid_json"),
        (
            br#"{"admit_rate":5}"#.to_vec(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            br#"{"admit_rate_per_min":0}"#.to_vec(),
            "application/json",
            422,
            "invalid_value",
        ),
        (
            br#"{"admit_rate_per_min":"fast"}"#.to_vec(),
            "application/json",
            422,
            "invalid_value",
        ),
        (
            br#"{"paused":1}"#.to_vec(),
            "application/json",
            422,
            "invalid_value",
        ),
        (
            br#"{"paused":true}"#.to_vec(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            vec![b' '; 70 * 1024],
            "application/json",
            413,
            "body_too_large",
        ),
    ];
    for (body, ct, status, code) in cases {
        let res = send(body, ct).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{code}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"], code);
    }
    let res = send(br#"{"admit_rate_per_min":0}"#.to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["field"],
        "admit_rate_per_min"
    );
    assert_eq!(
        gw.admin_get("/admin/rooms/demo").await["admit_rate_per_min"],
        600,
        "nothing changed"
    );
    let res = c
        .patch(format!("{}/admin/rooms/nope", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = c
        .delete(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, PATCH");
}

#[tokio::test]
async fn admin_changes_apply_without_restart() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    Fan::new(&gw.public).get("/").await;
    let late = Fan::new(&gw.public);
    late.get("/").await;
    let before = late.status("demo").await;
    let v = gw
        .patch_room(
            "demo",
            json!({"admit_rate_per_min": 60000, "session_secs": 30}),
        )
        .await;
    assert_eq!(v["admit_rate_per_min"], 60000);
    assert_eq!(v["session_secs"], 30);
    assert_eq!(late.status("demo").await["admit_rate_per_min"], 60000);
    assert!(before["eta_seconds"].as_u64().unwrap() > 60);
    eventually(5, "faster rate admits the third fan", || async {
        (late.status("demo").await["state"] == "admitted").then_some(())
    })
    .await;
}

#[tokio::test]
async fn reset_starts_a_new_epoch_and_old_tokens_get_new_places() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 1")).await;
    let fan = Fan::new(&gw.public);
    fan.get("/").await;
    Fan::new(&gw.public).get("/").await;
    let old = fan.cookie("wr_q_demo").unwrap();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = c
        .post(format!("{}/admin/rooms/demo/reset", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let url = format!("{}/_waitroom/status?room=demo", gw.public);
    let (status, v) = bearer_json(&c, reqwest::Method::GET, url, &old, None).await;
    assert_eq!(status, 401);
    assert_eq!(v["reason"], "stale_epoch");
    fan.get("/").await;
    assert_eq!(
        fan.status("demo").await["position"],
        1,
        "a new place in the new epoch"
    );
}

#[tokio::test]
async fn a_shared_access_token_fails_in_another_browser() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let owner = reqwest::Client::builder()
        .no_proxy()
        .user_agent("Firefox/130")
        .build()
        .unwrap();
    let joined: Value = owner
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = joined["token"].as_str().unwrap().to_string();
    let access = eventually(5, "claimed", || async {
        let v: Value = owner
            .post(format!("{}/_waitroom/claim?room=demo", gw.public))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["access_token"].as_str().map(str::to_string)
    })
    .await;
    let through = |client: reqwest::Client| {
        let (url, access) = (format!("{}/cart", gw.public), access.clone());
        async move {
            let v: Value = client
                .get(url)
                .header("x-waitroom-token", access)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v.get("upstream").is_some()
        }
    };
    assert!(through(owner.clone()).await, "the fan who claimed gets in");
    let other = reqwest::Client::builder()
        .no_proxy()
        .user_agent("Chrome/140")
        .build()
        .unwrap();
    assert!(
        !through(other).await,
        "the same token from another browser does not"
    );
    assert!(gw.metrics().await.contains("reason=\"binding_mismatch\""));
    assert!(through(owner).await, "and the owner is not affected");
}

#[tokio::test]
async fn proof_of_work_rooms_need_a_solved_challenge_for_a_new_place() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 1\npow_bits = 10",
    ))
    .await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let join = |proof: Option<String>| {
        let mut req = c.post(format!("{}/_waitroom/join?room=demo", gw.public));
        if let Some(p) = proof {
            req = req.header("x-waitroom-pow", p);
        }
        req.send()
    };
    // Without a proof: 428 with a challenge to solve.
    let res = join(None).await.unwrap();
    assert_eq!(res.status(), 428);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "pow_required");
    assert_eq!(v["bits"], 10);
    let challenge = v["challenge"].as_str().unwrap().to_string();
    // A wrong answer names the reason and offers a fresh challenge.
    let wrong = (0..)
        .find(|&n| !waitroom::pow::solves(&challenge, n, 10))
        .unwrap();
    let res = join(Some(format!("{challenge}:{wrong}"))).await.unwrap();
    assert_eq!(res.status(), 422);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (v["error"].as_str(), v["reason"].as_str()),
        (Some("pow_invalid"), Some("unsolved"))
    );
    assert!(v["challenge"].as_str().is_some());
    for (proof, reason) in [
        ("garbage".to_string(), "malformed"),
        (format!("{challenge}:x"), "malformed"),
    ] {
        let v: Value = join(Some(proof)).await.unwrap().json().await.unwrap();
        assert_eq!(v["reason"], reason);
    }
    // The right answer gets a place, once.
    let n = waitroom::pow::solve(&challenge, 10);
    let res = join(Some(format!("{challenge}:{n}"))).await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["position"], 1);
    let v: Value = join(Some(format!("{challenge}:{n}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["reason"], "reused");
    // The challenge endpoint, and returning fans need no new proof.
    let ch: Value = c
        .get(format!("{}/_waitroom/challenge?room=demo", gw.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ch["bits"], 10);
    let again = c
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .bearer_auth(v.get("token").and_then(|t| t.as_str()).unwrap_or(""))
        .send()
        .await
        .unwrap();
    assert_ne!(again.status(), 428);
    // Browsers on the protected route get the joining page, never a "bot" message.
    let page = Fan::new(&gw.public).get("/").await.text().await.unwrap();
    assert!(page.contains("Getting you a place in line"), "{page}");
    for blame in [" bot", "bots", "automated", "suspicious", "captcha"] {
        assert!(
            !page.to_lowercase().contains(blame),
            "the page says {blame:?}"
        );
    }
    let res = Fan::new(&gw.public).get_json("/").await;
    assert_eq!(res.status(), 428);
}
