//! Where the queue's durable facts live: the store trait and its backends.
//!
//! The queue logic (`queue`, `drip`) is pure; a room's runtime (`room`)
//! reports to the store only what must survive a crash:
//!
//! - **reservations** of sequence-number blocks, written *before* any number
//!   in the block is handed out (a crash leaves a gap, never a reuse);
//! - **claims**, written before the access token is issued (a crash never
//!   admits a place twice);
//! - **progress** (serving counter, no-show floor, issued high-water mark),
//!   written about once a second (a crash replays at most that second);
//! - **settings** changed through the admin API, and **epochs**.

pub mod embedded;
pub mod line;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::capacity::{CapacityGroup, WindowDelta};
use crate::clock::Clock;
use crate::config::{RoomConfig, StoreConfig};
use crate::queue::{Durable, Millis, Settings};
use crate::store::line::{Core, Line, LineFuture};

/// Where a process keeps its rooms' lines, as `[store]` says: it opens
/// each room's line, answers for the store as a whole, and closes it at
/// shutdown. One per process (see [`open_lines`]).
pub trait Lines: Send + Sync {
    /// Opens one room's line, with the [`Core`] it keeps in memory.
    fn open<'a>(
        &'a self,
        room: &'a RoomConfig,
        clock: Clock,
        upstream_hold: Duration,
    ) -> LineFuture<'a, (Arc<Core>, Arc<dyn Line>)>;

    /// The store as a whole answers (each room's line also says so).
    fn healthy(&self) -> bool;

    /// What rooms do while a store shared by every replica does not
    /// answer (`None`: the store is this process's own). A shared store
    /// down is the same for every replica, so readiness stays up then.
    fn on_failure(&self) -> Option<crate::config::OnStoreFailure>;

    /// At shutdown, after every room's line has flushed.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// One control tick of a checkout-health group (about once a second):
    /// shares this process's `delta` of admitted requests and, where this
    /// process is `deciding` (it leads the group's first room), steps the
    /// group's controller on every replica's deltas against the rooms'
    /// summed promoter rates. The verdict the group's rooms follow is then
    /// in `group`, here and on every replica.
    fn control<'a>(
        &'a self,
        group: &'a CapacityGroup,
        delta: WindowDelta,
        deciding_total_now: (bool, u64, Millis),
    ) -> LineFuture<'a, ()>;
}

/// The lines `[store]` names: the embedded journal in its directory, or
/// the Redis every replica shares.
pub fn open_lines(config: &StoreConfig) -> Result<Box<dyn Lines>, StoreError> {
    Ok(match config {
        StoreConfig::Embedded { path, seq_block } => Box::new(embedded::EmbeddedLines {
            store: Arc::new(embedded::EmbeddedStore::open(path)?),
            seq_block: *seq_block,
        }),
        StoreConfig::Redis {
            url,
            key_prefix,
            on_failure,
            lease_ms,
            sentinel,
        } => Box::new(redis::RedisLines {
            con: redis::connect(url, sentinel.as_ref())?,
            key_prefix: key_prefix.clone(),
            on_failure: *on_failure,
            lease_ms: *lease_ms,
        }),
    })
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("store state is corrupt: {0}")]
    Corrupt(String),
    #[error("the store has shut down")]
    Closed,
}

/// One durable fact about a room.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// The room starts over in a new epoch (first start, or admin reset).
    Epoch {
        room: String,
        epoch: u64,
    },
    Reserve {
        room: String,
        epoch: u64,
        upto: u64,
    },
    /// Clean shutdown: nothing at or above `upto` was handed out, so the
    /// unused rest of the reservation is given back (no gap on restart).
    Release {
        room: String,
        epoch: u64,
        upto: u64,
    },
    Claim {
        room: String,
        epoch: u64,
        seq: u64,
    },
    Progress {
        room: String,
        epoch: u64,
        serving: u64,
        floor: u64,
        issued: u64,
        /// Live sessions (absent in journals written before it existed).
        #[serde(default)]
        active: u64,
    },
    Settings {
        room: String,
        epoch: u64,
        settings: Settings,
    },
    /// The pre-queue shuffle seed, fixed (and committed to) before opening.
    Seed {
        room: String,
        epoch: u64,
        seed: String,
    },
    /// A scheduled room opened, shuffling its first `entries` places.
    Opened {
        room: String,
        epoch: u64,
        entries: u64,
    },
    /// The checkout ended `seq`'s session (`Waitroom-Session: end`).
    SessionEnd {
        room: String,
        epoch: u64,
        seq: u64,
    },
}

impl Record {
    pub fn room(&self) -> &str {
        match self {
            Record::Epoch { room, .. }
            | Record::Reserve { room, .. }
            | Record::Release { room, .. }
            | Record::Claim { room, .. }
            | Record::Progress { room, .. }
            | Record::Settings { room, .. }
            | Record::Seed { room, .. }
            | Record::Opened { room, .. }
            | Record::SessionEnd { room, .. } => room,
        }
    }

    /// Applies the record to a room's durable view. Records of another epoch
    /// than the room's current one are ignored.
    pub fn apply(&self, d: &mut Durable) {
        match self {
            Record::Epoch { epoch, .. } => {
                *d = Durable {
                    epoch: *epoch,
                    reserved_upto: 1,
                    ..Durable::default()
                };
            }
            Record::Reserve { epoch, upto, .. } if *epoch == d.epoch => {
                d.reserved_upto = d.reserved_upto.max(*upto);
            }
            Record::Release { epoch, upto, .. } if *epoch == d.epoch => {
                d.reserved_upto = (*upto).max(d.issued_upto + 1);
            }
            Record::Claim { epoch, seq, .. } if *epoch == d.epoch => {
                d.claimed.set(*seq);
            }
            Record::Progress {
                epoch,
                serving,
                floor,
                issued,
                active,
                ..
            } if *epoch == d.epoch => {
                d.serving = d.serving.max(*serving);
                // The floor goes down when a rejoiner (an early rank) is
                // called: the latest record holds, not the highest.
                d.noshow_floor = *floor;
                d.issued_upto = d.issued_upto.max(*issued);
                d.active_sessions = *active;
            }
            Record::Settings {
                epoch, settings, ..
            } if *epoch == d.epoch => {
                d.settings = Some(settings.clone());
            }
            Record::Seed { epoch, seed, .. } if *epoch == d.epoch && d.opened_entries.is_none() => {
                d.shuffle_seed = Some(seed.clone());
            }
            Record::Opened { epoch, entries, .. } if *epoch == d.epoch => {
                d.opened_entries = Some(*entries);
            }
            Record::SessionEnd { epoch, seq, .. } if *epoch == d.epoch => {
                d.ended.set(*seq);
            }
            _ => {}
        }
    }
}

/// The durable side of the queue. Writes resolve once the fact is durable.
pub trait Store: Send + Sync + 'static {
    /// What survived for `room`, or `None` for a room never seen.
    fn load(&self, room: &str) -> BoxFuture<'_, Result<Option<Durable>, StoreError>>;
    /// Makes `record` durable.
    fn write(&self, record: Record) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Flushes and stops accepting writes (graceful shutdown).
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether the store is answering (for /readyz).
    fn healthy(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(serving: u64, floor: u64) -> Record {
        Record::Progress {
            room: "r".into(),
            epoch: 7,
            serving,
            floor,
            issued: 20,
            active: 3,
        }
    }

    #[test]
    fn the_latest_progress_floor_holds_even_when_lower() {
        let mut d = Durable::default();
        Record::Epoch {
            room: "r".into(),
            epoch: 7,
        }
        .apply(&mut d);
        progress(10, 10).apply(&mut d);
        // A rejoiner with rank 4 was called: the floor went down.
        progress(11, 3).apply(&mut d);
        assert_eq!((d.serving, d.noshow_floor, d.active_sessions), (11, 3, 3));
    }

    #[test]
    fn progress_from_an_older_journal_without_active_reads() {
        let r: Record = serde_json::from_str(
            r#"{"t":"progress","room":"r","epoch":1,"serving":2,"floor":2,"issued":5}"#,
        )
        .unwrap();
        assert!(matches!(r, Record::Progress { active: 0, .. }));
    }
}
