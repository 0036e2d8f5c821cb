//! What a checkout does with `Waitroom-Admission`: fetch the gateway's
//! JWKS and verify a token against it.

#![allow(dead_code)]

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;

/// The issuer the admission tests configure.
pub const ISSUER: &str = "https://gw.test";

/// An `[admission]` section with the test issuer and `keys` (TOML array
/// text), or none for a generated key.
pub fn admission_toml(keys: Option<&str>) -> String {
    let keys = keys.map(|k| format!("\nkeys = {k}")).unwrap_or_default();
    format!("[admission]\nissuer = \"{ISSUER}\"{keys}")
}

/// A new Ed25519 private key written as PKCS#8 PEM in `dir`, as the TOML
/// `keys` array naming it with `kid`.
pub fn key_file(dir: &std::path::Path, kid: &str) -> String {
    let key = waitroom::admission::AdmissionKey::generate().unwrap();
    let path = dir.join(format!("{kid}.pem"));
    std::fs::write(&path, key.to_pem()).unwrap();
    format!(
        "[{{ kid = \"{kid}\", private_key = {} }}]",
        serde_json::to_string(&path.display().to_string()).unwrap()
    )
}

pub async fn jwks(url: &str) -> JwkSet {
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res.json().await.unwrap()
}

/// The token's claims, verified as a checkout would: EdDSA with the key
/// its `kid` names in `keys`, `exp`, the test issuer and `aud`.
pub fn verify(token: &str, keys: &JwkSet, aud: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(token)?;
    let jwk = keys
        .find(header.kid.as_deref().unwrap_or_default())
        .expect("the token's kid is in the JWKS");
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[aud]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v).map(|d| d.claims)
}
