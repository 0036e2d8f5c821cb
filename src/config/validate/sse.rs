//! `[sse]`: how many event streams a node, a place and a client may hold,
//! and their timing.

use std::time::Duration;

use super::Problems;
use crate::config::raw::RawSse;
use crate::config::{
    DEFAULT_SSE_HEARTBEAT_SECS, DEFAULT_SSE_MAX_CONNECTIONS, DEFAULT_SSE_MAX_STREAMS_PER_CLIENT,
    DEFAULT_SSE_MAX_STREAMS_PER_PLACE, DEFAULT_SSE_RETRY_MS, SseConfig,
};

pub(super) fn check(sse: &RawSse, problems: &mut Problems) -> SseConfig {
    let max_connections = sse.max_connections.unwrap_or(DEFAULT_SSE_MAX_CONNECTIONS);
    if !(1..=10_000_000).contains(&max_connections) {
        problems.push(
            "sse.max_connections",
            "must be between 1 and 10000000".into(),
        );
    }
    let max_streams_per_place = sse
        .max_streams_per_place
        .unwrap_or(DEFAULT_SSE_MAX_STREAMS_PER_PLACE);
    if !(1..=10_000_000).contains(&max_streams_per_place) {
        problems.push(
            "sse.max_streams_per_place",
            "must be between 1 and 10000000 (a fan's tabs plus the app: a handful)".into(),
        );
    }
    let max_streams_per_client = sse
        .max_streams_per_client
        .unwrap_or(DEFAULT_SSE_MAX_STREAMS_PER_CLIENT);
    if !(1..=10_000_000).contains(&max_streams_per_client) {
        problems.push(
            "sse.max_streams_per_client",
            "must be between 1 and 10000000 (size it for a carrier NAT: many fans share one address)"
                .into(),
        );
    }
    let heartbeat_secs = sse.heartbeat_secs.unwrap_or(DEFAULT_SSE_HEARTBEAT_SECS);
    if !(1..=300).contains(&heartbeat_secs) {
        problems.push("sse.heartbeat_secs", "must be between 1 and 300".into());
    }
    let retry_ms = sse.retry_ms.unwrap_or(DEFAULT_SSE_RETRY_MS);
    if !(100..=600_000).contains(&retry_ms) {
        problems.push("sse.retry_ms", "must be between 100 and 600000".into());
    }
    SseConfig {
        max_connections,
        max_streams_per_place,
        max_streams_per_client,
        heartbeat: Duration::from_secs(heartbeat_secs),
        retry_ms,
    }
}
