//! The line kept in this process alone, durable in a local directory:
//! [`journal`] is the store (snapshot and append-only journal, group
//! commit), [`line`] the queue and drip that write to it.

pub mod journal;
pub mod line;

pub use journal::{COMPACT_AFTER_BYTES, EmbeddedStore};
pub use line::EmbeddedLine;

use std::sync::Arc;
use std::time::Duration;

use crate::capacity::{CapacityGroup, WindowDelta};
use crate::clock::Clock;
use crate::config::{OnStoreFailure, RoomConfig};
use crate::queue::Millis;
use crate::store::line::{Core, Line, LineFuture};
use crate::store::{BoxFuture, Lines, Store, StoreError};

/// Every room's line in this process, in one journal.
pub struct EmbeddedLines {
    pub store: Arc<dyn Store>,
    pub seq_block: u64,
}

impl Lines for EmbeddedLines {
    fn open<'a>(
        &'a self,
        room: &'a RoomConfig,
        clock: Clock,
        upstream_hold: Duration,
    ) -> LineFuture<'a, (Arc<Core>, Arc<dyn Line>)> {
        Box::pin(async move {
            let line = EmbeddedLine::open(
                room,
                self.store.clone(),
                clock,
                self.seq_block,
                upstream_hold,
            )
            .await?;
            Ok((line.core().clone(), line as Arc<dyn Line>))
        })
    }

    fn healthy(&self) -> bool {
        self.store.healthy()
    }

    fn on_failure(&self) -> Option<OnStoreFailure> {
        None
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.store.close()
    }

    /// One process measures everything: it decides on its own delta.
    fn control<'a>(
        &'a self,
        group: &'a CapacityGroup,
        delta: WindowDelta,
        (_, promoter_total, now): (bool, u64, Millis),
    ) -> LineFuture<'a, ()> {
        group.decide(now, &[delta], promoter_total, None);
        Box::pin(async { Ok(()) })
    }
}
