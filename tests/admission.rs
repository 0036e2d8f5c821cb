//! Signed admission (`[admission]`) over real sockets: what the checkout
//! (the echo upstream) receives, checked with the public keys the gateway
//! serves, as a checkout would.

#[path = "common/admission.rs"]
mod checkout;
mod common;

use checkout::{jwks, verify};
use common::*;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

const ADMISSION: &str = "[admission]\nissuer = \"https://gw.test\"";

/// A gateway signing admissions for room `shop`, whose checkout is
/// `checkout.test`, letting fans in at once.
async fn shop_for_checkout(up: &TestUpstream) -> Gateway {
    Gateway::start_with(
        &room_toml(
            "shop",
            &up.url(),
            "admit_rate_per_min = 6000\nadmission_audience = \"checkout.test\"",
        ),
        ADMISSION,
    )
    .await
}

#[tokio::test]
async fn an_admitted_request_carries_an_admission_the_published_keys_verify() {
    let up = TestUpstream::start().await;
    let gw = shop_for_checkout(&up).await;
    let fan = Fan::new(&gw.public);
    let first = admitted(&fan, "/basket").await;
    let token = first["headers"]["waitroom-admission"]
        .as_str()
        .expect("the admitted request carries Waitroom-Admission")
        .to_string();

    let public = jwks(&format!("{}/_waitroom/jwks.json", gw.public)).await;
    let admin = jwks(&format!("{}/admin/jwks.json", gw.admin)).await;
    assert_eq!(
        serde_json::to_value(&public).unwrap(),
        serde_json::to_value(&admin).unwrap()
    );
    let claims = verify(&token, &public, "checkout.test").expect("verifies");
    assert_eq!(claims["room"], "shop");
    assert_eq!(claims["mode"], "queued");
    assert_eq!(claims["seq"], 1);
    assert!(claims["vid"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(
        verify(&token, &public, "another-checkout").is_err(),
        "the wrong audience is refused"
    );
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert!(verify(&forged, &public, "checkout.test").is_err());

    // Signed once per session: the next request carries the same token.
    let again = fan.get("/basket/2").await.json::<Value>().await.unwrap();
    assert_eq!(again["headers"]["waitroom-admission"], token.as_str());

    // The key made for this embedded store is kept, private, in its directory.
    let kept = gw.state_dir.path().join("admission-ed25519.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kept)
        .expect("the key file is kept")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn an_admitted_fan_carries_it_on_exempt_paths_too() {
    let up = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml(
            "shop",
            &up.url(),
            "path_prefix = \"/shop\"\nexempt_paths = [\"/shop/3ds-return\"]\nadmit_rate_per_min = 6000",
        ),
        ADMISSION,
    )
    .await;
    let fan = Fan::new(&gw.public);
    let inside = admitted(&fan, "/shop/pay").await;
    let token = inside["headers"]["waitroom-admission"].as_str().unwrap();
    // The payment provider sends the fan back to an exempt path.
    let back: Value = fan.get("/shop/3ds-return").await.json().await.unwrap();
    assert_eq!(back["headers"]["waitroom-admission"], token);
    // A stranger on the same exempt path passes, without one.
    let stranger: Value = Fan::new(&gw.public)
        .get("/shop/3ds-return")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stranger["upstream"], true);
    assert!(stranger["headers"].get("waitroom-admission").is_none());
}

#[tokio::test]
async fn a_client_never_brings_its_own_admission_and_strangers_get_none() {
    let up = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let gw = Gateway::start_with(
        &room_toml(
            "shop",
            &up.url(),
            "path_prefix = \"/shop\"\nexempt_paths = [\"/shop/static/\"]\nadmit_rate_per_min = 1",
        ),
        &format!(
            "{ADMISSION}\n[proxy]\ndefault_upstream = \"{}\"",
            other.url()
        ),
    )
    .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/shop/static/app.css", "/elsewhere"] {
        let echo: Value = client
            .get(format!("{}{path}", gw.public))
            .header("Waitroom-Admission", "forged.by.client")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(echo["upstream"], true, "{path}");
        assert!(
            echo["headers"].get("waitroom-admission").is_none(),
            "{path}: {echo}"
        );
    }
}

#[tokio::test]
async fn the_jwks_holds_public_ed25519_keys_only_and_is_absent_when_off() {
    let up = TestUpstream::start().await;
    let on = Gateway::start_with(&room_toml("shop", &up.url(), ""), ADMISSION).await;
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/_waitroom/jwks.json", on.public))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert!(keys[0].get("d").is_none(), "no private part");
    assert!(!text.contains("\"oct\""), "no HMAC secret: {text}");
    assert!(!text.contains("signing-key"), "{text}");

    let off = Gateway::start(&room_toml("shop", &up.url(), "")).await;
    let res = Fan::new(&off.public).get_json("/_waitroom/jwks.json").await;
    assert_eq!(res.status(), 404);
}

/// The Python that runs `docs/checkout/verify.py`: `python3`, or Debian's
/// own where `apt-get install python3-jwt` puts PyJWT when another
/// `python3` comes first on PATH. Never a skip: scripts/test.sh installs it.
fn python_with_pyjwt() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|python| {
            std::process::Command::new(python)
                .args(["-c", "import jwt, cryptography"])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .expect("python3 with PyJWT and cryptography (apt-get install python3-jwt python3-cryptography; scripts/test.sh does)")
}

/// Runs the example checkout verifier; its exit code and output.
async fn python_verify(gw: &Gateway, audience: &str, token: &str) -> (i32, String) {
    let out = tokio::process::Command::new(python_with_pyjwt())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/checkout/verify.py"
        ))
        .args(["--jwks", &format!("{}/_waitroom/jwks.json", gw.public)])
        .args(["--issuer", "https://gw.test", "--audience", audience, token])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_python_example_verifier_accepts_the_gateways_admission_and_refuses_forgeries() {
    let up = TestUpstream::start().await;
    let gw = shop_for_checkout(&up).await;
    let echo = admitted(&Fan::new(&gw.public), "/basket").await;
    let token = echo["headers"]["waitroom-admission"].as_str().unwrap();

    let (code, out) = python_verify(&gw, "checkout.test", token).await;
    assert_eq!(code, 0, "{out}");
    let claims: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(claims["room"], "shop");
    assert_eq!(claims["seq"], 1);

    let mut altered = token.to_string();
    altered.replace_range(altered.len() - 4.., "AAAA");
    let (code, out) = python_verify(&gw, "checkout.test", &altered).await;
    assert_eq!(code, 1, "an altered signature is refused: {out}");
    assert!(out.contains("Signature verification failed"), "{out}");

    // Signed by another Ed25519 key under the gateway's kid.
    let header = jsonwebtoken::decode_header(token).unwrap();
    let stranger = waitroom::admission::AdmissionKey::generate().unwrap();
    let pkcs8 =
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(stranger.to_pem().as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(pkcs8.secret_pkcs8_der()),
    )
    .unwrap();
    let (code, out) = python_verify(&gw, "checkout.test", &forged).await;
    assert_eq!(code, 1, "another key's signature is refused: {out}");
    assert!(out.contains("Signature verification failed"), "{out}");

    let (code, out) = python_verify(&gw, "another-checkout", token).await;
    assert_eq!(code, 1, "the wrong audience is refused: {out}");
    assert!(out.contains("audience"), "{out}");
}
