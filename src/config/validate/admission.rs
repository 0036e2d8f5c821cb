//! `[admission]`: the issuer, lifetime and Ed25519 keys of the signed
//! admission the checkout verifies.

use std::path::Path;

use super::Problems;
use crate::admission::AdmissionKey;
use crate::config::raw::RawAdmission;
use crate::config::{AdmissionConfig, DEFAULT_ADMISSION_TTL_SECS, EnvOverrides, StoreConfig};

/// Each key is read here, once, so a key the gateway could not sign with
/// is a problem naming its field. `WAITROOM_ADMISSION_KEY` (PEM text) comes
/// first, so it signs. With Redis, keys are required: every replica must
/// sign with the same ones.
pub(super) fn check(
    raw: Option<&RawAdmission>,
    env: &EnvOverrides,
    store: &StoreConfig,
    base: &Path,
    problems: &mut Problems,
) -> Option<AdmissionConfig> {
    let Some(raw) = raw else {
        if env.admission_key.is_some() {
            problems.push(
                "WAITROOM_ADMISSION_KEY",
                "is set, but there is no [admission] section (with its issuer) to use it".into(),
            );
        }
        return None;
    };
    let issuer = raw.issuer.clone().unwrap_or_default();
    if issuer.is_empty() || issuer.len() > 200 {
        problems.push(
            "admission.issuer",
            "required: 1 to 200 bytes, the tokens' iss (e.g. the gateway's public URL)".into(),
        );
    }
    let ttl_secs = raw.ttl_secs.unwrap_or(DEFAULT_ADMISSION_TTL_SECS);
    if !(60..=86_400).contains(&ttl_secs) {
        problems.push("admission.ttl_secs", "must be between 60 and 86400".into());
    }
    let mut named: Vec<(String, String)> = Vec::new();
    let mut keys = Vec::new();
    if let Some(pem) = &env.admission_key {
        let kid = env.admission_kid.clone().unwrap_or_else(|| "env".into());
        named.push(("WAITROOM_ADMISSION_KID".into(), kid.clone()));
        match AdmissionKey::from_pem(&kid, pem.as_bytes(), false) {
            Ok(key) => keys.push(key),
            Err(e) => problems.push("WAITROOM_ADMISSION_KEY", e),
        }
    }
    for (i, k) in raw.keys.iter().enumerate() {
        let field = |name: &str| format!("admission.keys[{i}].{name}");
        named.push((field("kid"), k.kid.clone()));
        let path = base.join(&k.private_key);
        match AdmissionKey::from_pem_file(&k.kid, &path, k.publish_only) {
            Ok(key) => keys.push(key),
            Err(e) => problems.push(&field("private_key"), e),
        }
    }
    for (i, (field, kid)) in named.iter().enumerate() {
        let kid_ok = (1..=64).contains(&kid.len())
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !kid_ok {
            problems.push(
                field,
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'".into(),
            );
        } else if named[..i].iter().any(|(_, other)| other == kid) {
            problems.push(field, format!("{kid:?} is used by another key"));
        }
    }
    if env.admission_key.is_none()
        && !raw.keys.is_empty()
        && raw.keys.iter().all(|k| k.publish_only)
    {
        problems.push(
            "admission.keys",
            "every key is publish_only: one must sign".into(),
        );
    }
    if keys.is_empty() && named.is_empty() && matches!(store, StoreConfig::Redis { .. }) {
        problems.push(
            "admission.keys",
            "required with the Redis store (or WAITROOM_ADMISSION_KEY): every replica must sign with the same keys".into(),
        );
    }
    Some(AdmissionConfig {
        issuer,
        ttl_secs,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use crate::admission::AdmissionKey;
    use crate::config::testing::GOOD;
    use crate::config::{Config, ConfigError, EnvOverrides};

    fn problems(text: &str, base: &std::path::Path) -> Vec<String> {
        match Config::from_toml_str_at(text, &EnvOverrides::default(), base) {
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn keys_are_read_relative_to_the_config_and_every_problem_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("good.pem"),
            AdmissionKey::generate().unwrap().to_pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
        let ok = format!(
            "{GOOD}\n[admission]\nissuer = \"https://gw.example\"\nkeys = [{{ kid = \"a\", private_key = \"good.pem\" }}]\n"
        );
        assert_eq!(problems(&ok, dir.path()), Vec::<String>::new());
        let bad = format!(
            "{GOOD}\n[admission]\nttl_secs = 5\nkeys = [{{ kid = \"a\", private_key = \"junk.pem\" }}, {{ kid = \"a\", private_key = \"missing.pem\", publish_only = true }}, {{ kid = \"no spaces\", private_key = \"good.pem\" }}]\n"
        );
        let p = problems(&bad, dir.path()).join("\n");
        for field in [
            "admission.issuer",
            "admission.ttl_secs",
            "admission.keys[0].private_key",
            "admission.keys[1].kid",
            "admission.keys[1].private_key",
            "admission.keys[2].kid",
        ] {
            assert!(p.contains(field), "{field} missing from:\n{p}");
        }
    }

    #[test]
    fn the_redis_store_needs_keys_and_one_key_must_sign() {
        let dir = tempfile::tempdir().unwrap();
        let redis = GOOD.replace(
            "[signing]",
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n[signing]",
        );
        let p = problems(
            &format!("{redis}\n[admission]\nissuer = \"i\"\n"),
            dir.path(),
        )
        .join("\n");
        assert!(
            p.contains("admission.keys: required with the Redis store"),
            "{p}"
        );
        std::fs::write(
            dir.path().join("k.pem"),
            AdmissionKey::generate().unwrap().to_pem(),
        )
        .unwrap();
        let p = problems(
            &format!("{GOOD}\n[admission]\nissuer = \"i\"\nkeys = [{{ kid = \"a\", private_key = \"k.pem\", publish_only = true }}]\n"),
            dir.path(),
        )
        .join("\n");
        assert!(p.contains("every key is publish_only"), "{p}");
    }

    #[test]
    fn the_environment_key_signs_first_and_is_checked_like_a_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let file_key = AdmissionKey::generate().unwrap();
        std::fs::write(dir.path().join("k.pem"), file_key.to_pem()).unwrap();
        let env_key = AdmissionKey::generate().unwrap();
        let text = format!(
            "{GOOD}\n[admission]\nissuer = \"i\"\nkeys = [{{ kid = \"file\", private_key = \"k.pem\" }}]\n"
        );
        let env = EnvOverrides {
            admission_key: Some(env_key.to_pem()),
            admission_kid: Some("from-env".into()),
            ..Default::default()
        };
        let c = Config::from_toml_str_at(&text, &env, dir.path()).unwrap();
        let keys = &c.admission.unwrap().keys;
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["from-env", "file"]);
        assert!(!keys[0].publish_only, "the environment's key signs");

        let problems_with = |env: &EnvOverrides, text: &str| match Config::from_toml_str_at(
            text,
            env,
            dir.path(),
        ) {
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            other => panic!("expected problems, got {other:?}"),
        };
        let junk = EnvOverrides {
            admission_key: Some(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
            admission_kid: Some("file".into()),
            ..Default::default()
        };
        let p = problems_with(&junk, &text).join("\n");
        assert!(p.contains("WAITROOM_ADMISSION_KEY"), "{p}");
        assert!(p.contains("\"file\" is used by another key"), "{p}");
        let p = problems_with(&env, GOOD).join("\n");
        assert!(p.contains("no [admission] section"), "{p}");
        assert!(
            !format!("{keys:?}").contains("PRIVATE"),
            "Debug never shows a private key"
        );
    }
}
