//! A room at run time: the pure queue and drip under one short lock, the
//! live sessions, the store, and a `watch` snapshot that readers (status,
//! metrics, later SSE) take without touching the lock.
//!
//! Locking: the queue lock is held only for in-memory work (microseconds);
//! every store write happens outside it. Sessions live in a `DashMap` so the
//! admitted hot path (verify token → look up session) takes no room-wide lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::watch;

use crate::batch::Batch;
use crate::config::{QueueMode, RoomConfig};
use crate::drip::{Drip, TickReport};
use crate::queue::{ClaimError, Millis, Place, Queue, Settings, Shuffled};
use crate::shuffle::{self, Seed};
use crate::store::redis::Shared;
use crate::store::{Record, Store, StoreError};

/// Time for the whole process: monotonic for the queue, wall for tokens.
/// The system's, or (for tests) a [`ManualTime`] that moves only when told,
/// so time-dependent room behaviour is tested without sleeping.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: TimeSource,
}

#[derive(Debug, Clone, Copy)]
enum TimeSource {
    System { start: Instant },
    Manual(&'static ManualTime),
}

/// A clock's time that moves only by [`ManualTime::advance`].
#[derive(Debug)]
pub struct ManualTime {
    /// Milliseconds since the clock was made.
    elapsed_ms: AtomicU64,
    /// Wall-clock milliseconds when it was made.
    wall_start_ms: u64,
}

impl ManualTime {
    pub fn advance(&self, by: Duration) {
        self.elapsed_ms
            .fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            source: TimeSource::System {
                start: Instant::now(),
            },
        }
    }
}

impl Clock {
    /// A clock that stands still until its [`ManualTime`] is advanced,
    /// starting at the system's wall time. For tests: each one lives as
    /// long as the process (a few bytes), so that `Clock` stays `Copy`.
    pub fn manual() -> (Clock, &'static ManualTime) {
        let wall_start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let time: &'static ManualTime = Box::leak(Box::new(ManualTime {
            elapsed_ms: AtomicU64::new(0),
            wall_start_ms,
        }));
        (
            Clock {
                source: TimeSource::Manual(time),
            },
            time,
        )
    }

    /// Monotonic milliseconds, counted from a day before the process
    /// started, so times from before a restart (a shared line's calls and
    /// misses) stay representable.
    pub fn mono_ms(&self) -> Millis {
        MONO_BASE_MS
            + match self.source {
                TimeSource::System { start } => start.elapsed().as_millis() as Millis,
                TimeSource::Manual(t) => t.elapsed_ms.load(Ordering::Acquire),
            }
    }

    pub fn wall_secs(&self) -> u64 {
        match self.source {
            TimeSource::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            TimeSource::Manual(t) => {
                (t.wall_start_ms + t.elapsed_ms.load(Ordering::Acquire)) / 1000
            }
        }
    }
}

/// Where the monotonic clock starts (see [`Clock::mono_ms`]).
const MONO_BASE_MS: Millis = 86_400_000;

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
    pub closed: bool,
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
    pub admit_rate_per_min: u64,
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
            admit_rate_per_min: s.admit_rate_per_min,
            rate_lowered_recently: s.rate_lowered_recently,
            upstream_healthy: s.upstream_healthy,
            checkout_full: s.checkout_full(),
        }
    }
}

impl Snapshot {
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

/// What an embedded claim does once the line has answered.
enum ClaimStep {
    /// Granted in the line: write it (the sender closes the pending mark).
    Write(watch::Sender<()>, u64),
    /// The same claimant's claim is being written: wait for it.
    Wait(watch::Receiver<()>),
    /// Claimed already: the same grant again, or refused.
    Repeat,
}

/// A claim granted in the line, its journal write in flight.
struct PendingClaim {
    vid: String,
    retry: Option<RetryKey>,
    /// Closed (its sender dropped) once the write is done either way.
    written: watch::Receiver<()>,
}

impl PendingClaim {
    /// The same visitor with the same claim key: the claimant again.
    fn is_by(&self, vid: &str, retry: Option<&RetryKey>) -> bool {
        self.vid == vid && retry.is_some() && self.retry.as_ref() == retry
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

pub(crate) struct State {
    pub(crate) queue: Queue,
    pub(crate) drip: Drip,
    last_progress: (u64, u64, u64),
}

/// Where the room's line is kept.
pub(crate) enum Backend {
    /// This process alone, durable in a local store.
    Local(Arc<dyn Store>),
    /// Shared by every replica through Redis (see `store::redis`).
    Shared(Arc<Shared>),
}

pub struct Room {
    pub config: RoomConfig,
    pub clock: Clock,
    state: std::sync::Mutex<State>,
    pub(crate) sessions: DashMap<u64, Session>,
    pub(crate) backend: Backend,
    snapshot: watch::Sender<Snapshot>,
    headline: watch::Sender<Headline>,
    /// Arrivals that found the reserved numbers used up, waiting together
    /// for the one reservation write that covers them all (and the
    /// low-water reservation made ahead of need).
    reservations: Arc<Batch<(), RoomError>>,
    /// A reservation ahead of need is on its way: one at a time, however
    /// many arrivals see the numbers running low before it starts.
    reserving_ahead: AtomicBool,
    /// Held by the one reservation write in flight (an epoch's first
    /// reservation is made outside the batch).
    reserving: tokio::sync::Mutex<()>,
    /// Claims granted in the line whose journal write is still in flight.
    /// A browser asks for its page and its favicon at once with the same
    /// place and claim key: the second waits here for the first instead of
    /// finding the place taken and no session yet.
    claiming: DashMap<u64, PendingClaim>,
    seq_block: u64,
    upstream_hold_ms: Millis,
    /// Monotonic ms + 1 of the last upstream failure; 0 = none.
    upstream_failed_at: AtomicU64,
    /// Monotonic ms + 1 of the last admin rate cut; 0 = none.
    rate_lowered_at: AtomicU64,
    /// The pre-queue shuffle seed (secret until opening).
    pub(crate) seed: std::sync::Mutex<Option<Seed>>,
    /// An opening or closing is being made durable.
    scheduling: AtomicBool,
    /// A progress record is being written (the next waits for it).
    progress_writing: AtomicBool,
    /// Set by `flush` at shutdown: no further number may be handed out.
    sealed: AtomicBool,
    /// Tick reports of a shared room not yet counted in the metrics.
    unreported: std::sync::Mutex<TickReport>,
    /// Sessions live before a restart, not re-registered yet: they keep
    /// their `max_active` slots until `restored_until` (idle sessions have
    /// ended by then; live ones have shown up again).
    restored_active: u64,
    restored_until: AtomicU64,
    reregistered: AtomicU64,
}

impl Room {
    /// Opens a room from what the store kept, or starts its first epoch.
    pub async fn open(
        config: RoomConfig,
        store: Arc<dyn Store>,
        clock: Clock,
        seq_block: u64,
        upstream_hold: Duration,
    ) -> Result<Arc<Room>, RoomError> {
        let now = clock.mono_ms();
        let configured = Settings::from_config(&config);
        let queue = match store.load(&config.id).await? {
            Some(d) if d.epoch != 0 => {
                let mut settings = d.settings.clone().unwrap_or_else(|| configured.clone());
                // Fields the admin API cannot change always follow the file.
                settings.queue = configured.queue;
                settings.claim_grace_secs = configured.claim_grace_secs;
                settings.abandon_after_secs = configured.abandon_after_secs;
                settings.rejoin_secs = configured.rejoin_secs;
                settings.session_max_secs = configured.session_max_secs.max(settings.session_secs);
                if d.settings.as_ref().is_some_and(|s| *s != configured) {
                    tracing::info!(room = %config.id, ?settings, "admin changes from before the restart stay in effect");
                }
                let seed = match &d.shuffle_seed {
                    Some(hex) => Some(Seed::from_hex(hex).map_err(|e| {
                        RoomError::Store(StoreError::Corrupt(format!(
                            "room {}: shuffle seed: {e}",
                            config.id
                        )))
                    })?),
                    None => None,
                };
                let order = match (d.opened_entries, &seed) {
                    (Some(0), _) => Some(Vec::new()),
                    (Some(n), Some(seed)) => {
                        Some(shuffle::order(seed, u32::try_from(n).unwrap_or(u32::MAX)))
                    }
                    (Some(_), None) => {
                        return Err(RoomError::Store(StoreError::Corrupt(format!(
                            "room {} opened a pre-queue but its seed is missing",
                            config.id
                        ))));
                    }
                    (None, _) => None,
                };
                (Queue::restore(&d, settings, order, now), seed)
            }
            _ => {
                let epoch = new_epoch();
                store
                    .write(Record::Epoch {
                        room: config.id.clone(),
                        epoch,
                    })
                    .await?;
                (Queue::new(epoch, configured), None)
            }
        };
        let (queue, seed) = queue;
        // A scheduled room fixes (and commits to) its seed before anyone queues.
        let seed = match seed {
            Some(s) => Some(s),
            None if !queue.is_open() => {
                let s = Seed::random();
                store
                    .write(Record::Seed {
                        room: config.id.clone(),
                        epoch: queue.epoch(),
                        seed: s.to_hex(),
                    })
                    .await?;
                Some(s)
            }
            None => None,
        };
        let room = Room::assemble(
            config,
            clock,
            queue,
            seed,
            Backend::Local(store),
            seq_block,
            upstream_hold,
        );
        room.reserve_more(0).await?;
        Ok(room)
    }

    /// A room around a queue: everything but the backend's own set-up.
    pub(crate) fn assemble(
        config: RoomConfig,
        clock: Clock,
        queue: Queue,
        seed: Option<Seed>,
        backend: Backend,
        seq_block: u64,
        upstream_hold: Duration,
    ) -> Arc<Room> {
        let now = clock.mono_ms();
        let restored_active = queue.active_sessions();
        let last_progress = (queue.serving(), queue.durable_floor(), queue.next_seq() - 1);
        let config_session_ms = queue.settings.session_secs * 1000;
        let first = snapshot_of(&config.id, &queue, true, seed.as_ref());
        let (headline, _) = watch::channel(Headline::of(&first));
        let (snapshot, _) = watch::channel(first);
        Arc::new(Room {
            config,
            clock,
            state: std::sync::Mutex::new(State {
                queue,
                drip: Drip::new(now),
                last_progress,
            }),
            sessions: DashMap::new(),
            backend,
            snapshot,
            headline,
            reservations: Arc::new(Batch::new()),
            reserving_ahead: AtomicBool::new(false),
            reserving: tokio::sync::Mutex::new(()),
            claiming: DashMap::new(),
            seq_block,
            upstream_hold_ms: upstream_hold.as_millis() as Millis,
            upstream_failed_at: AtomicU64::new(0),
            rate_lowered_at: AtomicU64::new(0),
            seed: std::sync::Mutex::new(seed),
            scheduling: AtomicBool::new(false),
            progress_writing: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            restored_until: AtomicU64::new(now + config_session_ms),
            restored_active,
            reregistered: AtomicU64::new(0),
            unreported: std::sync::Mutex::new(TickReport::default()),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in pure code; the
        // state is still consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// The session idle window now, without copying the whole snapshot
    /// (every admitted request reads it).
    pub fn session_secs(&self) -> u64 {
        self.snapshot.borrow().session_secs
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

    pub fn upstream_healthy(&self, now: Millis) -> bool {
        let failed = self.upstream_failed_at.load(Ordering::Relaxed);
        failed == 0 || now + 1 >= failed + self.upstream_hold_ms
    }

    /// The proxy reports a failed upstream exchange: the drip holds for a
    /// while (on every replica, when the line is shared).
    pub fn note_upstream_failure(&self) {
        self.note_upstream_failure_local();
        if let Backend::Shared(sh) = &self.backend {
            sh.note_upstream_failure(self.id(), self.clock.mono_ms(), self.upstream_hold_ms);
        }
    }

    pub(crate) fn note_upstream_failure_local(&self) {
        self.upstream_failed_at
            .store(self.clock.mono_ms() + 1, Ordering::Relaxed);
    }

    /// Holds the drip until `end` (monotonic ms): another replica saw the
    /// upstream fail and the hold it started has that long to run.
    pub(crate) fn hold_upstream_until(&self, end: Millis) {
        let failed = end.saturating_sub(self.upstream_hold_ms) + 1;
        self.upstream_failed_at.fetch_max(failed, Ordering::Relaxed);
    }

    pub(crate) fn note_rate_cut(&self) {
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

    /// Adds a shared room's tick to what the metrics have not seen yet.
    pub(crate) fn record_tick(&self, r: TickReport) {
        let mut acc = self.unreported.lock().unwrap_or_else(|p| p.into_inner());
        acc.called += r.called;
        acc.skipped += r.skipped;
        acc.noshows += r.noshows;
    }

    /// Whether requests pass unqueued (shared store down, `on_store_failure = "open"`).
    pub fn bypass(&self) -> bool {
        matches!(&self.backend, Backend::Shared(sh) if sh.bypass())
    }

    /// Whether the store behind this room answers.
    pub fn store_healthy(&self) -> bool {
        match &self.backend {
            Backend::Local(store) => store.healthy(),
            Backend::Shared(sh) => sh.healthy(),
        }
    }

    /// Whether this replica drives the drip (always, for a local room).
    pub fn leading(&self) -> bool {
        match &self.backend {
            Backend::Local(_) => true,
            Backend::Shared(sh) => sh.leading(),
        }
    }

    pub(crate) fn publish(&self, q: &Queue, now: Millis) {
        self.publish_snapshot(self.snapshot_for(q, now));
    }

    /// What readers would see of `q` now (not yet published).
    pub(crate) fn snapshot_for(&self, q: &Queue, now: Millis) -> Snapshot {
        let seed = self.seed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        snapshot_of(
            &self.config.id,
            q,
            self.upstream_healthy(now),
            seed.as_ref(),
        )
    }

    /// Gives an arrival the next place. In `over_capacity` rooms with room
    /// to spare the place is called at once (`called == true`).
    ///
    /// An arrival that finds the reserved numbers used up waits for the
    /// next reservation, at most [`RESERVE_TIMEOUT`] in all; that
    /// reservation covers every arrival waiting, so a burst costs a store
    /// write per write-time of arrivals, not one per block.
    pub async fn arrive(self: &Arc<Self>) -> Result<(u64, u64, bool), RoomError> {
        if let Backend::Shared(sh) = &self.backend {
            return sh.arrive(self).await;
        }
        let deadline = tokio::time::Instant::now() + RESERVE_TIMEOUT;
        loop {
            let now = self.clock.mono_ms();
            let healthy = self.upstream_healthy(now);
            let issued = {
                let mut st = self.lock();
                let st = &mut *st;
                if st.queue.settings.closed {
                    return Err(RoomError::Closed);
                }
                let epoch = st.queue.epoch();
                let outcome = if let Some(seq) = st.drip.admit_arrival(&mut st.queue, now, healthy)
                {
                    Some((epoch, seq, true))
                } else {
                    st.queue.try_issue(now).map(|seq| (epoch, seq, false))
                };
                if outcome.is_some() {
                    self.publish(&st.queue, now);
                }
                outcome.map(|o| (o, st.queue.reserved_left() < self.seq_block / 4 + 1))
            };
            match issued {
                Some((outcome, low)) => {
                    if low {
                        self.reserve_in_background();
                    }
                    return Ok(outcome);
                }
                None => {
                    if self.sealed.load(Ordering::Acquire) {
                        return Err(RoomError::ShuttingDown);
                    }
                    // Every arrival that finds the numbers used up waits for
                    // the same write, which reserves for all of them.
                    // (Queueing on the reservation lock instead handed it
                    // from waiter to waiter, one task wake-up each: the
                    // 10,000 waiting in a burst took over 5 s to pass it,
                    // with numbers to spare.)
                    tokio::time::timeout_at(deadline, self.reserve_for_waiting())
                        .await
                        .map_err(|_| RoomError::StoreTimeout)??;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RoomError::StoreTimeout);
            }
        }
    }

    /// Joins the next reservation, made once for every arrival waiting
    /// (see [`Batch`]), in a task of its own: no arrival's deadline or
    /// vanished client can cancel the write halfway and leave the others
    /// waiting for nothing.
    async fn reserve_for_waiting(self: &Arc<Self>) -> Result<(), RoomError> {
        let room = self.clone();
        self.reservations
            .join(
                move |waiting| {
                    let room = room.clone();
                    async move {
                        room.reserve_more(waiting as u64).await?;
                        Ok(vec![(); waiting])
                    }
                },
                RoomError::Store(StoreError::Io("the reservation gave no answer".into())),
            )
            .await
    }

    /// Reserves ahead of need (the reserved numbers are running low), unless
    /// a reservation is on its way already.
    fn reserve_in_background(self: &Arc<Self>) {
        if self.reservations.busy() || self.reserving_ahead.swap(true, Ordering::AcqRel) {
            return;
        }
        let room = self.clone();
        tokio::spawn(async move {
            if let Err(e) = room.reserve_for_waiting().await {
                tracing::warn!(room = %room.config.id, error = %e, "sequence reservation failed");
            }
            room.reserving_ahead.store(false, Ordering::Release);
        });
    }

    /// Durably reserves more sequence numbers when the reserved ones are
    /// running low: a block, plus one for each of the `waiting` arrivals.
    /// Serialised so concurrent callers reserve once.
    pub async fn reserve_more(&self, waiting: u64) -> Result<(), RoomError> {
        let Backend::Local(store) = &self.backend else {
            return Ok(());
        };
        let _only_one = self.reserving.lock().await;
        let (epoch, upto) = {
            let st = self.lock();
            if self.sealed.load(Ordering::Acquire) {
                return Err(RoomError::ShuttingDown);
            }
            if st.queue.reserved_left() > self.seq_block / 4 {
                return Ok(());
            }
            let upto = st.queue.reserved_upto() + self.seq_block + waiting;
            (st.queue.epoch(), upto)
        };
        let started = std::time::Instant::now();
        store
            .write(Record::Reserve {
                room: self.config.id.clone(),
                epoch,
                upto,
            })
            .await?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(room = %self.config.id, upto, waiting, ms, "sequence numbers reserved");
        let mut st = self.lock();
        if st.queue.epoch() == epoch && !self.sealed.load(Ordering::Acquire) {
            st.queue.extend_reservation(upto);
        }
        Ok(())
    }

    /// A sign of life from `seq`'s fan (holding a token of `epoch`);
    /// returns where the place stands. A place of another epoch is unknown.
    pub async fn touch(&self, epoch: u64, seq: u64) -> Result<Place, RoomError> {
        if let Backend::Shared(sh) = &self.backend {
            return sh.touch(self, epoch, seq).await;
        }
        let now = self.clock.mono_ms();
        let mut st = self.lock();
        if st.queue.epoch() != epoch {
            return Ok(Place::Unknown);
        }
        let place = st.queue.touch(seq, now);
        if matches!(place, Place::Rejoining { .. }) {
            self.publish(&st.queue, now);
        }
        Ok(place)
    }

    /// Where `seq` stands, without counting it as a sign of life.
    pub async fn place(&self, epoch: u64, seq: u64) -> Result<Place, RoomError> {
        if let Backend::Shared(sh) = &self.backend {
            return sh.place(self, epoch, seq).await;
        }
        let now = self.clock.mono_ms();
        let st = self.lock();
        if st.queue.epoch() != epoch {
            return Ok(Place::Unknown);
        }
        Ok(st.queue.place(seq, now))
    }

    /// Exchanges a called place for an access session, once. The claim is
    /// durable before this returns `Ok`; if the store fails, the place is
    /// left called so the fan can try again.
    ///
    /// A place already claimed is refused, unless the same visitor asks
    /// again with the same `retry` key within [`CLAIM_RETRY_WINDOW_MS`]: then
    /// the answer is the same session again (`Grant::first` false).
    pub async fn claim(
        &self,
        epoch: u64,
        seq: u64,
        vid: &str,
        retry: Option<&RetryKey>,
    ) -> Result<Grant, RoomError> {
        let store = match &self.backend {
            Backend::Local(store) => store,
            Backend::Shared(sh) => return sh.claim(self, epoch, seq, vid, retry).await,
        };
        // The same claimant's claim still being written is waited for once;
        // then the place is either theirs (the same grant again) or, if the
        // write failed, called again and claimed here.
        let mut waited = false;
        loop {
            let now = self.clock.mono_ms();
            let step = {
                let mut st = self.lock();
                if st.queue.epoch() != epoch {
                    return Err(ClaimError::Unknown.into());
                }
                let step = match st.queue.claim(seq, now) {
                    Ok(()) => {
                        let (written_tx, written) = watch::channel(());
                        self.claiming.insert(
                            seq,
                            PendingClaim {
                                vid: vid.to_string(),
                                retry: retry.cloned(),
                                written,
                            },
                        );
                        self.publish(&st.queue, now);
                        ClaimStep::Write(written_tx, st.queue.settings.session_max_secs)
                    }
                    Err(ClaimError::AlreadyClaimed) => match self
                        .claiming
                        .get(&seq)
                        .filter(|p| !waited && p.is_by(vid, retry))
                    {
                        Some(p) => ClaimStep::Wait(p.written.clone()),
                        None => ClaimStep::Repeat,
                    },
                    Err(e) => return Err(e.into()),
                };
                (step, st.queue.settings.session_secs)
            };
            match step {
                (ClaimStep::Write(written_tx, session_max_secs), session_secs) => {
                    let grant = self
                        .write_claim(
                            store,
                            (epoch, seq, vid, retry),
                            now,
                            (session_secs, session_max_secs),
                        )
                        .await;
                    drop(written_tx);
                    return grant;
                }
                (ClaimStep::Wait(mut written), _) => {
                    // Err: the writer is done (its sender dropped).
                    let _ = written.changed().await;
                    waited = true;
                }
                (ClaimStep::Repeat, session_secs) => {
                    return self.repeat_grant(seq, vid, retry, now, session_secs);
                }
            }
        }
    }

    /// Makes a claim just granted in the line durable, then opens its
    /// session; a failed write leaves the place called again. Either way
    /// the claim is no longer pending when this returns.
    async fn write_claim(
        &self,
        store: &Arc<dyn Store>,
        (epoch, seq, vid, retry): (u64, u64, &str, Option<&RetryKey>),
        now: Millis,
        (session_secs, session_max_secs): (u64, u64),
    ) -> Result<Grant, RoomError> {
        let written = store
            .write(Record::Claim {
                room: self.config.id.clone(),
                epoch,
                seq,
            })
            .await;
        if let Err(e) = written {
            let mut st = self.lock();
            if st.queue.epoch() == epoch {
                st.queue.unclaim(seq, self.clock.mono_ms());
            }
            self.claiming.remove(&seq);
            return Err(e.into());
        }
        // The session before the pending mark goes: a repeat finds one or
        // the other.
        self.sessions.insert(
            seq,
            Session {
                vid: vid.to_string(),
                max_end_ms: now + session_max_secs * 1000,
                last_active_ms: AtomicU64::new(now),
                retry: retry.map(|k| (k.clone(), now)),
            },
        );
        self.claiming.remove(&seq);
        let wall = self.clock.wall_secs();
        Ok(Grant {
            first: true,
            seq,
            session_started_wall: wall,
            expires_wall: wall + session_secs.min(session_max_secs),
        })
    }

    /// A claim of a place already claimed: the same grant again for the
    /// claimant who made it (same visitor, same retry key, recently), else
    /// refused.
    fn repeat_grant(
        &self,
        seq: u64,
        vid: &str,
        retry: Option<&RetryKey>,
        now: Millis,
        session_secs: u64,
    ) -> Result<Grant, RoomError> {
        let refused = || RoomError::Claim(ClaimError::AlreadyClaimed);
        let (retry, s) = retry.zip(self.sessions.get(&seq)).ok_or_else(refused)?;
        let claimed_at = match &s.retry {
            Some((key, at)) if key == retry && s.vid == vid => *at,
            _ => return Err(refused()),
        };
        if now.saturating_sub(claimed_at) >= CLAIM_RETRY_WINDOW_MS
            || now >= session_end(&s, session_secs)
        {
            return Err(refused());
        }
        let wall = self.clock.wall_secs();
        let end = (now + session_secs * 1000).min(s.max_end_ms);
        Ok(Grant {
            first: false,
            seq,
            session_started_wall: wall.saturating_sub((now - claimed_at) / 1000),
            expires_wall: wall + (end - now) / 1000,
        })
    }

    /// Checks a verified access token against the live sessions and slides
    /// the session on activity. After a restart the session map is empty:
    /// a valid token for a claimed place re-registers its session.
    pub async fn check_session(
        &self,
        epoch: u64,
        seq: u64,
        vid: &str,
        session_started_wall: u64,
    ) -> Result<SessionCheck, RoomError> {
        if let Backend::Shared(sh) = &self.backend {
            return sh
                .check_session(self, epoch, seq, vid, session_started_wall)
                .await;
        }
        let now = self.clock.mono_ms();
        let (session_secs, session_max_secs, current) = {
            let snap = self.snapshot.borrow();
            (snap.session_secs, snap.session_max_secs, snap.epoch)
        };
        if current != epoch {
            return Ok(SessionCheck::Ended);
        }
        if let Some(s) = self.sessions.get(&seq) {
            if s.vid != vid {
                return Ok(SessionCheck::Foreign);
            }
            let end = session_end(&s, session_secs);
            if now >= end {
                return Ok(SessionCheck::Ended);
            }
            s.last_active_ms.store(now, Ordering::Relaxed);
            let new_end = session_end(&s, session_secs);
            return Ok(SessionCheck::Live {
                ends_in_secs: (new_end - now) / 1000,
            });
        }
        // Not in memory: a restart, or a session already swept as ended.
        let age_secs = self.clock.wall_secs().saturating_sub(session_started_wall);
        if age_secs >= session_max_secs || !self.lock().queue.is_claimed(seq) {
            return Ok(SessionCheck::Ended);
        }
        // What is left of session_max_secs, counted from the token's start
        // (not from this process's start, which may be more recent).
        let max_end_ms = now + (session_max_secs - age_secs) * 1000;
        let registered = self
            .sessions
            .insert(
                seq,
                Session {
                    vid: vid.to_string(),
                    max_end_ms,
                    last_active_ms: AtomicU64::new(now),
                    retry: None,
                },
            )
            .is_none();
        if registered && now < self.restored_until.load(Ordering::Relaxed) {
            self.reregistered.fetch_add(1, Ordering::Relaxed);
        }
        let end = (now + session_secs * 1000).min(max_end_ms);
        Ok(SessionCheck::Live {
            ends_in_secs: (end - now) / 1000,
        })
    }

    /// Sessions holding `max_active` slots: the live ones, plus those from
    /// before a restart that have not shown up again (until they would
    /// have ended anyway).
    fn active_sessions(&self, now: Millis) -> u64 {
        let live = self.sessions.len() as u64;
        if now < self.restored_until.load(Ordering::Relaxed) {
            live + self
                .restored_active
                .saturating_sub(self.reregistered.load(Ordering::Relaxed))
        } else {
            live
        }
    }

    /// One drip step: expire sessions, advance the line, publish, persist
    /// progress when it moved. Called about ten times a second. (A shared
    /// room is driven by `store::redis::run` instead: this only hands over what
    /// its ticks did, for the metrics.)
    pub fn tick(self: &Arc<Self>, sweep_sessions: bool) -> TickReport {
        let Backend::Local(store) = &self.backend else {
            return std::mem::take(&mut *self.unreported.lock().unwrap_or_else(|p| p.into_inner()));
        };
        let now = self.clock.mono_ms();
        self.follow_schedule(store);
        if sweep_sessions {
            let session_secs = self.snapshot.borrow().session_secs;
            self.sessions
                .retain(|_, s| now < session_end(s, session_secs));
        }
        let healthy = self.upstream_healthy(now);
        let (report, progress) = {
            let mut st = self.lock();
            let st = &mut *st;
            if sweep_sessions {
                st.queue.set_active_sessions(self.active_sessions(now));
            }
            let report = st.drip.tick(&mut st.queue, now, healthy);
            let progress = (
                st.queue.serving(),
                st.queue.durable_floor(),
                st.queue.next_seq() - 1,
            );
            let changed = progress != st.last_progress;
            if changed && sweep_sessions {
                st.last_progress = progress;
            }
            self.publish(&st.queue, now);
            (
                report,
                (changed && sweep_sessions).then_some((
                    st.queue.epoch(),
                    progress,
                    st.queue.active_sessions(),
                )),
            )
        };
        // One progress write at a time, so records land in order (the
        // latest floor holds); a skipped one is covered by the next sweep.
        if let Some((epoch, (serving, floor, issued), active)) = progress
            && !self.progress_writing.swap(true, Ordering::AcqRel)
        {
            let room = self.clone();
            let store = store.clone();
            tokio::spawn(async move {
                let record = Record::Progress {
                    room: room.config.id.clone(),
                    epoch,
                    serving,
                    floor,
                    issued,
                    active,
                };
                if let Err(e) = store.write(record).await {
                    tracing::warn!(room = %room.config.id, error = %e, "progress write failed");
                    // Written again at the next sweep.
                    room.lock().last_progress = (0, 0, 0);
                }
                room.progress_writing.store(false, Ordering::Release);
            });
        } else if progress.is_some() {
            self.lock().last_progress = (0, 0, 0);
        }
        report
    }

    /// Opens a scheduled room when its time comes (the pre-queue is cut at
    /// that moment and shuffled once the opening is durable) and closes it
    /// at `closes_at`.
    fn follow_schedule(self: &Arc<Self>, store: &Arc<dyn Store>) {
        let wall = self.clock.wall_secs();
        let (epoch, open, opens_at, closes_at, closed, issued) = {
            let st = self.lock();
            let s = &st.queue.settings;
            (
                st.queue.epoch(),
                st.queue.is_open(),
                s.opens_at,
                s.closes_at,
                s.closed,
                st.queue.next_seq() - 1,
            )
        };
        let due_open = !open && opens_at.is_some_and(|t| t <= wall);
        let due_close = open && !closed && closes_at.is_some_and(|t| t <= wall);
        if !(due_open || due_close) || self.scheduling.swap(true, Ordering::AcqRel) {
            return;
        }
        let room = self.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let result = if due_open {
                room.open_prequeue(&store, epoch, issued).await
            } else {
                room.update_settings(|s| s.closed = true).await.map(|_| {
                    tracing::info!(room = %room.id(), "closed at closes_at");
                })
            };
            if let Err(e) = result {
                tracing::error!(room = %room.id(), error = %e, "scheduled change failed; retrying");
            }
            room.scheduling.store(false, Ordering::Release);
        });
    }

    /// Shuffles the first `entries` places with the committed seed, after
    /// making the opening durable (a crash never draws twice).
    async fn open_prequeue(
        &self,
        store: &Arc<dyn Store>,
        epoch: u64,
        entries: u64,
    ) -> Result<(), RoomError> {
        let seed = self.seed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(seed) = seed else {
            return Err(RoomError::Store(StoreError::Corrupt(
                "no shuffle seed".into(),
            )));
        };
        store
            .write(Record::Opened {
                room: self.config.id.clone(),
                epoch,
                entries,
            })
            .await?;
        let order = shuffle::order(&seed, u32::try_from(entries).unwrap_or(u32::MAX));
        let mut st = self.lock();
        if st.queue.epoch() == epoch && st.queue.open_with(order) {
            self.publish(&st.queue, self.clock.mono_ms());
        }
        tracing::info!(room = %self.id(), entries, commitment = %seed.commitment(), "opened: pre-queue shuffled");
        Ok(())
    }

    /// Records a solved proof-of-work challenge as used: in the shared store
    /// when the line is shared, so one solution is accepted once across
    /// every replica; else in this process's `local` record. False: it had
    /// been used already.
    pub async fn spend_pow(
        &self,
        solved: &crate::pow::Solved,
        local: &crate::pow::Pow,
    ) -> Result<bool, RoomError> {
        match &self.backend {
            Backend::Local(_) => Ok(local.spend(solved)),
            Backend::Shared(sh) => sh.spend_once(self, &solved.nonce, solved.expires).await,
        }
    }

    /// Applies an admin change; durable before it returns.
    pub async fn update_settings(
        &self,
        change: impl Fn(&mut Settings),
    ) -> Result<Settings, RoomError> {
        let store = match &self.backend {
            Backend::Local(store) => store,
            Backend::Shared(sh) => return sh.update_settings(self, change).await,
        };
        let (epoch, settings) = {
            let mut st = self.lock();
            let mut s = st.queue.settings.clone();
            change(&mut s);
            if s.admit_rate_per_min < st.queue.settings.admit_rate_per_min {
                self.rate_lowered_at
                    .store(self.clock.mono_ms() + 1, Ordering::Relaxed);
            }
            s.session_max_secs = s.session_max_secs.max(s.session_secs);
            st.queue.settings = s.clone();
            self.publish(&st.queue, self.clock.mono_ms());
            (st.queue.epoch(), s)
        };
        store
            .write(Record::Settings {
                room: self.config.id.clone(),
                epoch,
                settings: settings.clone(),
            })
            .await?;
        Ok(settings)
    }

    /// Starts the room over in a new epoch: every earlier token is void.
    pub async fn reset(&self) -> Result<u64, RoomError> {
        let store = match &self.backend {
            Backend::Local(store) => store,
            Backend::Shared(sh) => return sh.reset(self).await,
        };
        let epoch = new_epoch();
        store
            .write(Record::Epoch {
                room: self.config.id.clone(),
                epoch,
            })
            .await?;
        // A scheduled room draws its new epoch's pre-queue with a new seed,
        // committed before anyone can take a place in that epoch.
        let scheduled = self.lock().queue.settings.opens_at.is_some();
        let seed = if scheduled {
            let s = Seed::random();
            store
                .write(Record::Seed {
                    room: self.config.id.clone(),
                    epoch,
                    seed: s.to_hex(),
                })
                .await?;
            Some(s)
        } else {
            None
        };
        let settings = {
            let now = self.clock.mono_ms();
            let mut st = self.lock();
            let settings = st.queue.settings.clone();
            *self.seed.lock().unwrap_or_else(|p| p.into_inner()) = seed;
            st.queue = Queue::new(epoch, settings.clone());
            st.drip = Drip::new(now);
            st.last_progress = (0, 0, 0);
            self.sessions.clear();
            self.restored_until.store(0, Ordering::Relaxed);
            self.publish(&st.queue, now);
            settings
        };
        store
            .write(Record::Settings {
                room: self.config.id.clone(),
                epoch,
                settings,
            })
            .await?;
        self.reserve_more(0).await?;
        Ok(epoch)
    }

    /// Writes the latest progress and gives back the unused reservation.
    /// Only for graceful shutdown, once no request can issue a number.
    pub async fn flush(&self) -> Result<(), RoomError> {
        let store = match &self.backend {
            Backend::Local(store) => store,
            Backend::Shared(sh) => return sh.flush(self).await,
        };
        let (epoch, serving, floor, issued, active) = {
            let mut st = self.lock();
            // Sealed under the lock: an arrival racing the shutdown can no
            // longer take a number at or above the released mark.
            self.sealed.store(true, Ordering::Release);
            st.queue.seal();
            (
                st.queue.epoch(),
                st.queue.serving(),
                st.queue.durable_floor(),
                st.queue.next_seq() - 1,
                st.queue.active_sessions(),
            )
        };
        store
            .write(Record::Progress {
                room: self.config.id.clone(),
                epoch,
                serving,
                floor,
                issued,
                active,
            })
            .await?;
        store
            .write(Record::Release {
                room: self.config.id.clone(),
                epoch,
                upto: issued + 1,
            })
            .await?;
        Ok(())
    }
}

fn session_end(s: &Session, session_secs: u64) -> Millis {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EnvOverrides};
    use crate::store::embedded::EmbeddedStore;

    fn room_config(extra: &str) -> RoomConfig {
        let text = format!(
            r#"
            [listen]
            public = "127.0.0.1:0"
            admin = "127.0.0.1:0"
            [admin]
            token = "change-me"
            [signing]
            keys = [{{ kid = "k1", secret = "0123456789abcdef0123456789abcdef" }}]
            [[rooms]]
            id = "r"
            upstream = "http://127.0.0.1:9"
            admit_rate_per_min = 600
            session_secs = 600
            session_max_secs = 1800
            {extra}
            "#
        );
        let config = Config::from_toml_str(&text, &EnvOverrides::default()).unwrap();
        config.rooms[0].clone()
    }

    /// A store holding what a crashed gateway left: places 1–4 issued,
    /// 1–3 called and claimed, with `active` sessions live at the crash.
    async fn crashed_store(dir: &std::path::Path, active: u64) -> (Arc<dyn Store>, u64) {
        let store = EmbeddedStore::open(dir).unwrap();
        let epoch = 99;
        let room = "r".to_string();
        let records = [
            Record::Epoch {
                room: room.clone(),
                epoch,
            },
            Record::Reserve {
                room: room.clone(),
                epoch,
                upto: 5,
            },
        ]
        .into_iter()
        .chain((1..=3).map(|seq| Record::Claim {
            room: room.clone(),
            epoch,
            seq,
        }))
        .chain([Record::Progress {
            room: room.clone(),
            epoch,
            serving: 3,
            floor: 3,
            issued: 4,
            active,
        }]);
        for r in records {
            store.write(r).await.unwrap();
        }
        (Arc::new(store), epoch)
    }

    async fn open(config: RoomConfig, store: Arc<dyn Store>) -> Arc<Room> {
        open_with(config, store, Clock::default()).await
    }

    async fn open_with(config: RoomConfig, store: Arc<dyn Store>, clock: Clock) -> Arc<Room> {
        Room::open(config, store, clock, 16, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// A fresh embedded room on a manual clock.
    async fn manual_room(extra: &str) -> (Arc<Room>, &'static ManualTime, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let (clock, time) = Clock::manual();
        (open_with(room_config(extra), store, clock).await, time, dir)
    }

    #[tokio::test]
    async fn a_pause_keeps_a_called_place_past_its_claim_window_on_a_clock_that_never_sleeps() {
        let (room, time, _dir) = manual_room("claim_grace_secs = 60").await;
        let (epoch, seq, _) = room.arrive().await.unwrap();
        time.advance(Duration::from_secs(1));
        room.tick(false);
        assert!(matches!(
            room.place(epoch, seq).await.unwrap(),
            Place::Called { .. }
        ));
        room.update_settings(|s| s.paused = true).await.unwrap();
        for _ in 0..10 {
            time.advance(Duration::from_secs(60));
            room.tick(true);
        }
        assert!(matches!(
            room.claim(epoch, seq, "v", None).await,
            Err(RoomError::Claim(ClaimError::Paused))
        ));
        room.update_settings(|s| s.paused = false).await.unwrap();
        time.advance(Duration::from_secs(59));
        room.tick(true);
        let grant = room.claim(epoch, seq, "v", None).await.unwrap();
        assert!(grant.first);
    }

    #[tokio::test]
    async fn the_same_claimant_twice_at_once_gets_one_session_and_a_stranger_none() {
        let (room, time, _dir) = manual_room("").await;
        let (epoch, seq, _) = room.arrive().await.unwrap();
        time.advance(Duration::from_secs(1));
        room.tick(false);
        let key = RetryKey::of("browser-claim-key");
        let copied = RetryKey::of("a copied queue token");
        // A page and its favicon: the second asks while the first claim's
        // journal write is in flight.
        let (first, again, stranger) = tokio::join!(
            room.claim(epoch, seq, "v", Some(&key)),
            room.claim(epoch, seq, "v", Some(&key)),
            room.claim(epoch, seq, "v", Some(&copied)),
        );
        let (first, again) = (first.unwrap(), again.unwrap());
        assert!(first.first);
        assert!(
            !again.first,
            "the same claim answered again, not a second admission"
        );
        assert_eq!(first.expires_wall, again.expires_wall);
        assert!(matches!(
            stranger,
            Err(RoomError::Claim(ClaimError::AlreadyClaimed))
        ));
        assert_eq!(room.sessions.len(), 1);
    }

    #[tokio::test]
    async fn an_idle_session_ends_after_session_secs_and_activity_slides_it() {
        let (room, time, _dir) = manual_room("").await;
        let (epoch, seq, _) = room.arrive().await.unwrap();
        time.advance(Duration::from_secs(1));
        room.tick(false);
        let grant = room.claim(epoch, seq, "v", None).await.unwrap();
        time.advance(Duration::from_secs(599));
        assert!(matches!(
            room.check_session(epoch, seq, "v", grant.session_started_wall)
                .await
                .unwrap(),
            SessionCheck::Live { .. }
        ));
        // Slid by that request: 599 s more is still inside it, 600 is not.
        time.advance(Duration::from_secs(599));
        assert!(matches!(
            room.check_session(epoch, seq, "v", grant.session_started_wall)
                .await
                .unwrap(),
            SessionCheck::Live { .. }
        ));
        time.advance(Duration::from_secs(600));
        assert_eq!(
            room.check_session(epoch, seq, "v", grant.session_started_wall)
                .await
                .unwrap(),
            SessionCheck::Ended
        );
    }

    #[tokio::test]
    async fn a_session_resumed_after_a_restart_keeps_its_original_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let (store, epoch) = crashed_store(dir.path(), 1).await;
        let room = open(room_config(""), store).await;
        let started = room.clock.wall_secs() - 1795;
        match room.check_session(epoch, 1, "v", started).await.unwrap() {
            SessionCheck::Live { ends_in_secs } => assert!(
                ends_in_secs <= 5,
                "session_max_secs counts from the session's start: {ends_in_secs}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sessions_live_at_a_crash_keep_their_max_active_slots() {
        let dir = tempfile::tempdir().unwrap();
        let (store, epoch) = crashed_store(dir.path(), 3).await;
        let room = open(room_config("max_active = 3"), store).await;
        room.tick(true);
        assert_eq!(room.snapshot().active_sessions, 3);
        // One shows up again: counted once, not twice.
        let now = room.clock.wall_secs();
        assert!(matches!(
            room.check_session(epoch, 2, "v", now).await.unwrap(),
            SessionCheck::Live { .. }
        ));
        room.tick(true);
        assert_eq!(room.snapshot().active_sessions, 3);
        // With every slot held, place 4 is not called however long it waits.
        assert_eq!(room.lock().queue.free_slots(), 0);
    }

    #[tokio::test]
    async fn places_of_another_epoch_are_unknown_to_touch_and_claim() {
        let dir = tempfile::tempdir().unwrap();
        let (store, epoch) = crashed_store(dir.path(), 0).await;
        let room = open(room_config(""), store).await;
        assert_eq!(
            room.touch(epoch, 4).await.unwrap(),
            Place::Waiting { position: 1 }
        );
        let reset_epoch = room.reset().await.unwrap();
        assert_ne!(reset_epoch, epoch);
        let (_, seq, _) = room.arrive().await.unwrap();
        assert_eq!(seq, 1);
        // A request that verified its token before the reset must not act
        // on the new epoch's place with the same number.
        assert_eq!(room.touch(epoch, 1).await.unwrap(), Place::Unknown);
        assert!(matches!(
            room.claim(epoch, 1, "v", None).await,
            Err(RoomError::Claim(ClaimError::Unknown))
        ));
    }

    #[tokio::test]
    async fn after_the_shutdown_flush_no_number_is_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crashed_store(dir.path(), 0).await;
        let room = open(room_config(""), store.clone()).await;
        let (_, first, _) = room.arrive().await.unwrap();
        room.flush().await.unwrap();
        assert!(matches!(room.arrive().await, Err(RoomError::ShuttingDown)));
        drop(room);
        store.close().await.unwrap();
        let reopened: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let room = open(room_config(""), reopened).await;
        let (_, next, _) = room.arrive().await.unwrap();
        assert_eq!(next, first + 1, "no gap after a clean shutdown, no reuse");
    }
}
