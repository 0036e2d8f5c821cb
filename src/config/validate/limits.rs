//! `[limits]`: how fast one client may take new places.

use super::Problems;
use crate::config::raw::RawLimits;
use crate::config::{DEFAULT_JOIN_BURST, DEFAULT_JOINS_PER_MIN_PER_CLIENT, LimitsConfig};

pub(super) fn check(limits: &RawLimits, problems: &mut Problems) -> LimitsConfig {
    let joins_per_min_per_client = limits
        .joins_per_min_per_client
        .unwrap_or(DEFAULT_JOINS_PER_MIN_PER_CLIENT);
    let join_burst = limits.join_burst.unwrap_or(DEFAULT_JOIN_BURST);
    if !(1..=1_000_000).contains(&join_burst) {
        problems.push(
            "limits.join_burst",
            "must be between 1 and 1000000 (set joins_per_min_per_client = 0 to turn the limit off)"
                .into(),
        );
    }
    LimitsConfig {
        joins_per_min_per_client,
        join_burst,
    }
}
