//! `[store]`: where the line is kept, embedded or in Redis.

use std::path::PathBuf;

use super::Problems;
use crate::config::raw::RawStore;
use crate::config::{
    DEFAULT_LEASE_MS, DEFAULT_SEQ_BLOCK, OnStoreFailure, SentinelConfig, StoreConfig,
};

/// The store of `kind`; keys that belong to the other kind are problems,
/// not ignored.
pub(super) fn check(store: &RawStore, problems: &mut Problems) -> StoreConfig {
    match store.kind.as_deref().unwrap_or("embedded") {
        "embedded" => embedded(store, problems),
        "redis" => redis(store, problems),
        other => {
            problems.push(
                "store.kind",
                format!("unknown store kind {other:?}; expected \"embedded\" or \"redis\""),
            );
            StoreConfig::Embedded {
                path: PathBuf::new(),
                seq_block: DEFAULT_SEQ_BLOCK,
            }
        }
    }
}

fn embedded(store: &RawStore, problems: &mut Problems) -> StoreConfig {
    let seq_block = store.seq_block.unwrap_or(DEFAULT_SEQ_BLOCK);
    if !(1..=1_000_000).contains(&seq_block) {
        problems.push("store.seq_block", "must be between 1 and 1000000".into());
    }
    let path = store
        .path
        .clone()
        .unwrap_or_else(|| "./waitroom-state".into());
    if path.is_empty() {
        problems.push("store.path", "must not be empty".into());
    }
    for (field, set) in [
        ("store.url", store.url.is_some()),
        ("store.key_prefix", store.key_prefix.is_some()),
        ("store.on_store_failure", store.on_store_failure.is_some()),
        ("store.lease_ms", store.lease_ms.is_some()),
        ("store.sentinels", !store.sentinels.is_empty()),
        ("store.master_name", store.master_name.is_some()),
        ("store.password", store.password.is_some()),
        ("store.sentinel_password", store.sentinel_password.is_some()),
    ] {
        if set {
            problems.push(field, "only applies to kind = \"redis\"".into());
        }
    }
    StoreConfig::Embedded {
        path: PathBuf::from(path),
        seq_block,
    }
}

fn redis(store: &RawStore, problems: &mut Problems) -> StoreConfig {
    let url = store
        .url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://"))
    {
        problems.push(
            "store.url",
            format!("{url:?} is not a Redis URL (redis://, rediss:// or unix://)"),
        );
    }
    let key_prefix = store
        .key_prefix
        .clone()
        .unwrap_or_else(|| "waitroom".into());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
    {
        problems.push(
            "store.key_prefix",
            "must be 1 to 64 characters of a-z A-Z 0-9 - _ : .".into(),
        );
    }
    let on_failure = match store.on_store_failure.as_deref().unwrap_or("hold") {
        "hold" => OnStoreFailure::Hold,
        "open" => OnStoreFailure::Open,
        other => {
            problems.push(
                "store.on_store_failure",
                format!("unknown value {other:?}; expected \"hold\" or \"open\""),
            );
            OnStoreFailure::Hold
        }
    };
    let lease_ms = store.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if !(500..=60_000).contains(&lease_ms) {
        problems.push("store.lease_ms", "must be between 500 and 60000".into());
    }
    for (field, set) in [
        ("store.path", store.path.is_some()),
        ("store.seq_block", store.seq_block.is_some()),
    ] {
        if set {
            problems.push(field, "only applies to kind = \"embedded\"".into());
        }
    }
    let sentinel = sentinel(store, problems);
    StoreConfig::Redis {
        url,
        key_prefix,
        on_failure,
        lease_ms,
        sentinel,
    }
}

/// `sentinels` with `master_name` (both or neither), instead of `url`.
fn sentinel(store: &RawStore, problems: &mut Problems) -> Option<SentinelConfig> {
    if store.sentinels.is_empty() {
        for (field, set) in [
            ("store.master_name", store.master_name.is_some()),
            ("store.password", store.password.is_some()),
            ("store.sentinel_password", store.sentinel_password.is_some()),
        ] {
            if set {
                problems.push(
                    field,
                    "only applies with store.sentinels (with url, put credentials in the URL)"
                        .into(),
                );
            }
        }
        return None;
    }
    if store.url.is_some() {
        problems.push(
            "store.url",
            "give either url or sentinels (the sentinels say where the primary is)".into(),
        );
    }
    let mut sentinels = Vec::new();
    for (i, s) in store.sentinels.iter().enumerate() {
        let parsed = s
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, port)| !host.is_empty() && *port > 0);
        match parsed {
            Some((host, port)) => sentinels.push((
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            )),
            None => problems.push(
                &format!("store.sentinels[{i}]"),
                format!("{s:?} is not host:port"),
            ),
        }
    }
    let master_name = store.master_name.clone().unwrap_or_default();
    if master_name.is_empty()
        || master_name.len() > 128
        || master_name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        problems.push(
            "store.master_name",
            "required with sentinels: the name the sentinels monitor the primary by (1 to 128 characters, no spaces)".into(),
        );
    }
    Some(SentinelConfig {
        sentinels,
        master_name,
        password: store.password.clone(),
        sentinel_password: store.sentinel_password.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, problems};
    use crate::config::{Config, EnvOverrides, StoreConfig};

    fn with_store(store: &str) -> String {
        GOOD.replace("[signing]", &format!("{store}\n[signing]"))
    }

    #[test]
    fn sentinels_are_checked_field_by_field() {
        let ok = with_store(
            "[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\", \"[::1]:26380\"]\nmaster_name = \"wr\"\npassword = \"p\"",
        );
        let c = Config::from_toml_str(&ok, &EnvOverrides::default()).unwrap();
        let StoreConfig::Redis { sentinel, .. } = c.store else {
            panic!("redis")
        };
        let sentinel = sentinel.unwrap();
        assert_eq!(
            sentinel.sentinels,
            [("10.0.0.1".to_string(), 26379), ("::1".to_string(), 26380)]
        );
        assert!(
            !format!("{sentinel:?}").contains("\"p\""),
            "no password in Debug"
        );

        let bad = with_store(
            "[store]\nkind = \"redis\"\nurl = \"redis://x:1\"\nsentinels = [\"nope\", \"h:0\"]",
        );
        let fields: Vec<String> = problems(&bad).into_iter().map(|p| p.field).collect();
        for f in [
            "store.url",
            "store.sentinels[0]",
            "store.sentinels[1]",
            "store.master_name",
        ] {
            assert!(fields.contains(&f.to_string()), "{f}: {fields:?}");
        }
        let stray = with_store("[store]\nkind = \"redis\"\nmaster_name = \"wr\"");
        assert_eq!(problems(&stray)[0].field, "store.master_name");
        let embedded = with_store("[store]\nkind = \"embedded\"\nsentinels = [\"h:1\"]");
        assert_eq!(problems(&embedded)[0].field, "store.sentinels");
    }
}
