//! The assembled gateway: configuration, keys, rooms, proxy, metrics and
//! store, the drip ticker and the shutdown flush. What every request
//! handler (`app`, `gate`, `api`, `sse`, `admin`) reads; it imports none
//! of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::admission::{Admission, AdmissionKey};
use crate::capacity::CapacityGroup;
use crate::config::{AdmissionConfig, Config, StoreConfig, Upstream};
use crate::limits::JoinLimiter;
use crate::metrics::{Metrics, OutcomeCounters};
use crate::proxy::Proxy;
use crate::room::{Clock, Room, RoomError};
use crate::store::{Lines, StoreError};
use crate::token::Keys;

/// How often the drip runs.
pub const TICK: Duration = Duration::from_millis(100);
/// Sessions are swept (and progress persisted) every this many ticks.
pub const SWEEP_EVERY_TICKS: u64 = 10;
/// How often checkout-health groups share their measurements and decide.
pub const CONTROL_TICK: Duration = Duration::from_secs(1);
/// The join limiter forgets clients with a full budget every this many ticks.
pub const LIMITER_TRIM_EVERY_TICKS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("admission keys: {0}")]
    Admission(String),
    #[error("room {room}: {source}")]
    Room { room: String, source: RoomError },
}

pub struct App {
    pub config: Config,
    pub keys: Keys,
    pub rooms: Vec<Arc<Room>>,
    pub proxy: Proxy,
    pub metrics: Metrics,
    /// `waitroom_requests_total` for each room by id, and for requests of
    /// no room.
    pub outcomes: HashMap<String, OutcomeCounters>,
    pub outcomes_of_no_room: OutcomeCounters,
    /// Where the rooms' lines are kept (`[store]`).
    pub lines: Box<dyn Lines>,
    pub clock: Clock,
    /// Set on shutdown: /readyz answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Turns true on shutdown: event streams send a jittered `retry:` and close.
    pub drain: tokio::sync::watch::Sender<bool>,
    /// Event streams open on this node (capped by `sse.max_connections`).
    pub sse_open: AtomicUsize,
    /// Event streams open on this node by place and by client address.
    pub streams: crate::streams::Streams,
    /// New places per client address (`limits.joins_per_min_per_client`).
    pub join_limiter: JoinLimiter,
    /// Proof-of-work challenges for rooms with `pow_bits`.
    pub pow: crate::pow::Pow,
    /// The signer of `Waitroom-Admission` (`[admission]`), if on.
    pub admission: Option<Admission>,
    /// The checkout-health groups (`upstream_target_p95_ms`).
    pub capacity: Vec<Arc<CapacityGroup>>,
}

impl App {
    pub async fn build(config: Config) -> Result<Arc<App>, AppError> {
        let clock = Clock::default();
        let hold = config.proxy.upstream_hold;
        let admission = match &config.admission {
            Some(a) => Some(admission(a, &config.store).map_err(AppError::Admission)?),
            None => None,
        };
        let lines = crate::store::open_lines(&config.store)?;
        let mut capacity: Vec<Arc<CapacityGroup>> = Vec::new();
        let mut rooms = Vec::new();
        for rc in &config.rooms {
            let group =
                rc.capacity
                    .as_ref()
                    .map(|c| match capacity.iter().find(|g| g.name == c.group) {
                        Some(g) => g.clone(),
                        None => {
                            let g = Arc::new(CapacityGroup::new(&c.group, c.settings.clone()));
                            capacity.push(g.clone());
                            g
                        }
                    });
            let (core, line) =
                lines
                    .open(rc, clock, hold)
                    .await
                    .map_err(|source| AppError::Room {
                        room: rc.id.clone(),
                        source,
                    })?;
            rooms.push(Room::on(rc.clone(), core, line, group));
        }
        let is_https = |u: &Upstream| u.scheme == hyper::http::uri::Scheme::HTTPS;
        let https_upstreams = config.rooms.iter().any(|r| is_https(&r.upstream))
            || config.proxy.default_upstream.as_ref().is_some_and(is_https);
        let metrics = Metrics::new();
        Ok(Arc::new(App {
            keys: Keys::new(&config.signing_keys),
            proxy: Proxy::new(&config.proxy, https_upstreams),
            join_limiter: JoinLimiter::new(&config.limits),
            pow: crate::pow::Pow::new(
                &config
                    .signing_keys
                    .first()
                    .expect("config validation requires a signing key")
                    .secret,
            ),
            outcomes: rooms
                .iter()
                .map(|r| (r.id().to_string(), metrics.outcome_counters(r.id())))
                .collect(),
            outcomes_of_no_room: metrics.outcome_counters("-"),
            metrics,
            admission,
            capacity,
            rooms,
            lines,
            clock,
            draining: AtomicBool::new(false),
            drain: tokio::sync::watch::channel(false).0,
            sse_open: AtomicUsize::new(0),
            streams: crate::streams::Streams::new(
                config.sse.max_streams_per_place,
                config.sse.max_streams_per_client,
            ),
            config,
        }))
    }

    pub fn room(&self, id: &str) -> Option<&Arc<Room>> {
        self.rooms.iter().find(|r| r.id() == id)
    }

    /// The room protecting `host` + `path`: the longest matching prefix,
    /// a room bound to the host winning over one for any host. `host` as
    /// [`crate::host::of_request`] gives it, `path` as
    /// [`crate::path::without_params`] gives it for the normal path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Room>> {
        self.rooms
            .iter()
            .filter(|r| match (&r.config.host, host) {
                (None, _) => true,
                (Some(h), Some(req)) => h.eq_ignore_ascii_case(req),
                (Some(_), None) => false,
            })
            .filter(|r| crate::path::prefix_matches(&r.config.path_prefix, path))
            .max_by_key(|r| (r.config.path_prefix.len(), r.config.host.is_some()))
    }

    /// A checkout-health group's control tick, once a second until `stop`:
    /// this process's measurements go to the group's decider (this
    /// process, where it leads the group's first room), and the verdict
    /// comes back; the group's rooms follow it at every drip tick.
    async fn run_capacity(
        self: Arc<Self>,
        group: Arc<CapacityGroup>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let rooms: Vec<&Arc<Room>> = self
            .rooms
            .iter()
            .filter(|r| r.capacity.as_ref().is_some_and(|g| Arc::ptr_eq(g, &group)))
            .collect();
        let mut interval = tokio::time::interval(CONTROL_TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let deciding = rooms.first().is_some_and(|r| r.leading());
            let promoter_total = rooms.iter().map(|r| r.core().promoter_rate()).sum();
            let now = self.clock.mono_ms();
            let delta = group.sketch.take();
            if let Err(e) = self
                .lines
                .control(&group, delta, (deciding, promoter_total, now))
                .await
            {
                tracing::debug!(group = %group.name, error = %e, "a capacity control tick failed");
            }
        }
    }

    /// Runs the drip for every room until `stop` turns true.
    pub async fn run_ticker(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // A shared room's drip runs against Redis in a task of its own;
        // this loop still counts what it did.
        for room in &self.rooms {
            if let Some(work) = room.background(TICK, stop.clone()) {
                tokio::spawn(work);
            }
        }
        for group in &self.capacity {
            tokio::spawn(self.clone().run_capacity(group.clone(), stop.clone()));
        }
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            n += 1;
            let sweep = n.is_multiple_of(SWEEP_EVERY_TICKS);
            for room in &self.rooms {
                room.follow_capacity();
                let report = room.tick(sweep);
                let l = &[room.id()];
                if report.skipped > 0 {
                    self.metrics
                        .skipped
                        .with_label_values(l)
                        .inc_by(report.skipped);
                }
                if report.noshows > 0 {
                    self.metrics
                        .noshows
                        .with_label_values(l)
                        .inc_by(report.noshows);
                }
                if sweep {
                    self.metrics.observe_room(&room.snapshot());
                    self.metrics
                        .store_up
                        .with_label_values(l)
                        .set(i64::from(room.store_healthy()));
                    self.metrics
                        .drip_leader
                        .with_label_values(l)
                        .set(i64::from(room.leading()));
                }
            }
            if sweep {
                self.metrics
                    .sse_connections
                    .set(self.sse_open.load(Ordering::Relaxed) as i64);
            }
            if n.is_multiple_of(LIMITER_TRIM_EVERY_TICKS) {
                self.join_limiter.trim();
                self.pow.forget_expired(self.clock.wall_secs());
                self.metrics
                    .join_limiter_clients
                    .set(self.join_limiter.tracked() as i64);
            }
        }
    }

    /// Persists the latest progress of every room and closes the store.
    pub async fn persist_and_close(&self) {
        for room in &self.rooms {
            if let Err(e) = room.flush().await {
                tracing::error!(room = %room.id(), error = %e, "final progress write failed");
            }
        }
        if let Err(e) = self.lines.close().await {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

/// The admission signer `[admission]` describes: its configured keys, or
/// (embedded store, none configured) the key kept in the store's directory.
fn admission(config: &AdmissionConfig, store: &StoreConfig) -> Result<Admission, String> {
    let keys = match (config.keys.as_slice(), store) {
        ([], StoreConfig::Embedded { path, .. }) => {
            std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
            vec![AdmissionKey::kept_in(&path.join("admission-ed25519.pem"))?]
        }
        (configured, _) => configured.to_vec(),
    };
    Admission::new(&config.issuer, config.ttl_secs, &keys)
}
