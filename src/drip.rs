//! Admission control: how fast the serving counter moves.
//!
//! A token bucket refilled at `admit_rate_per_min`, holding at most one
//! second of rate, paces *real entries*: calling a live place costs a token;
//! skipping a place nobody is waiting at (no sign of life for
//! `abandon_after_secs`) is free; a called place that never claims is a
//! no-show and its token is refunded when its claim window closes. So the
//! rate bounds entries into the upstream, and abandoned places cost nothing.
//!
//! The bucket is emptied while the room is paused, closed or sold out,
//! while every ticket is in a cart (stock 0), or while its upstream is
//! failing, so there is no catch-up burst afterwards. A rate
//! increase refills at the new rate from that moment on; it never credits
//! the past. `max_active` caps sessions plus called-but-unclaimed places.
//!
//! Pure: the runtime calls [`Drip::tick`] with the monotonic time about ten
//! times a second; tests drive it with any clock.

use crate::config::QueueMode;
use crate::queue::{Millis, Queue};

/// Upper bound on free skips per tick, so a queue of abandoned places
/// cannot make one tick take long.
pub const MAX_SKIPS_PER_TICK: u64 = 50_000;

/// One token, in credit units: credit accrues `admit_rate_per_min` units per
/// millisecond, so the arithmetic is exact integers (no float drift that
/// would lose a token now and then).
const TOKEN: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct Drip {
    credit: u64,
    last_refill: Millis,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    pub called: u64,
    pub skipped: u64,
    pub noshows: u64,
}

impl Drip {
    /// Starts empty: no burst at start-up or after a restart.
    pub fn new(now: Millis) -> Drip {
        Drip {
            credit: 0,
            last_refill: now,
        }
    }

    /// Tokens currently in the bucket (for metrics and tests).
    pub fn tokens(&self) -> f64 {
        self.credit as f64 / TOKEN as f64
    }

    /// One second of rate, and at least one token.
    fn burst(queue: &Queue) -> u64 {
        (queue.admit_rate() * 1000).max(TOKEN)
    }

    fn running(queue: &Queue, upstream_healthy: bool) -> bool {
        queue.is_open()
            && !queue.settings.paused
            && !queue.settings.shut()
            && !queue.settings.stock_held()
            && upstream_healthy
    }

    fn refill(&mut self, queue: &Queue, now: Millis, running: bool) {
        let elapsed = now.saturating_sub(self.last_refill);
        self.last_refill = self.last_refill.max(now);
        if !running {
            self.credit = 0;
            return;
        }
        let accrued = queue.admit_rate().saturating_mul(elapsed);
        self.credit = self.credit.saturating_add(accrued).min(Self::burst(queue));
    }

    /// Advances the line as far as the rate, `max_active` and the upstream allow.
    pub fn tick(&mut self, queue: &mut Queue, now: Millis, upstream_healthy: bool) -> TickReport {
        let mut report = TickReport {
            noshows: queue.expire_pending(now),
            ..TickReport::default()
        };
        let running = Self::running(queue, upstream_healthy);
        self.refill(queue, now, running);
        if running {
            // A no-show never entered: its token goes back.
            self.credit = (self.credit + report.noshows * TOKEN).min(Self::burst(queue));
        } else {
            return report;
        }
        loop {
            if queue.head_abandoned(now) && report.skipped < MAX_SKIPS_PER_TICK {
                queue.skip_head(now);
                report.skipped += 1;
                continue;
            }
            if queue.free_slots() == 0 || self.credit < TOKEN {
                break;
            }
            let called = if queue.rejoin_len() > 0 {
                queue.call_rejoiner(now)
            } else {
                queue.call_head(now)
            };
            if called.is_none() {
                break;
            }
            self.credit -= TOKEN;
            report.called += 1;
        }
        queue.sample_progress(now);
        report
    }

    /// `over_capacity` rooms: lets an arrival straight in while nobody waits
    /// and both `max_active` and the rate allow. Returns the called place.
    pub fn admit_arrival(
        &mut self,
        queue: &mut Queue,
        now: Millis,
        upstream_healthy: bool,
    ) -> Option<u64> {
        if queue.settings.queue != QueueMode::OverCapacity || !queue.nobody_waiting() {
            return None;
        }
        let running = Self::running(queue, upstream_healthy);
        self.refill(queue, now, running);
        if !running || queue.free_slots() == 0 || self.credit < TOKEN {
            return None;
        }
        queue.try_issue(now)?;
        let seq = queue.call_head(now)?;
        self.credit -= TOKEN;
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Place, Settings};

    fn settings(rate: u64) -> Settings {
        Settings {
            admit_rate_per_min: rate,
            max_active: None,
            paused: false,
            closed: false,
            session_secs: 600,
            session_max_secs: 1800,
            queue: QueueMode::Always,
            claim_grace_secs: 30,
            abandon_after_secs: 20,
            rejoin_secs: 120,
            opens_at: None,
            closes_at: None,
            stock: None,
            sold_out: false,
            stock_at_ms: 0,
        }
    }

    /// A simulated room: `alive(seq)` says whether that fan is still there
    /// (keeps their page open, claims as soon as called).
    struct Sim {
        queue: Queue,
        drip: Drip,
        now: Millis,
        entries: u64,
    }

    impl Sim {
        fn new(s: Settings, fans: u64) -> Sim {
            let mut queue = Queue::new(1, s);
            queue.extend_reservation(fans + 1);
            for _ in 0..fans {
                queue.try_issue(0).unwrap();
            }
            Sim {
                queue,
                drip: Drip::new(0),
                now: 0,
                entries: 0,
            }
        }

        /// Runs `secs` seconds of 100 ms ticks; live fans touch every 5 s and claim when called.
        fn run(&mut self, secs: u64, alive: impl Fn(u64) -> bool) {
            let end = self.now + secs * 1000;
            while self.now < end {
                self.now += 100;
                if self.now.is_multiple_of(5000) {
                    let serving = self.queue.serving();
                    for seq in serving + 1..self.queue.next_seq() {
                        if alive(seq) {
                            self.queue.touch(seq, self.now);
                        }
                    }
                }
                let before = self.queue.serving();
                self.drip.tick(&mut self.queue, self.now, true);
                for seq in before + 1..=self.queue.serving() {
                    if alive(seq) && self.queue.claim(seq, self.now).is_ok() {
                        self.entries += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn entries_follow_the_rate_smoothly() {
        let mut sim = Sim::new(settings(600), 100_000);
        sim.run(1, |_| true);
        // 600/min is 10 a second, not 600 at once.
        assert!((9..=11).contains(&sim.entries), "{}", sim.entries);
        sim.run(59, |_| true);
        let expected = 600.0;
        let err = (sim.entries as f64 - expected).abs() / expected;
        assert!(err <= 0.02, "entries {} vs {expected}", sim.entries);
    }

    #[test]
    fn with_half_the_places_abandoned_entries_stay_within_five_percent_of_the_rate() {
        for rate in [60, 600, 6000] {
            let mut sim = Sim::new(settings(rate), 400_000);
            sim.run(300, |seq| seq % 2 == 0);
            let expected = rate as f64 * 5.0;
            let err = (sim.entries as f64 - expected).abs() / expected;
            assert!(
                err <= 0.05,
                "rate {rate}: entries {} vs {expected}",
                sim.entries
            );
            assert!(
                sim.queue.serving() as f64 > 1.9 * sim.entries as f64,
                "skips are free"
            );
        }
    }

    #[test]
    fn paused_room_admits_nobody_and_resumes_without_a_burst() {
        let mut sim = Sim::new(settings(600), 10_000);
        sim.queue.settings.paused = true;
        sim.run(30, |_| true);
        assert_eq!(sim.entries, 0);
        assert_eq!(sim.queue.serving(), 0, "positions do not move while paused");
        sim.queue.settings.paused = false;
        sim.run(1, |_| true);
        assert!(sim.entries <= 11, "no catch-up burst: {}", sim.entries);
    }

    #[test]
    fn rate_increase_does_not_credit_the_past() {
        let mut sim = Sim::new(settings(60), 10_000);
        sim.run(10, |_| true);
        let before = sim.entries;
        sim.queue.settings.admit_rate_per_min = 6000;
        sim.drip.tick(&mut sim.queue, sim.now, true);
        let after = sim.queue.serving() - before;
        assert!(after <= 1, "raised rate credited the past: {after}");
    }

    #[test]
    fn max_active_caps_sessions_plus_called_places() {
        let mut s = settings(6000);
        s.max_active = Some(25);
        let mut sim = Sim::new(s, 1000);
        sim.run(10, |_| true);
        assert_eq!(sim.entries, 25);
        assert_eq!(sim.queue.occupied(), 25);
        sim.queue.set_active_sessions(20);
        sim.run(1, |_| true);
        assert_eq!(sim.entries, 30);
    }

    #[test]
    fn no_shows_free_their_slot_and_refund_their_token() {
        let mut s = settings(60);
        s.max_active = Some(1);
        let mut sim = Sim::new(s, 10);
        // Fans are alive (touching) but never claim.
        let end = 100_000;
        let mut called = 0;
        while sim.now < end {
            sim.now += 100;
            for seq in sim.queue.serving() + 1..sim.queue.next_seq() {
                sim.queue.touch(seq, sim.now);
            }
            called += sim.drip.tick(&mut sim.queue, sim.now, true).called;
        }
        // One slot, 30 s claim window: a no-show holds it for 30 s, then the next is called.
        assert_eq!(called, 4);
        assert!(matches!(sim.queue.place(1, sim.now), Place::Missed { .. }));
    }

    #[test]
    fn failing_upstream_holds_the_drip() {
        let mut sim = Sim::new(settings(600), 100);
        for t in 1..=50 {
            sim.drip.tick(&mut sim.queue, t * 100, false);
        }
        assert_eq!(sim.queue.serving(), 0);
        assert_eq!(sim.drip.tokens(), 0.0);
    }

    #[test]
    fn rejoiners_get_the_next_free_slot() {
        let mut sim = Sim::new(settings(60), 100);
        sim.queue.touch(1, 0);
        sim.run(2, |_| true);
        // Seq 1 was called; let it miss, then come back.
        sim.queue.unclaim(1, sim.now);
        sim.queue.expire_pending(sim.now + 30_000);
        let t = sim.now + 30_000;
        assert!(matches!(
            sim.queue.touch(1, t),
            Place::Rejoining { position: 1 }
        ));
        let mut drip = Drip::new(t);
        drip.tick(&mut sim.queue, t + 1000, true);
        assert!(matches!(sim.queue.place(1, t + 1000), Place::Called { .. }));
    }

    #[test]
    fn over_capacity_admits_arrivals_only_while_rate_and_cap_allow() {
        let mut s = settings(60);
        s.queue = QueueMode::OverCapacity;
        s.max_active = Some(100);
        let mut q = Queue::new(1, s);
        q.extend_reservation(1000);
        let mut drip = Drip::new(0);
        // Nothing accumulated yet at t=0: no burst at start-up.
        assert_eq!(drip.admit_arrival(&mut q, 0, true), None);
        // After 10 s, the bucket holds one second of rate (1 token).
        assert!(drip.admit_arrival(&mut q, 10_000, true).is_some());
        assert_eq!(drip.admit_arrival(&mut q, 10_000, true), None);
        assert!(drip.admit_arrival(&mut q, 11_000, true).is_some());
    }
}
