//! Signed admission: what tells the checkout that a request comes from a
//! fan who waited.
//!
//! Every request the gateway proxies for a live access session carries
//! `Waitroom-Admission: <JWS>`, signed with Ed25519 (EdDSA) under a key pair
//! of its own (never the HS256 queue-token keys), so the checkout verifies
//! it with the public keys served as a JWKS and holds no secret:
//!
//! ```text
//!   fan ── access token ──→ gate ── session live ──→ proxy ── Waitroom-Admission ──→ checkout
//!                                                          (signed once per session,      │
//!   GET /_waitroom/jwks.json, GET /admin/jwks.json ←── public keys (OKP) ─────────────────┘
//! ```
//!
//! Signing costs tens of µs, so a session's token is signed once and again
//! only when less than half its lifetime is left (see `gate`).
//!
//! Keys rotate by publishing first: a `publish_only` key is in the JWKS
//! but signs nothing; promote it once checkouts have had time to fetch it.

use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// The request header the checkout reads.
pub const ADMISSION_HEADER: &str = "waitroom-admission";

/// What the admission token says. Nothing personal: the visitor id is the
/// gateway's random one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    pub iss: String,
    pub aud: String,
    pub room: String,
    /// The room's epoch (a reset starts a new one).
    pub ep: u64,
    /// The fan's place in line.
    pub seq: u64,
    /// The gateway's visitor id for the fan.
    pub vid: String,
    /// When the fan's session started (UNIX seconds).
    pub sat: u64,
    pub iat: u64,
    pub exp: u64,
    pub mode: Mode,
}

/// How the fan got in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through the line.
    Queued,
    /// Unqueued, while the shared store was down and the room fails open
    /// (`on_store_failure = "open"`): the checkout decides what to do.
    Open,
}

/// One Ed25519 key pair, from a PKCS#8 PEM file or made here.
#[derive(Clone)]
pub struct AdmissionKey {
    pub kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    /// In the JWKS, never used to sign (a key being rolled out).
    pub publish_only: bool,
}

/// Never the private part.
impl std::fmt::Debug for AdmissionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionKey")
            .field("kid", &self.kid)
            .field("publish_only", &self.publish_only)
            .finish_non_exhaustive()
    }
}

impl AdmissionKey {
    /// Reads an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey
    /// -algorithm ed25519` writes it).
    pub fn from_pem_file(kid: &str, path: &Path, publish_only: bool) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))?;
        Self::from_pem(kid, &pem, publish_only).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// An Ed25519 private key from PKCS#8 PEM text (a file's, or an
    /// environment variable's).
    pub fn from_pem(kid: &str, pem: &[u8], publish_only: bool) -> Result<Self, String> {
        let der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no PEM private key ({e})"))?;
        let PrivateKeyDer::Pkcs8(der) = der else {
            return Err(
                "not a PKCS#8 key (make one with `openssl genpkey -algorithm ed25519`)".into(),
            );
        };
        Self::from_pkcs8(kid, der.secret_pkcs8_der(), publish_only)
    }

    fn from_pkcs8(kid: &str, pkcs8: &[u8], publish_only: bool) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8))
            .map_err(|_| "not an Ed25519 private key".to_string())?;
        Ok(AdmissionKey {
            kid: kid.to_string(),
            pkcs8: pkcs8.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
            publish_only,
        })
    }

    /// A new key pair; its kid names its public key (the first 8 bytes of
    /// its SHA-256, hex), so a regenerated key never reuses a kid.
    pub fn generate() -> Result<Self, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
        let mut key = Self::from_pkcs8("", doc.as_ref(), false)?;
        key.kid = kid_of(&key.public);
        Ok(key)
    }

    /// The key kept in `path` (PKCS#8 PEM), made and written there (mode
    /// 0600) the first time: the embedded store's own key, for gateways
    /// that configure none. Its kid names its public key.
    pub fn kept_in(path: &Path) -> Result<Self, String> {
        if path.exists() {
            let mut key = Self::from_pem_file("", path, false)?;
            key.kid = kid_of(&key.public);
            return Ok(key);
        }
        let key = Self::generate()?;
        write_private(path, key.to_pem().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(key)
    }

    /// The private key as PKCS#8 PEM, to be kept (mode 0600) and read back.
    pub fn to_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// This key as a JWK: public part only.
    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public),
        })
    }
}

/// A kid naming a public key: the first 8 bytes of its SHA-256, hex.
fn kid_of(public: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a new private file, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A signed admission kept for reuse: signing costs tens of µs, so a
/// token is signed once and again only when less than half its lifetime
/// is left.
#[derive(Debug, Default)]
pub struct Kept(std::sync::Mutex<Option<(hyper::header::HeaderValue, u64)>>);

impl Kept {
    /// The kept token, or a new one from `sign` (kept for next time) when
    /// there is none or less than `renew_after` seconds of it are left.
    pub fn get_or_sign(
        &self,
        now: u64,
        renew_after: u64,
        sign: impl FnOnce() -> Option<(hyper::header::HeaderValue, u64)>,
    ) -> Option<hyper::header::HeaderValue> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((value, exp)) = &*kept
            && now + renew_after < *exp
        {
            return Some(value.clone());
        }
        let (value, exp) = sign()?;
        *kept = Some((value.clone(), exp));
        Some(value)
    }
}

/// The gateway's signer of admission tokens and its published keys.
pub struct Admission {
    issuer: String,
    ttl_secs: u64,
    header: Header,
    signing: EncodingKey,
    jwks: String,
}

impl Admission {
    /// Signs with the first key that is not `publish_only`; publishes all.
    pub fn new(issuer: &str, ttl_secs: u64, keys: &[AdmissionKey]) -> Result<Self, String> {
        let signer = keys
            .iter()
            .find(|k| !k.publish_only)
            .ok_or("no admission key may sign (every one is publish_only)")?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid.clone());
        let jwks =
            serde_json::json!({ "keys": keys.iter().map(AdmissionKey::jwk).collect::<Vec<_>>() });
        Ok(Admission {
            issuer: issuer.to_string(),
            ttl_secs,
            header,
            signing: EncodingKey::from_ed_der(&signer.pkcs8),
            jwks: jwks.to_string(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The JWKS document (`{"keys": [...]}`), public keys only.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Signs `claims` as a header value, kept in `kept` (see [`Kept`]).
    pub fn kept(
        &self,
        kept: &Kept,
        now: u64,
        claims: impl FnOnce() -> AdmissionClaims,
    ) -> Option<hyper::header::HeaderValue> {
        kept.get_or_sign(now, self.ttl_secs / 2, || {
            let (token, exp) = self.sign(claims(), now);
            Some((hyper::header::HeaderValue::from_str(&token).ok()?, exp))
        })
    }

    /// Signs `claims` (whose `iss`, `iat` and `exp` this fills in at `now`).
    pub fn sign(&self, mut claims: AdmissionClaims, now: u64) -> (String, u64) {
        claims.iss = self.issuer.clone();
        claims.iat = now;
        claims.exp = now + self.ttl_secs;
        let exp = claims.exp;
        let token = jsonwebtoken::encode(&self.header, &claims, &self.signing)
            .expect("EdDSA signing of plain claims with a checked key cannot fail");
        (token, exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> AdmissionClaims {
        AdmissionClaims {
            iss: String::new(),
            aud: "checkout".into(),
            room: "demo".into(),
            ep: 7,
            seq: 42,
            vid: "v".into(),
            sat: 1_000,
            iat: 0,
            exp: 0,
            mode: Mode::Queued,
        }
    }

    #[test]
    fn a_signed_token_verifies_with_the_published_key_and_not_with_another() {
        let key = AdmissionKey::generate().unwrap();
        let other = AdmissionKey::generate().unwrap();
        let adm = Admission::new("https://gw.example", 600, &[key]).unwrap();
        let (token, exp) = adm.sign(claims(), 2_000);
        assert_eq!(exp, 2_600);
        let jwks: serde_json::Value = serde_json::from_str(adm.jwks()).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.set_audience(&["checkout"]);
        v.set_issuer(&["https://gw.example"]);
        v.validate_exp = false;
        let got = jsonwebtoken::decode::<AdmissionClaims>(
            &token,
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(got.claims.seq, 42);
        assert_eq!(
            got.header.kid,
            jwks["keys"][0]["kid"].as_str().map(String::from)
        );
        let wrong = jsonwebtoken::DecodingKey::from_ed_der(&other.public);
        assert!(jsonwebtoken::decode::<AdmissionClaims>(&token, &wrong, &v).is_err());
    }

    #[test]
    fn the_jwks_holds_public_okp_keys_only() {
        let keys = [
            AdmissionKey::generate().unwrap(),
            AdmissionKey {
                publish_only: true,
                ..AdmissionKey::generate().unwrap()
            },
        ];
        let adm = Admission::new("i", 60, &keys).unwrap();
        let jwks: serde_json::Value = serde_json::from_str(adm.jwks()).unwrap();
        let listed = jwks["keys"].as_array().unwrap();
        assert_eq!(listed.len(), 2, "the publish_only key is published");
        for k in listed {
            assert_eq!(k["kty"], "OKP");
            assert!(k.get("d").is_none(), "no private part: {k}");
            assert_ne!(k["kty"], "oct");
        }
        assert!(!adm.jwks().contains("\"oct\""));
    }

    #[test]
    fn a_key_written_as_pem_reads_back_as_the_same_key() {
        let key = AdmissionKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, key.to_pem()).unwrap();
        let back = AdmissionKey::from_pem_file("k", &path, false).unwrap();
        assert_eq!(back.public, key.public);
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(AdmissionKey::from_pem_file("k", &path, false).is_err());
    }

    #[test]
    fn the_kept_key_is_made_once_private_and_then_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admission-ed25519.pem");
        let made = AdmissionKey::kept_in(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AdmissionKey::kept_in(&path).unwrap();
        assert_eq!((again.kid, again.public), (made.kid, made.public));
    }

    #[test]
    fn every_key_publish_only_is_refused() {
        let key = AdmissionKey {
            publish_only: true,
            ..AdmissionKey::generate().unwrap()
        };
        assert!(Admission::new("i", 60, &[key]).is_err());
    }
}
