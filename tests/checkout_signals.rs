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
