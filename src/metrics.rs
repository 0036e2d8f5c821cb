//! Prometheus metrics, registered once and served on the admin listener.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::outcome::Outcome;
use crate::room::Snapshot;

pub struct Metrics {
    registry: Registry,
    pub queue_length: IntGaugeVec,
    pub serving: IntGaugeVec,
    pub active_sessions: IntGaugeVec,
    pub called_unclaimed: IntGaugeVec,
    pub admit_rate: IntGaugeVec,
    pub effective_rate: IntGaugeVec,
    pub checkout_slow: IntGaugeVec,
    pub paused: IntGaugeVec,
    /// 1 while the room's store answers (0: holding, or open in `open` mode).
    pub store_up: IntGaugeVec,
    /// 1 on the replica driving the room's drip.
    pub drip_leader: IntGaugeVec,
    /// Requests let through unqueued while the store was down (`open` mode).
    pub bypassed: IntCounterVec,
    pub arrivals: IntCounterVec,
    pub admissions: IntCounterVec,
    pub completions: IntCounterVec,
    pub skipped: IntCounterVec,
    pub noshows: IntCounterVec,
    pub rejected_tokens: IntCounterVec,
    pub refused_claims: IntCounterVec,
    pub upstream_seconds: HistogramVec,
    pub upstream_responses: IntCounterVec,
    pub errors: IntCounterVec,
    /// Public requests by room and [`Outcome`]; counted through
    /// [`Metrics::outcome_counters`], resolved once per room.
    requests: IntCounterVec,
    pub sse_connections: prometheus::IntGauge,
    pub sse_streams: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub join_limiter_clients: prometheus::IntGauge,
    pub connections_open: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub connections_idle_closed: IntCounterVec,
    pub tls_handshake_failures: prometheus::IntCounter,
    pub cert_reloads: IntCounterVec,
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::IntGauge {
    let g = prometheus::IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "waitroom_upstream_seconds",
                "Time from sending a request upstream to its response headers.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["room"],
        )
        .expect("static metric definition");
        r.register(Box::new(upstream_seconds.clone()))
            .expect("metric names are unique");
        Metrics {
            queue_length: gauge(
                &r,
                "waitroom_queue_length",
                "Places waiting (main line and rejoin lane).",
                &["room"],
            ),
            serving: gauge(
                &r,
                "waitroom_serving_counter",
                "Every place at or below this has had its turn.",
                &["room"],
            ),
            active_sessions: gauge(
                &r,
                "waitroom_active_sessions",
                "Admitted sessions in use.",
                &["room"],
            ),
            called_unclaimed: gauge(
                &r,
                "waitroom_called_unclaimed",
                "Places called and still inside their claim window.",
                &["room"],
            ),
            admit_rate: gauge(
                &r,
                "waitroom_admit_rate_per_min",
                "Configured admission rate.",
                &["room"],
            ),
            effective_rate: gauge(
                &r,
                "waitroom_effective_rate_per_min",
                "The rate the drip admits at: the configured one, or lower while the checkout's health limits it.",
                &["room"],
            ),
            checkout_slow: gauge(
                &r,
                "waitroom_checkout_limited",
                "1 while the checkout's latency or errors hold the rate below the configured one.",
                &["room"],
            ),
            paused: gauge(
                &r,
                "waitroom_paused",
                "1 while the room is paused.",
                &["room"],
            ),
            store_up: gauge(
                &r,
                "waitroom_store_up",
                "1 while the room's state store answers.",
                &["room"],
            ),
            drip_leader: gauge(
                &r,
                "waitroom_drip_leader",
                "1 on the replica that drives the room's drip (always 1 with the embedded store).",
                &["room"],
            ),
            bypassed: counter(
                &r,
                "waitroom_store_bypassed_total",
                "Requests passed to the upstream unqueued while the store was down (on_store_failure = open).",
                &["room"],
            ),
            arrivals: counter(&r, "waitroom_arrivals_total", "Places issued.", &["room"]),
            admissions: counter(
                &r,
                "waitroom_admissions_total",
                "Places exchanged for access (real entries).",
                &["room"],
            ),
            completions: counter(
                &r,
                "waitroom_completions_total",
                "Sessions the checkout ended (Waitroom-Session: end): buyers done.",
                &["room"],
            ),
            skipped: counter(
                &r,
                "waitroom_skipped_total",
                "Places skipped because nobody was there when their turn came.",
                &["room"],
            ),
            noshows: counter(
                &r,
                "waitroom_noshows_total",
                "Places called but not claimed within the claim window.",
                &["room"],
            ),
            rejected_tokens: counter(
                &r,
                "waitroom_rejected_tokens_total",
                "Tokens refused, by reason.",
                &["room", "reason"],
            ),
            refused_claims: counter(
                &r,
                "waitroom_refused_claims_total",
                "Claims refused, by reason.",
                &["room", "reason"],
            ),
            upstream_seconds,
            upstream_responses: counter(
                &r,
                "waitroom_upstream_responses_total",
                "Upstream outcomes by status class (2xx..5xx, error, timeout).",
                &["room", "class"],
            ),
            requests: counter(
                &r,
                "waitroom_requests_total",
                "Public requests by room (\"-\" for none and for /_waitroom/ endpoints) and how they ended (api, passthrough, exempt, admitted, waiting, error).",
                &["room", "outcome"],
            ),
            errors: counter(
                &r,
                "waitroom_errors_total",
                "Error responses by origin (client, upstream, store, internal).",
                &["origin"],
            ),
            sse_connections: {
                let g = prometheus::IntGauge::new(
                    "waitroom_sse_connections",
                    "Open event streams on this node.",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric names are unique");
                g
            },
            sse_streams: counter(
                &r,
                "waitroom_sse_streams_total",
                "Event streams by outcome: opened, superseded (a newer stream of the same place took its room), refused_client_budget (sse.max_streams_per_client).",
                &["outcome"],
            ),
            rate_limited: counter(
                &r,
                "waitroom_rate_limited_total",
                "New places refused because the client address took too many too fast.",
                &["room"],
            ),
            join_limiter_clients: int_gauge(
                &r,
                "waitroom_join_limiter_clients",
                "Client addresses the join rate limiter currently remembers.",
            ),
            connections_open: gauge(
                &r,
                "waitroom_connections_open",
                "Open connections per listener.",
                &["listener"],
            ),
            connections_refused: counter(
                &r,
                "waitroom_connections_refused_total",
                "Connections closed at once because the listener was at server.max_connections.",
                &["listener"],
            ),
            connections_idle_closed: counter(
                &r,
                "waitroom_connections_idle_closed_total",
                "Connections closed after server.idle_timeout_secs with nothing in flight.",
                &["listener"],
            ),
            tls_handshake_failures: {
                let c = prometheus::IntCounter::new(
                    "waitroom_tls_handshake_failures_total",
                    "TLS handshakes on the public listener that failed or timed out.",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone()))
                    .expect("metric names are unique");
                c
            },
            cert_reloads: counter(
                &r,
                "waitroom_cert_reloads_total",
                "Certificate reloads (SIGHUP) by result (ok, error).",
                &["result"],
            ),
            registry: r,
        }
    }

    pub fn observe_room(&self, s: &Snapshot) {
        let l = &[s.room.as_str()];
        self.queue_length
            .with_label_values(l)
            .set(s.queue_length as i64);
        self.serving.with_label_values(l).set(s.serving as i64);
        self.active_sessions
            .with_label_values(l)
            .set(s.active_sessions as i64);
        self.called_unclaimed
            .with_label_values(l)
            .set(s.called_unclaimed as i64);
        self.admit_rate
            .with_label_values(l)
            .set(s.admit_rate_per_min as i64);
        self.effective_rate
            .with_label_values(l)
            .set(s.admit_rate() as i64);
        self.checkout_slow
            .with_label_values(l)
            .set(i64::from(s.checkout_slow()));
        self.paused.with_label_values(l).set(i64::from(s.paused));
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One room's `waitroom_requests_total` counters, one per [`Outcome`],
/// looked up once at start-up so a request only adds one.
pub struct OutcomeCounters([IntCounter; Outcome::ALL.len()]);

impl OutcomeCounters {
    pub fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].inc();
    }
}

impl Metrics {
    /// The request counters of `room` (`"-"`: requests of no room).
    pub fn outcome_counters(&self, room: &str) -> OutcomeCounters {
        OutcomeCounters(Outcome::ALL.map(|o| self.requests.with_label_values(&[room, o.as_str()])))
    }
}
