//! What a room asks of its line, and what both kinds of line share.
//!
//! ```text
//!   room::Room ── rules: sessions, grants, health ──┐
//!     │                                             │ reads and publishes
//!     └─ Arc<dyn Line> ─┬─ embedded::EmbeddedLine   ▼
//!                       └─ redis::Shared ───────→ Core: the queue and drip
//!                                                  under one short lock,
//!                                                  the sessions, the watch
//!                                                  channels, health marks
//! ```
//!
//! [`Line`] is the interface: arrive, touch, place, claim, the session
//! look-up, settings, reset, tick, flush. The embedded line keeps the
//! queue in this process with the journal; the shared line keeps it in
//! Redis and mirrors it into the same [`Core`]. Neither imports `room`.
//!
//! Locking: the queue lock is held only for in-memory work (microseconds);
//! every store write happens outside it. Sessions live in a `DashMap` so the
//! admitted hot path (verify token → look up session) takes no room-wide lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::watch;

use crate::capacity::Reason;
use crate::clock::Clock;
use crate::config::QueueMode;
use crate::drip::{Drip, TickReport};
use crate::queue::{ClaimError, Millis, Place, Queue, Settings, Shuffled};
use crate::shuffle::Seed;
use crate::store::StoreError;

/// How long an arrival may wait for a sequence-number reservation.
pub const RESERVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum RoomError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store did not answer in time")]
    StoreTimeout,
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("the room is closed")]
    Closed,
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// What readers see of a room, published after every change.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Snapshot {
    pub room: String,
    pub epoch: u64,
    pub serving: u64,
    pub issued: u64,
    pub queue_length: u64,
    pub admit_rate_per_min: u64,
    pub max_active: Option<u64>,
    pub active_sessions: u64,
    pub called_unclaimed: u64,
    pub admitted_total: u64,
    pub paused: bool,
    /// Closed by the promoter (see [`Snapshot::shut`]).
    pub closed: bool,
    /// Tickets left, if known; 0 holds the drip.
    #[serde(default)]
    pub stock: Option<u64>,
    /// The checkout or the promoter said sold out.
    #[serde(default)]
    pub sold_out: bool,
    /// Wall-clock ms of the stock news applied last.
    #[serde(default)]
    pub stock_at_ms: u64,
    /// Called places that never entered, since this process has known the
    /// line (with `admitted_total`, the share of called fans who enter).
    #[serde(default)]
    pub noshows_total: u64,
    /// The rate the drip admits at: `admit_rate_per_min` (the promoter's)
    /// or lower while the checkout's health limits it.
    #[serde(default)]
    pub effective_rate_per_min: u64,
    #[serde(default = "promoter_rate")]
    pub rate_reason: Reason,
    pub queue: QueueMode,
    pub session_secs: u64,
    pub session_max_secs: u64,
    pub claim_grace_secs: u64,
    pub upstream_healthy: bool,
    /// Places per minute the line actually moved lately, if known.
    pub observed_advance_per_min: Option<f64>,
    /// (typical, slow) places per second for ETAs; `None` while paused or closed.
    pub paces: Option<(f64, f64)>,
    /// The admit rate was lowered in the last minute (ETAs say why they rose).
    pub rate_lowered_recently: bool,
    /// False while a scheduled room collects its pre-queue.
    pub open: bool,
    pub opens_at: Option<u64>,
    pub closes_at: Option<u64>,
    /// SHA-256 of the shuffle seed, published before opening.
    pub commitment: Option<String>,
    /// The seed, revealed once the room opened.
    pub revealed_seed: Option<String>,
    /// The shuffled pre-queue (ranks ↔ sequence numbers), once open.
    #[serde(skip)]
    pub shuffled: Option<Shuffled>,
}

/// What a waiting fan must hear of at once, whatever their place: every
/// field of a [`Snapshot`] that changes what the fan is told other than
/// their position and ETA. Published on its own channel, so a fan far back
/// whose next position update is held (see `sse`) sleeps through the drip's
/// ticks yet still wakes for a pause, a rate change or a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headline {
    pub epoch: u64,
    pub open: bool,
    pub paused: bool,
    pub closed: bool,
    pub sold_out: bool,
    pub stock_held: bool,
    pub admit_rate_per_min: u64,
    pub effective_rate_per_min: u64,
    pub rate_lowered_recently: bool,
    pub upstream_healthy: bool,
    pub checkout_full: bool,
}

impl Headline {
    pub fn of(s: &Snapshot) -> Headline {
        Headline {
            epoch: s.epoch,
            open: s.open,
            paused: s.paused,
            closed: s.closed,
            sold_out: s.sold_out,
            stock_held: s.stock == Some(0),
            admit_rate_per_min: s.admit_rate_per_min,
            effective_rate_per_min: s.effective_rate_per_min,
            rate_lowered_recently: s.rate_lowered_recently,
            upstream_healthy: s.upstream_healthy,
            checkout_full: s.checkout_full(),
        }
    }
}

/// A room's stock as its snapshot says (see [`Core::stock_view`]).
#[derive(Debug, Clone, Copy)]
pub struct StockView {
    pub stock: Option<u64>,
    pub sold_out: bool,
    /// Wall-clock ms of the stock news applied last.
    pub at_ms: u64,
}

impl StockView {
    /// Whether the room already says what `stock` says.
    pub fn says(&self, stock: crate::checkout::Stock) -> bool {
        match stock {
            crate::checkout::Stock::Left(n) => self.stock == Some(n),
            crate::checkout::Stock::SoldOut => self.sold_out,
        }
    }
}

fn promoter_rate() -> Reason {
    Reason::PromoterRate
}

impl Snapshot {
    /// The rate the drip admits at (the promoter's from a replica too old
    /// to say).
    pub fn admit_rate(&self) -> u64 {
        match self.effective_rate_per_min {
            0 => self.admit_rate_per_min,
            n => n,
        }
    }

    /// The checkout's health limits the rate (`rate_reason`).
    pub fn checkout_slow(&self) -> bool {
        self.rate_reason != Reason::PromoterRate
    }

    /// Closed to everyone not already let in: by the promoter, or sold out.
    pub fn shut(&self) -> bool {
        self.closed || self.sold_out
    }

    /// Every checkout slot is taken (`max_active` reached).
    pub fn checkout_full(&self) -> bool {
        self.max_active
            .is_some_and(|cap| self.active_sessions + self.called_unclaimed >= cap)
    }
}

/// How long a rate cut is named as the reason for longer waits.
const RATE_CUT_NOTICE_MS: Millis = 60_000;

/// A live admitted session (keyed by its place's sequence number).
#[derive(Debug)]
pub struct Session {
    pub vid: String,
    /// When `session_max_secs` ends it, whatever the activity.
    pub max_end_ms: Millis,
    pub last_active_ms: AtomicU64,
    /// The claim's retry key and when the claim was made, if the claimant
    /// presented one (see [`RetryKey`]).
    pub retry: Option<(RetryKey, Millis)>,
    /// The session's signed admission for the checkout, once signed.
    pub admission: crate::admission::Kept,
}

/// How long after a claim the same claimant may ask again and get the same
/// grant (its first answer was lost on the way).
pub const CLAIM_RETRY_WINDOW_MS: Millis = 30_000;

/// What tells a claimant who lost the answer to its claim from someone who
/// merely copied the queue token: a digest of the claim's
/// `Idempotency-Key` (apps) or of the claim-key cookie the gateway set in
/// the fan's browser before the claim (`gate`). Anyone holding a copy of
/// the queue token alone has neither, so a repeated claim without the same
/// key is refused as a place already used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryKey(String);

impl RetryKey {
    /// The key for what the client presented (any text; only its digest is kept).
    pub fn of(presented: &str) -> RetryKey {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, presented.as_bytes());
        let mut hex = String::with_capacity(32);
        for b in &d.as_ref()[..16] {
            hex.push_str(&format!("{b:02x}"));
        }
        RetryKey(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The outcome of checking an access token against the live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// Go through; the session (sliding on activity) now ends in `ends_in_secs`.
    Live { ends_in_secs: u64 },
    /// The session ran out (idle or `session_max_secs`).
    Ended,
    /// The token's visitor does not hold this session.
    Foreign,
}

/// A granted access session.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub seq: u64,
    pub session_started_wall: u64,
    pub expires_wall: u64,
    /// False for the same claim answered again (a shared store's reply
    /// lost on the way): not a second admission.
    pub first: bool,
}

/// The line's in-memory state, under [`Core`]'s one short lock.
pub(crate) struct State {
    pub(crate) queue: Queue,
    pub(crate) drip: Drip,
    /// The progress last made durable (embedded line).
    pub(crate) last_progress: (u64, u64, u64),
}

pub(crate) fn session_end(s: &Session, session_secs: u64) -> Millis {
    let idle_end = s.last_active_ms.load(Ordering::Relaxed) + session_secs * 1000;
    idle_end.min(s.max_end_ms)
}

pub(crate) fn new_epoch() -> u64 {
    // Random, not a counter: lost state must never restart at an epoch that
    // old tokens still carry.
    rand::random::<u64>() >> 11 | 1
}

pub(crate) fn snapshot_of(
    id: &str,
    q: &Queue,
    upstream_healthy: bool,
    seed: Option<&Seed>,
) -> Snapshot {
    Snapshot {
        room: id.to_string(),
        epoch: q.epoch(),
        serving: q.serving(),
        issued: q.next_seq() - 1,
        queue_length: q.queue_length(),
        admit_rate_per_min: q.settings.admit_rate_per_min,
        max_active: q.settings.max_active,
        active_sessions: q.active_sessions(),
        called_unclaimed: q.pending_count(),
        admitted_total: q.admitted_total(),
        paused: q.settings.paused,
        closed: q.settings.closed,
        stock: q.settings.stock,
        sold_out: q.settings.sold_out,
        stock_at_ms: q.settings.stock_at_ms,
        noshows_total: q.noshows_total(),
        effective_rate_per_min: q.admit_rate(),
        rate_reason: q.rate_reason(),
        queue: q.settings.queue,
        session_secs: q.settings.session_secs,
        session_max_secs: q.settings.session_max_secs,
        claim_grace_secs: q.settings.claim_grace_secs,
        upstream_healthy,
        observed_advance_per_min: q
            .observed_advance_per_min()
            .map(|r| (r * 10.0).round() / 10.0),
        paces: q.paces(),
        rate_lowered_recently: false,
        open: q.is_open(),
        opens_at: q.settings.opens_at,
        closes_at: q.settings.closes_at,
        commitment: seed.map(Seed::commitment),
        revealed_seed: seed.filter(|_| q.is_open()).map(Seed::to_hex),
        shuffled: q.shuffled().cloned(),
    }
}

/// What both kinds of line keep in this process for a room: the queue and
/// drip (the embedded line's own, or the shared line's mirror of Redis),
/// the live sessions, the published snapshot and the health marks.
pub struct Core {
    pub id: String,
    pub clock: Clock,
    state: std::sync::Mutex<State>,
    pub(crate) sessions: DashMap<u64, Session>,
    snapshot: watch::Sender<Snapshot>,
    headline: watch::Sender<Headline>,
    upstream_hold_ms: Millis,
    /// Monotonic ms + 1 of the last upstream failure; 0 = none.
    upstream_failed_at: AtomicU64,
    /// Monotonic ms + 1 of the last admin rate cut; 0 = none.
    rate_lowered_at: AtomicU64,
    /// The pre-queue shuffle seed (secret until opening).
    pub(crate) seed: std::sync::Mutex<Option<Seed>>,
}

impl Core {
    pub(crate) fn new(
        id: String,
        clock: Clock,
        queue: Queue,
        seed: Option<Seed>,
        upstream_hold: Duration,
    ) -> Arc<Core> {
        let now = clock.mono_ms();
        let last_progress = (queue.serving(), queue.durable_floor(), queue.next_seq() - 1);
        let first = snapshot_of(&id, &queue, true, seed.as_ref());
        let (headline, _) = watch::channel(Headline::of(&first));
        let (snapshot, _) = watch::channel(first);
        Arc::new(Core {
            id,
            clock,
            state: std::sync::Mutex::new(State {
                queue,
                drip: Drip::new(now),
                last_progress,
            }),
            sessions: DashMap::new(),
            snapshot,
            headline,
            upstream_hold_ms: upstream_hold.as_millis() as Millis,
            upstream_failed_at: AtomicU64::new(0),
            rate_lowered_at: AtomicU64::new(0),
            seed: std::sync::Mutex::new(seed),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in pure code; the
        // state is still consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// The session idle window now, without copying the whole snapshot
    /// (every admitted request reads it).
    pub fn session_secs(&self) -> u64 {
        self.snapshot.borrow().session_secs
    }

    /// What the room says of its stock now, without copying the snapshot
    /// (a checkout may report the stock in every answer).
    pub fn stock_view(&self) -> StockView {
        let snap = self.snapshot.borrow();
        StockView {
            stock: snap.stock,
            sold_out: snap.sold_out,
            at_ms: snap.stock_at_ms,
        }
    }

    /// The promoter's rate now.
    pub fn promoter_rate(&self) -> u64 {
        self.snapshot.borrow().admit_rate_per_min
    }

    /// Limits the drip's rate as the checkout's health says: `limit` maps
    /// the promoter's rate to the allowed one and why (`None`: no limit).
    /// In force from the next tick; a leader's drip publishes it.
    pub fn limit_rate(&self, limit: impl FnOnce(u64) -> (u64, Option<Reason>)) {
        let mut st = self.lock();
        let (rate, reason) = limit(st.queue.settings.admit_rate_per_min);
        st.queue.set_checkout_limit(reason.map(|r| (rate, r)));
    }

    /// The session windows and the epoch now, in one look.
    pub(crate) fn session_view(&self) -> (u64, u64, u64) {
        let snap = self.snapshot.borrow();
        (snap.session_secs, snap.session_max_secs, snap.epoch)
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    /// Changes of the room's [`Headline`] alone (published after the
    /// snapshot that carries them).
    pub fn subscribe_headline(&self) -> watch::Receiver<Headline> {
        self.headline.subscribe()
    }

    pub fn epoch(&self) -> u64 {
        self.snapshot.borrow().epoch
    }

    pub(crate) fn upstream_hold_ms(&self) -> Millis {
        self.upstream_hold_ms
    }

    pub fn upstream_healthy(&self, now: Millis) -> bool {
        let failed = self.upstream_failed_at.load(Ordering::Relaxed);
        failed == 0 || now + 1 >= failed + self.upstream_hold_ms
    }

    /// The upstream failed here: the drip holds for a while.
    pub(crate) fn note_upstream_failure(&self) {
        self.upstream_failed_at
            .store(self.clock.mono_ms() + 1, Ordering::Relaxed);
    }

    /// Holds the drip until `end` (monotonic ms): another replica saw the
    /// upstream fail and the hold it started has that long to run.
    pub(crate) fn hold_upstream_until(&self, end: Millis) {
        let failed = end.saturating_sub(self.upstream_hold_ms) + 1;
        self.upstream_failed_at.fetch_max(failed, Ordering::Relaxed);
    }

    /// An admin change of the rate from `before` to `after`: a cut is
    /// named in ETAs for a while.
    pub(crate) fn note_rate_change(&self, before: u64, after: u64) {
        if after < before {
            self.note_rate_cut();
        }
    }

    /// The admin lowered the rate: ETAs name the cut for a while.
    fn note_rate_cut(&self) {
        self.rate_lowered_at
            .store(self.clock.mono_ms() + 1, Ordering::Relaxed);
    }

    /// Publishes a snapshot made elsewhere (a shared room's published state).
    pub(crate) fn publish_snapshot(&self, mut snap: Snapshot) {
        let now = self.clock.mono_ms();
        let lowered = self.rate_lowered_at.load(Ordering::Relaxed);
        snap.rate_lowered_recently |= lowered != 0 && now + 1 < lowered + RATE_CUT_NOTICE_MS;
        let headline = Headline::of(&snap);
        self.snapshot.send_if_modified(|s| {
            if *s != snap {
                *s = snap;
                true
            } else {
                false
            }
        });
        self.headline.send_if_modified(|h| {
            let changed = *h != headline;
            *h = headline;
            changed
        });
    }

    /// Opens the session of a claim the line has made durable (`first`
    /// false: the same claim answered again): the one rule for both lines.
    pub(crate) fn open_session(
        &self,
        (seq, vid, retry): (u64, &str, Option<&RetryKey>),
        now: Millis,
        (session_secs, session_max_secs): (u64, u64),
        first: bool,
    ) -> Grant {
        self.sessions.insert(
            seq,
            Session {
                vid: vid.to_string(),
                max_end_ms: now + session_max_secs * 1000,
                last_active_ms: AtomicU64::new(now),
                retry: retry.map(|k| (k.clone(), now)),
                admission: Default::default(),
            },
        );
        let wall = self.clock.wall_secs();
        Grant {
            first,
            seq,
            session_started_wall: wall,
            expires_wall: wall + session_secs.min(session_max_secs),
        }
    }

    /// Takes back a session the line found lasting (after a restart, or
    /// held on another replica) until `max_end_ms`. True when it was not
    /// held here already.
    pub(crate) fn resume_session(
        &self,
        seq: u64,
        vid: &str,
        now: Millis,
        max_end_ms: Millis,
        session_secs: u64,
    ) -> (SessionCheck, bool) {
        let registered = self
            .sessions
            .insert(
                seq,
                Session {
                    vid: vid.to_string(),
                    max_end_ms,
                    last_active_ms: AtomicU64::new(now),
                    retry: None,
                    admission: Default::default(),
                },
            )
            .is_none();
        let end = (now + session_secs * 1000).min(max_end_ms);
        let live = SessionCheck::Live {
            ends_in_secs: end.saturating_sub(now) / 1000,
        };
        (live, registered)
    }

    pub(crate) fn publish(&self, q: &Queue, now: Millis) {
        self.publish_snapshot(self.snapshot_for(q, now));
    }

    /// What readers would see of `q` now (not yet published).
    pub(crate) fn snapshot_for(&self, q: &Queue, now: Millis) -> Snapshot {
        let seed = self.seed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        snapshot_of(&self.id, q, self.upstream_healthy(now), seed.as_ref())
    }
}

/// A line's answer to come: boxed, so rooms hold either line behind one
/// `Arc<dyn Line>`.
pub type LineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RoomError>> + Send + 'a>>;

/// What a room asks of the line it is kept in. Each call acts on the
/// line's [`Core`] (the one the line was opened with) as well as on the
/// store behind it.
pub trait Line: Send + Sync {
    /// The next place: `(epoch, seq, called)`; `called` when an
    /// `over_capacity` room had room to spare and called it at once.
    fn arrive(self: Arc<Self>) -> LineFuture<'static, (u64, u64, bool)>;

    /// A sign of life from `seq`'s fan; where the place stands.
    fn touch(&self, epoch: u64, seq: u64) -> LineFuture<'_, Place>;

    /// Where `seq` stands, without counting it as a sign of life.
    fn place(&self, epoch: u64, seq: u64) -> LineFuture<'_, Place>;

    /// Exchanges a called place for a session, once (or the same grant
    /// again for the claimant who presents the same `retry` key).
    fn claim<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        vid: &'a str,
        retry: Option<&'a RetryKey>,
    ) -> LineFuture<'a, Grant>;

    /// A session this process does not hold live (a restart, a session
    /// swept here, or one held on another replica): its check from what
    /// the line keeps. `session_started_wall` is the token's.
    fn find_session<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        vid: &'a str,
        session_started_wall: u64,
    ) -> LineFuture<'a, SessionCheck>;

    /// A live session in this process saw activity (the shared line
    /// writes it back for the other replicas).
    fn session_active(&self, seq: u64);

    /// The checkout ended `seq`'s session: it never resumes, on any
    /// replica or after a restart, and its `max_active` slot is free at
    /// the next count. True when a session was ended (once).
    fn end_session(&self, epoch: u64, seq: u64) -> LineFuture<'_, bool>;

    /// Marks a solved proof-of-work challenge as used, across the line.
    /// `Ok(false)`: it had been used already. `None` from a line that
    /// leaves it to the process (one process, one memory).
    fn spend_pow<'a>(&'a self, nonce: &'a str, expires: u64) -> Option<LineFuture<'a, bool>>;

    /// Applies an admin change; durable before it returns.
    fn update_settings<'a>(
        &'a self,
        change: &'a (dyn Fn(&mut Settings) + Send + Sync),
    ) -> LineFuture<'a, Settings>;

    /// Starts the room over in a new epoch: every earlier token is void.
    fn reset(&self) -> LineFuture<'_, u64>;

    /// At shutdown: makes what is in memory durable and lets go.
    fn flush(&self) -> LineFuture<'_, ()>;

    /// One drip step of the process's ticker (about ten a second); what it
    /// did, for the metrics. `sweep_sessions` about once a second.
    fn tick(self: Arc<Self>, sweep_sessions: bool) -> TickReport;

    /// Work the line runs on its own until `stop` (the shared line's drip
    /// lease and session write-back); none for the embedded line.
    fn run(
        self: Arc<Self>,
        tick: Duration,
        stop: watch::Receiver<bool>,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>>;

    /// The upstream failed here; the line tells the other replicas.
    fn upstream_failed(&self);

    /// Requests pass unqueued (the shared store is down and the room is
    /// set to fail open).
    fn bypass(&self) -> bool;

    /// The store behind the line answers.
    fn healthy(&self) -> bool;

    /// This process drives the drip.
    fn leading(&self) -> bool;
}
