//! What the checkout tells the gateway in its answers (`Waitroom-Session:
//! end`, `Waitroom-Stock`), over real sockets with the embedded store; the
//! shared store's replicas are in `shared.rs`. The echo upstream adds the
//! headers a request's `set=NAME:VALUE` asks for.

mod common;

use common::*;
use serde_json::Value;

const END: &str = "set=waitroom-session:end";

fn shop(up: &TestUpstream) -> String {
    room_toml(
        "shop",
        &up.url(),
        "path_prefix = \"/shop\"\nexempt_paths = [\"/shop/3ds/\"]\nadmit_rate_per_min = 6000\nmax_active = 1",
    )
}

async fn completions(gw: &Gateway) -> u64 {
    metric(
        &gw.metrics().await,
        "waitroom_completions_total{room=\"shop\"}",
    )
}

#[tokio::test]
async fn the_checkout_ends_a_session_frees_its_slot_and_the_fan_sees_it_ended() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&shop(&up)).await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    // max_active = 1: the next fan waits while the buyer's session lasts.
    let next = Fan::new(&gw.public);
    let page = next.get("/shop/basket").await.text().await.unwrap();
    assert!(!page.contains("\"upstream\":true"), "the slot is taken");

    let res = buyer.get(&format!("/shop/confirm?{END}")).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("waitroom-session").is_none(),
        "the fan never sees the checkout's header"
    );
    let confirmation: Value = res.json().await.unwrap();
    assert_eq!(
        confirmation["path"],
        format!("/shop/confirm?{END}"),
        "the order confirmation reaches the fan"
    );
    assert_eq!(completions(&gw).await, 1);

    let after = buyer.get("/shop/basket").await;
    assert_eq!(after.status(), 200);
    assert!(
        after
            .text()
            .await
            .unwrap()
            .contains("Your session has ended"),
        "the buyer's next request gets the session-ended page"
    );
    // The freed slot goes to the fan who waited.
    admitted(&next, "/shop/basket").await;
    assert_eq!(completions(&gw).await, 1, "counted once");
}

#[tokio::test]
async fn an_ended_session_stays_ended_after_a_restart() {
    let up = TestUpstream::start().await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut gw = Gateway::start_in(dir.clone(), &shop(&up), "").await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    let kept = Fan::new(&gw.public);
    // The second buyer waits for the first's slot, then keeps theirs.
    buyer.get(&format!("/shop/confirm?{END}")).await;
    admitted(&kept, "/shop/basket").await;
    gw.stop().await;

    let gw = Gateway::start_in(dir, &shop(&up), "").await;
    let moved = |fan: &Fan| Fan {
        client: fan.client.clone(),
        jar: fan.jar.clone(),
        base: gw.public.clone(),
    };
    let page = moved(&buyer)
        .get("/shop/basket")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Your session has ended"),
        "not resumed: {page}"
    );
    let echo: Value = moved(&kept).get("/shop/basket").await.json().await.unwrap();
    assert_eq!(echo["upstream"], true, "a session nobody ended resumes");
}

#[tokio::test]
async fn only_a_live_sessions_answer_from_the_rooms_checkout_ends_it() {
    let up = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &shop(&up),
        &format!("[proxy]\ndefault_upstream = \"{}\"", other.url()),
    )
    .await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    // The same fan on the default route, and on an exempt path without
    // [admission] (exempt paths are not looked up then): not the room's
    // admitted answer, so the header counts for nothing.
    for path in [
        format!("/elsewhere?{END}"),
        format!("/shop/3ds/return?{END}"),
    ] {
        let echo: Value = buyer.get(&path).await.json().await.unwrap();
        assert_eq!(echo["upstream"], true, "{path}");
    }
    // A stranger (no session) on the protected route never reaches the checkout.
    let stranger = Fan::new(&gw.public).get(&format!("/shop/x?{END}")).await;
    assert!(!stranger.text().await.unwrap().contains("\"upstream\":true"));
    assert_eq!(completions(&gw).await, 0);
    let echo: Value = buyer.get("/shop/basket").await.json().await.unwrap();
    assert_eq!(echo["upstream"], true, "the session lasts");

    // A header the checkout garbles is ignored, never read as "end".
    let echo: Value = buyer
        .get("/shop/confirm?set=waitroom-session:ended")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["upstream"], true);
    let echo: Value = buyer.get("/shop/basket").await.json().await.unwrap();
    assert_eq!(echo["upstream"], true, "still live");
    assert_eq!(completions(&gw).await, 0);
}

#[tokio::test]
async fn with_admission_on_an_exempt_confirmation_page_ends_the_session() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(&shop(&up), "[admission]\nissuer = \"https://gw.test\"").await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/pay").await;
    // The payment provider returns the fan to an exempt path, where the
    // checkout confirms the order and ends the session.
    let echo: Value = buyer
        .get(&format!("/shop/3ds/return?{END}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(echo["headers"]["waitroom-admission"].is_string());
    assert_eq!(completions(&gw).await, 1);
    let page = buyer.get("/shop/basket").await.text().await.unwrap();
    assert!(page.contains("Your session has ended"), "{page}");
}

// ------------------------------------------------------------ stock, sold out

async fn api_join(gw: &Gateway, room: &str) -> String {
    let v = gw.join_json(room).await;
    v["token"].as_str().expect("a place").to_string()
}

async fn api_status(gw: &Gateway, room: &str, token: &str) -> Value {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/_waitroom/status?room={room}", gw.public);
    let (status, v) = bearer_json(&c, reqwest::Method::GET, url, token, None).await;
    assert_eq!(status, 200);
    v
}

/// A room whose buyer is inside and whose next fan waits (max_active 1).
async fn shop_with_a_buyer(up: &TestUpstream, extra_top: &str) -> (Gateway, Fan, String) {
    let gw = Gateway::start_with(&shop(up), extra_top).await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    let waiting = api_join(&gw, "shop").await;
    (gw, buyer, waiting)
}

#[tokio::test]
async fn the_checkouts_stock_reaches_the_line_and_older_news_is_ignored() {
    let up = TestUpstream::start().await;
    let (gw, buyer, waiting) = shop_with_a_buyer(&up, "").await;
    let echo: Value = buyer
        .get("/shop/cart?set=waitroom-stock:1200")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["upstream"], true);
    let seen = eventually(5, "the stock is shown", || async {
        let s = api_status(&gw, "shop", &waiting).await;
        (s["tickets_left"] == 1200).then_some(s)
    })
    .await;
    assert_eq!(seen["tickets_may_run_out"], false, "{seen}");
    assert_eq!(gw.admin_get("/admin/rooms/shop").await["stock"], 1200);

    // A slow answer to a request sent before the promoter's change is older
    // news: it must not undo it.
    let slow = {
        let client = buyer.client.clone();
        let url = format!("{}/shop/slow?set=waitroom-stock:0", gw.public);
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    gw.patch_room("shop", serde_json::json!({ "stock": 300 }))
        .await;
    assert_eq!(slow.await.unwrap(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        gw.admin_get("/admin/rooms/shop").await["stock"],
        300,
        "the stale 0 was ignored"
    );
    // Newer news from the checkout counts again.
    buyer.get("/shop/cart?set=waitroom-stock:250").await;
    eventually(5, "the newer stock", || async {
        (gw.admin_get("/admin/rooms/shop").await["stock"] == 250).then_some(())
    })
    .await;
}

#[tokio::test]
async fn stock_zero_holds_the_drip_and_the_room_reopens_when_tickets_come_back() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "shop",
        &up.url(),
        "path_prefix = \"/shop\"\nadmit_rate_per_min = 6000",
    ))
    .await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    buyer.get("/shop/cart?set=waitroom-stock:0").await;
    eventually(5, "the hold", || async {
        (gw.admin_get("/admin/rooms/shop").await["state"] == "tickets_in_carts").then_some(())
    })
    .await;
    let waiting = api_join(&gw, "shop").await;
    let s = api_status(&gw, "shop", &waiting).await;
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["eta_reason"], "tickets_in_carts", "{s}");
    assert_eq!(
        s["message"],
        "All tickets are in carts right now; you keep your place."
    );
    // At 6,000 a minute the fan would be called within a tick; held, not.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(api_status(&gw, "shop", &waiting).await["state"], "waiting");
    // Carts time out and give tickets back.
    buyer.get("/shop/cart?set=waitroom-stock:40").await;
    eventually(5, "the fan is called", || async {
        (api_status(&gw, "shop", &waiting).await["state"] == "admitted").then_some(())
    })
    .await;
}

#[tokio::test]
async fn fans_are_told_when_the_line_ahead_may_buy_every_ticket_left() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "shop",
        &up.url(),
        "path_prefix = \"/shop\"\ntickets_per_order = 2",
    ))
    .await;
    gw.patch_room("shop", serde_json::json!({ "paused": true, "stock": 3 }))
        .await;
    let first = api_join(&gw, "shop").await;
    let second = api_join(&gw, "shop").await;
    let third = api_join(&gw, "shop").await;
    // 0 and 1 ahead buy at most 2 tickets of 3; 2 ahead may buy 4.
    for token in [&first, &second] {
        let s = api_status(&gw, "shop", token).await;
        assert_eq!(s["tickets_left"], 3);
        assert_eq!(s["tickets_may_run_out"], false, "{s}");
    }
    let s = api_status(&gw, "shop", &third).await;
    assert_eq!(s["tickets_may_run_out"], true, "{s}");
    gw.patch_room("shop", serde_json::json!({ "paused": false }))
        .await;
    let s = api_status(&gw, "shop", &third).await;
    assert_eq!(
        s["message"],
        "Tickets may run out before your turn: about 3 left for 2 people ahead of you."
    );
}

#[tokio::test]
async fn sold_out_closes_the_line_at_once_keeps_sessions_and_a_reopening_keeps_every_place() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let up = TestUpstream::start().await;
    let (gw, buyer, waiting) = shop_with_a_buyer(&up, "").await;
    let behind = api_join(&gw, "shop").await;
    let before = api_status(&gw, "shop", &behind).await["position"].clone();
    let mut events = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "{}/_waitroom/events?room=shop&token={waiting}",
            gw.public
        ))
        .send()
        .await
        .unwrap()
        .bytes_stream()
        .eventsource();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "position");

    buyer.get("/shop/cart?set=waitroom-stock:sold-out").await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        loop {
            let e = events.next().await.unwrap().unwrap();
            if e.event == "closed" {
                return serde_json::from_str::<Value>(&e.data).unwrap();
            }
        }
    })
    .await
    .expect("a closed event within a few seconds");
    assert_eq!(closed["closed_reason"], "sold_out", "{closed}");

    // New arrivals get the sold-out page, not a place.
    let page = Fan::new(&gw.public).get("/shop/basket").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sold out"), "{html}");
    let join = gw.join_json("shop").await;
    assert!(join["token"].is_null(), "no place: {join}");
    assert_eq!(join["closed_reason"], "sold_out", "{join}");
    // The buyer inside keeps going.
    let echo: Value = buyer.get("/shop/pay").await.json().await.unwrap();
    assert_eq!(echo["upstream"], true);

    // The promoter reopens (tickets came back): every place is kept.
    gw.patch_room("shop", serde_json::json!({ "sold_out": false }))
        .await;
    let s = api_status(&gw, "shop", &behind).await;
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["position"], before);
}

#[tokio::test]
async fn stock_counts_only_from_the_rooms_own_admitted_answers() {
    let up = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &shop(&up),
        &format!(
            "[admission]\nissuer = \"https://gw.test\"\n[proxy]\ndefault_upstream = \"{}\"",
            other.url()
        ),
    )
    .await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    // An exempt path (the fan's session is known there) and the default
    // route: neither is the room's admitted answer.
    for path in [
        "/shop/3ds/return?set=waitroom-stock:sold-out",
        "/elsewhere?set=waitroom-stock:sold-out",
    ] {
        let echo: Value = buyer.get(path).await.json().await.unwrap();
        assert_eq!(echo["upstream"], true, "{path}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let room = gw.admin_get("/admin/rooms/shop").await;
    assert_eq!(room["sold_out"], false, "{room}");
    assert_eq!(room["stock"], Value::Null, "{room}");
}

#[tokio::test]
async fn bad_stock_values_from_the_promoter_are_refused_by_field() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&shop(&up)).await;
    let c = gw.admin_client();
    for (body, field) in [
        (serde_json::json!({ "stock": -1 }), "stock"),
        (serde_json::json!({ "stock": "lots" }), "stock"),
        (serde_json::json!({ "stock": 1.5 }), "stock"),
        (serde_json::json!({ "sold_out": "yes" }), "sold_out"),
    ] {
        let (status, v) = bearer_json(
            &c,
            reqwest::Method::PATCH,
            format!("{}/admin/rooms/shop", gw.admin),
            ADMIN_TOKEN,
            Some(&body),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(v["field"], field, "{v}");
    }
    let room = gw.admin_get("/admin/rooms/shop").await;
    assert_eq!(room["stock"], Value::Null);
    assert_eq!(room["sold_out"], false);
}

// ------------------------------------------------- admission follows health

#[tokio::test]
async fn a_slow_checkout_lowers_the_rate_and_fans_are_told_why_then_it_recovers() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "shop",
        &up.url(),
        "path_prefix = \"/shop\"\nadmit_rate_per_min = 600\nmax_active = 1\nupstream_target_p95_ms = 200\nupstream_rate_floor_per_min = 60\ncontrol_interval_secs = 1\ncontrol_min_samples = 2",
    ))
    .await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/shop/basket").await;
    let room = gw.admin_get("/admin/rooms/shop").await;
    assert_eq!(room["effective_rate_per_min"], 600);
    assert_eq!(room["rate_reason"], "promoter_rate");

    // The checkout takes 1.5 s to answer (target: 200 ms), under steady load.
    let url = format!("{}/shop/slow", gw.public);
    let load = Load::start((0..4).map(|_| buyer.client.get(&url)).collect());
    let limited = eventually(10, "the controller cuts the rate", || async {
        let room = gw.admin_get("/admin/rooms/shop").await;
        (room["rate_reason"] == "checkout_slow").then_some(room)
    })
    .await;
    load.stop().await;
    let cut = limited["effective_rate_per_min"].as_u64().unwrap();
    assert!(
        (480..600).contains(&cut),
        "one gentle cut (≥ ×0.8): {limited}"
    );
    assert_eq!(
        limited["admit_rate_per_min"], 600,
        "the promoter's rate stays"
    );
    // max_active = 1: the next fan waits behind the buyer, and is told why
    // the line is slower (before the full checkout).
    let waiting = api_join(&gw, "shop").await;
    let s = api_status(&gw, "shop", &waiting).await;
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["eta_reason"], "checkout_slow", "{s}");
    assert_eq!(
        s["admit_rate_per_min"], cut,
        "fans see the rate in force: {s}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "waitroom_checkout_limited{room=\"shop\"}"),
        1
    );
    assert_eq!(
        metric(&metrics, "waitroom_effective_rate_per_min{room=\"shop\"}"),
        cut
    );

    // The checkout heals: fast answers raise the rate again, step by step.
    let healed = eventually(30, "the rate rises again", || async {
        for _ in 0..10 {
            buyer.get("/shop/basket").await;
        }
        let room = gw.admin_get("/admin/rooms/shop").await;
        (room["effective_rate_per_min"].as_u64().unwrap() > cut).then_some(room)
    })
    .await;
    assert!(healed["effective_rate_per_min"].as_u64().unwrap() <= 600);
}

#[tokio::test]
async fn rooms_sharing_a_checkout_slow_down_together_in_proportion() {
    let up = TestUpstream::start().await;
    let knobs = "upstream_target_p95_ms = 200\ncontrol_interval_secs = 1\ncontrol_min_samples = 2\ncapacity_group = \"arena-checkout\"";
    let rooms = format!(
        "{}{}",
        room_toml(
            "friday",
            &up.url(),
            &format!("path_prefix = \"/friday\"\nadmit_rate_per_min = 600\n{knobs}")
        ),
        room_toml(
            "saturday",
            &up.url(),
            &format!("path_prefix = \"/saturday\"\nadmit_rate_per_min = 300\n{knobs}")
        ),
    );
    let gw = Gateway::start(&rooms).await;
    let buyer = Fan::new(&gw.public);
    admitted(&buyer, "/friday/basket").await;
    // Only Friday's buyers meet the slow checkout; Saturday shares it.
    let url = format!("{}/friday/slow", gw.public);
    let load = Load::start((0..4).map(|_| buyer.client.get(&url)).collect());
    let (friday, saturday) = eventually(10, "both rooms are cut", || async {
        let f = gw.admin_get("/admin/rooms/friday").await;
        let s = gw.admin_get("/admin/rooms/saturday").await;
        (f["rate_reason"] == "checkout_slow" && s["rate_reason"] == "checkout_slow").then_some((
            f["effective_rate_per_min"].as_u64().unwrap(),
            s["effective_rate_per_min"].as_u64().unwrap(),
        ))
    })
    .await;
    load.stop().await;
    assert!(friday < 600 && saturday < 300, "{friday} {saturday}");
    assert!(
        friday.abs_diff(2 * saturday) <= 2,
        "one share of each promoter's rate: {friday} and {saturday}"
    );
}
