//! The public request flow (the gateway's parts are in `gateway`):
//!
//! ```text
//!   request ─→ normal path (path::normalize; none safe: 400)
//!     ├─→ /_waitroom/* ─→ api (status, join, claim)
//!     └─→ route by host (host::of_request; malformed: 400)
//!         + longest path prefix (path::without_params)
//!           ├─ no room ─→ default upstream, or 404
//!           ├─ exempt path ─→ proxy
//!           └─ gate::decide ─→ proxy (+ cookies) | waiting page
//!   a `101` from the upstream ─→ the tunnel runs on the connection (`run_tunnel`)
//! ```
//!
//! A WebSocket upgrade takes the same path as any request: it is decided
//! by the gate like any other, and only a request let through reaches the
//! upstream, so only an admitted fan (or an exempt path) gets a tunnel.
//!
//! Everything after the first step sees the normal path, and it is the
//! path forwarded: the gateway and the upstream read the same route.
//!
//! Every public request ends in [`App::handle_public`], which records its
//! [`Outcome`] in the access log line and `waitroom_requests_total`, and
//! the error metric, in one place.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};

use crate::capacity::CapacityGroup;
use crate::checkout::Signals;
use crate::config::Upstream;
use crate::conn::Connection;
use crate::error::GatewayError;
use crate::gate::{Ctx, Decision, Pass};
use crate::gateway::App;
use crate::http::{self, Body};
use crate::outcome::Outcome;
use crate::proxy::{ForwardError, Tunnel, UpstreamError};
use crate::room::Room;

impl App {
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
        room.as_ref()
            .and_then(|r| self.outcomes.get(r.id()))
            .unwrap_or(&self.outcomes_of_no_room)
            .count(outcome);
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
                    .forward(None, req, up, conn, (Pass::default(), None))
                    .await
                    .map(|(res, _, tunnel)| {
                        if let Some(tunnel) = tunnel {
                            self.run_tunnel(conn, tunnel, None);
                        }
                        (None, Outcome::Passthrough, res)
                    })
                    .map_err(|e| (None, e)),
                None => Err((None, GatewayError::NoRoute)),
            };
        };
        let exempt = room
            .config
            .exempt_paths
            .iter()
            .any(|e| crate::path::exempt_matches(e, path, &view));
        let ctx = || {
            let client = self.proxy.client_ip(peer.ip(), req.headers());
            Ctx {
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
            }
        };
        let (outcome, pass) = if exempt {
            (Outcome::Exempt, ctx().exempt_pass(req.headers()).await)
        } else {
            match ctx().decide(&req).await {
                Ok(Decision::Proxy(pass)) => (Outcome::Admitted, pass),
                Ok(Decision::Respond(res)) => return Ok((Some(room), Outcome::Waiting, res)),
                Err(e) => return Err((Some(room), e)),
            }
        };
        let upstream = &room.config.upstream;
        let session = pass.session;
        // When the request left: the checkout's stock news in its answer
        // is as new as this.
        let sent_ms = session.map(|_| self.clock.wall_ms());
        // The checkout's health is measured on admitted requests alone
        // (exempt paths are often static files).
        let measured = room
            .capacity
            .as_deref()
            .filter(|_| outcome == Outcome::Admitted);
        match self
            .forward(Some(&room), req, upstream, conn, (pass, measured))
            .await
        {
            Ok((res, signals, tunnel)) => {
                if let (Some(session), Some(sent_ms)) = (session, sent_ms) {
                    self.heed(&room, signals, session, (outcome, sent_ms)).await;
                }
                if let Some(tunnel) = tunnel {
                    // An exempt path's tunnel is no more the session's than
                    // its requests are.
                    let held = session
                        .filter(|_| outcome == Outcome::Admitted)
                        .map(|session| (room.clone(), session));
                    self.run_tunnel(conn, tunnel, held);
                }
                Ok((Some(room), outcome, res))
            }
            Err(e) => Err((Some(room), e)),
        }
    }

    /// What the room's checkout said in its answer to a request of the
    /// live session `(epoch, seq)`, sent at `sent_ms`. Stock counts only
    /// from the room's protected route, never from an exempt path.
    async fn heed(
        &self,
        room: &Arc<Room>,
        signals: Signals,
        (epoch, seq): (u64, u64),
        (outcome, sent_ms): (Outcome, u64),
    ) {
        if let Some(stock) = signals.stock
            && outcome == Outcome::Admitted
        {
            room.offer_stock(stock, sent_ms);
        }
        if signals.end_session {
            match room.end_session(epoch, seq).await {
                Ok(true) => self
                    .metrics
                    .completions
                    .with_label_values(&[room.id()])
                    .inc(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(room = %room.id(), seq, error = %e, "could not end a session the checkout ended");
                }
            }
        }
    }

    /// Has the connection run an accepted WebSocket upgrade's tunnel once
    /// its `101` is out (see `conn`). The tunnel of an admitted fan's
    /// request, `held` with its room and session `(epoch, seq)`, lasts as
    /// long as the session (ended by the checkout, idle or
    /// `session_max_secs`), and slides it while bytes move; an exempt
    /// path's, or a route without a room's, lasts while both sides keep it
    /// open. A drain lets every tunnel run for the grace period, as a
    /// request in flight, then cuts it: a WebSocket may never end by
    /// itself, and its client reconnects elsewhere.
    fn run_tunnel(&self, conn: &Connection, tunnel: Tunnel, held: Option<(Arc<Room>, (u64, u64))>) {
        let mut drain = self.drain.subscribe();
        let grace = self.config.shutdown_grace;
        let cut = async move {
            // An error: the gateway is gone, as good as drained.
            let _ = drain.wait_for(|draining| *draining).await;
            tokio::time::sleep(grace).await;
        };
        conn.on_upgrade(Box::pin(async move {
            let end = match held {
                Some((room, (epoch, seq))) => {
                    let hold = |active| room.hold_session(epoch, seq, active);
                    tunnel.run(hold, cut).await
                }
                None => tunnel.run(|_| true, cut).await,
            };
            tracing::debug!(?end, "a WebSocket tunnel ended");
        }));
    }

    async fn forward(
        &self,
        room: Option<&Arc<Room>>,
        req: Request<Incoming>,
        upstream: &Upstream,
        conn: &Connection,
        (pass, measured): (Pass, Option<&CapacityGroup>),
    ) -> Result<(Response<Body>, Signals, Option<Tunnel>), GatewayError> {
        let room_label = room.map(|r| r.id()).unwrap_or("-");
        match self
            .proxy
            .forward(
                req,
                upstream,
                &conn.link,
                (conn.addr.ip(), &conn.peer),
                pass.admission,
                pass.session.is_some(),
            )
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
                if let Some(group) = measured {
                    group.record((status.as_u16() < 500).then_some(fwd.elapsed));
                }
                let mut res = fwd.response;
                for c in pass.set_cookies {
                    if let Ok(v) = HeaderValue::from_str(&c) {
                        res.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                Ok((res, fwd.signals, fwd.tunnel))
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
                if let Some(group) = measured {
                    group.record(None);
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
