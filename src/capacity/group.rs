//! A capacity group at run time: the rooms that share one checkout, the
//! latency sketch every admitted request of theirs feeds, and the verdict
//! of the group's controller, which their drips follow.
//!
//! One process decides for a group: the embedded gateway always; with the
//! shared store, the drip leader of the group's first room, from every
//! replica's deltas. The verdict is a *share* of the promoter's rate, so
//! rooms with rates of their own slow down together in proportion.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{
    CapacitySettings, ControlState, Controller, LatencySketch, Reason, Window, WindowDelta,
};
use crate::clock::Millis;

/// A share of 1 in millionths: the promoter's rate applies.
const WHOLE: u64 = 1_000_000;

/// The decider's verdict: the share of their promoter's rate the group's
/// rooms admit at, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub share_ppm: u64,
    pub reason: Reason,
}

impl Verdict {
    pub const FULL: Verdict = Verdict {
        share_ppm: WHOLE,
        reason: Reason::PromoterRate,
    };
}

pub struct CapacityGroup {
    pub name: String,
    pub settings: CapacitySettings,
    /// This process's admitted requests since the last take.
    pub sketch: LatencySketch,
    /// The controller and its open window, where this process decides.
    deciding: Mutex<Option<(Controller, Window)>>,
    /// The verdict in force here: `share_ppm << 2 | reason`.
    verdict: AtomicU64,
}

impl CapacityGroup {
    pub fn new(name: &str, settings: CapacitySettings) -> CapacityGroup {
        CapacityGroup {
            name: name.to_string(),
            settings,
            sketch: LatencySketch::new(),
            deciding: Mutex::new(None),
            verdict: AtomicU64::new(pack(Verdict::FULL)),
        }
    }

    /// An admitted request's exchange with the checkout: its latency, or
    /// `None` for a 5xx, a timeout or a failed connection.
    pub fn record(&self, latency: Option<Duration>) {
        match latency {
            Some(l) => self.sketch.record(l),
            None => self.sketch.record_error(),
        }
    }

    /// Decides for the group at `now` (monotonic ms): merges the replicas'
    /// `deltas` into the open window and steps the controller against the
    /// rooms' summed promoter rates. A process that starts deciding resumes
    /// from `resume` (the last decider's state), else from the promoter's
    /// rate. Returns the verdict, now in force here, and the state to keep.
    pub fn decide(
        &self,
        now: Millis,
        deltas: &[WindowDelta],
        promoter_total: u64,
        resume: Option<ControlState>,
    ) -> (Verdict, ControlState) {
        let mut deciding = self.deciding.lock().unwrap_or_else(|p| p.into_inner());
        let (controller, window) = deciding.get_or_insert_with(|| {
            let controller = match resume {
                Some(state) => {
                    Controller::resume(self.settings.clone(), state, promoter_total, now)
                }
                None => Controller::new(self.settings.clone(), promoter_total, now),
            };
            (controller, Window::new())
        });
        for delta in deltas {
            if let Err(e) = window.merge(delta) {
                tracing::warn!(group = %self.name, error = %e, "a latency delta was refused");
            }
        }
        let due = controller.due(now);
        let decision = controller.step(now, &window.stats(), promoter_total);
        if due {
            window.clear();
        }
        let share_ppm = if promoter_total == 0 {
            WHOLE
        } else {
            (u128::from(decision.rate_per_min) * u128::from(WHOLE) / u128::from(promoter_total))
                .min(u128::from(WHOLE)) as u64
        };
        let verdict = Verdict {
            share_ppm,
            reason: decision.reason,
        };
        self.adopt(verdict);
        (verdict, controller.state())
    }

    /// Stops deciding here (another process leads the group now).
    pub fn stop_deciding(&self) {
        *self.deciding.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Takes the decider's verdict (one that another process reached).
    pub fn adopt(&self, verdict: Verdict) {
        self.verdict.store(pack(verdict), Ordering::Relaxed);
    }

    pub fn verdict(&self) -> Verdict {
        unpack(self.verdict.load(Ordering::Relaxed))
    }

    /// What a room whose promoter set `promoter` admits at under the
    /// verdict, and whether the checkout's health is what limits it.
    pub fn rate_for(&self, promoter: u64) -> (u64, Option<Reason>) {
        let v = self.verdict();
        if v.reason == Reason::PromoterRate || v.share_ppm >= WHOLE {
            return (promoter, None);
        }
        let rate = (u128::from(promoter) * u128::from(v.share_ppm) / u128::from(WHOLE)) as u64;
        (rate.clamp(1.min(promoter), promoter), Some(v.reason))
    }
}

fn pack(v: Verdict) -> u64 {
    let reason = match v.reason {
        Reason::PromoterRate => 0,
        Reason::CheckoutSlow => 1,
        Reason::CheckoutErrors => 2,
    };
    v.share_ppm.min(WHOLE) << 2 | reason
}

fn unpack(bits: u64) -> Verdict {
    Verdict {
        share_ppm: bits >> 2,
        reason: match bits & 3 {
            1 => Reason::CheckoutSlow,
            2 => Reason::CheckoutErrors,
            _ => Reason::PromoterRate,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(interval_secs: u64) -> CapacityGroup {
        let mut settings = CapacitySettings::new(Duration::from_millis(100), 10);
        settings.control_interval = Duration::from_secs(interval_secs);
        settings.min_samples = 10;
        CapacityGroup::new("g", settings)
    }

    fn slow_delta(n: u32, ms: u64) -> WindowDelta {
        let s = LatencySketch::new();
        for _ in 0..n {
            s.record(Duration::from_millis(ms));
        }
        s.take()
    }

    #[test]
    fn a_slow_checkout_lowers_every_rooms_rate_in_proportion_and_once_per_interval() {
        let g = group(30);
        assert_eq!(g.rate_for(600), (600, None));
        // Twice the target: the harshest cut, 20%, at the first due step.
        let (v, _) = g.decide(0, &[slow_delta(50, 200)], 900, None);
        assert_eq!(v, Verdict::FULL, "no step before an interval has passed");
        let (v, state) = g.decide(30_000, &[slow_delta(50, 200)], 900, None);
        assert_eq!(v.reason, Reason::CheckoutSlow);
        assert_eq!(g.rate_for(600), (480, Some(Reason::CheckoutSlow)));
        assert_eq!(g.rate_for(300), (240, Some(Reason::CheckoutSlow)));
        // The window started again: a tick later, nothing more happens.
        let (again, _) = g.decide(30_100, &[slow_delta(50, 200)], 900, None);
        assert_eq!(again, v);

        // Another process takes over from the kept state, not from scratch.
        let next = group(30);
        next.decide(60_000, &[], 900, Some(state));
        assert_eq!(next.rate_for(600), (480, Some(Reason::CheckoutSlow)));
    }

    #[test]
    fn the_verdict_packs_and_a_tiny_rate_never_drops_to_zero() {
        for v in [
            Verdict::FULL,
            Verdict {
                share_ppm: 1,
                reason: Reason::CheckoutErrors,
            },
            Verdict {
                share_ppm: 812_345,
                reason: Reason::CheckoutSlow,
            },
        ] {
            assert_eq!(unpack(pack(v)), v);
        }
        let g = group(30);
        g.adopt(Verdict {
            share_ppm: 1,
            reason: Reason::CheckoutSlow,
        });
        assert_eq!(g.rate_for(3), (1, Some(Reason::CheckoutSlow)));
        assert_eq!(g.rate_for(0), (0, Some(Reason::CheckoutSlow)));
    }
}
