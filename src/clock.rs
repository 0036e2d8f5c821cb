//! Time for the whole process, and a manual one for tests (see [`Clock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic milliseconds.
pub type Millis = u64;

/// Time for the whole process: monotonic for the queue, wall for tokens.
/// The system's, or (for tests) a [`ManualTime`] that moves only when told,
/// so time-dependent room behaviour is tested without sleeping.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: TimeSource,
}

#[derive(Debug, Clone, Copy)]
enum TimeSource {
    System { start: Instant },
    Manual(&'static ManualTime),
}

/// A clock's time that moves only by [`ManualTime::advance`].
#[derive(Debug)]
pub struct ManualTime {
    /// Milliseconds since the clock was made.
    elapsed_ms: AtomicU64,
    /// Wall-clock milliseconds when it was made.
    wall_start_ms: u64,
}

impl ManualTime {
    pub fn advance(&self, by: Duration) {
        self.elapsed_ms
            .fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            source: TimeSource::System {
                start: Instant::now(),
            },
        }
    }
}

impl Clock {
    /// A clock that stands still until its [`ManualTime`] is advanced,
    /// starting at the system's wall time. For tests: each one lives as
    /// long as the process (a few bytes), so that `Clock` stays `Copy`.
    pub fn manual() -> (Clock, &'static ManualTime) {
        let wall_start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let time: &'static ManualTime = Box::leak(Box::new(ManualTime {
            elapsed_ms: AtomicU64::new(0),
            wall_start_ms,
        }));
        (
            Clock {
                source: TimeSource::Manual(time),
            },
            time,
        )
    }

    /// Monotonic milliseconds, counted from a day before the process
    /// started, so times from before a restart (a shared line's calls and
    /// misses) stay representable.
    pub fn mono_ms(&self) -> Millis {
        MONO_BASE_MS
            + match self.source {
                TimeSource::System { start } => start.elapsed().as_millis() as Millis,
                TimeSource::Manual(t) => t.elapsed_ms.load(Ordering::Acquire),
            }
    }

    pub fn wall_secs(&self) -> u64 {
        self.wall_ms() / 1000
    }

    /// Wall-clock milliseconds since the UNIX epoch.
    pub fn wall_ms(&self) -> u64 {
        match self.source {
            TimeSource::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            TimeSource::Manual(t) => t.wall_start_ms + t.elapsed_ms.load(Ordering::Acquire),
        }
    }
}

/// Where the monotonic clock starts (see [`Clock::mono_ms`]).
const MONO_BASE_MS: Millis = 86_400_000;
