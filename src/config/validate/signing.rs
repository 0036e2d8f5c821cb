//! `[signing]`: the token signing keys (or `WAITROOM_SIGNING_KEY`) and how
//! long a queue token lives.

use std::collections::HashSet;
use std::time::Duration;

use super::Problems;
use crate::config::raw::RawSigning;
use crate::config::{DEFAULT_QUEUE_TOKEN_TTL_SECS, EnvOverrides, MIN_SECRET_BYTES, SigningKey};

/// The signing keys, the environment's in front (it signs), and the queue
/// token lifetime. A kid's length is reported by its place in the file;
/// short secrets and duplicate kids by their place in the combined list.
pub(super) fn check(
    signing: &RawSigning,
    env: &EnvOverrides,
    problems: &mut Problems,
) -> (Vec<SigningKey>, Duration) {
    let mut signing_keys = Vec::new();
    if let Some(secret) = &env.signing_key {
        signing_keys.push(SigningKey {
            kid: env.signing_kid.clone().unwrap_or_else(|| "env".into()),
            secret: secret.as_bytes().to_vec(),
        });
    }
    for (i, k) in signing.keys.iter().enumerate() {
        signing_keys.push(SigningKey {
            kid: k.kid.clone(),
            secret: k.secret.as_bytes().to_vec(),
        });
        let field = format!("signing.keys[{i}]");
        if k.kid.is_empty() || k.kid.len() > 64 {
            problems.push(&format!("{field}.kid"), "must be 1 to 64 characters".into());
        }
    }
    if signing_keys.is_empty() {
        problems.push(
            "signing.keys",
            "at least one key is required (or set WAITROOM_SIGNING_KEY)".into(),
        );
    }
    let mut kids = HashSet::new();
    for (i, k) in signing_keys.iter().enumerate() {
        if k.secret.len() < MIN_SECRET_BYTES {
            problems.push(
                &format!("signing.keys[{i}].secret"),
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (kid {:?} has {})",
                    k.kid,
                    k.secret.len()
                ),
            );
        }
        if !kids.insert(k.kid.clone()) {
            problems.push(
                &format!("signing.keys[{i}].kid"),
                format!("duplicate kid {:?}", k.kid),
            );
        }
    }
    let queue_token_ttl_secs = signing
        .queue_token_ttl_secs
        .unwrap_or(DEFAULT_QUEUE_TOKEN_TTL_SECS);
    if queue_token_ttl_secs < 3600 {
        problems.push(
            "signing.queue_token_ttl_secs",
            "must be at least 3600: a fan must never be dropped from the line for waiting long"
                .into(),
        );
    }
    (signing_keys, Duration::from_secs(queue_token_ttl_secs))
}
