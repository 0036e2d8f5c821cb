//! `[store]`: where the line is kept, embedded or in Redis.

use std::path::PathBuf;

use super::Problems;
use crate::config::raw::RawStore;
use crate::config::{DEFAULT_LEASE_MS, DEFAULT_SEQ_BLOCK, OnStoreFailure, StoreConfig};

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
    StoreConfig::Redis {
        url,
        key_prefix,
        on_failure,
        lease_ms,
    }
}
