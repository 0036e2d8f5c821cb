//! Another site's page cannot change a fan's place: the fan endpoints that
//! change state refuse cross-site requests (Sec-Fetch-Site, else Origin),
//! apps without those headers keep working, and a join never replaces a
//! place or session the client already holds. Over real sockets; the same
//! attacks from a real browser are in `browser_fan.rs`.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    (up, gw)
}

/// POSTs to `path` with the given headers; returns the status and JSON body.
async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = client().post(format!("{}{path}", gw.public));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn cross_site_join_claim_and_events_are_refused_with_403() {
    let (_up, gw) = start().await;
    gw.patch_room("demo", json!({"paused": true})).await;
    let token = post(&gw, "/_waitroom/join?room=demo", &[]).await.1["token"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {token}");
    let hostile: [(&[(&str, &str)], &str); 5] = [
        (&[("sec-fetch-site", "cross-site")], "cross_site"),
        (&[("sec-fetch-site", "same-site")], "same_site"),
        (&[("origin", "http://evil.test")], "foreign_origin"),
        (&[("origin", "null")], "null_origin"),
        // The browser's word wins over an Origin that happens to match.
        (
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", gw.public.as_str()),
            ],
            "cross_site",
        ),
    ];
    for (headers, reason) in hostile {
        for path in ["/_waitroom/join?room=demo", "/_waitroom/claim?room=demo"] {
            let mut with_token = headers.to_vec();
            with_token.push(("authorization", &bearer));
            let (status, body) = post(&gw, path, &with_token).await;
            assert_eq!(status, 403, "{path} {headers:?}: {body}");
            assert_eq!(body["error"], "cross_site_request", "{body}");
            assert_eq!(body["reason"], reason, "{body}");
        }
        let mut req = client().get(format!(
            "{}/_waitroom/events?room=demo&token={token}",
            gw.public
        ));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            403,
            "events {headers:?}"
        );
    }
    // Nobody got a new place from any of that.
    assert_eq!(gw.admin_get("/admin/rooms/demo").await["queue_length"], 1);
}

#[tokio::test]
async fn same_origin_typed_and_headerless_requests_still_join_and_claim() {
    let (_up, gw) = start().await;
    let own_origin = gw.public.clone();
    for headers in [
        vec![],
        vec![("origin", own_origin.as_str())],
        vec![("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
        vec![("sec-fetch-site", "same-origin"), ("origin", "null")],
    ] {
        let (status, body) = post(&gw, "/_waitroom/join?room=demo", &headers).await;
        assert_eq!(status, 200, "{headers:?}: {body}");
        let token = body["token"].as_str().unwrap().to_string();
        let bearer = format!("Bearer {token}");
        let mut with_token = headers.clone();
        with_token.push(("authorization", &bearer));
        let claimed = eventually(10, "the claim goes through", || {
            let (gw, with_token) = (&gw, with_token.clone());
            async move {
                let (status, body) = post(gw, "/_waitroom/claim?room=demo", &with_token).await;
                (status == 200).then_some(body)
            }
        })
        .await;
        assert!(claimed["access_token"].is_string(), "{claimed}");
    }
}

#[tokio::test]
async fn a_listed_sibling_origin_may_post_and_others_may_not() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), ""),
        "[proxy]\nallowed_origins = [\"https://www.example.com\"]",
    )
    .await;
    let ok = [
        ("sec-fetch-site", "same-site"),
        ("origin", "https://www.example.com"),
    ];
    assert_eq!(post(&gw, "/_waitroom/join?room=demo", &ok).await.0, 200);
    let sibling = [
        ("sec-fetch-site", "same-site"),
        ("origin", "https://shop.example.com"),
    ];
    assert_eq!(
        post(&gw, "/_waitroom/join?room=demo", &sibling).await.0,
        403
    );
}

#[tokio::test]
async fn a_join_by_a_fan_with_a_live_session_keeps_the_session_and_its_cookie() {
    let (_up, gw) = start().await;
    let fan = Fan::new(&gw.public);
    fan.get("/checkout").await;
    eventually(10, "the fan is let in", || async {
        let res = fan.get("/checkout").await;
        let body = res.text().await.unwrap();
        body.contains("\"upstream\":true").then_some(())
    })
    .await;
    let access = fan.cookie("wr_a_demo").expect("an access cookie");
    gw.patch_room("demo", json!({"paused": true})).await;

    // The same site's own "join" (e.g. a second tab's button).
    let res = fan
        .client
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .header("sec-fetch-site", "same-origin")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cleared: Vec<_> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(cleared.is_empty(), "no cookie changes: {cleared:?}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "active", "{body}");
    assert_eq!(body["url"], "/");
    assert_eq!(fan.cookie("wr_a_demo").as_deref(), Some(access.as_str()));
    let body = fan.get("/checkout").await.text().await.unwrap();
    assert!(body.contains("\"upstream\":true"), "still inside: {body}");
    assert_eq!(gw.admin_get("/admin/rooms/demo").await["queue_length"], 0);
}

#[tokio::test]
async fn a_join_with_an_ended_session_clears_the_access_cookie_and_one_without_sets_none() {
    let (_up, gw) = start().await;
    // No access cookie presented: nothing to clear.
    let res = client()
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].starts_with("wr_q_demo="), "{cookies:?}");
    // An access cookie that is not a live session: cleared.
    let res = client()
        .post(format!("{}/_waitroom/join?room=demo", gw.public))
        .header("cookie", "wr_a_demo=not-a-token")
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("wr_a_demo=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );
}

#[tokio::test]
async fn a_cross_site_post_to_the_route_without_cookies_is_sent_back_as_a_get() {
    let (_up, gw) = start().await;
    gw.patch_room("demo", json!({"paused": true})).await;
    // Another site's form: the browser leaves our Lax cookies out.
    let res = client()
        .post(format!("{}/checkout?show=1", gw.public))
        .header("sec-fetch-site", "cross-site")
        .header("origin", "http://evil.test")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/checkout?show=1");
    assert!(res.headers().get("set-cookie").is_none());
    assert_eq!(gw.admin_get("/admin/rooms/demo").await["queue_length"], 0);
    // The same from this site, or a GET from anywhere, takes a place as before.
    let res = client()
        .post(format!("{}/checkout", gw.public))
        .header("sec-fetch-site", "same-origin")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("set-cookie").is_some());
    let res = client()
        .get(format!("{}/checkout", gw.public))
        .header("sec-fetch-site", "cross-site")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(gw.admin_get("/admin/rooms/demo").await["queue_length"], 2);
}
