//! The line kept in this process alone, durable in a local directory:
//! [`journal`] is the store (snapshot and append-only journal, group
//! commit), [`line`] the queue and drip that write to it.

pub mod journal;
pub mod line;

pub use journal::{COMPACT_AFTER_BYTES, EmbeddedStore};
pub use line::EmbeddedLine;
