//! The per-request decision on a protected route: let through, or wait.
//!
//! ```text
//!   access token (cookie wr_a_<room> or X-Waitroom-Token)
//!     valid, session live ─────────────────────────────→ proxy
//!     ours but ended ──────────────────────────────────→ "session ended" page
//!   queue token (cookie wr_q_<room>)
//!     waiting / rejoining ─────────────────────────────→ waiting page or status JSON
//!     turn has come ── claim (durable) → access token ─→ proxy
//!     place already claimed ───────────────────────────→ 403 "place already used"
//!     turn long gone / unknown ─┐
//!   no token, or a bad one ─────┴── new place ─────────→ waiting page (or straight in,
//!                                                         `over_capacity` with room to spare)
//! ```
//!
//! A bad token on a protected route is never an error page: the visitor is
//! treated as a new arrival and the reason is counted in
//! `waitroom_rejected_tokens_total`.
//!
//! The fan's steps the page, the JSON API and the event stream share live
//! here once: the `/_waitroom/*` query ([`parse_query`]), the queue token
//! read and verified ([`queue_token`]), a new place and a claim ([`Ctx`]).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::admission::{AdmissionClaims, Mode};
use crate::cookies::{access_cookie_name, claim_key_cookie_name, cookie, queue_cookie_name};
use crate::error::GatewayError;
use crate::gateway::App;
use crate::http::{self, Body};
use crate::page;
use crate::queue::{ClaimError, Place};
use crate::room::{Grant, RetryKey, Room, RoomError, SessionCheck, Snapshot};
use crate::status::{ClosedReason, EtaReason, State, Status};
use crate::token::{Claims, Expect, Kind, TokenError, TokenMemo};

/// Header carrying a solved proof-of-work challenge (`<challenge>:<n>`).
pub const POW_HEADER: &str = "x-waitroom-pow";

/// Header apps use to present their access token on protected routes.
pub const ACCESS_HEADER: &str = "x-waitroom-token";

/// Header apps send with `POST /_waitroom/claim` so a retry after a lost
/// answer is recognised as theirs (see `room::RetryKey`).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// An `Idempotency-Key` is 8 to 128 visible ASCII characters.
const IDEMPOTENCY_KEY_LEN: std::ops::RangeInclusive<usize> = 8..=128;

/// A fresh claim key for a browser: 128 random bits, hex.
fn new_claim_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The claim key the client presented: its `Idempotency-Key` (apps), else
/// the claim-key cookie (browsers). A malformed header is the client's
/// error; a malformed cookie counts as none (the gateway sets a new one).
pub fn presented_claim_key(
    headers: &HeaderMap,
    room: &str,
) -> Result<Option<RetryKey>, GatewayError> {
    if let Some(v) = headers.get(IDEMPOTENCY_HEADER) {
        let bad = |reason: &str| GatewayError::InvalidHeader {
            name: "Idempotency-Key",
            reason: reason.into(),
        };
        let text = v.to_str().map_err(|_| bad("not visible ASCII"))?;
        if !IDEMPOTENCY_KEY_LEN.contains(&text.len()) {
            return Err(bad("must be 8 to 128 characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("must be visible ASCII without spaces"));
        }
        return Ok(Some(RetryKey::of(text)));
    }
    Ok(browser_claim_key(headers, room).map(RetryKey::of))
}

/// The claim-key cookie, if present and well formed.
fn browser_claim_key<'h>(headers: &'h HeaderMap, room: &str) -> Option<&'h str> {
    http::cookie(headers, &claim_key_cookie_name(room))
        .ok()
        .flatten()
        .filter(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What to do with a request to a protected route.
pub enum Decision {
    Proxy(Pass),
    Respond(Response<Body>),
}

/// A request let through to the room's upstream, and what goes with it.
#[derive(Default)]
pub struct Pass {
    /// Added to the response.
    pub set_cookies: Vec<String>,
    /// The fan's signed admission (`[admission]`), added to the request.
    pub admission: Option<HeaderValue>,
    /// The live session the request holds, `(epoch, seq)`: the checkout's
    /// answer may end it (see `checkout`).
    pub session: Option<(u64, u64)>,
}

/// The status document for a fan's `place` (`None`: no place) as `snap`
/// shows the room; `next` is where the fan goes once admitted.
pub fn status_of(room: &Room, place: Option<Place>, snap: &Snapshot, next: &str) -> Status {
    let mut s = Status {
        room: snap.room.clone(),
        state: State::NoPlace,
        position: None,
        people_ahead: None,
        eta_seconds: None,
        eta_range_seconds: None,
        eta_reason: None,
        opens_at: snap.opens_at.map(crate::rfc3339::format),
        shuffle_commitment: snap.commitment.clone(),
        queue_length: snap.queue_length,
        admit_rate_per_min: snap.admit_rate(),
        serving: snap.serving,
        claim_within_secs: None,
        url: None,
        message: None,
        tickets_left: snap.stock,
        tickets_may_run_out: false,
        closed_reason: None,
    };
    match place {
        Some(Place::PreQueue) => {
            s.state = State::Prequeue;
            s.message = Some(
                "The sale has not opened yet. Everyone in line when it opens gets a random place, with the same chance."
                    .into(),
            );
        }
        Some(Place::Waiting { position }) | Some(Place::Rejoining { position }) => {
            s.state = State::Waiting;
            s.position = Some(position);
            s.people_ahead = Some(position - 1);
            if let Some(paces) = snap.paces {
                let (lo, hi) = crate::queue::eta_range(position, paces);
                s.eta_seconds = Some(lo);
                s.eta_range_seconds = Some([lo, hi]);
            }
            s.eta_reason = if snap.paused {
                Some(EtaReason::Paused)
            } else if snap.stock == Some(0) {
                s.message = Some("All tickets are in carts right now; you keep your place.".into());
                Some(EtaReason::TicketsInCarts)
            } else if snap.rate_lowered_recently {
                Some(EtaReason::RateLowered)
            } else if !snap.upstream_healthy {
                Some(EtaReason::CheckoutUnavailable)
            } else if snap.checkout_slow() {
                Some(EtaReason::CheckoutSlow)
            } else if snap.checkout_full() {
                Some(EtaReason::CheckoutFull)
            } else {
                None
            };
            if let Some(left) = snap.stock.filter(|&n| n > 0) {
                s.tickets_may_run_out =
                    may_run_out(position - 1, left, room.config.tickets_per_order, snap);
                if s.tickets_may_run_out {
                    s.message = Some(format!(
                        "Tickets may run out before your turn: about {left} left for {} people ahead of you.",
                        position - 1
                    ));
                }
            }
        }
        Some(Place::Called { claim_by }) => {
            s.state = State::Admitted;
            s.position = Some(0);
            s.people_ahead = Some(0);
            s.eta_seconds = Some(0);
            s.claim_within_secs = Some(claim_by.saturating_sub(room.clock.mono_ms()) / 1000);
            s.url = Some(next.to_string());
        }
        Some(Place::Claimed) => s.state = State::Claimed,
        Some(Place::Missed { .. }) | Some(Place::Expired) | Some(Place::Unknown) => {
            s.state = State::Expired
        }
        None => {}
    }
    // A closed room says so to everyone not already let in, called fans
    // included; a pause holds the called ones with the waiting ones (they
    // keep their call and enter when it resumes).
    if matches!(
        s.state,
        State::Waiting | State::NoPlace | State::Prequeue | State::Expired | State::Admitted
    ) {
        if snap.sold_out {
            s.state = State::Closed;
            s.closed_reason = Some(ClosedReason::SoldOut);
            s.message = Some(SOLD_OUT.into());
        } else if snap.closed {
            s.state = State::Closed;
            s.closed_reason = Some(ClosedReason::Closed);
            s.message = Some(room.config.closed_message.clone());
        } else if snap.paused && matches!(s.state, State::Waiting | State::Admitted) {
            s.state = State::Paused;
        }
        if s.state != State::Admitted {
            s.claim_within_secs = None;
            s.url = None;
        }
    }
    s
}

/// What a sold-out room tells everyone not already let in.
pub const SOLD_OUT: &str = "Sold out: every ticket has been sold.";

/// Whether the `ahead` people before a fan may buy the `left` tickets
/// first: each called fan enters with the share the room has seen (all of
/// them until 20 have been called, so early on it warns rather than
/// reassures) and buys `per_order` tickets.
fn may_run_out(ahead: u64, left: u64, per_order: u64, snap: &Snapshot) -> bool {
    let called = snap.admitted_total + snap.noshows_total;
    let share = if called >= 20 {
        snap.admitted_total as f64 / called as f64
    } else {
        1.0
    };
    ahead as f64 * per_order as f64 * share > left as f64
}

/// Refuses a state-changing request from another site's page (see
/// `csrf`); `https`: the client reached us over https.
pub fn refuse_cross_site<B>(app: &App, req: &Request<B>, https: bool) -> Result<(), GatewayError> {
    let proxy = &app.config.proxy;
    let own = crate::csrf::OwnSite {
        https,
        host: crate::csrf::request_host(req.headers(), req.uri()),
        public_origin: proxy.public_origin.as_deref(),
        allowed: &proxy.allowed_origins,
    };
    crate::csrf::check(req.headers(), &own).map_err(GatewayError::CrossSite)
}

/// Per-request facts the decision needs.
pub struct Ctx<'a> {
    pub app: &'a App,
    pub room: &'a Arc<Room>,
    /// The client's address as far as we trust it (see `proxy::client_ip`).
    pub client: std::net::IpAddr,
    pub secure: bool,
    pub json: bool,
    /// The URL (path and query) the fan asked for.
    pub next: &'a str,
    /// This client's access binding (see `binding`), if the room binds.
    pub binding: Option<String>,
    /// The connection's last verified token (see `token::TokenMemo`).
    pub memo: Option<&'a TokenMemo>,
}

impl Ctx<'_> {
    /// Takes one new place from the client's join budget (see `limits`).
    pub fn spend_join_budget(&self) -> Result<(), GatewayError> {
        self.app.join_limiter.check(self.client).map_err(|wait| {
            self.app
                .metrics
                .rate_limited
                .with_label_values(&[self.room.id()])
                .inc();
            GatewayError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Rooms with proof of work: a new place needs a solved challenge
    /// (`X-Waitroom-Pow: <challenge>:<n>`).
    async fn check_pow(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let bits = self.room.config.pow_bits;
        if bits == 0 {
            return Ok(());
        }
        let now = self.app.clock.wall_secs();
        let fresh = || self.app.pow.challenge(self.room.id(), bits, now);
        let Some(proof) = headers.get(POW_HEADER).and_then(|v| v.to_str().ok()) else {
            return Err(GatewayError::PowRequired {
                challenge: fresh(),
                bits,
            });
        };
        let invalid = |reason: crate::pow::PowError| {
            self.reject(&format!("pow_{}", reason.label()));
            GatewayError::PowInvalid {
                reason,
                challenge: fresh(),
                bits,
            }
        };
        let solved = self
            .app
            .pow
            .check(proof, self.room.id(), bits, now)
            .map_err(invalid)?;
        if self.room.spend_pow(&solved, &self.app.pow).await? {
            Ok(())
        } else {
            Err(invalid(crate::pow::PowError::Reused))
        }
    }

    /// The live session of this room the request holds, if any: an access
    /// token (`X-Waitroom-Token` or the cookie) bound to this client whose
    /// session has not ended; with the epoch it was checked in.
    async fn live_session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(u64, Arc<Claims>)>, GatewayError> {
        let access = headers
            .get(ACCESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                http::cookie(headers, &access_cookie_name(self.room.id()))
                    .ok()
                    .flatten()
            });
        let Some(token) = access else {
            return Ok(None);
        };
        let epoch = self.room.epoch();
        let expect = Expect {
            kind: Kind::Access,
            room: self.room.id(),
            epoch,
        };
        let claims = match self.verify(token, expect, self.app.clock.wall_secs()) {
            Ok(c) if c.bnd == self.binding => c,
            _ => return Ok(None),
        };
        let check = self
            .room
            .check_session(
                epoch,
                claims.seq,
                &claims.vid,
                claims.sat.unwrap_or(claims.iat),
            )
            .await?;
        Ok(matches!(check, SessionCheck::Live { .. }).then_some((epoch, claims)))
    }

    /// Whether the request holds a live session of this room. A join asks
    /// first, so it never replaces a place that is in use.
    pub async fn holds_live_session(&self, headers: &HeaderMap) -> Result<bool, GatewayError> {
        Ok(self.live_session(headers).await?.is_some())
    }

    fn verify(&self, token: &str, expect: Expect<'_>, now: u64) -> Result<Arc<Claims>, TokenError> {
        match self.memo {
            Some(memo) => self.app.keys.verify_with(memo, token, expect, now),
            None => self.app.keys.verify(token, expect, now).map(Arc::new),
        }
    }

    /// The signed admission of the live session of place `seq`: signed
    /// once per session (it costs tens of µs) and again only when less
    /// than half its lifetime is left. `None` when `[admission]` is off.
    fn admission_for(&self, epoch: u64, seq: u64, vid: &str, sat: u64) -> Option<HeaderValue> {
        let signer = self.app.admission.as_ref()?;
        let session = self.room.core().sessions.get(&seq)?;
        signer.kept(&session.admission, self.app.clock.wall_secs(), || {
            self.admission_claims(epoch, seq, vid.to_string(), sat, Mode::Queued)
        })
    }

    /// The admission of a fan let through unqueued while the shared store
    /// is down (`on_store_failure = "open"`): `mode: "open"`, no place
    /// (`seq` 0) and no visitor, one token for the room, so the checkout
    /// decides what an open gate means; it is never dropped, which would
    /// turn "open" into "closed" at a verifying checkout.
    fn open_admission(&self) -> Option<HeaderValue> {
        let signer = self.app.admission.as_ref()?;
        let now = self.app.clock.wall_secs();
        signer.kept(self.room.open_admission(), now, || {
            self.admission_claims(self.room.epoch(), 0, String::new(), now, Mode::Open)
        })
    }

    fn admission_claims(
        &self,
        ep: u64,
        seq: u64,
        vid: String,
        sat: u64,
        mode: Mode,
    ) -> AdmissionClaims {
        AdmissionClaims {
            iss: String::new(),
            aud: self.room.config.admission_audience.clone(),
            room: self.room.id().to_string(),
            ep,
            seq,
            vid,
            sat,
            iat: 0,
            exp: 0,
            mode,
        }
    }

    /// On an exempt path (a payment provider's return, say): the fan's
    /// live session and its admission, if the request carries a valid
    /// access token, so the checkout can tell a fan who waited there too
    /// (and end their session on a confirmation page). Looked up only with
    /// `[admission]` on: exempt paths are often static files. Nothing is
    /// refused or counted here: an exempt path passes either way.
    pub async fn exempt_pass(&self, headers: &HeaderMap) -> Pass {
        if self.app.admission.is_none() {
            return Pass::default();
        }
        let Ok(Some((epoch, c))) = self.live_session(headers).await else {
            return Pass::default();
        };
        Pass {
            admission: self.admission_for(epoch, c.seq, &c.vid, c.sat.unwrap_or(c.iat)),
            session: Some((epoch, c.seq)),
            ..Pass::default()
        }
    }

    fn reject(&self, reason: &str) {
        count_rejected_token(self.app, self.room, reason);
    }

    pub fn sign_queue_token(&self, epoch: u64, seq: u64, vid: String) -> (String, String) {
        let now = self.app.clock.wall_secs();
        let ttl = self.app.config.queue_token_ttl.as_secs();
        let token = self.app.keys.sign(&Claims {
            typ: Kind::Queue,
            room: self.room.id().to_string(),
            ep: epoch,
            seq,
            vid,
            iat: now,
            exp: now + ttl,
            sat: None,
            bnd: None,
        });
        let c = cookie(&queue_cookie_name(self.room.id()), &token, ttl, self.secure);
        (token, c)
    }

    /// Signs the access token for a grant; returns (token, Set-Cookie).
    pub fn sign_access_token(&self, epoch: u64, grant: &Grant, vid: &str) -> (String, String) {
        let snap = self.room.snapshot();
        let token = self.app.keys.sign(&Claims {
            typ: Kind::Access,
            room: self.room.id().to_string(),
            ep: epoch,
            seq: grant.seq,
            vid: vid.to_string(),
            iat: self.app.clock.wall_secs(),
            exp: grant.expires_wall,
            sat: Some(grant.session_started_wall),
            bnd: self.binding.clone(),
        });
        // The cookie outlives the token so an ended session is recognised
        // (and shown as ended) instead of silently looking like a stranger.
        let c = cookie(
            &access_cookie_name(self.room.id()),
            &token,
            snap.session_max_secs + 3600,
            self.secure,
        );
        (token, c)
    }

    fn waiting(&self, place: Place, set_cookies: Vec<String>) -> Response<Body> {
        self.waiting_as(place, &self.room.snapshot(), set_cookies)
    }

    /// The waiting response for `place` as `snap` shows the room.
    fn waiting_as(
        &self,
        place: Place,
        snap: &Snapshot,
        set_cookies: Vec<String>,
    ) -> Response<Body> {
        let status = status_of(self.room, Some(place), snap, self.next);
        let mut res = if self.json {
            http::json(StatusCode::OK, &status)
        } else if status.state == State::Closed {
            let message = status.message.as_deref();
            http::html(
                StatusCode::OK,
                page::closed_page(
                    &self.room.config.title,
                    message.unwrap_or(&self.room.config.closed_message),
                ),
            )
        } else {
            http::html(
                StatusCode::OK,
                page::waiting_page(&page::WaitingView {
                    room_id: self.room.id(),
                    title: &self.room.config.title,
                    state: status.state,
                    position: status.position,
                    eta_range: status.eta_range_seconds,
                    next: self.next,
                    template: self.room.config.page_template.as_deref(),
                }),
            )
        };
        for c in set_cookies {
            http::add_cookie(&mut res, &c);
        }
        res
    }

    fn session_ended(&self) -> Response<Body> {
        if self.json {
            let snap = self.room.snapshot();
            let mut s = status_of(self.room, None, &snap, self.next);
            s.state = State::Ended;
            s.message = Some("Your session has ended.".into());
            return http::json(StatusCode::OK, &s);
        }
        http::html(
            StatusCode::OK,
            page::session_ended_page(&self.room.config.title, self.room.id(), self.next),
        )
    }

    fn place_used(&self) -> Response<Body> {
        if self.json {
            return GatewayError::Claim(crate::queue::ClaimError::AlreadyClaimed)
                .into_response(&self.app.metrics, false);
        }
        http::html(
            StatusCode::FORBIDDEN,
            page::place_used_page(&self.room.config.title),
        )
    }

    /// Counts a claim refused for `reason` (`waitroom_refused_claims_total`).
    fn count_refused_claim(&self, reason: ClaimError) {
        self.app
            .metrics
            .refused_claims
            .with_label_values(&[self.room.id(), claim_reason(reason)])
            .inc();
    }

    /// Exchanges the called place (`epoch`, `seq`) of visitor `vid` for an
    /// access session: the claim (with the client's retry key), the
    /// admission or refusal counted, the access token signed. The one path
    /// for a browser on the route and an app's `POST /_waitroom/claim`.
    /// Returns the grant, the token and its `Set-Cookie`.
    pub async fn claim(
        &self,
        epoch: u64,
        seq: u64,
        vid: &str,
        retry: Option<&RetryKey>,
    ) -> Result<(Grant, String, String), GatewayError> {
        match self.room.claim(epoch, seq, vid, retry).await {
            Ok(grant) => {
                if grant.first {
                    self.app
                        .metrics
                        .admissions
                        .with_label_values(&[self.room.id()])
                        .inc();
                }
                let (token, cookie) = self.sign_access_token(epoch, &grant, vid);
                Ok((grant, token, cookie))
            }
            Err(RoomError::Claim(e)) => {
                self.count_refused_claim(e);
                Err(GatewayError::Claim(e))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes a new place: the proof of work (rooms with `pow_bits`), the
    /// client's join budget, a number, the arrival counted, a new visitor
    /// id and the signed queue token. The one path for an arrival on the
    /// route and `POST /_waitroom/join`.
    pub async fn take_new_place(&self, headers: &HeaderMap) -> Result<NewPlace, GatewayError> {
        self.check_pow(headers).await?;
        self.spend_join_budget()?;
        let (epoch, seq, called) = self.room.arrive().await?;
        self.app
            .metrics
            .arrivals
            .with_label_values(&[self.room.id()])
            .inc();
        let vid = crate::token::new_visitor_id();
        let (token, cookie) = self.sign_queue_token(epoch, seq, vid.clone());
        Ok(NewPlace {
            epoch,
            seq,
            called,
            vid,
            token,
            cookie,
        })
    }

    /// Claims a called place for this browser or app and lets it through.
    /// The claim carries the client's claim key (a browser without one gets
    /// one now, in the same answer). While the room is paused or closed the
    /// fan is shown that and keeps the call.
    async fn claim_and_proxy(
        &self,
        headers: &HeaderMap,
        claims: (u64, u64, &str),
        presented: Option<RetryKey>,
        mut set_cookies: Vec<String>,
    ) -> Result<Decision, GatewayError> {
        let (epoch, seq, vid) = claims;
        let presented = match presented {
            Some(key) => Some(key),
            None => presented_claim_key(headers, self.room.id())?,
        };
        let key = match presented {
            Some(key) => key,
            None => {
                let raw = new_claim_key();
                set_cookies.push(self.claim_key_cookie(&raw));
                RetryKey::of(&raw)
            }
        };
        match self.claim(epoch, seq, vid, Some(&key)).await {
            Ok((grant, _, c)) => {
                set_cookies.push(c);
                let admission = self.admission_for(epoch, seq, vid, grant.session_started_wall);
                Ok(Decision::Proxy(Pass {
                    set_cookies,
                    admission,
                    session: Some((epoch, seq)),
                }))
            }
            Err(GatewayError::Claim(ClaimError::AlreadyClaimed)) => {
                Ok(Decision::Respond(self.place_used()))
            }
            // This replica's view may not show the pause or closing yet:
            // the fan sees it now, so the page does not come straight back.
            Err(GatewayError::Claim(held @ (ClaimError::Paused | ClaimError::Closed))) => {
                let place = self.room.place(epoch, seq).await?;
                let mut snap = self.room.snapshot();
                snap.paused |= held == ClaimError::Paused;
                snap.closed |= held == ClaimError::Closed;
                Ok(Decision::Respond(self.waiting_as(
                    place,
                    &snap,
                    set_cookies,
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The `Set-Cookie` for a browser's claim key.
    fn claim_key_cookie(&self, raw: &str) -> String {
        let ttl = self.app.config.queue_token_ttl.as_secs();
        cookie(
            &claim_key_cookie_name(self.room.id()),
            raw,
            ttl,
            self.secure,
        )
    }

    /// A claim-key cookie for a browser that has none yet (see
    /// [`claim_key_cookie_name`]): set while it waits, before its turn.
    fn missing_claim_key(&self, headers: &HeaderMap) -> Option<String> {
        browser_claim_key(headers, self.room.id())
            .is_none()
            .then(|| self.claim_key_cookie(&new_claim_key()))
    }

    /// Decides what happens to a request on the room's protected route.
    pub async fn decide(&self, req: &Request<Incoming>) -> Result<Decision, GatewayError> {
        let headers = req.headers();
        if self.room.bypass() {
            // The shared store is down and the room is set to fail open.
            self.app
                .metrics
                .bypassed
                .with_label_values(&[self.room.id()])
                .inc();
            return Ok(Decision::Proxy(Pass {
                admission: self.open_admission(),
                ..Pass::default()
            }));
        }
        let now = self.app.clock.wall_secs();
        let room_id = self.room.id();
        let epoch = self.room.epoch();

        // A Cookie header that is not text counts as no gateway cookies.
        let cookie_of = |name: &str| match http::cookie(headers, name) {
            Ok(v) => v,
            Err(_) => {
                self.reject("malformed_cookie_header");
                None
            }
        };

        let access = headers
            .get(ACCESS_HEADER)
            .and_then(|v| v.to_str().ok())
            .or_else(|| cookie_of(&access_cookie_name(room_id)));
        if let Some(token) = access {
            let expect = Expect {
                kind: Kind::Access,
                room: room_id,
                epoch,
            };
            match self.verify(token, expect, now) {
                // Claimed by another client: a shared or resold access token.
                Ok(c) if c.bnd != self.binding => self.reject("binding_mismatch"),
                Ok(c) => match self
                    .room
                    .check_session(epoch, c.seq, &c.vid, c.sat.unwrap_or(c.iat))
                    .await?
                {
                    SessionCheck::Live { ends_in_secs } => {
                        let mut set_cookies = Vec::new();
                        let session_secs = self.room.session_secs();
                        // Slide: re-issue once less than half the idle window is left on the token.
                        if c.exp < now + session_secs / 2 && now + ends_in_secs > c.exp {
                            let grant = Grant {
                                first: false,
                                seq: c.seq,
                                session_started_wall: c.sat.unwrap_or(c.iat),
                                expires_wall: now + ends_in_secs,
                            };
                            set_cookies.push(self.sign_access_token(epoch, &grant, &c.vid).1);
                        }
                        let admission =
                            self.admission_for(epoch, c.seq, &c.vid, c.sat.unwrap_or(c.iat));
                        return Ok(Decision::Proxy(Pass {
                            set_cookies,
                            admission,
                            session: Some((epoch, c.seq)),
                        }));
                    }
                    SessionCheck::Ended => return Ok(Decision::Respond(self.session_ended())),
                    SessionCheck::Foreign => self.reject("foreign_session"),
                },
                Err(TokenError::Expired) => return Ok(Decision::Respond(self.session_ended())),
                Err(e) => self.reject(e.label()),
            }
        }

        if let Some(token) = cookie_of(&queue_cookie_name(room_id)) {
            let expect = Expect {
                kind: Kind::Queue,
                room: room_id,
                epoch,
            };
            match self.verify(token, expect, now) {
                Ok(c) => match self.room.touch(epoch, c.seq).await? {
                    place @ (Place::PreQueue | Place::Waiting { .. } | Place::Rejoining { .. }) => {
                        let ttl = self.app.config.queue_token_ttl.as_secs();
                        let mut cookies = Vec::new();
                        if c.iat + ttl / 2 < now {
                            cookies.push(self.sign_queue_token(epoch, c.seq, c.vid.clone()).1);
                        }
                        cookies.extend(self.missing_claim_key(headers));
                        return Ok(Decision::Respond(self.waiting(place, cookies)));
                    }
                    place @ Place::Called { .. } => {
                        let snap = self.room.snapshot();
                        if snap.paused || snap.shut() {
                            return Ok(Decision::Respond(self.waiting(place, Vec::new())));
                        }
                        return self
                            .claim_and_proxy(headers, (epoch, c.seq, &c.vid), None, Vec::new())
                            .await;
                    }
                    // The claimant again, if it shows its claim key (its
                    // first answer was lost); anyone else is refused here.
                    Place::Claimed => match presented_claim_key(headers, room_id)? {
                        Some(key) => {
                            return self
                                .claim_and_proxy(
                                    headers,
                                    (epoch, c.seq, &c.vid),
                                    Some(key),
                                    Vec::new(),
                                )
                                .await;
                        }
                        None => {
                            self.count_refused_claim(ClaimError::AlreadyClaimed);
                            return Ok(Decision::Respond(self.place_used()));
                        }
                    },
                    Place::Missed { .. } | Place::Expired | Place::Unknown => {
                        self.reject("place_expired")
                    }
                },
                Err(e) => self.reject(e.label()),
            }
        }

        // Another site's form posting here arrives without our (Lax)
        // cookies, and a new place's cookie would replace the fan's own.
        // As a GET the same navigation carries them: the fan lands with
        // the place or session they hold (or, holding none, gets one).
        if !matches!(*req.method(), Method::GET | Method::HEAD)
            && refuse_cross_site(self.app, req, self.secure).is_err()
        {
            let mut res = http::html(StatusCode::SEE_OTHER, String::new());
            if let Ok(location) = HeaderValue::from_str(self.next) {
                res.headers_mut().insert(header::LOCATION, location);
            }
            return Ok(Decision::Respond(res));
        }
        if self.room.snapshot().shut() {
            return Ok(Decision::Respond(self.waiting(Place::Unknown, Vec::new())));
        }
        // Browsers get a page whose script solves the challenge and joins;
        // apps get 428 with a challenge. Nobody is told they look like a bot.
        if self.room.config.pow_bits > 0 && !self.json {
            return Ok(Decision::Respond(http::html(
                StatusCode::OK,
                page::joining_page(&self.room.config.title, self.room.id(), self.next),
            )));
        }
        let new = self.take_new_place(headers).await?;
        if new.called {
            return self
                .claim_and_proxy(
                    headers,
                    (new.epoch, new.seq, &new.vid),
                    None,
                    vec![new.cookie],
                )
                .await;
        }
        let place = self.room.place(new.epoch, new.seq).await?;
        let mut cookies = vec![new.cookie];
        cookies.extend(self.missing_claim_key(headers));
        Ok(Decision::Respond(self.waiting(place, cookies)))
    }
}

/// The query every `/_waitroom/*` endpoint takes: `room`, optional `next`,
/// and the raw pairs for endpoint-specific parameters.
pub(crate) struct Query {
    pub room: Arc<Room>,
    pub next: String,
    pub pairs: Vec<(String, String)>,
}

impl Query {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn parse_query(app: &App, req: &Request<Incoming>) -> Result<Query, GatewayError> {
    let pairs = http::query_pairs(req.uri().query())?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let id = get("room").ok_or(GatewayError::MissingParam("room"))?;
    let room = app
        .room(id)
        .cloned()
        .ok_or_else(|| GatewayError::UnknownRoom(id.chars().take(64).collect()))?;
    let next = match get("next") {
        Some(n) => validate_next(n, &room.config.path_prefix).map_err(|reason| {
            GatewayError::InvalidParam {
                name: "next",
                reason,
            }
        })?,
        None => room.config.path_prefix.clone(),
    };
    Ok(Query { room, next, pairs })
}

/// The queue token a `/_waitroom/*` request presents, verified, and a
/// rejection counted: `?token=` where the endpoint allows one (only the
/// event stream: `EventSource` cannot set headers), else `Authorization:
/// Bearer` (apps), else the room's queue cookie (browsers). `Ok(None)`:
/// none presented. A bad cookie is an error when `cookie_errors_are_fatal`,
/// else counts as none (join then takes a new place).
pub(crate) fn queue_token(
    app: &App,
    room: &Room,
    req: &Request<Incoming>,
    query_token: Option<&str>,
    cookie_errors_are_fatal: bool,
) -> Result<Option<Claims>, GatewayError> {
    let headers = req.headers();
    let expect = Expect {
        kind: Kind::Queue,
        room: room.id(),
        epoch: room.epoch(),
    };
    let now = app.clock.wall_secs();
    let reject = |e: TokenError| {
        count_rejected_token(app, room, e.label());
        GatewayError::InvalidToken(e)
    };
    let header_token = match query_token {
        Some(t) => Some(t),
        None => http::bearer(headers)?,
    };
    if let Some(token) = header_token {
        return app
            .keys
            .verify(token, expect, now)
            .map(Some)
            .map_err(reject);
    }
    match http::cookie(headers, &queue_cookie_name(room.id()))? {
        Some(token) => match app.keys.verify(token, expect, now) {
            Ok(c) => Ok(Some(c)),
            Err(e) if cookie_errors_are_fatal => Err(reject(e)),
            Err(e) => {
                reject(e);
                Ok(None)
            }
        },
        None => Ok(None),
    }
}

/// Counts a token refused for `reason` (`waitroom_rejected_tokens_total`),
/// on every route and endpoint alike.
fn count_rejected_token(app: &App, room: &Room, reason: &str) {
    app.metrics
        .rejected_tokens
        .with_label_values(&[room.id(), reason])
        .inc();
}

/// A place just taken (see [`Ctx::take_new_place`]).
pub struct NewPlace {
    pub epoch: u64,
    pub seq: u64,
    /// Called at once (`over_capacity` with room to spare): claim it now.
    pub called: bool,
    pub vid: String,
    /// The signed queue token and its `Set-Cookie`.
    pub token: String,
    pub cookie: String,
}

/// The `reason` label of `waitroom_refused_claims_total`.
fn claim_reason(e: ClaimError) -> &'static str {
    match e {
        ClaimError::NotYet => "not_yet",
        ClaimError::AlreadyClaimed => "already_claimed",
        ClaimError::Missed => "turn_passed",
        ClaimError::Unknown => "unknown_place",
        ClaimError::Paused => "paused",
        ClaimError::Closed => "closed",
    }
}

/// Validates a `next` URL: a path on this host inside the room's route, so
/// the forward after admission can never leave the site (no open redirect)
/// nor the room. Returns it with its path in normal form (see `path`): a
/// browser resolves `..` itself, so the check is made on what it will ask for.
pub fn validate_next(next: &str, path_prefix: &str) -> Result<String, String> {
    if next.len() > 2048 {
        return Err("longer than 2048 bytes".into());
    }
    if !next.starts_with('/') || next.starts_with("//") || next.contains('\\') {
        return Err("must be a path on this site starting with a single '/'".into());
    }
    if next.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    let end = next.find(['?', '#']).unwrap_or(next.len());
    let (path, rest) = next.split_at(end);
    let path = crate::path::normalize(path).map_err(|e| e.to_string())?;
    if !crate::path::prefix_matches(path_prefix, &crate::path::without_params(&path)) {
        return Err(format!("must stay inside the room's route {path_prefix:?}"));
    }
    Ok(format!("{path}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_stay_on_site_and_in_the_room() {
        assert_eq!(
            validate_next("/shop/cart?x=1", "/shop"),
            Ok("/shop/cart?x=1".into())
        );
        for bad in [
            "https://evil.test/",
            "//evil.test/x",
            "/\\evil",
            "/other",
            "shop",
            "/shop/\u{7}",
            "/shop/../admin",
            "/shop/%2e%2e/admin?x",
            "/shop%2fadmin",
        ] {
            assert!(validate_next(bad, "/shop").is_err(), "{bad:?} accepted");
        }
        assert!(validate_next("/anything", "/").is_ok());
        assert_eq!(
            validate_next("/x/../shop/./cart?a=/../b", "/shop"),
            Ok("/shop/cart?a=/../b".into())
        );
    }
}
