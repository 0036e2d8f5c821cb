//! Signed tokens: the queue token (a fan's place in line) and the access
//! token (an admitted session).
//!
//! Both are HS256 JWTs with a `kid` header. The algorithm is pinned here and
//! never read from the token: a token whose header names anything but HS256
//! is refused before any key is touched. The first configured key signs; all
//! verify, so keys can be rotated by prepending a new one.
//!
//! Tokens hold no personal data: room, room epoch, sequence number, times and
//! a random visitor id.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::SigningKey;
use crate::memo::LastOne;

/// Clock skew tolerated on `iat`/`exp`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest token accepted at all, before any decoding.
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A place in line.
    #[serde(rename = "q")]
    Queue,
    /// An admitted session.
    #[serde(rename = "a")]
    Access,
}

/// The claims of both token kinds. `sat` (session start) is set on access
/// tokens only: a sliding session never outlives `sat + session_max_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub typ: Kind,
    pub room: String,
    /// The room's epoch: a reset room or lost state starts a new one.
    pub ep: u64,
    pub seq: u64,
    /// Random visitor id (128 bits, hex).
    pub vid: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sat: Option<u64>,
    /// Access tokens: the client binding (see `binding`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bnd: Option<String>,
}

/// Why a token was refused. `label()` is the metric label and the `reason`
/// in 401 bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is too long")]
    TooLong,
    #[error("the token's algorithm is not the one this gateway uses")]
    WrongAlgorithm,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token belongs to another room")]
    WrongRoom,
    #[error("the token is of the wrong kind for this use")]
    WrongKind,
    #[error("the token is from an earlier epoch of this room")]
    StaleEpoch,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLong => "too_long",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongRoom => "wrong_room",
            TokenError::WrongKind => "wrong_kind",
            TokenError::StaleEpoch => "stale_epoch",
        }
    }

    pub const ALL: [TokenError; 10] = [
        TokenError::Malformed,
        TokenError::TooLong,
        TokenError::WrongAlgorithm,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::IssuedInFuture,
        TokenError::WrongRoom,
        TokenError::WrongKind,
        TokenError::StaleEpoch,
    ];
}

struct VerifyKey {
    kid: String,
    key: DecodingKey,
}

/// Signs and verifies tokens with the configured keys.
pub struct Keys {
    header: Header,
    signing: EncodingKey,
    verifying: Vec<VerifyKey>,
    validation: Validation,
}

/// What the caller expects a token to be.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub kind: Kind,
    pub room: &'a str,
    pub epoch: u64,
}

impl Keys {
    /// `keys` is non-empty after config validation.
    pub fn new(keys: &[SigningKey]) -> Keys {
        let first = keys
            .first()
            .expect("config validation requires a signing key");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(first.kid.clone());
        let mut validation = Validation::new(Algorithm::HS256);
        // Times are checked in `verify` with our own leeway and error kinds.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        Keys {
            header,
            signing: EncodingKey::from_secret(&first.secret),
            verifying: keys
                .iter()
                .map(|k| VerifyKey {
                    kid: k.kid.clone(),
                    key: DecodingKey::from_secret(&k.secret),
                })
                .collect(),
            validation,
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.signing)
            .expect("HS256 encoding of plain claims cannot fail")
    }

    /// Verifies signature, algorithm, kind, room, epoch and times.
    pub fn verify(
        &self,
        token: &str,
        expect: Expect<'_>,
        now_secs: u64,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify_signature(token)?;
        check(&claims, expect, now_secs)?;
        Ok(claims)
    }

    /// [`Keys::verify`], remembering the last token that verified on
    /// `memo`: the same token again skips the signature and decoding (about
    /// half the gateway's own CPU per admitted request, measured with
    /// callgrind) but not the kind, room, epoch and time checks.
    pub fn verify_with(
        &self,
        memo: &TokenMemo,
        token: &str,
        expect: Expect<'_>,
        now_secs: u64,
    ) -> Result<Arc<Claims>, TokenError> {
        let claims = match memo.recall(token) {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(self.verify_signature(token)?);
                memo.remember(token.into(), claims.clone());
                claims
            }
        };
        check(&claims, expect, now_secs)?;
        Ok(claims)
    }

    /// Checks only that the token is ours and intact; no time or room checks.
    /// Used to tell an ended session (valid but expired) from a forgery.
    pub fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::WrongAlgorithm);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self
            .verifying
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenError::UnknownKey)?;
        match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                _ => TokenError::Malformed,
            }),
        }
    }
}

/// The checks that do not depend on the signature: kind, room, epoch, times.
fn check(claims: &Claims, expect: Expect<'_>, now_secs: u64) -> Result<(), TokenError> {
    if claims.typ != expect.kind {
        return Err(TokenError::WrongKind);
    }
    if claims.room != expect.room {
        return Err(TokenError::WrongRoom);
    }
    if claims.ep != expect.epoch {
        return Err(TokenError::StaleEpoch);
    }
    if claims.iat > now_secs + LEEWAY_SECS {
        return Err(TokenError::IssuedInFuture);
    }
    if claims.exp + LEEWAY_SECS < now_secs {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// One connection's last verified token and its claims (see
/// [`Keys::verify_with`]). A browser or app sends the same access token
/// with every request on a keep-alive connection; only a byte-identical
/// token is recalled, so a changed or tampered one is verified afresh.
/// Shared, not copied: recalling copied three strings per request.
pub type TokenMemo = LastOne<Box<str>, Arc<Claims>>;

/// Why a header did not parse: an algorithm we do not know (`none`, say)
/// is named as such rather than as plain garbage.
fn header_error(token: &str) -> TokenError {
    use base64::Engine;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_string));
    match alg {
        Some(a) if a != "HS256" => TokenError::WrongAlgorithm,
        _ => TokenError::Malformed,
    }
}

/// A fresh random visitor id.
pub fn new_visitor_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&[
            SigningKey {
                kid: "k2".into(),
                secret: b"second-secret-second-secret-second!".to_vec(),
            },
            SigningKey {
                kid: "k1".into(),
                secret: b"first-secret-first-secret-first-secret".to_vec(),
            },
        ])
    }

    fn claims() -> Claims {
        Claims {
            typ: Kind::Queue,
            room: "demo".into(),
            ep: 7,
            seq: 42,
            vid: new_visitor_id(),
            iat: 1_000,
            exp: 2_000,
            sat: None,
            bnd: None,
        }
    }

    const EXPECT: Expect<'static> = Expect {
        kind: Kind::Queue,
        room: "demo",
        epoch: 7,
    };

    #[test]
    fn signed_token_verifies_and_round_trips() {
        let k = keys();
        let c = claims();
        assert_eq!(k.verify(&k.sign(&c), EXPECT, 1_500), Ok(c));
    }

    #[test]
    fn a_remembered_token_is_still_checked_for_kind_room_epoch_and_time() {
        let (k, memo) = (keys(), TokenMemo::default());
        let c = claims();
        let t = k.sign(&c);
        assert_eq!(
            k.verify_with(&memo, &t, EXPECT, 1_500),
            Ok(Arc::new(c.clone()))
        );
        assert_eq!(
            k.verify_with(&memo, &t, EXPECT, 1_600),
            Ok(Arc::new(c.clone()))
        );
        let later_epoch = Expect { epoch: 8, ..EXPECT };
        assert_eq!(
            k.verify_with(&memo, &t, later_epoch, 1_600),
            Err(TokenError::StaleEpoch)
        );
        let access = Expect {
            kind: Kind::Access,
            ..EXPECT
        };
        assert_eq!(
            k.verify_with(&memo, &t, access, 1_600),
            Err(TokenError::WrongKind)
        );
        let other_room = Expect {
            room: "other",
            ..EXPECT
        };
        assert_eq!(
            k.verify_with(&memo, &t, other_room, 1_600),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(
            k.verify_with(&memo, &t, EXPECT, 2_000 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_differing_from_the_remembered_one_by_a_byte_is_verified_afresh() {
        let (k, memo) = (keys(), TokenMemo::default());
        let c = claims();
        let t = k.sign(&c);
        assert!(k.verify_with(&memo, &t, EXPECT, 1_500).is_ok());
        // The signature's first character changed: another token, refused.
        // (Not the last one: its low bits are base64 padding, so some
        // changes there are rejected as malformed rather than forged.)
        let at = t.rfind('.').map_or(0, |i| i + 1);
        let mut forged = t.clone();
        let first = if t[at..].starts_with('A') { "B" } else { "A" };
        forged.replace_range(at..at + 1, first);
        assert_eq!(
            k.verify_with(&memo, &forged, EXPECT, 1_500),
            Err(TokenError::BadSignature)
        );
        // A refused token is not remembered; the good one still is good.
        assert_eq!(
            k.verify_with(&memo, &forged, EXPECT, 1_500),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            k.verify_with(&memo, &t, EXPECT, 1_500),
            Ok(Arc::new(c.clone()))
        );
    }

    #[test]
    fn token_signed_by_an_older_key_still_verifies() {
        let old = Keys::new(&[SigningKey {
            kid: "k1".into(),
            secret: b"first-secret-first-secret-first-secret".to_vec(),
        }]);
        let t = old.sign(&claims());
        assert!(keys().verify(&t, EXPECT, 1_500).is_ok());
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let k = keys();
        let t = k.sign(&claims());
        let parts: Vec<&str> = t.split('.').collect();
        let mut forged = claims();
        forged.seq = 1;
        let payload = k.sign(&forged);
        let forged_payload = payload.split('.').nth(1).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            k.verify(&tampered, EXPECT, 1_500),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_alg_swap_are_refused() {
        let k = keys();
        let t = k.sign(&claims());
        let payload = t.split('.').nth(1).unwrap();
        for alg in ["none", "HS512", "RS256"] {
            use base64::Engine;
            let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"alg":"{alg}","kid":"k2","typ":"JWT"}}"#));
            let forged = format!("{header}.{payload}.");
            let err = k.verify(&forged, EXPECT, 1_500).unwrap_err();
            assert_eq!(err, TokenError::WrongAlgorithm, "{alg}");
        }
    }

    #[test]
    fn wrong_room_kind_epoch_and_times_are_refused() {
        let k = keys();
        let t = k.sign(&claims());
        let e = |room, kind, epoch, now| k.verify(&t, Expect { kind, room, epoch }, now);
        assert_eq!(
            e("other", Kind::Queue, 7, 1_500),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(
            e("demo", Kind::Access, 7, 1_500),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            e("demo", Kind::Queue, 8, 1_500),
            Err(TokenError::StaleEpoch)
        );
        assert_eq!(
            e("demo", Kind::Queue, 7, 2_000 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
        assert_eq!(
            e("demo", Kind::Queue, 7, 1_000 - LEEWAY_SECS - 1),
            Err(TokenError::IssuedInFuture)
        );
        assert!(e("demo", Kind::Queue, 7, 2_000 + LEEWAY_SECS).is_ok());
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        let k = keys();
        for junk in ["", ".", "..", "a.b.c", "eyJ.eyJ.x", "💥.💥.💥", "a.b"] {
            assert!(k.verify(junk, EXPECT, 1_500).is_err(), "{junk}");
        }
        assert_eq!(
            k.verify(&"a".repeat(5000), EXPECT, 0),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let other = Keys::new(&[SigningKey {
            kid: "zz".into(),
            secret: b"another-secret-another-secret-another".to_vec(),
        }]);
        assert_eq!(
            keys().verify(&other.sign(&claims()), EXPECT, 1_500),
            Err(TokenError::UnknownKey)
        );
    }
}
