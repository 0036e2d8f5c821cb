//! Scheduled on-sales: a pre-queue before opening, a verifiable random
//! order at opening, later arrivals after it; closing with a message.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use waitroom::shuffle::{Seed, order};

fn in_secs(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    waitroom::rfc3339::format(now + secs)
}

async fn get(url: String, bearer: Option<&str>) -> Value {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn fans_before_opening_get_a_verifiable_random_order_and_later_fans_queue_after() {
    let up = TestUpstream::start().await;
    let room = room_toml(
        "sale",
        &up.url(),
        &format!(
            "opens_at = \"{}\"\nadmit_rate_per_min = 6000\nabandon_after_secs = 3600",
            in_secs(3)
        ),
    );
    let gw = Gateway::start(&room).await;
    // Keep the line still after opening, so positions can be read.
    gw.patch_room("sale", json!({"paused": true})).await;
    let app = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut tokens = Vec::new();
    for _ in 0..6 {
        let v: Value = app
            .post(format!("{}/_waitroom/join?room=sale", gw.public))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["state"], "prequeue", "{v}");
        assert_eq!(v["position"], Value::Null);
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    let before = get(format!("{}/_waitroom/shuffle?room=sale", gw.public), None).await;
    let commitment = before["commitment"].as_str().unwrap().to_string();
    assert_eq!(before["open"], false);
    assert_eq!(
        before["seed"],
        Value::Null,
        "the seed stays secret until opening"
    );

    let after = eventually(15, "the room opens", || async {
        let v = get(format!("{}/_waitroom/shuffle?room=sale", gw.public), None).await;
        (v["open"] == true).then_some(v)
    })
    .await;
    assert_eq!(after["commitment"], commitment.as_str());
    assert_eq!(after["entries"], 6);
    let seed = Seed::from_hex(after["seed"].as_str().unwrap()).unwrap();
    assert_eq!(
        seed.commitment(),
        commitment,
        "the revealed seed matches the commitment"
    );
    let drawn = order(&seed, 6);
    for (i, token) in tokens.iter().enumerate() {
        let seq = i as u32 + 1;
        let rank = drawn.iter().position(|&s| s == seq).unwrap() as u64 + 1;
        let s = get(
            format!("{}/_waitroom/status?room=sale", gw.public),
            Some(token),
        )
        .await;
        assert_eq!(s["position"], rank, "seq {seq}: {s}");
    }
    // A fan who arrives after opening queues behind the whole pre-queue.
    let late: Value = app
        .post(format!("{}/_waitroom/join?room=sale", gw.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(late["position"].as_u64().unwrap() >= 7, "{late}");

    // The opening time cannot move any more.
    let (c, url) = (gw.admin_client(), format!("{}/admin/rooms/sale", gw.admin));
    let body = json!({"opens_at": in_secs(60)});
    let (status, v) = bearer_json(&c, Method::PATCH, url, ADMIN_TOKEN, Some(&body)).await;
    assert_eq!(status, 409);
    assert_eq!(v["error"], "already_open");
}

#[tokio::test]
async fn the_opening_time_can_move_before_opening_and_a_closed_room_says_why() {
    let up = TestUpstream::start().await;
    let room = room_toml(
        "sale",
        &up.url(),
        &format!(
            "opens_at = \"{}\"\nclosed_message = \"Sold out — thank you!\"",
            in_secs(3600)
        ),
    );
    let gw = Gateway::start(&room).await;
    let fan = Fan::new(&gw.public);
    let page = fan.get("/").await.text().await.unwrap();
    assert!(page.contains("Your place in line"));
    assert_eq!(fan.status("sale").await["state"], "prequeue");
    let moved = gw.patch_room("sale", json!({"opens_at": in_secs(1)})).await;
    assert_eq!(moved["open"], false);
    eventually(10, "opens at the new time", || async {
        (fan.status("sale").await["state"] == "waiting"
            || fan.status("sale").await["state"] == "admitted")
            .then_some(())
    })
    .await;

    let closed = gw.patch_room("sale", json!({"closed": true})).await;
    assert_eq!(closed["state"], "closed");
    let newcomer = Fan::new(&gw.public);
    let page = newcomer.get("/").await.text().await.unwrap();
    assert!(page.contains("Sold out — thank you!"), "{page}");
    let v: Value = newcomer.get_json("/").await.json().await.unwrap();
    assert_eq!(v["state"], "closed");
    assert_eq!(v["message"], "Sold out — thank you!");

    // Bad schedule values are refused with the field named.
    for (body, field) in [
        (json!({"closes_at": "tomorrow"}), "closes_at"),
        (json!({"closes_at": 5}), "closes_at"),
    ] {
        let (c, url) = (gw.admin_client(), format!("{}/admin/rooms/sale", gw.admin));
        let (status, v) = bearer_json(&c, Method::PATCH, url, ADMIN_TOKEN, Some(&body)).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(v["field"], field);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_reset_scheduled_room_draws_with_a_new_committed_seed_and_restarts_cleanly() {
    let up = TestUpstream::start().await;
    let room = room_toml(
        "sale",
        &up.url(),
        &format!("opens_at = \"{}\"", in_secs(3600)),
    );
    let mut gw = Gateway::start(&room).await;
    let first = get(format!("{}/_waitroom/shuffle?room=sale", gw.public), None).await;
    Fan::new(&gw.public).get("/").await;
    let res = gw
        .admin_client()
        .post(format!("{}/admin/rooms/sale/reset", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let second = get(format!("{}/_waitroom/shuffle?room=sale", gw.public), None).await;
    assert_ne!(
        first["commitment"], second["commitment"],
        "a new epoch commits to a new seed"
    );
    Fan::new(&gw.public).get("/").await;
    Fan::new(&gw.public).get("/").await;
    gw.patch_room("sale", json!({"opens_at": in_secs(1)})).await;
    let opened = eventually(10, "opens", || async {
        let v = get(format!("{}/_waitroom/shuffle?room=sale", gw.public), None).await;
        (v["open"] == true).then_some(v)
    })
    .await;
    assert_eq!(opened["entries"], 2);
    let seed = Seed::from_hex(opened["seed"].as_str().unwrap()).unwrap();
    assert_eq!(seed.commitment(), second["commitment"].as_str().unwrap());

    // The state reloads: same epoch, same draw.
    gw.stop().await;
    let again = Gateway::start_in(gw.state_dir.clone(), &room, "").await;
    let after = get(
        format!("{}/_waitroom/shuffle?room=sale", again.public),
        None,
    )
    .await;
    assert_eq!(after["seed"], opened["seed"]);
    assert_eq!(after["entries"], 2);
}
