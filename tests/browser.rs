//! The fan's waiting page in real headless Chromium (driven through
//! chromedriver): it shows a place, updates live without reloading when the
//! admin API changes the room, and lands on the checkout when admitted.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh`
//! installs them). Set `WAITROOM_SCREENSHOT=path.png` to save a screenshot
//! of the waiting page.

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use chromium::*;
use common::*;
use fantoccini::Locator;
use serde_json::json;

#[tokio::test]
async fn waiting_page_updates_live_and_lands_on_the_checkout() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "title = \"Reunion Tour — on sale\"\nadmit_rate_per_min = 60\nabandon_after_secs = 600",
    ))
    .await;
    gw.patch_room("demo", json!({"paused": true})).await;
    // Three fans (apps) are ahead of the browser.
    let app = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..3 {
        app.post(format!("{}/_waitroom/join?room=demo", gw.public))
            .send()
            .await
            .unwrap();
    }

    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("{}/checkout?show=42", gw.public))
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "wr-position").await, "4");
    assert!(text_of(&browser, "wr-note").await.contains("paused"));
    // A marker that a reload would wipe.
    browser
        .execute("window.__stillHere = 'yes'; return null;", vec![])
        .await
        .unwrap();

    // The promoter resumes at one fan a second: the page follows live.
    gw.patch_room("demo", json!({"paused": false})).await;
    eventually(20, "position moves without reload", || async {
        let p = text_of(&browser, "wr-position").await;
        (p != "4" && p != "…").then_some(())
    })
    .await;
    let marker = browser
        .execute("return window.__stillHere || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("yes"), "the page was not reloaded");
    assert!(
        text_of(&browser, "wr-eta")
            .await
            .starts_with("Estimated wait")
    );
    if let Ok(path) = std::env::var("WAITROOM_SCREENSHOT") {
        std::fs::write(path, browser.screenshot().await.unwrap()).unwrap();
    }

    // Then the rate goes up and the browser is forwarded to where it was going.
    gw.patch_room("demo", json!({"admit_rate_per_min": 6000}))
        .await;
    eventually(20, "browser lands on the checkout", || async {
        let url = browser.current_url().await.ok()?;
        let body = browser.source().await.ok()?;
        (url.path() == "/checkout" && body.contains("\"upstream\":true")).then_some(())
    })
    .await;
    let body = browser.source().await.unwrap();
    assert!(body.contains("\"path\":\"/checkout?show=42\""), "{body}");
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_proof_of_work_room_gets_a_browser_in_line_without_any_human_step() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "admit_rate_per_min = 1\npow_bits = 12",
    ))
    .await;
    Fan::new(&gw.public); // the room starts empty; the browser is first
    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("{}/tickets", gw.public))
        .await
        .unwrap();
    // The page's script solves the challenge, joins, and lands on the waiting page.
    eventually(30, "the browser has a place", || async {
        let p = browser
            .find(Locator::Id("wr-position"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (p == "1").then_some(())
    })
    .await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/tickets");
    browser.close().await.unwrap();
}

/// The stock next to the place, the hold while every ticket is in a cart,
/// and the sold-out close, live in a real browser: the promoter says each
/// through the admin API and the page follows without a reload.
#[tokio::test]
async fn the_waiting_page_shows_the_stock_the_hold_and_sold_out() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start(&room_toml(
        "demo",
        &up.url(),
        "title = \"Reunion Tour\"\nabandon_after_secs = 600",
    ))
    .await;
    gw.patch_room("demo", json!({"paused": true, "stock": 1200}))
        .await;
    let app = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..3 {
        app.post(format!("{}/_waitroom/join?room=demo", gw.public))
            .send()
            .await
            .unwrap();
    }
    let (_driver, browser) = start_browser().await;
    browser
        .goto(&format!("{}/tickets", gw.public))
        .await
        .unwrap();
    eventually(10, "the stock next to the place", || async {
        let ahead = text_of(&browser, "wr-ahead").await;
        (ahead == "about 1,200 tickets left · 3 people ahead of you").then_some(())
    })
    .await;
    if let Ok(path) = std::env::var("WAITROOM_SCREENSHOT_STOCK") {
        std::fs::write(path, browser.screenshot().await.unwrap()).unwrap();
    }

    gw.patch_room("demo", json!({"paused": false, "stock": 0}))
        .await;
    eventually(10, "the hold is explained", || async {
        let note = text_of(&browser, "wr-note").await;
        (note == "All tickets are in carts right now; you keep your place.").then_some(())
    })
    .await;
    assert_eq!(
        text_of(&browser, "wr-position").await,
        "4",
        "nobody was called"
    );

    gw.patch_room("demo", json!({"sold_out": true})).await;
    eventually(10, "sold out, live", || async {
        let note = text_of(&browser, "wr-note").await;
        (note == "Sold out: every ticket has been sold.").then_some(())
    })
    .await;
    // A new browser arriving now gets the sold-out page, not a place.
    let (_driver2, second) = start_browser().await;
    second
        .goto(&format!("{}/tickets", gw.public))
        .await
        .unwrap();
    let body = second.source().await.unwrap();
    assert!(
        body.contains("Sold out: every ticket has been sold."),
        "{body}"
    );
    assert!(!body.contains("wr-position"), "no place: {body}");
}
