//! Live queue updates over Server-Sent Events: `GET /_waitroom/events?room=ID`.
//!
//! Fan-out costs the producer O(1): the room publishes one `watch` snapshot
//! per change; each connection wakes, derives its own position from its
//! sequence number (`seq − serving`, no lock) and writes only if what the
//! fan sees changed, at most about once a second ([`COALESCE`]).
//!
//! A fan far back is told their new position less often ([`pace`]): about
//! a tenth of their remaining wait apart, at most a heartbeat apart. While
//! the line moves, writing every fan's position every second would cost a
//! replica one TCP write per fan per second: at 40,000 fans on two cores,
//! more than half the machine, for numbers that mean little to someone an
//! hour from the front. A held fan sleeps through the drip's ticks and
//! listens only to the room's [`Headline`] (pause, close, rate, reset), so
//! those still reach everyone within about a second.
//!
//! A stream is a `futures` `unfold` polled by the connection's own task:
//! no extra task per fan, and a disconnect drops its state and buffers at
//! once. The stream sends, in order:
//!
//! - `retry: <ms>` and a `position` event at once (same JSON as `/_waitroom/status`);
//! - `prequeue` (before a scheduled opening), then `position` / `paused` /
//!   `closed` events when what the fan sees changes;
//! - `admitted` (with `url`), `claimed` or `expired`, after which it ends;
//! - a `: keep-alive` comment when nothing was written for `heartbeat_secs`;
//! - on drain (shutdown), a jittered `retry:` and the end of the stream;
//! - `superseded`, then the end, when newer streams of the same place
//!   push it over `sse.max_streams_per_place` (see `streams`). It carries
//!   no `retry:`; a client must not reconnect on its own after it (the
//!   page offers a button instead), or two tabs would evict each other.
//!
//! Every event has an `id:` of the form `<epoch>-<serving>`. A client that
//! reconnects with `Last-Event-ID` never sees a position higher than the one
//! it last saw, even if the gateway restarted and replayed a second of
//! progress. An open stream counts as a sign of life for the fan's place
//! (see `queue`): a fan whose stream has been gone for `abandon_after_secs`
//! when their turn comes is skipped, and keeps a `rejoin_secs` window.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::gate;
use crate::gateway::App;
use crate::http::Body;
use crate::queue::Place;
use crate::room::{Headline, Room, Snapshot};
use crate::status::{EtaReason, State, Status};

/// What a superseded stream's last event says.
pub const SUPERSEDED_MESSAGE: &str = "This place is open in another tab or app.";

/// At most one update a second per connection.
pub const COALESCE: Duration = Duration::from_secs(1);

/// A fan with an ETA of `e` seconds gets position-only updates about
/// `e / PACE_SHARE` seconds apart: some ten updates over the rest of the wait.
const PACE_SHARE: u64 = 10;

/// The least time between two position-only updates for a fan whose
/// expected wait is `eta_secs`: [`COALESCE`] near the front (or with no
/// ETA), growing with the wait, never above `heartbeat` (an idle stream
/// gets a write that often anyway, so a longer hold would save nothing).
pub fn pace(eta_secs: Option<u64>, heartbeat: Duration) -> Duration {
    let share = Duration::from_secs(eta_secs.unwrap_or(0) / PACE_SHARE);
    share.min(heartbeat).max(COALESCE)
}

/// Holds one slot of the per-node connection cap, and the stream's share
/// of its place's and its address's counts, until dropped.
struct Slot {
    app: Arc<App>,
    ticket: Option<crate::streams::Ticket>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.sse_open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ticket) = &self.ticket {
            self.app.streams.close(ticket);
        }
    }
}

/// Why a stream stops before the fan's place is settled.
enum Stop {
    /// The gateway is shutting down: reconnect elsewhere.
    Drain,
    /// Newer streams of the same place took its room: do not reconnect.
    Superseded,
}

/// What the fan was last shown; an event is written only when it changes.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    state: State,
    position: Option<u64>,
    eta: Option<[u64; 2]>,
    reason: Option<EtaReason>,
}

struct Conn {
    room: Arc<Room>,
    seq: u64,
    next: String,
    rx: watch::Receiver<Snapshot>,
    headline: watch::Receiver<Headline>,
    /// A position-only update held back until then ([`pace`]); meanwhile
    /// the stream listens to `headline` instead of `rx`.
    held: Option<Instant>,
    /// Resolves when the gateway starts draining or a newer stream of the
    /// place supersedes this one. Made once per stream and kept:
    /// re-registering with the drain channel on every event, as a fresh
    /// `changed()` would, cost each event a lock and a list removal.
    stop: Pin<Box<dyn Future<Output = Stop> + Send>>,
    /// The heartbeat / sign-of-life timer, kept and moved on rather than
    /// made anew per event (a later deadline moves without touching the
    /// timer wheel).
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The room epoch the fan's token belongs to; a reset ends the stream.
    epoch: u64,
    /// The highest serving counter this fan has been shown (never go back).
    floor: u64,
    last: Option<Shown>,
    last_write: Instant,
    heartbeat: Duration,
    touch_every: Duration,
    next_touch: Instant,
    retry_ms: u64,
    started: bool,
    done: bool,
    slot: Slot,
}

/// Parses `Last-Event-ID` (`<epoch>-<serving>`).
pub fn parse_last_event_id(value: &str) -> Result<(u64, u64), String> {
    let (epoch, serving) = value
        .trim()
        .split_once('-')
        .ok_or_else(|| "expected <epoch>-<serving>".to_string())?;
    let epoch = epoch
        .parse()
        .map_err(|_| "the epoch is not a number".to_string())?;
    let serving = serving
        .parse()
        .map_err(|_| "the serving counter is not a number".to_string())?;
    Ok((epoch, serving))
}

pub async fn handle(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, GatewayError> {
    if req.method() != Method::GET {
        return Err(GatewayError::MethodNotAllowed("GET"));
    }
    let query = crate::gate::parse_query(app, &req)?;
    let (room, next) = (query.room.clone(), query.next.clone());
    let claims = crate::gate::queue_token(app, &room, &req, query.get("token"), true)?
        .ok_or(GatewayError::NoToken)?;
    // The epoch the token was verified against (a reset meanwhile ends the
    // stream at once).
    let epoch = claims.ep;
    let mut floor = 0;
    if let Some(v) = req.headers().get("last-event-id") {
        let text = v.to_str().map_err(|_| GatewayError::InvalidHeader {
            name: "Last-Event-ID",
            reason: "not valid text".into(),
        })?;
        if !text.trim().is_empty() {
            let (last_epoch, serving) =
                parse_last_event_id(text).map_err(|reason| GatewayError::InvalidHeader {
                    name: "Last-Event-ID",
                    reason,
                })?;
            if last_epoch == epoch {
                floor = serving;
            }
        }
    }

    if app.draining.load(Ordering::Relaxed) {
        return Err(GatewayError::Draining);
    }
    let open = app.sse_open.fetch_add(1, Ordering::Relaxed);
    let mut slot = Slot {
        app: app.clone(),
        ticket: None,
    };
    if open >= app.config.sse.max_connections {
        return Err(GatewayError::TooManyStreams);
    }
    let place = crate::streams::PlaceKey {
        room: app
            .rooms
            .iter()
            .position(|r| Arc::ptr_eq(r, &room))
            .expect("parse_query returns one of the app's rooms"),
        epoch,
        seq: claims.seq,
    };
    let client = app.proxy.client_ip(peer.ip(), req.headers());
    let (ticket, superseded) = app.streams.open(place, client).map_err(|_| {
        app.metrics
            .sse_streams
            .with_label_values(&["refused_client_budget"])
            .inc();
        GatewayError::TooManyClientStreams
    })?;
    slot.ticket = Some(ticket);
    app.metrics.sse_streams.with_label_values(&["opened"]).inc();
    room.touch(epoch, claims.seq).await?;

    let heartbeat = app.config.sse.heartbeat;
    let touch_every = heartbeat
        .min(Duration::from_secs(room.config.abandon_after_secs / 3).max(Duration::from_secs(1)));
    let now = Instant::now();
    let conn = Conn {
        rx: room.subscribe(),
        headline: room.subscribe_headline(),
        held: None,
        stop: stop_signal(app.drain.subscribe(), superseded),
        timer: Box::pin(tokio::time::sleep_until(now + touch_every.min(heartbeat))),
        room,
        seq: claims.seq,
        epoch,
        next,
        floor,
        last: None,
        last_write: now,
        heartbeat,
        touch_every,
        next_touch: now + touch_every,
        retry_ms: app.config.sse.retry_ms,
        started: false,
        done: false,
        slot,
    };
    let stream = futures_util::stream::unfold(conn, next_frame);
    let body = StreamBody::new(stream).map_err(|never: Infallible| match never {});
    let mut res = Response::new(body.boxed_unsync());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *res.status_mut() = StatusCode::OK;
    Ok(res)
}

/// A future that resolves once `drain` changes (or its sender is gone) or
/// `superseded` is told so, and stays pending if polled again after that.
fn stop_signal(
    mut drain: watch::Receiver<bool>,
    superseded: oneshot::Receiver<()>,
) -> Pin<Box<dyn Future<Output = Stop> + Send>> {
    Box::pin(
        async move {
            tokio::select! {
                biased;
                _ = drain.changed() => Stop::Drain,
                // A sender dropped without a word (the place's entry went
                // away) supersedes nothing: this branch is then disabled.
                Ok(()) = superseded => Stop::Superseded,
            }
        }
        .fuse(),
    )
}

type Item = Result<Frame<Bytes>, Infallible>;

fn frame(text: impl Into<Bytes>) -> Item {
    Ok(Frame::data(text.into()))
}

/// Room for a whole event (its `id:` and `event:` lines and the status
/// JSON, about 350 bytes), so writing one allocates once.
const EVENT_CAPACITY: usize = 512;

/// Where a fan stands in the snapshot's epoch by the snapshot alone, or
/// `None` when they are past their turn and only the room knows
/// (admitted, claimed, skipped...).
fn place_by_snapshot(snap: &Snapshot, seq: u64, floor: u64) -> Option<Place> {
    // Ranks are seqs, except for a shuffled pre-queue.
    let rank = snap.shuffled.as_ref().map_or(seq, |s| s.rank(seq));
    if !snap.open {
        Some(Place::PreQueue)
    } else if rank > snap.serving {
        let serving = snap.serving.max(floor);
        Some(Place::Waiting {
            position: rank.saturating_sub(serving).max(1),
        })
    } else {
        None
    }
}

impl Conn {
    /// The fan's status now, from the snapshot alone while they wait (read
    /// in place: every stream does this on every change).
    async fn status(&mut self) -> Status {
        {
            let snap = self.rx.borrow_and_update();
            if snap.epoch != self.epoch {
                // The room was reset: this place no longer exists.
                return gate::status_of(&self.room, Some(Place::Expired), &snap, &self.next);
            }
            if let Some(place) = place_by_snapshot(&snap, self.seq, self.floor) {
                self.floor = self.floor.max(snap.serving);
                return gate::status_of(&self.room, Some(place), &snap, &self.next);
            }
        }
        // Past their turn: the room knows (a store lookup when shared;
        // while it does not answer, the stream keeps the last position).
        let place = match self.room.place(self.epoch, self.seq).await {
            Ok(place) => place,
            Err(_) => Place::Waiting { position: 1 },
        };
        let snap = self.rx.borrow();
        self.floor = self.floor.max(snap.serving);
        gate::status_of(&self.room, Some(place), &snap, &self.next)
    }

    /// The event for the current status, if it differs from what was
    /// shown and, for a change of position or ETA alone, its [`pace`]
    /// allows it now (else `held` is set to when it will).
    async fn event(&mut self, always: bool) -> Option<Vec<u8>> {
        // Seen before the snapshot is read: a headline published after
        // that read wakes a held stream again, none is missed.
        self.headline.borrow_and_update();
        let status = self.status().await;
        let shown = Shown {
            state: status.state,
            position: status.position,
            eta: status.eta_range_seconds,
            reason: status.eta_reason,
        };
        self.held = None;
        if !always {
            match &self.last {
                Some(last) if *last == shown => return None,
                Some(last)
                    if last.state == State::Waiting
                        && shown.state == State::Waiting
                        && last.reason == shown.reason =>
                {
                    let due = self.last_write + pace(shown.eta.map(|e| e[0]), self.heartbeat);
                    if Instant::now() < due {
                        self.held = Some(due);
                        return None;
                    }
                }
                _ => {}
            }
        }
        // The event's name, and whether it settles the place (the stream ends).
        let (kind, settled) = match status.state {
            State::Waiting => ("position", false),
            State::Paused | State::Closed | State::Prequeue => (status.state.as_str(), false),
            State::Admitted | State::Claimed | State::Expired => (status.state.as_str(), true),
            // A stream always follows a place, which status_of never shows
            // as these; should one come, the page treats the place as gone.
            State::NoPlace | State::Ended | State::Active | State::Superseded => ("expired", true),
        };
        if settled {
            self.done = true;
        }
        self.last = Some(shown);
        self.last_write = Instant::now();
        let epoch = self.rx.borrow().epoch;
        // One buffer for the whole event, handed to hyper as it is.
        let mut text = Vec::with_capacity(EVENT_CAPACITY);
        let _ = write!(text, "id: {epoch}-{}\nevent: {kind}\ndata: ", self.floor);
        status.write_json(&mut text);
        text.extend_from_slice(b"\n\n");
        Some(text)
    }

    /// The last frame of a stream stopped by [`Stop`].
    fn stop_frame(&mut self, why: Stop) -> Item {
        self.done = true;
        match why {
            Stop::Drain => {
                // Spread reconnects so a restarted node is not stampeded.
                let jitter = rand::random::<u64>() % self.retry_ms.max(1);
                frame(format!("retry: {}\n\n", self.retry_ms + jitter))
            }
            Stop::Superseded => {
                self.slot
                    .app
                    .metrics
                    .sse_streams
                    .with_label_values(&["superseded"])
                    .inc();
                let mut text = Vec::with_capacity(160);
                text.extend_from_slice(b"event: superseded\ndata: ");
                let _ = serde_json::to_writer(
                    &mut text,
                    &serde_json::json!({
                        "room": self.room.id(),
                        "state": State::Superseded,
                        "message": SUPERSEDED_MESSAGE,
                    }),
                );
                text.extend_from_slice(b"\n\n");
                frame(text)
            }
        }
    }
}

async fn next_frame(mut c: Conn) -> Option<(Item, Conn)> {
    if c.done {
        return None;
    }
    if !c.started {
        c.started = true;
        let first = c.event(true).await.unwrap_or_default();
        let mut text = format!("retry: {}\n", c.retry_ms).into_bytes();
        text.extend_from_slice(&first);
        return Some((frame(text), c));
    }
    loop {
        let beat_at = c.last_write + c.heartbeat;
        let wake = beat_at.min(c.next_touch).min(c.held.unwrap_or(beat_at));
        if c.timer.deadline() != wake || c.timer.is_elapsed() {
            c.timer.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            why = &mut c.stop => {
                let f = c.stop_frame(why);
                return Some((f, c));
            }
            // Held: the pause, rate change or reset ends the hold, and the
            // snapshot (changed meanwhile) is read again at once.
            changed = c.headline.changed(), if c.held.is_some() => {
                if changed.is_err() {
                    return None;
                }
                c.held = None;
            }
            changed = c.rx.changed(), if c.held.is_none() => {
                if changed.is_err() {
                    return None;
                }
                let since = c.last_write.elapsed();
                if since < COALESCE {
                    tokio::select! {
                        _ = tokio::time::sleep(COALESCE - since) => {}
                        why = &mut c.stop => {
                            let f = c.stop_frame(why);
                            return Some((f, c));
                        }
                    }
                }
                if let Some(text) = c.event(false).await {
                    return Some((frame(text), c));
                }
            }
            () = &mut c.timer => {
                let now = Instant::now();
                if c.held.is_some_and(|due| now >= due)
                    && let Some(text) = c.event(false).await
                {
                    return Some((frame(text), c));
                }
                if now >= c.next_touch {
                    // Never keep a stranger's place alive after a reset.
                    if c.rx.borrow().epoch == c.epoch {
                        // A failed touch (shared store down) is retried next time.
                        let _ = c.room.touch(c.epoch, c.seq).await;
                    }
                    c.next_touch = now + c.touch_every;
                }
                if now >= beat_at {
                    c.last_write = now;
                    return Some((frame(&b": keep-alive\n\n"[..]), c));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_updates_are_paced_by_the_wait_left() {
        let beat = Duration::from_secs(15);
        let secs = |eta| pace(eta, beat).as_secs();
        // Near the front, with no ETA (paused), or a short wait: every second.
        assert_eq!(secs(None), 1);
        assert_eq!(secs(Some(0)), 1);
        assert_eq!(secs(Some(19)), 1);
        // Further back: about a tenth of the wait left…
        assert_eq!(secs(Some(50)), 5);
        assert_eq!(secs(Some(120)), 12);
        // …never longer than a heartbeat.
        assert_eq!(secs(Some(3600)), 15);
        assert_eq!(pace(Some(3600), Duration::from_millis(500)), COALESCE);
    }

    #[test]
    fn last_event_id_is_parsed_strictly() {
        assert_eq!(parse_last_event_id("17-42"), Ok((17, 42)));
        for bad in ["", "42", "x-1", "1-x", "1-2-3", "-1"] {
            assert!(parse_last_event_id(bad).is_err(), "{bad:?}");
        }
    }
}
