//! Proof by simulation: the controller in front of a model checkout whose
//! p95 latency rises with the number of fans in it, each fan staying for
//! minutes, measured through the real sketch on two replicas.
//!
//! The model, one step a simulated second: admissions arrive at the
//! effective rate; each cohort leaves spread evenly over the scenario's
//! session lengths; every fan inside makes a request every
//! [`REQUEST_EVERY_SECS`], its latency drawn log-normally around the
//! model's p95 at the current concurrency. With p95 flat at `base` up to a
//! `knee` of sessions and linear beyond, the target is met at
//! c* = knee + (target − base) / slope sessions, so by Little's law at the
//! rate r* = c* / mean session length. The tests assert against that r*.
//!
//! Measures, over the trace of rates after each control step: *settled* =
//! every rate from minute 60 to the end within ±10% of r* (±15% for the
//! hardest scenario, see there) and their mean within ±10%; *swing* =
//! (max − min) / max over that stretch, at most 20%; *settle time* = the
//! first step after which every rate stays within that band.

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::controller::{CapacitySettings, Controller, Reason};
use super::sketch::{LatencySketch, Window};
use crate::clock::Millis;

/// Each fan in the checkout makes a request this often.
const REQUEST_EVERY_SECS: f64 = 20.0;
/// The spread of latencies around their median (log-normal σ).
const SIGMA: f64 = 0.5;
/// The standard normal's 95th percentile.
const Z95: f64 = 1.644_854;
/// Steps per simulated minute (30 s control interval).
const STEPS_PER_MIN: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Checkout {
    base_ms: f64,
    knee_sessions: f64,
    ms_per_session: f64,
}

impl Checkout {
    fn p95_ms(&self, sessions: f64) -> f64 {
        self.base_ms + self.ms_per_session * (sessions - self.knee_sessions).max(0.0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    checkout: Checkout,
    target_ms: u64,
    promoter: u64,
    floor: u64,
    session_secs: &'static [usize],
}

/// Sessions of 3 to 5 minutes, 4 on average.
const THREE_TO_FIVE_MIN: &[usize] = &[180, 210, 240, 270, 300];

/// r* = 1300 / 4 = 325 a minute, against a promoter's 600.
const NOMINAL: Scenario = Scenario {
    checkout: Checkout {
        base_ms: 200.0,
        knee_sessions: 1000.0,
        ms_per_session: 2.0,
    },
    target_ms: 800,
    promoter: 600,
    floor: 60,
    session_secs: THREE_TO_FIVE_MIN,
};

impl Scenario {
    /// The rate at which the checkout's p95 settles at the target.
    fn rate_at_target(&self) -> f64 {
        let c = &self.checkout;
        let sessions = c.knee_sessions + (self.target_ms as f64 - c.base_ms) / c.ms_per_session;
        let mean_secs =
            self.session_secs.iter().sum::<usize>() as f64 / self.session_secs.len() as f64;
        (sessions / (mean_secs / 60.0)).min(self.promoter as f64)
    }
}

struct Sim {
    scenario: Scenario,
    controller: Controller,
    rng: SmallRng,
    replicas: [LatencySketch; 2],
    /// Fans leaving 1, 2, … seconds from now.
    departures: VecDeque<f64>,
    sessions: f64,
    requests_owed: f64,
    now: Millis,
    promoter: u64,
    rate: u64,
    /// The effective rate after each control step.
    trace: Vec<u64>,
    reasons: Vec<Reason>,
}

impl Sim {
    fn new(scenario: Scenario, seed: u64) -> Sim {
        let settings =
            CapacitySettings::new(Duration::from_millis(scenario.target_ms), scenario.floor);
        let longest = scenario.session_secs.iter().max().copied().unwrap_or(1);
        Sim {
            scenario,
            controller: Controller::new(settings, scenario.promoter, 0),
            rng: SmallRng::seed_from_u64(seed),
            replicas: [LatencySketch::new(), LatencySketch::new()],
            departures: VecDeque::from(vec![0.0; longest]),
            sessions: 0.0,
            requests_owed: 0.0,
            now: 0,
            promoter: scenario.promoter,
            rate: scenario.promoter,
            trace: Vec::new(),
            reasons: Vec::new(),
        }
    }

    fn standard_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.random::<f64>();
        let u2 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn run_minutes(&mut self, minutes: u64) {
        for _ in 0..minutes * 60 {
            self.second();
        }
    }

    fn second(&mut self) {
        self.now += 1000;
        self.sessions -= self.departures.pop_front().unwrap_or(0.0);
        self.departures.push_back(0.0);
        let admitted = self.rate as f64 / 60.0;
        let share = admitted / self.scenario.session_secs.len() as f64;
        for &secs in self.scenario.session_secs {
            self.departures[secs - 1] += share;
        }
        self.sessions += admitted;

        let median_ms = self.scenario.checkout.p95_ms(self.sessions) / (Z95 * SIGMA).exp();
        self.requests_owed += self.sessions / REQUEST_EVERY_SECS;
        while self.requests_owed >= 1.0 {
            self.requests_owed -= 1.0;
            let latency_ms = median_ms * (SIGMA * self.standard_normal()).exp();
            let replica = &self.replicas[self.rng.random_range(0..2)];
            replica.record_micros((latency_ms * 1000.0) as u64);
        }
        if self.controller.due(self.now) {
            self.control_step();
        }
    }

    fn control_step(&mut self) {
        let mut window = Window::new();
        for replica in &self.replicas {
            window
                .merge(&replica.take())
                .expect("own buckets are in range");
        }
        let decision = self
            .controller
            .step(self.now, &window.stats(), self.promoter);
        self.record(decision.rate_per_min, decision.reason);
    }

    /// Every rate ever in force is checked against the bounds.
    fn record(&mut self, rate: u64, reason: Reason) {
        let floor = self.scenario.floor.min(self.promoter);
        assert!(
            (floor..=self.promoter).contains(&rate),
            "rate {rate} outside [{floor}, {}] at {} s",
            self.promoter,
            self.now / 1000
        );
        self.rate = rate;
        self.trace.push(rate);
        self.reasons.push(reason);
    }

    /// The promoter changes the rate between two control steps.
    fn set_promoter(&mut self, promoter: u64) {
        self.promoter = promoter;
        self.now += 1;
        let decision = self
            .controller
            .step(self.now, &Window::new().stats(), promoter);
        self.record(decision.rate_per_min, decision.reason);
    }
}

/// Minutes until every later rate stays within `band` of `target`.
fn settle_minutes(trace: &[u64], target: f64, band: f64) -> Option<f64> {
    let within = |r: &u64| (*r as f64 - target).abs() <= band * target;
    match trace.iter().rposition(|r| !within(r)) {
        None => Some(0.0),
        Some(i) if i + 1 < trace.len() => Some((i + 1) as f64 / STEPS_PER_MIN as f64),
        Some(_) => None,
    }
}

struct Settled {
    mean: f64,
    min: u64,
    max: u64,
}

impl Settled {
    fn of(rates: &[u64]) -> Settled {
        Settled {
            mean: rates.iter().sum::<u64>() as f64 / rates.len() as f64,
            min: rates.iter().copied().min().unwrap_or(0),
            max: rates.iter().copied().max().unwrap_or(0),
        }
    }

    fn swing(&self) -> f64 {
        (self.max - self.min) as f64 / self.max as f64
    }
}

/// Runs three simulated hours and asserts the settled behaviour: from
/// minute 60 on, the mean within ±10% of r*, every rate within ±`band`, the
/// swing at most 20%; and settled within `band` by minute 45.
fn assert_settles_near_the_rate_at_target(scenario: Scenario, seed: u64, band: f64) {
    let mut sim = Sim::new(scenario, seed);
    sim.run_minutes(180);
    let r_star = scenario.rate_at_target();
    let settled = Settled::of(&sim.trace[60 * STEPS_PER_MIN..]);
    let settle = settle_minutes(&sim.trace, r_star, band);
    eprintln!(
        "r* {r_star:.0}/min: settled mean {:.0} ({:+.1}%), range {}–{}, swing {:.1}%, settled after {settle:?} min",
        settled.mean,
        100.0 * (settled.mean / r_star - 1.0),
        settled.min,
        settled.max,
        100.0 * settled.swing()
    );
    assert!(
        (settled.mean - r_star).abs() <= 0.10 * r_star,
        "mean {:.0} vs r* {r_star:.0}",
        settled.mean
    );
    for bound in [settled.min, settled.max] {
        assert!(
            (bound as f64 - r_star).abs() <= band * r_star,
            "settled range {}–{} vs r* {r_star:.0}",
            settled.min,
            settled.max
        );
    }
    assert!(settled.swing() <= 0.20, "swing {:.2}", settled.swing());
    let settle = settle.expect("settles");
    assert!(settle <= 45.0, "took {settle} min to settle");
}

#[test]
fn settles_within_ten_percent_of_the_rate_that_meets_the_target() {
    assert_settles_near_the_rate_at_target(NOMINAL, 1, 0.10);
}

#[test]
fn settles_in_front_of_a_steep_checkout_with_long_sessions() {
    // r* = (800 + 450 / 5) / 5 = 178 a minute. The hardest case: every fan
    // stays exactly 5 minutes (a pure delay, no spread to smooth it) and the
    // dead band is 12 sessions (1.3% of c*) wide, so the rate keeps a small
    // limit cycle: over 20 seeds the mean within 0.5% of r*, but single
    // steps down to −11%. Every rate is held to ±15% here, not ±10%.
    assert_settles_near_the_rate_at_target(
        Scenario {
            checkout: Checkout {
                base_ms: 150.0,
                knee_sessions: 800.0,
                ms_per_session: 5.0,
            },
            target_ms: 600,
            promoter: 400,
            floor: 20,
            session_secs: &[300],
        },
        2,
        0.15,
    );
}

#[test]
fn settles_in_front_of_a_gently_degrading_checkout() {
    // r* = (1500 + 700 / 0.5) / 4 = 725 a minute.
    assert_settles_near_the_rate_at_target(
        Scenario {
            checkout: Checkout {
                base_ms: 300.0,
                knee_sessions: 1500.0,
                ms_per_session: 0.5,
            },
            target_ms: 1000,
            promoter: 1200,
            floor: 100,
            session_secs: THREE_TO_FIVE_MIN,
        },
        3,
        0.10,
    );
}

#[test]
fn returns_to_the_promoter_rate_after_the_checkout_heals() {
    let mut sim = Sim::new(NOMINAL, 4);
    sim.run_minutes(90);
    assert!(
        sim.rate < NOMINAL.promoter * 3 / 4,
        "limiting before the heal: {}",
        sim.rate
    );
    let healed_at = sim.trace.len();
    // The knee moves from 1000 to 3000 sessions: r* = 825 a minute, above the promoter's 600.
    sim.scenario.checkout.knee_sessions = 3000.0;
    sim.run_minutes(60);
    let back = sim.trace[healed_at..]
        .iter()
        .position(|&r| r == NOMINAL.promoter)
        .expect("back to the promoter rate");
    let minutes = back as f64 / STEPS_PER_MIN as f64;
    eprintln!("back to the promoter rate {minutes} min after the heal");
    assert!(minutes <= 30.0, "took {minutes} min");
    assert!(
        sim.trace[healed_at + back..]
            .iter()
            .all(|&r| r == NOMINAL.promoter)
    );
    assert_eq!(sim.reasons.last(), Some(&Reason::PromoterRate));
}

#[test]
fn holds_the_floor_when_the_checkout_cannot_meet_the_target_above_it() {
    // r* = (200 + 300) / 4 = 125 a minute, below the floor of 150.
    let scenario = Scenario {
        checkout: Checkout {
            knee_sessions: 200.0,
            ..NOMINAL.checkout
        },
        floor: 150,
        ..NOMINAL
    };
    let mut sim = Sim::new(scenario, 5);
    sim.run_minutes(120);
    // Every step was checked against the floor; it ends there.
    assert!(sim.trace[60 * STEPS_PER_MIN..].iter().all(|&r| r == 150));
    assert_eq!(sim.reasons.last(), Some(&Reason::CheckoutSlow));
}

#[test]
fn a_promoter_cut_caps_the_rate_at_once_and_keeps_it_capped() {
    let mut sim = Sim::new(NOMINAL, 6);
    sim.run_minutes(60);
    let limited = sim.rate;
    assert!(limited > 250, "{limited}");
    sim.set_promoter(250);
    assert_eq!(
        sim.rate, 250,
        "the cut applies before the next control step"
    );
    sim.run_minutes(30);
    assert!(sim.trace.iter().rev().take(60).all(|&r| r == 250));
    assert_eq!(sim.reasons.last(), Some(&Reason::PromoterRate));
}
