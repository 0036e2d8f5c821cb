//! Admission that follows the checkout's health: the effective admission
//! rate, at most the promoter's `admit_rate_per_min`, lowered while the
//! checkout's p95 latency or error rate says it is overloaded.
//!
//! ```text
//!  each replica, per request       each replica, per tick     leader, per control interval
//!  LatencySketch::record ───────►  LatencySketch::take ──►  Window::merge (all replicas)
//!  LatencySketch::record_error      (WindowDelta, serde)      └► Window::stats
//!                                                                 └► Controller::step → Decision
//!                                                                     (rate for the drip, reason)
//! ```
//!
//! [`sketch`] measures and [`controller`] decides, pure: no clock, no I/O.
//! [`group`] holds them at run time for the rooms that share a checkout.

pub mod controller;
pub mod group;
pub mod sketch;

#[cfg(test)]
mod sim;

pub use controller::{CapacitySettings, ControlState, Controller, Decision, Reason};
pub use group::{CapacityGroup, Verdict};
pub use sketch::{LatencySketch, SketchError, Window, WindowDelta, WindowStats};
