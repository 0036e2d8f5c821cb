//! The assembled gateway: configuration, keys, rooms, proxy, metrics and
//! store, and the public request flow:
//!
//! ```text
//!   request ─→ normal path (path::normalize; none safe: 400)
//!     ├─→ /_waitroom/* ─→ api (status, join, claim)
//!     └─→ route by host (host::of_request; malformed: 400)
//!         + longest path prefix (path::without_params)
//!           ├─ no room ─→ default upstream, or 404
//!           ├─ exempt path ─→ proxy
//!           └─ gate::decide ─→ proxy (+ cookies) | waiting page
//! ```
//!
//! Everything after the first step sees the normal path, and it is the
//! path forwarded: the gateway and the upstream read the same route.
//!
//! Every public request ends in [`App::handle_public`], which records the
//! access log line and the error metric in one place.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};

use crate::config::{Config, OnStoreFailure, StoreConfig, Upstream};
use crate::conn::Connection;
use crate::error::GatewayError;
use crate::gate::{Ctx, Decision};
use crate::http::{self, Body};
use crate::limits::JoinLimiter;
use crate::metrics::Metrics;
use crate::proxy::{ForwardError, Proxy, UpstreamError};
use crate::room::{Clock, Room, RoomError};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError};
use crate::token::Keys;

/// How often the drip runs.
pub const TICK: Duration = Duration::from_millis(100);
/// Sessions are swept (and progress persisted) every this many ticks.
pub const SWEEP_EVERY_TICKS: u64 = 10;
/// The join limiter forgets clients with a full budget every this many ticks.
pub const LIMITER_TRIM_EVERY_TICKS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("room {room}: {source}")]
    Room { room: String, source: RoomError },
}

pub struct App {
    pub config: Config,
    pub keys: Keys,
    pub rooms: Vec<Arc<Room>>,
    pub proxy: Proxy,
    pub metrics: Metrics,
    /// The local store (`None` when the line is shared through Redis).
    pub store: Option<Arc<dyn Store>>,
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
}

impl App {
    pub async fn build(config: Config) -> Result<Arc<App>, AppError> {
        let clock = Clock::default();
        let hold = config.proxy.upstream_hold;
        /// How this process opens its rooms.
        enum Opener<'a> {
            Local(Arc<dyn Store>, u64),
            Shared(redis::aio::ConnectionManager, &'a str, OnStoreFailure, u64),
        }
        let opener = match &config.store {
            StoreConfig::Embedded { path, seq_block } => {
                Opener::Local(Arc::new(EmbeddedStore::open(path)?), *seq_block)
            }
            StoreConfig::Redis {
                url,
                key_prefix,
                on_failure,
                lease_ms,
            } => Opener::Shared(
                crate::store::redis::connect(url)?,
                key_prefix,
                *on_failure,
                *lease_ms,
            ),
        };
        let mut rooms = Vec::new();
        for rc in &config.rooms {
            let opened = match &opener {
                Opener::Local(store, seq_block) => {
                    Room::open(rc.clone(), store.clone(), clock, *seq_block, hold).await
                }
                Opener::Shared(con, key_prefix, on_failure, lease_ms) => {
                    crate::store::redis::open_room(
                        rc.clone(),
                        con.clone(),
                        key_prefix,
                        *on_failure,
                        *lease_ms,
                        clock,
                        hold,
                    )
                    .await
                }
            };
            rooms.push(opened.map_err(|source| AppError::Room {
                room: rc.id.clone(),
                source,
            })?);
        }
        let store = match opener {
            Opener::Local(store, _) => Some(store),
            Opener::Shared(..) => None,
        };
        let is_https = |u: &Upstream| u.scheme == hyper::http::uri::Scheme::HTTPS;
        let https_upstreams = config.rooms.iter().any(|r| is_https(&r.upstream))
            || config.proxy.default_upstream.as_ref().is_some_and(is_https);
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
            metrics: Metrics::new(),
            rooms,
            store,
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

    /// Runs the drip for every room until `stop` turns true.
    pub async fn run_ticker(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // Shared rooms tick against Redis in their own task; this loop
        // still counts what they did.
        for room in &self.rooms {
            if matches!(room.backend, crate::room::Backend::Shared(_)) {
                tokio::spawn(crate::store::redis::run(room.clone(), TICK, stop.clone()));
            }
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
        if let Some(store) = &self.store
            && let Err(e) = store.close().await
        {
            tracing::error!(error = %e, "closing the store failed");
        }
    }

    /// Every public request goes through here.
    pub async fn handle_public(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<Connection>,
    ) -> Response<Body> {
        // The access log's facts, gathered only when it is on: copying the
        // path and reading the clock are measurable on the admitted path.
        let logged = tracing::enabled!(target: "access", tracing::Level::DEBUG).then(|| {
            // Path only: queries may carry tokens and are never logged.
            (
                Instant::now(),
                req.method().clone(),
                req.uri().path().to_string(),
            )
        });
        let as_html =
            !http::wants_json(req.headers()) && !req.uri().path().starts_with("/_waitroom/");
        let (room, outcome) = match self.dispatch(req, &conn).await {
            Ok((room, outcome, res)) => (room, Ok((outcome, res))),
            Err((room, e)) => (room, Err(e)),
        };
        let (res, outcome) = match outcome {
            Ok((outcome, res)) => (res, outcome),
            Err(e) => (e.into_response(&self.metrics, as_html), Outcome::Error),
        };
        if let Some((started, method, path)) = logged {
            let room = room.as_ref().map_or("-", |r| r.id());
            tracing::debug!(target: "access", %method, %path, status = res.status().as_u16(), room, outcome = outcome.as_str(), elapsed_us = started.elapsed().as_micros() as u64);
        }
        res
    }

    async fn dispatch(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        conn: &Connection,
    ) -> Dispatched {
        let peer = conn.addr;
        // Every decision below is taken on the normal path, and the normal
        // path is what is forwarded (see `path`).
        match crate::path::normalize(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(normal)) => *req.uri_mut() = crate::path::with_path(req.uri(), &normal),
            Err(e) => return Err((None, GatewayError::InvalidPath(e))),
        }
        let path = req.uri().path();
        if path.starts_with("/_waitroom/") {
            return crate::api::handle(self, req, peer)
                .await
                .map(|res| (None, Outcome::Api, res))
                .map_err(|e| (None, e));
        }
        let host = crate::host::of_request(req.uri(), req.headers())
            .map_err(|e| (None, GatewayError::InvalidHost(e)))?;
        let view = crate::path::without_params(path);
        let Some(room) = self.route(host, &view).cloned() else {
            return match &self.config.proxy.default_upstream {
                Some(up) => self
                    .forward(None, req, up, conn, Vec::new())
                    .await
                    .map(|res| (None, Outcome::Passthrough, res))
                    .map_err(|e| (None, e)),
                None => Err((None, GatewayError::NoRoute)),
            };
        };
        let exempt = room
            .config
            .exempt_paths
            .iter()
            .any(|e| crate::path::exempt_matches(e, path, &view));
        let (outcome, set_cookies) = if exempt {
            (Outcome::Exempt, Vec::new())
        } else {
            let client = self.proxy.client_ip(peer.ip(), req.headers());
            let ctx = Ctx {
                app: self,
                room: &room,
                client,
                secure: self.config.proxy.public_https
                    || self.proxy.client_https(req.headers(), peer.ip()),
                json: http::wants_json(req.headers()),
                binding: crate::binding::fingerprint_with(
                    Some(&conn.binding),
                    room.config.access_binding,
                    room.id(),
                    req.headers(),
                    client,
                ),
                memo: Some(&conn.memo),
                next: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            };
            match ctx.decide(&req).await {
                Ok(Decision::Proxy { set_cookies }) => (Outcome::Admitted, set_cookies),
                Ok(Decision::Respond(res)) => return Ok((Some(room), Outcome::Waiting, res)),
                Err(e) => return Err((Some(room), e)),
            }
        };
        let upstream = &room.config.upstream;
        match self
            .forward(Some(&room), req, upstream, conn, set_cookies)
            .await
        {
            Ok(res) => Ok((Some(room), outcome, res)),
            Err(e) => Err((Some(room), e)),
        }
    }

    async fn forward(
        &self,
        room: Option<&Arc<Room>>,
        req: Request<Incoming>,
        upstream: &Upstream,
        conn: &Connection,
        set_cookies: Vec<String>,
    ) -> Result<Response<Body>, GatewayError> {
        let room_label = room.map(|r| r.id()).unwrap_or("-");
        match self
            .proxy
            .forward(req, upstream, &conn.link, conn.addr.ip(), &conn.peer)
            .await
        {
            Ok(fwd) => {
                let status = fwd.response.status();
                self.metrics
                    .upstream_seconds
                    .with_label_values(&[room_label])
                    .observe(fwd.elapsed.as_secs_f64());
                let class = match status.as_u16() {
                    100..=199 => "1xx",
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                self.metrics
                    .upstream_responses
                    .with_label_values(&[room_label, class])
                    .inc();
                if matches!(status.as_u16(), 502..=504)
                    && let Some(r) = room
                {
                    r.note_upstream_failure();
                }
                let mut res = fwd.response;
                for c in set_cookies {
                    if let Ok(v) = HeaderValue::from_str(&c) {
                        res.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                Ok(res)
            }
            // The client's own body failed: its fault, counted as a client
            // error where the answer is made, never against the upstream.
            Err(e @ (ForwardError::RequestBody | ForwardError::RequestBodyTimeout)) => {
                Err(e.into())
            }
            Err(ForwardError::Upstream(e)) => {
                let class = match e {
                    UpstreamError::Timeout => "timeout",
                    _ => "error",
                };
                self.metrics
                    .upstream_responses
                    .with_label_values(&[room_label, class])
                    .inc();
                if let Some(r) = room {
                    r.note_upstream_failure();
                }
                Err(e.into())
            }
        }
    }
}

/// What [`App::dispatch`] did, for the access log: the room (if any), and
/// the outcome with the response, or the error.
type Dispatched =
    Result<(Option<Arc<Room>>, Outcome, Response<Body>), (Option<Arc<Room>>, GatewayError)>;

/// How a public request ended, as the access log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A `/_waitroom/*` endpoint answered.
    Api,
    /// No room: sent to the default upstream.
    Passthrough,
    /// An exempt path of a room: proxied without a token.
    Exempt,
    /// A fan with access (or just admitted): proxied.
    Admitted,
    /// The fan was answered by the gateway: waiting page, status, refusal page.
    Waiting,
    /// A [`GatewayError`] answered.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Api => "api",
            Outcome::Passthrough => "passthrough",
            Outcome::Exempt => "exempt",
            Outcome::Admitted => "admitted",
            Outcome::Waiting => "waiting",
            Outcome::Error => "error",
        }
    }
}
