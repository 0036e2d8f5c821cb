//! A fan's place in real headless Chromium against another site's pages
//! and against the fan's own second tab:
//!
//! - a page on another site (`127.0.0.2`, another site than the gateway's
//!   `127.0.0.1`) that auto-submits a form to `/_waitroom/join` or to the
//!   protected route moves nobody: the waiting fan keeps position 4, the
//!   admitted fan keeps `wr_a_` and stays inside;
//! - with `sse.max_streams_per_place = 1`, the older of two tabs on one
//!   place says it is open in another tab and stops asking for events.
//!
//! Needs Debian's `chromium` and `chromium-driver` (as `tests/browser.rs`).
//! Set `WAITROOM_SCREENSHOT_SUPERSEDED=path.png` to save the older tab
//! once it says the place is open in another tab.

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chromium::*;
use common::*;
use fantoccini::{Client, Locator};
use serde_json::json;

fn app_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn app_joins(gw: &Gateway, n: usize) {
    for _ in 0..n {
        let res = app_client()
            .post(format!("{}/_waitroom/join?room=demo", gw.public))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

/// Visits `page` (another site's) and waits until its form has brought the
/// browser to the gateway's answer.
async fn fall_for(browser: &Client, page: &str, gateway: &str) {
    browser.goto(page).await.unwrap();
    eventually(
        20,
        "the auto-submitted form reached the gateway",
        || async {
            let url = browser.current_url().await.ok()?;
            let ready = browser
                .execute("return document.readyState;", vec![])
                .await
                .ok()?;
            (url.as_str().starts_with(gateway) && ready == json!("complete")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn another_sites_forms_leave_a_waiting_fan_at_position_4() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "abandon_after_secs = 600")).await;
    gw.patch_room("demo", json!({"paused": true})).await;
    app_joins(&gw, 3).await;
    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("{}/checkout", gw.public))
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "wr-position").await, "4");
    // Five more fans behind: a new place would now be the 10th.
    app_joins(&gw, 5).await;

    let join_form = serve_page(
        "127.0.0.2:0".parse().unwrap(),
        auto_post_page(&format!("{}/_waitroom/join?room=demo", gw.public)),
    )
    .await;
    fall_for(&browser, &join_form, &gw.public).await;
    browser
        .goto(&format!("{}/checkout", gw.public))
        .await
        .unwrap();
    assert_eq!(
        text_of(&browser, "wr-position").await,
        "4",
        "the cross-site join moved the fan"
    );

    // The same trick aimed at the protected route itself.
    let route_form = serve_page(
        "127.0.0.2:0".parse().unwrap(),
        auto_post_page(&format!("{}/checkout", gw.public)),
    )
    .await;
    fall_for(&browser, &route_form, &gw.public).await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/checkout");
    assert_eq!(
        text_of(&browser, "wr-position").await,
        "4",
        "the cross-site post to the route moved the fan"
    );
    assert_eq!(gw.admin_get("/admin/rooms/demo").await["queue_length"], 9);
    browser.close().await.unwrap();
}

#[tokio::test]
async fn another_sites_join_form_leaves_an_admitted_fan_inside() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml("demo", &up.url(), "admit_rate_per_min = 6000")).await;
    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("{}/checkout", gw.public))
        .await
        .unwrap();
    eventually(20, "the fan is let in", || async {
        let body = browser.source().await.ok()?;
        body.contains("\"upstream\":true").then_some(())
    })
    .await;
    let access = browser
        .get_named_cookie("wr_a_demo")
        .await
        .expect("an access cookie")
        .value()
        .to_string();
    // From now on a new place would wait: being sent back would show.
    gw.patch_room("demo", json!({"paused": true})).await;

    let join_form = serve_page(
        "127.0.0.2:0".parse().unwrap(),
        auto_post_page(&format!("{}/_waitroom/join?room=demo", gw.public)),
    )
    .await;
    fall_for(&browser, &join_form, &gw.public).await;
    let after = browser
        .get_named_cookie("wr_a_demo")
        .await
        .map(|c| c.value().to_string());
    assert_eq!(after.ok().as_deref(), Some(access.as_str()), "wr_a_ kept");
    browser
        .goto(&format!("{}/checkout?again=1", gw.public))
        .await
        .unwrap();
    let body = browser.source().await.unwrap();
    assert!(
        body.contains("\"path\":\"/checkout?again=1\""),
        "still reaches the upstream: {body}"
    );
    browser.close().await.unwrap();
}

/// `waitroom_sse_streams_total{outcome}` from the metrics page.
async fn streams_total(gw: &Gateway, outcome: &str) -> u64 {
    let text = gw.metrics().await;
    let key = format!("waitroom_sse_streams_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn note_says_another_tab(browser: &Client) {
    eventually(
        20,
        "the tab says the place is open in another tab",
        || async {
            let note = browser
                .find(Locator::Id("wr-note"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            note.contains("open in another tab").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_older_tab_is_superseded_says_so_and_stops_asking_for_events() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml("demo", &up.url(), "abandon_after_secs = 600"),
        "[sse]\nmax_streams_per_place = 1\nretry_ms = 200",
    )
    .await;
    gw.patch_room("demo", json!({"paused": true})).await;
    let (_driver, browser) = start_browser().await;
    let first = browser.window().await.unwrap();
    browser
        .goto(&format!("{}/checkout", gw.public))
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "wr-position").await, "1");
    let app = gw.running.as_ref().unwrap().app.clone();
    eventually(20, "the first tab's stream is open", || async {
        (app.sse_open.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;

    // The same browser (same cookies) opens the page in a second window.
    let second = browser.new_window(false).await.unwrap().handle;
    browser.switch_to_window(second.clone()).await.unwrap();
    browser
        .goto(&format!("{}/checkout", gw.public))
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "wr-position").await, "1");
    browser.switch_to_window(first.clone()).await.unwrap();
    note_says_another_tab(&browser).await;
    if let Ok(path) = std::env::var("WAITROOM_SCREENSHOT_SUPERSEDED") {
        std::fs::write(path, browser.screenshot().await.unwrap()).unwrap();
    }
    assert_eq!(streams_total(&gw, "opened").await, 2);
    assert_eq!(streams_total(&gw, "superseded").await, 1);
    // Ten reconnect hints later the old tab has still not come back.
    tokio::time::sleep(Duration::from_millis(10 * 200)).await;
    assert_eq!(
        streams_total(&gw, "opened").await,
        2,
        "the superseded tab reconnected"
    );

    // "Use this tab" takes the place back here; now the other tab yields.
    browser
        .find(Locator::Css("#wr-note button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(20, "this tab's stream is open again", || async {
        (streams_total(&gw, "opened").await == 3).then_some(())
    })
    .await;
    browser.switch_to_window(second).await.unwrap();
    note_says_another_tab(&browser).await;
    browser.close().await.unwrap();
}
