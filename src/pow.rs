//! Proof of work on joining: arrivals pay a little CPU for a place, so a
//! bot farm pays a lot for many; no third-party CAPTCHA, and nobody is ever
//! told they look like a bot.
//!
//! A challenge is stateless and signed: `v1.<room>.<issued_at>.<nonce>.<bits>.<mac>`
//! (MAC: HMAC-SHA-256 with the gateway's first signing key). A solution is
//! a number `n` such that `SHA-256(challenge ‖ ":" ‖ n)` starts with `bits`
//! zero bits. Checking costs one HMAC and one hash (microseconds); finding
//! `n` costs about 2^bits hashes (the page's script does it with WebCrypto).
//! Challenges live [`CHALLENGE_TTL_SECS`] and are accepted once.

use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use base64::Engine;
use dashmap::DashMap;

pub const CHALLENGE_TTL_SECS: u64 = 600;
/// Most difficulty accepted in config (2^24 hashes is already seconds).
pub const MAX_BITS: u8 = 26;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    #[error("the proof of work is not well formed (expected <challenge>:<number>)")]
    Malformed,
    #[error("the challenge was not issued by this gateway")]
    BadSignature,
    #[error("the challenge is for another room")]
    WrongRoom,
    #[error("the challenge has expired; fetch a new one")]
    Expired,
    #[error("the challenge is easier than this room requires")]
    TooEasy,
    #[error("the number does not solve the challenge")]
    Unsolved,
    #[error("the challenge was already used")]
    Reused,
}

impl PowError {
    pub fn label(self) -> &'static str {
        match self {
            PowError::Malformed => "malformed",
            PowError::BadSignature => "bad_signature",
            PowError::WrongRoom => "wrong_room",
            PowError::Expired => "expired",
            PowError::TooEasy => "too_easy",
            PowError::Unsolved => "unsolved",
            PowError::Reused => "reused",
        }
    }
}

pub struct Pow {
    key: hmac::Key,
    /// Challenges accepted and not yet expired: nonce → expiry (wall secs).
    /// Used for rooms kept in this process alone; a shared line records
    /// them in the shared store instead (see [`Solved`]).
    used: DashMap<String, u64>,
}

/// A challenge solved correctly, not yet recorded as used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solved {
    /// The challenge's nonce: what "used once" is counted by.
    pub nonce: String,
    /// When the challenge expires anyway (wall-clock seconds).
    pub expires: u64,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Leading zero bits of a digest.
fn leading_zero_bits(d: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in d {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// Whether `n` solves `challenge` at `bits` (what the page's script searches for).
pub fn solves(challenge: &str, n: u64, bits: u8) -> bool {
    let d = digest(&SHA256, format!("{challenge}:{n}").as_bytes());
    leading_zero_bits(d.as_ref()) >= u32::from(bits)
}

/// Finds a solution by brute force (tests, load generators, the demo's fans).
pub fn solve(challenge: &str, bits: u8) -> u64 {
    (0..).find(|&n| solves(challenge, n, bits)).unwrap_or(0)
}

impl Pow {
    pub fn new(secret: &[u8]) -> Pow {
        Pow {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            used: DashMap::new(),
        }
    }

    fn mac(&self, body: &str) -> String {
        b64(&hmac::sign(&self.key, body.as_bytes()).as_ref()[..16])
    }

    /// A fresh challenge for `room` at `bits` difficulty.
    pub fn challenge(&self, room: &str, bits: u8, now: u64) -> String {
        let nonce = b64(&rand::random::<[u8; 12]>());
        let body = format!("v1.{room}.{now}.{nonce}.{bits}");
        format!("{body}.{}", self.mac(&body))
    }

    /// Checks `proof` (`<challenge>:<n>`) for `room` at `bits`, once in this
    /// process.
    pub fn verify(&self, proof: &str, room: &str, bits: u8, now: u64) -> Result<(), PowError> {
        let solved = self.check(proof, room, bits, now)?;
        if self.spend(&solved) {
            Ok(())
        } else {
            Err(PowError::Reused)
        }
    }

    /// Records `solved` as used in this process; false if it was already.
    pub fn spend(&self, solved: &Solved) -> bool {
        self.used
            .insert(solved.nonce.clone(), solved.expires)
            .is_none()
    }

    /// Checks `proof` for `room` at `bits` without recording its use.
    pub fn check(&self, proof: &str, room: &str, bits: u8, now: u64) -> Result<Solved, PowError> {
        let (challenge, n) = proof.rsplit_once(':').ok_or(PowError::Malformed)?;
        let n: u64 = n.trim().parse().map_err(|_| PowError::Malformed)?;
        let (body, mac) = challenge.rsplit_once('.').ok_or(PowError::Malformed)?;
        let parts: Vec<&str> = body.split('.').collect();
        let [version, c_room, issued, nonce, c_bits] = parts.as_slice() else {
            return Err(PowError::Malformed);
        };
        if *version != "v1" {
            return Err(PowError::Malformed);
        }
        let expected = self.mac(body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            mac.as_bytes(),
            expected.as_bytes(),
        )) {
            return Err(PowError::BadSignature);
        }
        if *c_room != room {
            return Err(PowError::WrongRoom);
        }
        let issued: u64 = issued.parse().map_err(|_| PowError::Malformed)?;
        if issued + CHALLENGE_TTL_SECS < now || issued > now + 60 {
            return Err(PowError::Expired);
        }
        let c_bits: u8 = c_bits.parse().map_err(|_| PowError::Malformed)?;
        if c_bits < bits {
            return Err(PowError::TooEasy);
        }
        if !solves(challenge, n, c_bits) {
            return Err(PowError::Unsolved);
        }
        Ok(Solved {
            nonce: (*nonce).to_string(),
            expires: issued + CHALLENGE_TTL_SECS,
        })
    }

    /// Forgets used challenges that have expired anyway (call periodically).
    pub fn forget_expired(&self, now: u64) {
        self.used.retain(|_, expiry| *expiry >= now);
    }

    pub fn used_len(&self) -> usize {
        self.used.len()
    }
}

/// How long a fan's browser takes at `bits`, roughly (for docs and the page).
pub fn expected_work(bits: u8) -> Duration {
    // WebCrypto manages on the order of 100k–300k SHA-256 a second in a page.
    Duration::from_secs_f64((1u64 << bits) as f64 / 200_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pow() -> Pow {
        Pow::new(b"pow-test-secret-pow-test-secret-0000")
    }

    #[test]
    fn a_solved_challenge_is_accepted_once() {
        let p = pow();
        let c = p.challenge("demo", 8, 1_000);
        let n = solve(&c, 8);
        assert_eq!(p.verify(&format!("{c}:{n}"), "demo", 8, 1_001), Ok(()));
        assert_eq!(
            p.verify(&format!("{c}:{n}"), "demo", 8, 1_002),
            Err(PowError::Reused)
        );
    }

    #[test]
    fn every_kind_of_bad_proof_is_named() {
        let p = pow();
        let c = p.challenge("demo", 8, 1_000);
        let n = solve(&c, 8);
        let wrong = (0..).find(|&m| !solves(&c, m, 8)).unwrap();
        assert_eq!(
            p.verify("nonsense", "demo", 8, 1_000),
            Err(PowError::Malformed)
        );
        assert_eq!(
            p.verify(&format!("{c}:x"), "demo", 8, 1_000),
            Err(PowError::Malformed)
        );
        assert_eq!(
            p.verify(&format!("{c}:{wrong}"), "demo", 8, 1_000),
            Err(PowError::Unsolved)
        );
        assert_eq!(
            p.verify(&format!("{c}:{n}"), "other", 8, 1_000),
            Err(PowError::WrongRoom)
        );
        assert_eq!(
            p.verify(&format!("{c}:{n}"), "demo", 9, 1_000),
            Err(PowError::TooEasy)
        );
        assert_eq!(
            p.verify(
                &format!("{c}:{n}"),
                "demo",
                8,
                1_000 + CHALLENGE_TTL_SECS + 1
            ),
            Err(PowError::Expired)
        );
        let forged = c.replacen(".8.", ".1.", 1);
        assert_eq!(
            p.verify(&format!("{forged}:0"), "demo", 1, 1_000),
            Err(PowError::BadSignature)
        );
        let other_gateway = Pow::new(b"another-secret-another-secret-00000");
        let theirs = other_gateway.challenge("demo", 1, 1_000);
        assert_eq!(
            p.verify(&format!("{theirs}:{}", solve(&theirs, 1)), "demo", 1, 1_000),
            Err(PowError::BadSignature)
        );
    }

    #[test]
    fn used_challenges_are_forgotten_after_they_expire() {
        let p = pow();
        let c = p.challenge("demo", 4, 1_000);
        p.verify(&format!("{c}:{}", solve(&c, 4)), "demo", 4, 1_000)
            .unwrap();
        p.forget_expired(1_000 + CHALLENGE_TTL_SECS);
        assert_eq!(p.used_len(), 1);
        p.forget_expired(1_000 + CHALLENGE_TTL_SECS + 1);
        assert_eq!(p.used_len(), 0);
    }

    #[test]
    fn leading_zero_bits_are_counted_across_bytes() {
        assert_eq!(leading_zero_bits(&[0, 0, 0b0001_0000]), 19);
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }
}
