//! The fan's JSON endpoints under `/_waitroom/` on the public listener, used
//! by the waiting page and by apps:
//!
//! - `GET  /_waitroom/status?room=ID[&next=/path]`: where my place stands;
//! - `POST /_waitroom/join?room=ID[&next=/path]`: take (or get back) my place;
//! - `POST /_waitroom/claim?room=ID`: exchange my called place for access.
//!
//! The queue token comes from `Authorization: Bearer` (apps) or the room's
//! queue cookie (browsers), so a fan has one place whichever client asks.
//! A token that is present but bad is a 401 naming the reason. No endpoint
//! reads a request body: whatever a client sends is left unread (hyper then
//! closes the connection instead of draining it), and a declared length
//! over [`MAX_BODY_BYTES`] is a 413.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::cookies;
use crate::error::GatewayError;
use crate::gate::{self, Ctx, parse_query, queue_token};
use crate::gateway::App;
use crate::http::{self, Body};
use crate::queue::Place;
use crate::room::Room;
use crate::status::{State, Status};

#[derive(Serialize)]
struct Joined {
    /// The queue token; `null` when the fan holds a live session and
    /// presented no place.
    token: Option<String>,
    #[serde(flatten)]
    status: Status,
}

#[derive(Serialize)]
struct Claimed {
    room: String,
    access_token: String,
    /// Send it as `X-Waitroom-Token` (apps) or keep the cookie (browsers).
    header: &'static str,
    expires_in: u64,
    session_max_secs: u64,
    url: String,
}

/// None of these endpoints reads a request body; one declared larger than
/// this is refused before anything else (and never read).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(GatewayError::BodyTooLarge(MAX_BODY_BYTES));
    }
    let secure = app.config.proxy.public_https || app.proxy.client_https(req.headers(), peer.ip());
    // Joining, claiming and opening a stream (which may supersede another
    // of the same place) change a fan's state: never from another site.
    if matches!(
        req.uri().path(),
        "/_waitroom/join" | "/_waitroom/claim" | "/_waitroom/events"
    ) {
        gate::refuse_cross_site(app, &req, secure)?;
    }
    if req.uri().path() == "/_waitroom/events" {
        return crate::sse::handle(app, req, peer).await;
    }
    if req.uri().path() == "/_waitroom/jwks.json" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed("GET, HEAD"));
        }
        return jwks(app);
    }
    let (allow, handler) = match req.uri().path() {
        "/_waitroom/status" => ("GET, HEAD", Endpoint::Status),
        "/_waitroom/join" => ("POST", Endpoint::Join),
        "/_waitroom/claim" => ("POST", Endpoint::Claim),
        "/_waitroom/shuffle" => ("GET, HEAD", Endpoint::Shuffle),
        "/_waitroom/challenge" => ("GET, HEAD", Endpoint::Challenge),
        _ => return Err(GatewayError::NotFound),
    };
    let method_ok = match handler {
        Endpoint::Status | Endpoint::Shuffle | Endpoint::Challenge => {
            req.method() == Method::GET || req.method() == Method::HEAD
        }
        _ => req.method() == Method::POST,
    };
    if !method_ok {
        return Err(GatewayError::MethodNotAllowed(allow));
    }
    let q = parse_query(app, &req)?;
    let client = app.proxy.client_ip(peer.ip(), req.headers());
    let ctx = Ctx {
        app,
        room: &q.room,
        client,
        secure,
        json: true,
        next: &q.next,
        binding: crate::binding::fingerprint(
            q.room.config.access_binding,
            q.room.id(),
            req.headers(),
            client,
        ),
        memo: None,
    };
    match handler {
        Endpoint::Status => status(&ctx, &req).await,
        Endpoint::Join => join(&ctx, &req).await,
        Endpoint::Claim => claim(&ctx, &req).await,
        Endpoint::Shuffle => Ok(shuffle(ctx.room)),
        Endpoint::Challenge => Ok(challenge(&ctx)),
    }
}

/// `GET /_waitroom/jwks.json` (and `/admin/jwks.json`): the public keys
/// the checkout verifies `Waitroom-Admission` with; 404 while
/// `[admission]` is off. Cacheable for five minutes: a checkout that meets
/// an unknown `kid` fetches it again.
pub fn jwks(app: &App) -> Result<Response<Body>, GatewayError> {
    let signer = app.admission.as_ref().ok_or(GatewayError::NotFound)?;
    let mut res = http::response(
        StatusCode::OK,
        "application/json",
        signer.jwks().to_string(),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(res)
}

/// `GET /_waitroom/challenge?room=ID`: a proof-of-work challenge for
/// joining (rooms with `pow_bits`); `bits` 0 means none is needed.
fn challenge(ctx: &Ctx<'_>) -> Response<Body> {
    let bits = ctx.room.config.pow_bits;
    let now = ctx.app.clock.wall_secs();
    let challenge = (bits > 0).then(|| ctx.app.pow.challenge(ctx.room.id(), bits, now));
    http::json(
        StatusCode::OK,
        &serde_json::json!({
            "room": ctx.room.id(),
            "challenge": challenge,
            "bits": bits,
            "expires_in": crate::pow::CHALLENGE_TTL_SECS,
            "header": "X-Waitroom-Pow",
        }),
    )
}

enum Endpoint {
    Status,
    Join,
    Claim,
    Shuffle,
    Challenge,
}

/// `GET /_waitroom/shuffle?room=ID`: the pre-queue draw, for anyone to check.
/// Before opening: the commitment. After: the seed, the number of entries
/// (their pseudonymous ids are the sequence numbers 1..=entries) and the
/// command that recomputes the order.
fn shuffle(room: &Room) -> Response<Body> {
    let snap = room.snapshot();
    let entries = snap
        .open
        .then(|| snap.shuffled.as_ref().map_or(0, |s| s.len()));
    let verify = match (&snap.revealed_seed, entries, &snap.commitment) {
        (Some(seed), Some(n), Some(c)) => Some(format!(
            "waitroom verify-shuffle --seed {seed} --entries {n} --commitment {c}"
        )),
        _ => None,
    };
    http::json(
        StatusCode::OK,
        &serde_json::json!({
            "room": snap.room,
            "opens_at": snap.opens_at.map(crate::rfc3339::format),
            "open": snap.open,
            "commitment": snap.commitment,
            "seed": snap.revealed_seed,
            "entries": entries,
            "verify": verify,
        }),
    )
}

async fn status(ctx: &Ctx<'_>, req: &Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let claims = queue_token(ctx.app, ctx.room, req, None, true)?;
    let place = match claims {
        Some(c) => Some(ctx.room.touch(c.ep, c.seq).await?),
        None => None,
    };
    let snap = ctx.room.snapshot();
    Ok(http::json(
        StatusCode::OK,
        &gate::status_of(ctx.room, place, &snap, ctx.next),
    ))
}

/// `POST /_waitroom/join`: the fan's place, never a replacement for one in
/// use. A live session is answered with its state (`active`) and keeps its
/// cookies; a valid place is kept (and its token renewed); only a fan
/// holding neither, or a place that is used up or gone, gets a new one.
///
/// The rule for anything that may one day swap a fan's place (device
/// handoff, account tokens): only through an explicit same-origin POST
/// (see `csrf`), and the fan then keeps the better of the two places.
async fn join(ctx: &Ctx<'_>, req: &Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let room = ctx.room;
    if ctx.holds_live_session(req.headers()).await? {
        let snap = room.snapshot();
        let mut status = gate::status_of(room, None, &snap, ctx.next);
        status.state = State::Active;
        status.url = Some(ctx.next.to_string());
        status.message = Some("You are already in: your session is live.".into());
        return Ok(joined_answer(
            ctx,
            req,
            Joined {
                token: None,
                status,
            },
        ));
    }
    // Sold out: an arrival is told so (200, the status document), with no
    // place; a fan who holds one keeps it for a reopening.
    let sold_out = || {
        let status = gate::status_of(room, None, &room.snapshot(), ctx.next);
        Ok(joined_answer(
            ctx,
            req,
            Joined {
                token: None,
                status,
            },
        ))
    };
    let existing = queue_token(ctx.app, room, req, None, false)?;
    let (token, cookie, place) = match existing {
        Some(c) => match room.touch(c.ep, c.seq).await? {
            // A used or lost place: joining again means a new place (as any arrival).
            Place::Claimed | Place::Expired | Place::Unknown | Place::Missed { .. } => {
                if room.snapshot().sold_out {
                    return sold_out();
                }
                new_place(ctx, req).await?
            }
            place => {
                let (token, cookie) = ctx.sign_queue_token(room.epoch(), c.seq, c.vid);
                (token, cookie, place)
            }
        },
        None if room.snapshot().sold_out => return sold_out(),
        None => new_place(ctx, req).await?,
    };
    let snap = room.snapshot();
    let status = gate::status_of(room, Some(place), &snap, ctx.next);
    let mut res = joined_answer(
        ctx,
        req,
        Joined {
            token: Some(token),
            status,
        },
    );
    http::add_cookie(&mut res, &cookie);
    // An access cookie presented here is not live (checked above): clear
    // it, or the route would show "session ended" instead of the place.
    if http::cookie(req.headers(), &cookies::access_cookie_name(room.id()))
        .ok()
        .flatten()
        .is_some()
    {
        http::add_cookie(
            &mut res,
            &cookies::clear_cookie(&cookies::access_cookie_name(room.id()), ctx.secure),
        );
    }
    Ok(res)
}

/// Join's answer: JSON, or for an HTML form (the "join again" button of
/// the session-ended page) a `303` back to the route.
fn joined_answer(ctx: &Ctx<'_>, req: &Request<Incoming>, joined: Joined) -> Response<Body> {
    let browser_form = !http::wants_json(req.headers())
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    if browser_form {
        let mut res = http::html(StatusCode::SEE_OTHER, String::new());
        if let Ok(loc) = HeaderValue::from_str(ctx.next) {
            res.headers_mut().insert(header::LOCATION, loc);
        }
        res
    } else {
        http::json(StatusCode::OK, &joined)
    }
}

async fn new_place(
    ctx: &Ctx<'_>,
    req: &Request<Incoming>,
) -> Result<(String, String, Place), GatewayError> {
    let new = ctx.take_new_place(req.headers()).await?;
    let place = ctx.room.place(new.epoch, new.seq).await?;
    Ok((new.token, new.cookie, place))
}

async fn claim(ctx: &Ctx<'_>, req: &Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let room = ctx.room;
    let claims = queue_token(ctx.app, room, req, None, true)?.ok_or(GatewayError::NoToken)?;
    let retry = gate::presented_claim_key(req.headers(), room.id())?;
    room.touch(claims.ep, claims.seq).await?;
    let (grant, token, cookie) = ctx
        .claim(claims.ep, claims.seq, &claims.vid, retry.as_ref())
        .await?;
    let snap = room.snapshot();
    let mut res = http::json(
        StatusCode::OK,
        &Claimed {
            room: room.id().to_string(),
            access_token: token,
            header: "X-Waitroom-Token",
            expires_in: grant.expires_wall.saturating_sub(ctx.app.clock.wall_secs()),
            session_max_secs: snap.session_max_secs,
            url: ctx.next.to_string(),
        },
    );
    http::add_cookie(&mut res, &cookie);
    Ok(res)
}
