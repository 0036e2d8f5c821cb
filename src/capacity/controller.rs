//! The controller: turns each interval's latency window into the rate the
//! drip should admit at, never above the promoter's `admit_rate_per_min`.
//!
//! **Why a rate, and why slowly.** The knob is the admission rate, as the
//! promoter's is, so the drip, the fans' ETAs and the admin view keep one
//! meaning. But an admitted fan loads the checkout for minutes: the load is
//! rate × session length, so a rate change reaches latency only as the
//! sessions admitted before it end. Acting on every window would keep
//! cutting while the last cut has not shown yet, and undershoot far. Hence:
//! one step per `control_interval` (30 s), gentle cuts, a hold after a cut
//! ([`HOLD_AFTER_DECREASE`] intervals) unless things get markedly worse, and
//! increases at every other interval. Controlling concurrency (`max_active`)
//! would see its effect at once, but live sessions count idle fans as load;
//! the rate is what the promoter sets and what fans' positions move by.
//!
//! **One step.** The window's *pressure* is the larger of p95 / target and
//! error rate / `max_error_rate`. Fewer than `min_samples` requests: hold.
//! - pressure > 1: cut the rate by `1 − 0.25·(pressure − 1)`, never below
//!   ×0.8 nor below the floor; then hold for [`HOLD_AFTER_DECREASE`]
//!   intervals, cutting again within them only if pressure exceeds the last
//!   cut's by 25% (the cut is not enough: things still get worse).
//! - pressure in the dead band [0.9, 1]: hold.
//! - pressure < 0.9: raise by 1% of the promoter's rate, at most every other
//!   interval; after [`FAST_AFTER_INCREASES`] raises in a row (~8 min of
//!   health) by 5%, so a healed checkout gets its fans back in minutes.
//!   Reaching the promoter's rate ends the limit.
//!
//! The promoter's rate is a cap at every call, not only at steps: a cut
//! applies at once; a raise lifts the rate at once only while the controller
//! is not limiting. A floor above the promoter's rate yields to it.
//!
//! Pure: `now` is passed in. The state that must outlive a leader is
//! [`ControlState`] (serde); a new leader [`Controller::resume`]s from it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sketch::WindowStats;
use crate::clock::Millis;

pub const DEFAULT_CONTROL_INTERVAL_SECS: u64 = 30;
/// Below this many requests a window's p95 is mostly noise (±7% at 200).
pub const DEFAULT_MIN_SAMPLES: u64 = 200;
/// Errors (5xx, timeouts) above this share of requests count as overload.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;

/// The harshest single cut: new rate ≥ 0.8 × old.
pub const MIN_DECREASE_FACTOR: f64 = 0.8;
/// Cut per unit of pressure above 1: 10% over target cuts 2.5%.
const DECREASE_GAIN: f64 = 0.25;
/// Pressure in [1 − DEAD_BAND, 1] holds the rate.
const DEAD_BAND: f64 = 0.1;
/// Intervals after a cut before raising, or cutting again without a marked worsening.
pub const HOLD_AFTER_DECREASE: u32 = 4;
/// A second cut within the hold needs pressure this many times the last cut's.
const WORSE_BY: f64 = 1.25;
/// Intervals after a raise before the next raise.
const HOLD_AFTER_INCREASE: u32 = 1;
/// A raise, as a share of the promoter's rate.
const STEP: f64 = 0.01;
/// The raise after sustained health.
const FAST_STEP: f64 = 0.05;
/// Raises in a row before they become `FAST_STEP`s.
pub const FAST_AFTER_INCREASES: u32 = 8;

/// The controller's configuration (validated by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct CapacitySettings {
    pub target_p95: Duration,
    /// The rate never goes below this, unless the promoter's rate is lower.
    pub floor_per_min: u64,
    pub control_interval: Duration,
    pub min_samples: u64,
    pub max_error_rate: f64,
}

impl CapacitySettings {
    pub fn new(target_p95: Duration, floor_per_min: u64) -> CapacitySettings {
        CapacitySettings {
            target_p95,
            floor_per_min,
            control_interval: Duration::from_secs(DEFAULT_CONTROL_INTERVAL_SECS),
            min_samples: DEFAULT_MIN_SAMPLES,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
        }
    }
}

/// Why the effective rate is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not limiting: the promoter's rate applies.
    PromoterRate,
    /// Limiting because the checkout's p95 went over target.
    CheckoutSlow,
    /// Limiting because the checkout's error rate went over `max_error_rate`.
    CheckoutErrors,
}

/// The controller's own limit, below the promoter's rate while it binds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Limit {
    per_min: f64,
    /// `CheckoutSlow` or `CheckoutErrors`: what the last cut answered.
    cause: Reason,
}

/// What must survive a change of leader: a few numbers, no times (steps are
/// counted in intervals, so the state does not depend on anyone's clock).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    limit: Option<Limit>,
    /// Intervals left of the hold after the last cut.
    hold_decrease: u32,
    /// The pressure that caused the last cut.
    cut_pressure: f64,
    hold_increase: u32,
    increases_in_a_row: u32,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            limit: None,
            hold_decrease: 0,
            cut_pressure: 1.0,
            hold_increase: 0,
            increases_in_a_row: 0,
        }
    }
}

impl ControlState {
    /// State read back from the shared store is not trusted to be sane.
    fn sanitized(mut self) -> ControlState {
        if let Some(limit) = self.limit
            && (!limit.per_min.is_finite() || limit.cause == Reason::PromoterRate)
        {
            self.limit = None;
        }
        if !self.cut_pressure.is_finite() {
            self.cut_pressure = 1.0;
        }
        self.hold_decrease = self.hold_decrease.min(HOLD_AFTER_DECREASE);
        self.hold_increase = self.hold_increase.min(HOLD_AFTER_INCREASE);
        self
    }
}

/// What one call to [`Controller::step`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rate_per_min: u64,
    pub reason: Reason,
    /// The rate or the reason differs from before the call.
    pub changed: bool,
}

/// One room's (or capacity group's) controller. Run by the leader only.
#[derive(Debug, Clone)]
pub struct Controller {
    settings: CapacitySettings,
    state: ControlState,
    promoter_per_min: u64,
    last_step: Millis,
}

/// Counts a hold down; returns what it was.
fn count_down(hold: &mut u32) -> u32 {
    let was = *hold;
    *hold = was.saturating_sub(1);
    was
}

impl Controller {
    /// Starts at the promoter's rate; the first step is one interval after `now`.
    pub fn new(settings: CapacitySettings, promoter_per_min: u64, now: Millis) -> Controller {
        Controller::resume(settings, ControlState::default(), promoter_per_min, now)
    }

    /// Continues from a previous leader's state. The first step is one
    /// interval after `now`: this leader has no full window before then.
    pub fn resume(
        settings: CapacitySettings,
        state: ControlState,
        promoter_per_min: u64,
        now: Millis,
    ) -> Controller {
        Controller {
            settings,
            state: state.sanitized(),
            promoter_per_min,
            last_step: now,
        }
    }

    /// The state to store after each step.
    pub fn state(&self) -> ControlState {
        self.state
    }

    /// Whether `step` would evaluate a window now. The caller merges the
    /// replicas' deltas and starts a new window after each due step.
    pub fn due(&self, now: Millis) -> bool {
        now.saturating_sub(self.last_step) >= self.interval_ms() && now >= self.last_step
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.settings.control_interval.as_millis()).unwrap_or(u64::MAX)
    }

    fn effective(&self) -> f64 {
        let promoter = self.promoter_per_min as f64;
        let floor = (self.settings.floor_per_min as f64).min(promoter);
        self.state
            .limit
            .map_or(promoter, |limit| limit.per_min.min(promoter))
            .max(floor)
    }

    /// The rate the drip should admit at now (fans per minute).
    pub fn effective_rate(&self) -> u64 {
        // Both bounds are whole numbers, so rounding stays within them.
        self.effective().round() as u64
    }

    pub fn reason(&self) -> Reason {
        match self.state.limit {
            Some(limit) if self.effective() < self.promoter_per_min as f64 => limit.cause,
            _ => Reason::PromoterRate,
        }
    }

    /// Applies the promoter's current rate (at once, as a cap) and, if an
    /// interval has passed since the last step, acts on `window`: the
    /// requests since that step. Cheap enough to call on every tick.
    pub fn step(&mut self, now: Millis, window: &WindowStats, promoter_per_min: u64) -> Decision {
        let before = (self.effective_rate(), self.reason());
        self.promoter_per_min = promoter_per_min;
        if self.due(now) {
            self.last_step = now;
            self.control(window);
        }
        let (rate_per_min, reason) = (self.effective_rate(), self.reason());
        Decision {
            rate_per_min,
            reason,
            changed: (rate_per_min, reason) != before,
        }
    }

    /// How far over its limits the checkout is (1 = at target), and which
    /// limit presses hardest; `None` for too few requests to tell.
    fn pressure(&self, window: &WindowStats) -> Option<(f64, Reason)> {
        if window.requests < self.settings.min_samples.max(1) {
            return None;
        }
        let target = self.settings.target_p95.as_secs_f64().max(1e-6);
        let slow = window.p95.map_or(0.0, |p95| p95.as_secs_f64() / target);
        let errors = window.error_rate() / self.settings.max_error_rate.max(1e-6);
        Some(if errors > slow {
            (errors, Reason::CheckoutErrors)
        } else {
            (slow, Reason::CheckoutSlow)
        })
    }

    fn control(&mut self, window: &WindowStats) {
        let Some((pressure, cause)) = self.pressure(window) else {
            return;
        };
        let from = self.effective();
        let state = &mut self.state;
        let hold_decrease = count_down(&mut state.hold_decrease);
        let hold_increase = count_down(&mut state.hold_increase);
        if pressure > 1.0 {
            state.increases_in_a_row = 0;
            if hold_decrease > 0 && pressure <= state.cut_pressure * WORSE_BY {
                return;
            }
            let factor = (1.0 - DECREASE_GAIN * (pressure - 1.0)).max(MIN_DECREASE_FACTOR);
            let floor = self.settings.floor_per_min as f64;
            state.limit = Some(Limit {
                per_min: (from * factor).max(floor),
                cause,
            });
            state.hold_decrease = HOLD_AFTER_DECREASE;
            state.cut_pressure = pressure;
        } else if pressure < 1.0 - DEAD_BAND {
            let Some(limit) = state.limit else {
                return;
            };
            if hold_decrease > 0 || hold_increase > 0 {
                return;
            }
            state.increases_in_a_row += 1;
            let share = if state.increases_in_a_row > FAST_AFTER_INCREASES {
                FAST_STEP
            } else {
                STEP
            };
            let promoter = self.promoter_per_min as f64;
            let raised = limit.per_min.min(promoter) + share * promoter;
            state.limit = (raised < promoter).then_some(Limit {
                per_min: raised,
                ..limit
            });
            state.hold_increase = HOLD_AFTER_INCREASE;
        } else {
            state.increases_in_a_row = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Millis = DEFAULT_CONTROL_INTERVAL_SECS * 1000;

    fn settings() -> CapacitySettings {
        CapacitySettings::new(Duration::from_millis(800), 60)
    }

    fn window(p95_ms: u64, requests: u64, errors: u64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p95: Some(Duration::from_millis(p95_ms)),
        }
    }

    fn slow() -> WindowStats {
        window(1600, 1000, 0)
    }

    fn fast() -> WindowStats {
        window(200, 1000, 0)
    }

    /// Steps once per interval with the same window; returns the decisions.
    fn steps(
        controller: &mut Controller,
        now: &mut Millis,
        n: usize,
        w: WindowStats,
        promoter: u64,
    ) -> Vec<Decision> {
        (0..n)
            .map(|_| {
                *now += INTERVAL;
                controller.step(*now, &w, promoter)
            })
            .collect()
    }

    /// A controller that has cut once, the time of the cut and the rate it cut to.
    fn cut_once() -> (Controller, Millis, u64) {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        steps(&mut c, &mut now, 1, slow(), 600);
        let limited = c.effective_rate();
        assert!(limited < 600);
        (c, now, limited)
    }

    #[test]
    fn acts_at_most_once_per_interval() {
        let mut c = Controller::new(settings(), 600, 0);
        let early = c.step(INTERVAL - 1, &slow(), 600);
        assert_eq!((early.rate_per_min, early.changed), (600, false));
        let first = c.step(INTERVAL, &slow(), 600);
        assert!(first.changed && first.rate_per_min < 600);
        assert_eq!(first.reason, Reason::CheckoutSlow);
        // Much worse, but within the same interval: no second cut.
        let again = c.step(INTERVAL + 1000, &window(10_000, 1000, 0), 600);
        assert_eq!(
            (again.rate_per_min, again.changed),
            (first.rate_per_min, false)
        );
    }

    #[test]
    fn a_cut_is_never_harsher_than_the_minimum_factor() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        let mut previous = c.effective();
        // Each window twice as slow as the last: a cut at every interval.
        for i in 0..8 {
            steps(&mut c, &mut now, 1, window(10_000 << i, 1000, 0), 600);
            let rate = c.effective();
            assert!(rate < previous, "step {i} did not cut");
            assert!(
                rate >= MIN_DECREASE_FACTOR * previous - 1e-9,
                "step {i}: {rate} after {previous}"
            );
            previous = rate;
        }
    }

    #[test]
    fn a_small_overshoot_cuts_gently_and_then_holds() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        // 10% over target: a 2.5% cut.
        let d = steps(&mut c, &mut now, 1, window(880, 1000, 0), 600);
        assert_eq!(d[0].rate_per_min, 585);
        // Still 10% over for the hold: the cut is given time to show.
        let held = steps(
            &mut c,
            &mut now,
            HOLD_AFTER_DECREASE as usize,
            window(880, 1000, 0),
            600,
        );
        assert!(held.iter().all(|d| d.rate_per_min == 585 && !d.changed));
        // Still over after the hold: cut again.
        let d = steps(&mut c, &mut now, 1, window(880, 1000, 0), 600);
        assert!(d[0].rate_per_min < 585);
    }

    #[test]
    fn windows_with_too_few_samples_hold() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        let sparse = window(50_000, DEFAULT_MIN_SAMPLES - 1, DEFAULT_MIN_SAMPLES - 1);
        assert!(
            steps(&mut c, &mut now, 10, sparse, 600)
                .iter()
                .all(|d| d.rate_per_min == 600)
        );
        steps(&mut c, &mut now, 1, slow(), 600);
        let limited = c.effective_rate();
        let sparse_fast = window(10, 5, 0);
        assert!(
            steps(&mut c, &mut now, 20, sparse_fast, 600)
                .iter()
                .all(|d| d.rate_per_min == limited)
        );
    }

    #[test]
    fn the_dead_band_holds() {
        let (mut c, mut now, limited) = cut_once();
        let near_target = steps(&mut c, &mut now, 30, window(760, 1000, 0), 600);
        assert!(near_target.iter().all(|d| d.rate_per_min == limited));
    }

    #[test]
    fn raises_are_small_then_faster_and_end_at_the_promoter_rate() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        // A cut, and another after each hold: 600 × 0.8³.
        steps(
            &mut c,
            &mut now,
            2 * HOLD_AFTER_DECREASE as usize + 3,
            slow(),
            600,
        );
        let low = c.effective_rate();
        assert!(low < 400, "{low}");
        let rates: Vec<u64> = steps(&mut c, &mut now, 200, fast(), 600)
            .iter()
            .map(|d| d.rate_per_min)
            .collect();
        let raises: Vec<u64> = rates
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect();
        assert!(raises.iter().take(15).all(|&r| r <= 6), "{raises:?}");
        assert!(raises.iter().all(|&r| r <= 30), "{raises:?}");
        let back = rates
            .iter()
            .position(|&r| r == 600)
            .expect("back to the promoter rate");
        assert!(back < 60, "took {back} intervals");
        assert_eq!(c.reason(), Reason::PromoterRate);
        assert!(rates[back..].iter().all(|&r| r == 600));
    }

    #[test]
    fn a_promoter_cut_caps_at_once_and_a_raise_does_not_lift_a_limit() {
        let (mut c, now, limited) = cut_once();
        // Cut below the limit, between steps: applies on the very next call.
        let cut = c.step(now + 1, &fast(), 300);
        assert_eq!(
            (cut.rate_per_min, cut.reason, cut.changed),
            (300, Reason::PromoterRate, true)
        );
        // Raised again: back to the limit, not to the new promoter rate.
        let raised = c.step(now + 2, &fast(), 900);
        assert_eq!(
            (raised.rate_per_min, raised.reason),
            (limited, Reason::CheckoutSlow)
        );
    }

    #[test]
    fn a_promoter_raise_applies_at_once_while_not_limiting() {
        let mut c = Controller::new(settings(), 600, 0);
        let d = c.step(1, &fast(), 900);
        assert_eq!(
            (d.rate_per_min, d.reason, d.changed),
            (900, Reason::PromoterRate, true)
        );
    }

    #[test]
    fn the_floor_holds_unless_the_promoter_rate_is_lower() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        let cut = steps(&mut c, &mut now, 100, window(100_000, 1000, 0), 600);
        assert!(cut.iter().all(|d| d.rate_per_min >= 60));
        assert_eq!(c.effective_rate(), 60);
        assert_eq!(c.reason(), Reason::CheckoutSlow);
        let below_floor = c.step(now + 1, &fast(), 40);
        assert_eq!(
            (below_floor.rate_per_min, below_floor.reason),
            (40, Reason::PromoterRate)
        );
    }

    #[test]
    fn errors_over_the_threshold_cut_with_their_own_reason() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        let ok = steps(&mut c, &mut now, 3, window(200, 1000, 40), 600);
        assert!(
            ok.iter().all(|d| d.rate_per_min == 600),
            "4% errors are tolerated"
        );
        let d = steps(&mut c, &mut now, 1, window(200, 1000, 100), 600);
        assert_eq!(
            (d[0].rate_per_min, d[0].reason),
            (480, Reason::CheckoutErrors)
        );
        // Only errors, no latency at all: still a cut.
        let only_errors = WindowStats {
            requests: 1000,
            errors: 1000,
            p95: None,
        };
        let d = steps(
            &mut c,
            &mut now,
            HOLD_AFTER_DECREASE as usize + 1,
            only_errors,
            600,
        );
        assert!(d.last().expect("steps").rate_per_min < 480);
    }

    #[test]
    fn a_new_leader_continues_from_the_stored_state() {
        let mut c = Controller::new(settings(), 600, 0);
        let mut now = 0;
        steps(&mut c, &mut now, 2, window(100_000, 1000, 0), 600);
        let limited = c.effective_rate();
        let stored = serde_json::to_string(&c.state()).expect("serializes");
        let state: ControlState = serde_json::from_str(&stored).expect("deserializes");
        // Another process, another monotonic clock.
        let mut resumed = Controller::resume(settings(), state, 600, 5);
        assert_eq!(resumed.effective_rate(), limited);
        assert_eq!(resumed.reason(), Reason::CheckoutSlow);
        let d = resumed.step(5 + INTERVAL, &window(780, 1000, 0), 600);
        assert_eq!(
            d.rate_per_min, limited,
            "holds where the last leader left off"
        );
    }

    #[test]
    fn a_corrupt_stored_state_falls_back_to_the_promoter_rate() {
        let stored = r#"{"limit":{"per_min":100.0,"cause":"promoter_rate"},"hold_decrease":4000000000,
            "cut_pressure":1.0,"hold_increase":0,"increases_in_a_row":0}"#;
        let state: ControlState = serde_json::from_str(stored).expect("parses");
        let c = Controller::resume(settings(), state, 600, 0);
        assert_eq!(
            (c.effective_rate(), c.reason()),
            (600, Reason::PromoterRate)
        );
        assert!(c.state().hold_decrease <= HOLD_AFTER_DECREASE);
    }
}
