//! `waitroom demo` over real sockets: its toy checkout refuses what the
//! gateway did not admit, as a real checkout does.

mod common;

use common::*;
use waitroom::admission::{Admission, AdmissionClaims, AdmissionKey, Mode};
use waitroom::demo::{self, DemoOptions, ToyCheckout};

#[tokio::test]
async fn the_toy_checkout_serves_admitted_fans_and_refuses_everyone_else() {
    let checkout = ToyCheckout::start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        port: 0,
        fans: 0,
        rate_per_min: 6000,
    };
    let mut config =
        demo::demo_config(&opts, checkout.addr, state.path(), ADMIN_TOKEN, SECRET).unwrap();
    config.listen_public = "127.0.0.1:0".parse().unwrap();
    config.listen_admin = "127.0.0.1:0".parse().unwrap();
    let running = waitroom::server::start(config).await.unwrap();
    checkout.trust(running.public_addr, &demo::issuer(&opts), demo::ROOM);

    let fan = Fan::new(&format!("http://{}", running.public_addr));
    let page = eventually(20, "the fan is let in", || async {
        let text = fan.get("/").await.text().await.ok()?;
        text.contains("<h1>Checkout</h1>").then_some(text)
    })
    .await;
    assert!(page.contains("Admitted fan #1."), "{page}");

    let jwks = fan
        .get_json("/_waitroom/jwks.json")
        .await
        .text()
        .await
        .unwrap();
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let gateway_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let claims = AdmissionClaims {
        iss: String::new(),
        aud: demo::ROOM.into(),
        room: demo::ROOM.into(),
        ep: 1,
        seq: 2,
        vid: "v".into(),
        sat: 0,
        iat: 0,
        exp: 0,
        mode: Mode::Queued,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed_by = |key: AdmissionKey| {
        Admission::new(&demo::issuer(&opts), 600, &[key])
            .unwrap()
            .sign(claims.clone(), now)
            .0
    };
    let stranger = signed_by(AdmissionKey::generate().unwrap());
    let mut impostor = AdmissionKey::generate().unwrap();
    impostor.kid = gateway_kid;
    let same_kid = signed_by(impostor);

    let direct = reqwest::Client::builder().no_proxy().build().unwrap();
    for (admission, why) in [
        (None, "no Waitroom-Admission header"),
        (Some("not.a.token"), "not a signed token"),
        (
            Some(stranger.as_str()),
            "names no key the gateway publishes",
        ),
        (Some(same_kid.as_str()), "InvalidSignature"),
    ] {
        let mut req = direct.get(format!("http://{}/", checkout.addr));
        if let Some(token) = admission {
            req = req.header("Waitroom-Admission", token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "{why}");
        let body = res.text().await.unwrap();
        assert!(body.contains(why), "{why}: {body}");
        assert!(!body.contains("Admitted fan"), "{body}");
    }
    running.shutdown().await;
}
