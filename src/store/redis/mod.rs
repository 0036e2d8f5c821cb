//! One line shared by every replica through Redis (`[store] kind = "redis"`).
//!
//! **Who decides what.** Any replica hands out sequence numbers (one atomic
//! `INCRBY` for all the arrivals waiting on that replica), takes claims (one script that checks the claim
//! window and sets the claim-once bit atomically) and serves statuses and
//! event streams from a local snapshot. Exactly one replica at a time, the
//! holder of a short *drip lease*, runs the pure [`Queue`] and [`Drip`] —
//! the same code a single node runs — and commits what they decide (who was
//! called, skipped, missed, rejoined; the serving counter) to Redis in one
//! fenced script per tick. Every replica reads that state back each tick and
//! broadcasts it to its own fans.
//!
//! **Why a lease, not a leaderless script.** Re-implementing the line's
//! rules (no-shows, free skips of abandoned places, the rejoin lane,
//! `max_active`, the pre-queue draw, the drip's integer bucket) in Lua would
//! leave two implementations of the fairness rules to drift apart. With a
//! lease, there is one implementation, tested on an injected clock, and the
//! rate is global by construction: one bucket, refilled on one clock. The
//! cost: when the lease holder dies, nobody is called until the lease
//! expires (`lease_ms`, 2 s by default) and another replica takes it over,
//! rebuilding the line from Redis. Its bucket starts empty, so a takeover
//! never bursts. Every commit checks the lease, so a replica that stalled
//! past its lease cannot overwrite its successor.
//!
//! **What costs a round trip.** An arrival: one at most, shared with every
//! arrival waiting on the same replica (see [`Batch`]). A claim: one. Status and
//! event streams of waiting fans: none (positions come from the local
//! snapshot; signs of life are batched into the next tick's script). A fan
//! whose turn has come: one lookup per status (called, missed or claimed is
//! kept in Redis, not in every replica's memory).
//!
//! **Keys** (one hash tag per room, so a room's keys share a Redis Cluster
//! slot): `meta` (epoch, settings, seed, opening), `next` (sequence
//! counter), `lease`, `state` (the lease holder's published snapshot),
//! `claimed` (claim-once bitmap), `fate` (called / missed / rejoining places
//! past their turn), `seen`, `claims`, `rejoins` (inboxes the lease holder
//! drains each tick), `sessions` (sorted by idle end) and `sess` (visitor
//! and hard end of each session), `upfail` (an upstream failure seen by any
//! replica holds the drip), `spent` (proof-of-work challenges accepted,
//! by expiry, so one solution buys one place across every replica).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;

mod primary;
pub use primary::Primary;
use redis::{Script, Value};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::capacity::{CapacityGroup, ControlState, Verdict, WindowDelta};
use crate::clock::Clock;
use crate::config::{OnStoreFailure, RoomConfig, SentinelConfig};
use crate::drip::{Drip, TickReport};
use crate::queue::{ClaimError, Durable, Millis, Place, Queue, SeqBits, Settings, Shuffled};
use crate::shuffle::{self, Seed};
use crate::store::StoreError;
use crate::store::line::{
    CLAIM_RETRY_WINDOW_MS, Core, Grant, Line, LineFuture, RetryKey, RoomError, SessionCheck,
    Snapshot, new_epoch, snapshot_of,
};

/// How long one Redis call may take before it counts as a failure.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long start-up waits for Redis before giving up.
pub const STARTUP_WAIT: Duration = Duration::from_secs(30);
/// Sessions' activity is written back (and the local cache swept) this often.
const SESSION_FLUSH_EVERY_TICKS: u64 = 10;
/// An arrival in an `over_capacity` room waits this long to be called at once.
const OVER_CAPACITY_WAIT: Duration = Duration::from_millis(400);
/// At most this many rejoin-lane entries are published to the replicas.
const LANE_PUBLISHED: usize = 10_000;
/// The lease holder expires a call this much after Redis stops accepting
/// its claim, so a claim taken at the last moment always reaches it first
/// (no refunded token, no freed slot for a place that did come in).
const CLAIM_MARGIN_SECS: u64 = 1;
/// How long a replica whose lead failed leaves the lease to others.
const LEAD_BACKOFF: Duration = Duration::from_secs(5);

/// Opens the connection to Redis. Lazy: it connects on first use and
/// reconnects by itself after a failure. The connection lives on the Redis
/// I/O thread (see [`io`]).
/// The primary `[store]` names: at `url`, or through the sentinels.
pub fn connect(url: &str, sentinel: Option<&SentinelConfig>) -> Result<Primary, StoreError> {
    match sentinel {
        Some(s) => Primary::through_sentinels(s),
        None => Primary::at(url),
    }
}

/// The runtime every Redis call runs on: one thread of its own, shared by
/// the process's rooms. On the request runtime, a flood of new connections
/// (an on-sale's first second) left the Redis connection's task waiting
/// behind thousands of ready request tasks: calls passed the response
/// timeout while Redis itself answered in milliseconds, and the replica
/// took Redis for down and held the line.
fn io() -> Result<&'static tokio::runtime::Handle, StoreError> {
    static IO: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    if let Some(handle) = IO.get() {
        return Ok(handle);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("waitroom-redis".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| StoreError::Io(format!("redis I/O thread: {e}")))?;
    let handle = rx
        .recv()
        .map_err(|e| StoreError::Io(format!("redis I/O thread: {e}")))?
        .map_err(|e| StoreError::Io(format!("redis I/O runtime: {e}")))?;
    // Two first calls at once: the loser's thread idles, harmless.
    Ok(IO.get_or_init(|| handle))
}

/// Runs `call` with the connection on the Redis I/O runtime.
async fn on_io<T, F, Fut>(primary: &Primary, call: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(ConnectionManager) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
{
    let answer = io()?
        .spawn(call(primary.con()))
        .await
        .map_err(|e| StoreError::Io(format!("redis call: {e}")))?;
    answer.map_err(|e| {
        primary.failed(&e);
        redis_err(e)
    })
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Io(format!("redis: {e}"))
}

/// How far past the highest number it saw a replica raises the counter
/// after the primary failed over. Replication is asynchronous: the promoted
/// replica may lack the last arrivals, numbers already given to fans. Each
/// surviving replica knows the numbers it handed out itself and the room's
/// `issued` as of its last tick (100 ms); what none may know is what a
/// replica that died with the primary handed out in the replication lag
/// (bounded with `min-replicas-max-lag`). 1,000 covers 10,000 arrivals a
/// second for 100 ms. The skipped numbers are recorded (`gaps`), and the
/// line skips the ones nobody holds for free; until it reaches them, a fan
/// who joins after the failover sees up to this many more people ahead.
pub const FAILOVER_MARGIN: u64 = 1_000;

/// How long a claim waits for a replica to hold it (Sentinel only).
const REPLICATED_WAIT_MS: u64 = 500;

/// The room's keys, in the order every script takes them.
const KEY_NAMES: [&str; 15] = [
    "meta", "next", "lease", "state", "claimed", "fate", "seen", "claims", "rejoins", "sessions",
    "sess", "upfail", "spent", "ended", "gaps",
];

/// What the lease holder publishes for every replica each tick.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Published {
    snapshot: Snapshot,
    floor: u64,
    lane: Vec<u64>,
    opened_entries: Option<u64>,
}

/// A room's epoch as found in (or started in) Redis.
struct Joined {
    epoch: u64,
    settings: String,
    seed: String,
    opened: String,
    state: String,
}

/// A place past its turn, as kept in `fate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Called(i64),
    Missed(i64),
    Rejoining,
}

fn parse_fate(s: &str) -> Option<Fate> {
    if s == "r" {
        return Some(Fate::Rejoining);
    }
    let (kind, at) = s.split_once(':')?;
    let at = at.parse().ok()?;
    match kind {
        "c" => Some(Fate::Called(at)),
        "m" => Some(Fate::Missed(at)),
        _ => None,
    }
}

/// A room's link to the shared line.
pub struct Shared {
    con: Primary,
    keys: Vec<String>,
    /// This replica's name in the lease.
    node: String,
    lease_ms: u64,
    pub on_failure: OnStoreFailure,
    healthy: AtomicBool,
    leading: AtomicBool,
    /// Redis milliseconds minus this process's monotonic milliseconds.
    offset: AtomicI64,
    /// (epoch, the highest sequence number this replica has seen issued in
    /// it): raises the counter again if Redis lost its last writes.
    issued: Mutex<(u64, u64)>,
    /// The primary's failovers whose counter margin this replica has
    /// applied (see [`FAILOVER_MARGIN`]).
    margin_applied: AtomicU64,
    /// After a failed lead, this replica does not take the lease again
    /// before this (monotonic ms), so a replica that cannot lead does not
    /// hold the line up.
    lead_backoff_until: AtomicU64,
    clock: Clock,
    touches: Mutex<HashSet<u64>>,
    rejoins: Mutex<HashSet<u64>>,
    session_activity: Mutex<HashSet<u64>>,
    /// The rejoin lane as last published.
    lane: Mutex<Vec<u64>>,
    /// Settings as the lease holder last applied them (JSON from `meta`).
    applied_settings: Mutex<String>,
    /// The pre-queue draw for (epoch, entries), computed once per replica.
    order: Mutex<Option<(u64, u64, Shuffled)>>,
    /// Fields the admin API cannot change follow this replica's file.
    configured: Settings,
    upfail_sent: AtomicU64,
    /// Arrivals waiting for numbers: (first seq, epoch) each.
    arrivals: Arc<Batch<(u64, u64), StoreError>>,
    /// What this replica's lease ticks did, not yet counted in the metrics.
    unreported: Mutex<TickReport>,
}

impl Shared {
    /// Adds a lease tick's report to what the metrics have not seen yet.
    fn record_tick(&self, r: TickReport) {
        let mut acc = self.unreported.lock().unwrap_or_else(|p| p.into_inner());
        acc.called += r.called;
        acc.skipped += r.skipped;
        acc.noshows += r.noshows;
    }

    fn key_args<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        inv
    }

    fn set_healthy(&self, room: &str, ok: bool, error: Option<&StoreError>) {
        let was = self.healthy.swap(ok, Ordering::AcqRel);
        match (was, ok) {
            (true, false) => tracing::error!(
                room,
                error = %error.map(ToString::to_string).unwrap_or_default(),
                on_failure = ?self.on_failure,
                "shared store unavailable: holding the line"
            ),
            (false, true) => tracing::info!(room, "shared store answering again"),
            _ => {}
        }
    }

    /// Whether Redis answered the last call.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether this replica drives the drip now.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// While the store is down in `open` mode, requests pass unqueued.
    pub fn bypass(&self) -> bool {
        self.on_failure == OnStoreFailure::Open && !self.healthy()
    }

    async fn call<T: redis::FromRedisValue + Send + 'static>(
        &self,
        room: &str,
        inv: redis::ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        let answer = on_io(&self.con, move |mut con| async move {
            inv.invoke_async(&mut con).await
        })
        .await;
        if let Err(e) = &answer {
            self.set_healthy(room, false, Some(e));
        }
        answer
    }

    /// The counter floor this replica vouches for in `epoch`: the highest
    /// number it saw handed out, past [`FAILOVER_MARGIN`] once after each
    /// failover of the primary it follows; and the failovers that covers,
    /// for [`Shared::floor_applied`] once a call carried it.
    fn floor_for(&self, epoch: u64) -> (u64, u64) {
        let g = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let switches = self.con.switches();
        let margin = if switches > self.margin_applied.load(Ordering::Acquire) {
            FAILOVER_MARGIN
        } else {
            0
        };
        if g.0 == epoch {
            (g.1 + margin, switches)
        } else {
            (0, switches)
        }
    }

    /// A call carrying [`Shared::floor_for`]'s floor reached Redis.
    fn floor_applied(&self, switches: u64) {
        self.margin_applied.fetch_max(switches, Ordering::AcqRel);
    }

    fn saw_issued(&self, epoch: u64, seq: u64) {
        let mut g = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == epoch {
            g.1 = g.1.max(seq);
        }
    }

    /// This replica meets `epoch` for the first time (start, a reset, Redis
    /// starting over): nothing of the previous epoch carries over.
    fn enter_epoch(&self, room: &Core, epoch: u64) {
        let mut g = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == epoch {
            return;
        }
        *g = (epoch, 0);
        drop(g);
        room.sessions.clear();
        for set in [&self.touches, &self.rejoins, &self.session_activity] {
            set.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        self.lane.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.order.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn redis_ms(&self, mono: Millis) -> i64 {
        mono as i64 + self.offset.load(Ordering::Relaxed)
    }

    fn mono_ms(&self, redis_ms: i64) -> Millis {
        (redis_ms - self.offset.load(Ordering::Relaxed)).max(0) as Millis
    }

    // ---- requests -------------------------------------------------------

    pub(crate) async fn arrive(
        self: &Arc<Self>,
        room: &Arc<Core>,
    ) -> Result<(u64, u64, bool), RoomError> {
        let snap = room.snapshot();
        if snap.shut() {
            return Err(RoomError::Closed);
        }
        let (shared, for_room) = (self.clone(), room.clone());
        let (seq, epoch) = self
            .arrivals
            .join(
                move |n| {
                    let (shared, room) = (shared.clone(), for_room.clone());
                    async move { shared.arrive_many(&room, n).await }
                },
                StoreError::Io("the batched call gave no answer".into()),
            )
            .await?;
        self.touches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq);
        if snap.queue == crate::config::QueueMode::OverCapacity && epoch == snap.epoch {
            // The lease holder calls it within a tick when nobody waits and
            // there is room: wait that long rather than show a waiting page.
            let mut rx = room.subscribe();
            let called = tokio::time::timeout(OVER_CAPACITY_WAIT, async {
                loop {
                    if rx.borrow_and_update().serving >= seq {
                        return true;
                    }
                    if rx.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await
            .unwrap_or(false);
            return Ok((epoch, seq, called));
        }
        Ok((epoch, seq, false))
    }

    /// `n` new places in one ARRIVE call: (seq, epoch) for each, in order.
    async fn arrive_many(&self, room: &Core, n: usize) -> Result<Vec<(u64, u64)>, StoreError> {
        let epoch = room.epoch();
        let mut inv = self.key_args(&ARRIVE);
        let (floor, switches) = self.floor_for(epoch);
        inv.arg(epoch).arg(floor).arg(n);
        let started = std::time::Instant::now();
        let answer = self.call(room.id(), inv).await;
        if answer.is_ok() {
            self.floor_applied(switches);
        }
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(
            room = room.id(),
            arrivals = n,
            ms,
            ok = answer.is_ok(),
            "places handed out"
        );
        let (last, epoch): (u64, u64) = answer?;
        self.saw_issued(epoch, last);
        let first = (last + 1).saturating_sub(n as u64);
        Ok((first..=last).map(|seq| (seq, epoch)).collect())
    }

    pub(crate) async fn touch(
        &self,
        room: &Core,
        epoch: u64,
        seq: u64,
    ) -> Result<Place, RoomError> {
        if room.snapshot().epoch != epoch {
            return Ok(Place::Unknown);
        }
        self.touches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq);
        let place = self.place(room, epoch, seq).await?;
        if let Place::Missed { .. } = place {
            // The lease holder moves it to the rejoin lane on its next tick
            // (once per place; it says so if the window had passed).
            self.rejoins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq);
            let lane = self.lane.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
            return Ok(Place::Rejoining { position: lane + 1 });
        }
        Ok(place)
    }

    fn rank(&self, snap: &Snapshot, seq: u64) -> u64 {
        snap.shuffled.as_ref().map_or(seq, |s| s.rank(seq))
    }

    pub(crate) async fn place(
        &self,
        room: &Core,
        epoch: u64,
        seq: u64,
    ) -> Result<Place, RoomError> {
        let snap = room.snapshot();
        if snap.epoch != epoch || seq == 0 {
            return Ok(Place::Unknown);
        }
        if !snap.open {
            return Ok(Place::PreQueue);
        }
        let rank = self.rank(&snap, seq);
        if rank > snap.serving {
            // Also a place handed out elsewhere since the last snapshot: the
            // token that names it was signed by a replica, so it exists.
            return Ok(Place::Waiting {
                position: rank - snap.serving,
            });
        }
        let mut inv = self.key_args(&LOOKUP);
        inv.arg(epoch).arg(seq);
        let (found, claimed, fate, now, resumed): (i64, i64, String, i64, i64) =
            self.call(room.id(), inv).await?;
        if found == 0 {
            return Ok(Place::Unknown);
        }
        if claimed == 1 {
            return Ok(Place::Claimed);
        }
        Ok(match parse_fate(&fate) {
            Some(Fate::Called(at)) => {
                // A pause stops the claim window; resuming starts it again.
                let by = at.max(resumed) + self.configured.claim_grace_secs as i64 * 1000;
                if now < by || snap.paused || snap.shut() {
                    Place::Called {
                        claim_by: self.mono_ms(by),
                    }
                } else {
                    // The lease holder turns it into a no-show on its next tick.
                    Place::Missed {
                        rejoin_by: self.mono_ms(now + 1000),
                    }
                }
            }
            Some(Fate::Missed(at)) => {
                let rejoin_secs = self.configured.rejoin_secs as i64;
                if now < at + rejoin_secs * 1000 {
                    Place::Missed {
                        rejoin_by: self.mono_ms(at + rejoin_secs * 1000),
                    }
                } else {
                    Place::Expired
                }
            }
            Some(Fate::Rejoining) => {
                let lane = self.lane.lock().unwrap_or_else(|p| p.into_inner());
                let position = lane
                    .iter()
                    .position(|&s| s == seq)
                    .map_or(lane.len() + 1, |i| i + 1);
                Place::Rejoining {
                    position: position as u64,
                }
            }
            None => Place::Expired,
        })
    }

    pub(crate) async fn claim(
        &self,
        room: &Core,
        epoch: u64,
        seq: u64,
        vid: &str,
        retry: Option<&RetryKey>,
    ) -> Result<Grant, RoomError> {
        let snap = room.snapshot();
        if snap.epoch != epoch {
            return Err(ClaimError::Unknown.into());
        }
        if !snap.open || self.rank(&snap, seq) > snap.serving {
            return Err(ClaimError::NotYet.into());
        }
        let mut inv = self.key_args(&CLAIM);
        inv.arg(epoch)
            .arg(seq)
            .arg(vid)
            .arg(self.configured.claim_grace_secs * 1000)
            .arg(snap.session_secs * 1000)
            .arg(snap.session_max_secs * 1000)
            .arg(retry.map_or("", RetryKey::as_str))
            .arg(CLAIM_RETRY_WINDOW_MS);
        let outcome = match self.con.claims() {
            None => self.call::<(i64, i64)>(room.id(), inv).await?.0,
            Some(claims) => self.claim_replicated(room.id(), inv, claims).await?,
        };
        match outcome {
            1 | 2 => {}
            -1 => return Err(ClaimError::Unknown.into()),
            -2 => return Err(ClaimError::AlreadyClaimed.into()),
            -4 => return Err(ClaimError::Paused.into()),
            -5 => return Err(ClaimError::Closed.into()),
            _ => return Err(ClaimError::Missed.into()),
        }
        let now = room.clock.mono_ms();
        Ok(room.open_session(
            (seq, vid, retry),
            now,
            (snap.session_secs, snap.session_max_secs),
            outcome == 1,
        ))
    }

    /// A claim that must survive a failover: made on the claims' own
    /// connection, then `WAIT` until a replica holds it. Sentinel promotes
    /// the replica with the most data, so a claim a replica acknowledged is
    /// not lost with the primary, and the place cannot be claimed again.
    /// No replica in time: the claim is answered as a store timeout (503,
    /// retry); the retry with the claimant's key (a browser's claim-key
    /// cookie, an app's `Idempotency-Key`) gets the same grant once a
    /// replica holds it.
    async fn claim_replicated(
        &self,
        room: &str,
        inv: redis::ScriptInvocation<'static>,
        mut claims: ConnectionManager,
    ) -> Result<i64, RoomError> {
        let answer = io()?
            .spawn(async move {
                let (outcome, _now): (i64, i64) = inv.invoke_async(&mut claims).await?;
                if !matches!(outcome, 1 | 2) {
                    return Ok((outcome, 1));
                }
                let acked: i64 = redis::cmd("WAIT")
                    .arg(1)
                    .arg(REPLICATED_WAIT_MS)
                    .query_async(&mut claims)
                    .await?;
                Ok((outcome, acked))
            })
            .await
            .map_err(|e| StoreError::Io(format!("redis call: {e}")))?;
        let (outcome, acked) = answer.map_err(|e: redis::RedisError| {
            self.con.failed(&e);
            let e = redis_err(e);
            self.set_healthy(room, false, Some(&e));
            e
        })?;
        if acked < 1 {
            tracing::warn!(
                room,
                "no replica acknowledged a claim in time: answered as a store timeout, to be retried"
            );
            return Err(RoomError::StoreTimeout);
        }
        Ok(outcome)
    }

    /// A session this replica does not hold live: Redis knows whether it
    /// lasts (another replica may have seen activity since it ended here).
    pub(crate) async fn find_session(
        &self,
        room: &Core,
        epoch: u64,
        seq: u64,
        vid: &str,
        session_started_wall: u64,
    ) -> Result<SessionCheck, RoomError> {
        let snap = room.snapshot();
        if snap.epoch != epoch {
            return Ok(SessionCheck::Ended);
        }
        let now = room.clock.mono_ms();
        if self.configured.session_max_secs.max(snap.session_max_secs)
            <= room.clock.wall_secs().saturating_sub(session_started_wall)
        {
            return Ok(SessionCheck::Ended);
        }
        let mut inv = self.key_args(&SESSION);
        inv.arg(epoch).arg(seq);
        let (idle_end, holder, max_end, redis_now): (i64, String, i64, i64) =
            self.call(room.id(), inv).await?;
        if idle_end < 0 || redis_now >= idle_end.min(max_end) {
            room.sessions.remove(&seq);
            return Ok(SessionCheck::Ended);
        }
        if holder != vid {
            return Ok(SessionCheck::Foreign);
        }
        let max_end_ms = self.mono_ms(max_end);
        self.session_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq);
        Ok(room
            .resume_session(seq, vid, now, max_end_ms, snap.session_secs)
            .0)
    }

    /// Ends `seq`'s session in Redis: its idle end and holder go, so no
    /// replica resumes it, and the next pull counts it out. Replicas that
    /// hold it live hear of it when they next write its activity back.
    pub(crate) async fn end_session(
        &self,
        room: &Core,
        epoch: u64,
        seq: u64,
    ) -> Result<bool, RoomError> {
        let mut inv = self.key_args(&END);
        inv.arg(epoch).arg(seq);
        let ended: i64 = self.call(room.id(), inv).await?;
        Ok(ended == 1)
    }

    /// Applies `change` to the room's shared settings. The change is made
    /// to the settings as Redis holds them, not to this replica's view (a
    /// pause set on another replica a moment ago may not have reached it):
    /// read them, change them, and write back only what changed, provided
    /// nobody wrote in between (else again with what they wrote).
    pub(crate) async fn update_settings(
        &self,
        room: &Core,
        change: impl Fn(&mut Settings),
    ) -> Result<Settings, RoomError> {
        let snap = room.snapshot();
        // First round: nothing expected, so Redis answers with what it holds.
        let (mut patch, mut expected) = ("{}".to_string(), String::new());
        // The rate the change was made to, to tell a cut.
        let mut rate_before = snap.admit_rate_per_min;
        for _ in 0..SETTINGS_ATTEMPTS {
            let mut inv = self.key_args(&SETTINGS);
            inv.arg(snap.epoch).arg(&patch).arg(&expected);
            let (outcome, raw): (i64, String) = self.call(room.id(), inv).await?;
            match outcome {
                1 => {
                    let s = self.settings_from(&raw).map_err(RoomError::Store)?;
                    room.note_rate_change(rate_before, s.admit_rate_per_min);
                    // Shown here at once; everywhere else (and to the lease
                    // holder's drip) with the next tick.
                    let mut next = snap;
                    apply_settings_to_snapshot(&mut next, &s);
                    room.publish_snapshot(next);
                    return Ok(s);
                }
                2 => {
                    let before = self.settings_from(&raw).map_err(RoomError::Store)?;
                    rate_before = before.admit_rate_per_min;
                    let mut after = before.clone();
                    change(&mut after);
                    after.session_max_secs = after.session_max_secs.max(after.session_secs);
                    // Only what this change changes, so a concurrent change to
                    // another field is never undone.
                    patch = settings_patch(&before, &after)?;
                    expected = raw;
                }
                _ => {
                    return Err(RoomError::Store(StoreError::Io(
                        "the room was reset meanwhile; try again".into(),
                    )));
                }
            }
        }
        Err(RoomError::Store(StoreError::Io(
            "the room's settings kept changing meanwhile; try again".into(),
        )))
    }

    /// Marks a one-time proof (a proof-of-work challenge) used, once across
    /// every replica. False: it had been used already.
    pub(crate) async fn spend_once(
        &self,
        room: &Core,
        id: &str,
        expires_wall_secs: u64,
    ) -> Result<bool, RoomError> {
        let mut inv = self.key_args(&SPEND);
        inv.arg(id).arg(expires_wall_secs * 1000);
        let fresh: i64 = self.call(room.id(), inv).await?;
        Ok(fresh == 1)
    }

    pub(crate) async fn reset(&self, room: &Core) -> Result<u64, RoomError> {
        let snap = room.snapshot();
        let settings = settings_of(&snap, &self.configured);
        let epoch = new_epoch();
        let seed = settings.opens_at.map(|_| Seed::random());
        let queue = Queue::new(epoch, settings.clone());
        let mut fresh = snapshot_of(room.id(), &queue, true, seed.as_ref());
        fresh.upstream_healthy = snap.upstream_healthy;
        let published = Published {
            snapshot: fresh.clone(),
            floor: 0,
            lane: Vec::new(),
            opened_entries: None,
        };
        let mut inv = self.key_args(&RESET);
        inv.arg(epoch)
            .arg(to_json(&settings)?)
            .arg(seed.as_ref().map(Seed::to_hex).unwrap_or_default())
            .arg(to_json(&published)?);
        let _: i64 = self.call(room.id(), inv).await?;
        self.enter_epoch(room, epoch);
        *room.seed.lock().unwrap_or_else(|p| p.into_inner()) = seed;
        room.publish_snapshot(fresh);
        Ok(epoch)
    }

    /// Graceful shutdown: hands in pending signs of life and activity, and
    /// gives the lease up so another replica takes over at once.
    pub(crate) async fn flush(&self, room: &Core) -> Result<(), RoomError> {
        self.flush_sessions(room).await;
        let mut inv = self.key_args(&RELEASE);
        inv.arg(&self.node)
            .arg(csv(&take(&self.touches)))
            .arg(csv(&take(&self.rejoins)));
        let _: i64 = self.call(room.id(), inv).await?;
        self.leading.store(false, Ordering::Release);
        Ok(())
    }

    /// The proxy saw the upstream fail: every replica's drip holds.
    pub(crate) fn note_upstream_failure(self: &Arc<Self>, room: &str, now: Millis, hold_ms: u64) {
        let last = self.upfail_sent.load(Ordering::Relaxed);
        if last != 0 && now < last + hold_ms / 4 {
            return;
        }
        self.upfail_sent.store(now.max(1), Ordering::Relaxed);
        let (sh, room) = (self.clone(), room.to_string());
        tokio::spawn(async move {
            let mut inv = sh.key_args(&UPFAIL);
            inv.arg(hold_ms.max(1));
            let _: Result<i64, _> = sh.call(&room, inv).await;
        });
    }

    /// Joins the room's epoch in Redis, or starts a new one there.
    async fn init(&self, room: &str) -> Result<Joined, StoreError> {
        let candidate_seed = self.configured.opens_at.map(|_| Seed::random().to_hex());
        let mut inv = self.key_args(&INIT);
        inv.arg(new_epoch())
            .arg(to_json(&self.configured)?)
            .arg(candidate_seed.unwrap_or_default());
        let (epoch, settings, seed, opened, state, now): (
            u64,
            String,
            String,
            String,
            String,
            i64,
        ) = self.call(room, inv).await?;
        // Redis time from the first answer on, not only from the first tick.
        self.offset
            .store(now - self.clock.mono_ms() as i64, Ordering::Relaxed);
        Ok(Joined {
            epoch,
            settings,
            seed,
            opened,
            state,
        })
    }

    /// A queue view of a joined epoch (the lease holder rebuilds the real
    /// one from Redis when it takes the lease).
    fn queue_of(&self, now: Millis, j: Joined) -> Result<(Queue, Option<Seed>), StoreError> {
        let settings = self.settings_from(&j.settings)?;
        let seed = if j.seed.is_empty() {
            None
        } else {
            Some(Seed::from_hex(&j.seed).map_err(|e| StoreError::Corrupt(format!("seed: {e}")))?)
        };
        let mut queue = Queue::new(j.epoch, settings);
        if let (Ok(n), Some(seed)) = (j.opened.parse::<u32>(), &seed) {
            queue.sync_issued(u64::from(n), now);
            queue.open_with(shuffle::order(seed, n));
        }
        Ok((queue, seed))
    }

    /// Redis has no epoch for the room: it lost its data (a restart without
    /// persistence, or a flush). Places can no longer be told apart from
    /// reused numbers, so the room starts a new epoch and every earlier
    /// token is void — the documented price of running Redis without AOF.
    async fn start_over(&self, room: &Core) {
        tracing::error!(
            room = %room.id(),
            "Redis has no state for this room (restarted without persistence?): starting a new epoch; earlier places are void"
        );
        self.leading.store(false, Ordering::Release);
        let Ok(joined) = self.init(room.id()).await else {
            return;
        };
        match self.queue_of(room.clock.mono_ms(), joined) {
            Ok((queue, seed)) => {
                let snap = snapshot_of(room.id(), &queue, true, seed.as_ref());
                self.enter_epoch(room, queue.epoch());
                *room.seed.lock().unwrap_or_else(|p| p.into_inner()) = seed;
                room.lock().queue = queue;
                room.publish_snapshot(snap);
            }
            Err(e) => tracing::error!(room = %room.id(), error = %e, "starting over failed"),
        }
    }

    // ---- the tick -------------------------------------------------------

    /// One tick: hand in signs of life, take or renew the lease; as lease
    /// holder advance the line and publish it, otherwise adopt what the
    /// holder published.
    async fn tick(&self, room: &Arc<Core>) {
        let touches = take(&self.touches);
        let rejoins = take(&self.rejoins);
        let known = room.snapshot().epoch;
        let before = room.clock.mono_ms();
        let may_lead = before >= self.lead_backoff_until.load(Ordering::Relaxed);
        let mut inv = self.key_args(&PULL);
        let (floor, switches) = self.floor_for(known);
        inv.arg(&self.node)
            .arg(self.lease_ms)
            .arg(csv(&touches))
            .arg(csv(&rejoins))
            .arg(known)
            .arg(floor)
            .arg(u8::from(may_lead));
        let reply: Vec<Value> = match self.call(room.id(), inv).await {
            Ok(v) => v,
            Err(_) => {
                if self.leading.swap(false, Ordering::AcqRel) {
                    tracing::warn!(room = %room.id(), "drip lease dropped: the store does not answer");
                }
                // Signs of life are kept for the next tick.
                self.touches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(touches);
                return;
            }
        };
        self.set_healthy(room.id(), true, None);
        self.floor_applied(switches);
        let after = room.clock.mono_ms();
        let redis_now = int(reply.get(1));
        self.offset
            .store(redis_now - ((before + after) / 2) as i64, Ordering::Relaxed);
        let role = int(reply.first());
        // Sessions the checkout ended lately (on any replica): not live here.
        if let Some(Value::Array(ended)) = reply.get(if role == 0 { 4 } else { 13 }) {
            for seq in ended {
                if let Ok(seq) = text(Some(seq)).parse::<u64>() {
                    room.sessions.remove(&seq);
                }
            }
        }
        let epoch: u64 = text(reply.get(2)).parse().unwrap_or(0);
        let state = text(reply.get(3));
        if epoch == 0 {
            self.start_over(room).await;
            return;
        }
        if role == 0 {
            if self.leading.swap(false, Ordering::AcqRel) {
                tracing::warn!(room = %room.id(), "drip lease taken over by another replica");
            }
            self.adopt(room, epoch, &state);
            return;
        }
        if let Err(e) = self.lead(room, role == 2, epoch, &state, &reply).await {
            tracing::warn!(room = %room.id(), error = %e, "drip tick not committed; leaving the lease to another replica");
            self.leading.store(false, Ordering::Release);
            self.lead_backoff_until.store(
                room.clock.mono_ms() + LEAD_BACKOFF.as_millis() as u64,
                Ordering::Relaxed,
            );
            let mut inv = self.key_args(&RELEASE);
            inv.arg(&self.node).arg("").arg("");
            let _: Result<i64, _> = self.call(room.id(), inv).await;
        }
    }

    /// A replica without the lease shows what the holder published.
    fn adopt(&self, room: &Core, epoch: u64, state: &str) {
        let p = match serde_json::from_str::<Published>(state) {
            Ok(p) => p,
            Err(e) if !state.is_empty() => {
                // A replica of another version wrote it: say so, never freeze silently.
                tracing::warn!(room = %room.id(), error = %e, "published state not understood");
                return;
            }
            Err(_) => return,
        };
        if p.snapshot.epoch != epoch {
            return;
        }
        self.enter_epoch(room, epoch);
        self.saw_issued(epoch, p.snapshot.issued);
        *self.lane.lock().unwrap_or_else(|e| e.into_inner()) = p.lane;
        let mut snap = p.snapshot;
        snap.shuffled = self.order_for(epoch, p.opened_entries, snap.revealed_seed.as_deref());
        room.publish_snapshot(snap);
    }

    /// The drawn pre-queue order for `entries` from the revealed seed,
    /// drawn once per replica.
    fn order_for(&self, epoch: u64, entries: Option<u64>, seed: Option<&str>) -> Option<Shuffled> {
        let entries = entries.filter(|&n| n > 0)?;
        let mut cache = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, n, s)) = cache.as_ref()
            && *e == epoch
            && *n == entries
        {
            return Some(s.clone());
        }
        let seed = Seed::from_hex(seed?).ok()?;
        let s = Shuffled::new(shuffle::order(
            &seed,
            u32::try_from(entries).unwrap_or(u32::MAX),
        ));
        *cache = Some((epoch, entries, s.clone()));
        Some(s)
    }

    /// The lease holder's tick.
    async fn lead(
        &self,
        room: &Arc<Core>,
        acquired: bool,
        epoch: u64,
        state: &str,
        reply: &[Value],
    ) -> Result<(), StoreError> {
        let settings_json = text(reply.get(4));
        let seed_hex = text(reply.get(5));
        let opened: Option<u64> = text(reply.get(6)).parse().ok();
        let issued = int(reply.get(7)).max(0) as u64;
        let seen = list(reply.get(8));
        let claims = list(reply.get(9));
        let rejoins = list(reply.get(10));
        let active = int(reply.get(11)).max(0) as u64;
        let upfail_ms = int(reply.get(12));
        let gaps: Vec<(u64, u64)> = list(reply.get(14))
            .iter()
            .filter_map(|g| {
                let (from, to) = g.split_once('-')?;
                Some((from.parse().ok()?, to.parse().ok()?))
            })
            .collect();
        if upfail_ms > 0 {
            // Held until the hold another replica started ends, not longer.
            room.hold_upstream_until(room.clock.mono_ms() + upfail_ms as u64);
        }
        let fresh = !self.leading.load(Ordering::Acquire) || acquired;
        let now = room.clock.mono_ms();
        if fresh || room.lock().queue.epoch() != epoch {
            self.enter_epoch(room, epoch);
            self.rebuild(
                room,
                epoch,
                &settings_json,
                &seed_hex,
                opened,
                issued,
                state,
            )
            .await?;
            self.leading.store(true, Ordering::Release);
            tracing::info!(room = %room.id(), node = %self.node, "took the drip lease");
        } else if *self
            .applied_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            != settings_json
        {
            let s = self.leader_settings(&settings_json)?;
            room.lock().queue.settings = s;
            *self
                .applied_settings
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = settings_json.clone();
        }
        let healthy = room.upstream_healthy(now);
        let wall = room.clock.wall_secs();
        let mut opened_now = None;
        let mut close_now = None;
        let (report, published, changes) = {
            let mut st = room.lock();
            let st = &mut *st;
            let before = st.queue.next_seq();
            st.queue.sync_issued(issued, now);
            // Skipped numbers among those just synced, or all of them when
            // the line was rebuilt (which counts every issued place seen).
            let fresh_from = if fresh { 1 } else { before };
            let new_gaps: Vec<(u64, u64)> = gaps
                .iter()
                .filter(|&&(_, to)| to >= fresh_from)
                .map(|&(from, to)| (from.max(fresh_from), to))
                .collect();
            st.queue.mark_unseen(&new_gaps);
            for seq in seen.iter().flat_map(|b| b.split(',')) {
                if let Ok(seq) = seq.parse::<u64>() {
                    st.queue.touch(seq, now);
                }
            }
            for seq in claims.iter().filter_map(|s| s.parse::<u64>().ok()) {
                st.queue.force_claim(seq);
            }
            for seq in rejoins.iter().flat_map(|b| b.split(',')) {
                if let Ok(seq) = seq.parse::<u64>() {
                    st.queue.rejoin(seq, now);
                }
            }
            st.queue.set_active_sessions(active);
            // The schedule: opening draws the pre-queue, closing closes.
            let s = &st.queue.settings;
            if !st.queue.is_open() && s.opens_at.is_some_and(|t| t <= wall) {
                let entries = st.queue.next_seq() - 1;
                let seed = room.seed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(seed) = seed {
                    let order = shuffle::order(&seed, u32::try_from(entries).unwrap_or(u32::MAX));
                    if st.queue.open_with(order) {
                        opened_now = Some(entries);
                        tracing::info!(room = %room.id(), entries, commitment = %seed.commitment(), "opened: pre-queue shuffled");
                    }
                }
            } else if st.queue.is_open() && !s.closed && s.closes_at.is_some_and(|t| t <= wall) {
                let mut s = s.clone();
                s.closed = true;
                st.queue.settings = s;
                close_now = Some(());
                tracing::info!(room = %room.id(), "closed at closes_at");
            }
            let report = st.drip.tick(&mut st.queue, now, healthy);
            let changes = st.queue.take_changes();
            // Shown here only once committed: a fan must never be told of a
            // call that Redis (where claims are checked) does not hold yet.
            let mut snap = room.snapshot_for(&st.queue, now);
            snap.claim_grace_secs = self.configured.claim_grace_secs;
            let lane: Vec<u64> = st.queue.rejoin_lane().take(LANE_PUBLISHED).collect();
            let published = Published {
                snapshot: snap,
                floor: st.queue.durable_floor(),
                lane,
                opened_entries: st
                    .queue
                    .is_open()
                    .then(|| st.queue.shuffled().map_or(0, Shuffled::len)),
            };
            (report, published, changes)
        };
        self.record_tick(report);
        self.saw_issued(epoch, issued);
        let mut inv = self.key_args(&COMMIT);
        inv.arg(&self.node)
            .arg(epoch)
            .arg(to_json(&published)?)
            .arg(opened_now.map(|n| n.to_string()).unwrap_or_default())
            .arg(match close_now {
                Some(()) => r#"{"closed":true}"#.to_string(),
                None => String::new(),
            });
        for c in changes {
            use crate::queue::Change;
            let (seq, value) = match c {
                Change::Called(seq, at) => (seq, format!("c:{}", self.redis_ms(at))),
                Change::Missed(seq, at) => (seq, format!("m:{}", self.redis_ms(at))),
                Change::Rejoined(seq) => (seq, "r".to_string()),
                Change::Gone(seq) => (seq, String::new()),
            };
            inv.arg(seq).arg(value);
        }
        let committed: i64 = self.call(room.id(), inv).await?;
        if committed != 1 {
            return Err(StoreError::Io(
                "the lease or the epoch changed under this tick".into(),
            ));
        }
        *self.lane.lock().unwrap_or_else(|p| p.into_inner()) = published.lane.clone();
        room.publish_snapshot(published.snapshot);
        Ok(())
    }

    /// Settings as the lease holder applies them: it expires a call a
    /// little after Redis stops accepting its claim (see [`CLAIM_MARGIN_SECS`]).
    fn leader_settings(&self, json: &str) -> Result<Settings, StoreError> {
        let mut s = self.settings_from(json)?;
        s.claim_grace_secs += CLAIM_MARGIN_SECS;
        Ok(s)
    }

    fn settings_from(&self, json: &str) -> Result<Settings, StoreError> {
        let mut s: Settings = serde_json::from_str(json)
            .map_err(|e| StoreError::Corrupt(format!("room settings in Redis: {e}")))?;
        // Fields the admin API cannot change always follow the file.
        s.queue = self.configured.queue;
        s.claim_grace_secs = self.configured.claim_grace_secs;
        s.abandon_after_secs = self.configured.abandon_after_secs;
        s.rejoin_secs = self.configured.rejoin_secs;
        s.session_max_secs = s.session_max_secs.max(s.session_secs);
        Ok(s)
    }

    /// Takes the line over from Redis: counters from the last published
    /// state, claims from the bitmap, and every place past its turn from
    /// `fate`, exactly. The drip starts empty (no burst on takeover).
    #[allow(clippy::too_many_arguments)]
    async fn rebuild(
        &self,
        room: &Core,
        epoch: u64,
        settings_json: &str,
        seed_hex: &str,
        opened: Option<u64>,
        issued: u64,
        state: &str,
    ) -> Result<(), StoreError> {
        let settings = self.leader_settings(settings_json)?;
        let seed = if seed_hex.is_empty() {
            None
        } else {
            Some(Seed::from_hex(seed_hex).map_err(|e| StoreError::Corrupt(format!("seed: {e}")))?)
        };
        let mut pipe = redis::pipe();
        pipe.get(&self.keys[4])
            .hgetall(&self.keys[5])
            .hget(&self.keys[0], "resumed");
        let (claimed_bytes, fates, resumed): (Vec<u8>, Vec<(String, String)>, Option<i64>) =
            on_io(&self.con, move |mut con| async move {
                pipe.query_async(&mut con).await
            })
            .await?;
        // A call made before the room last resumed runs from the resume,
        // as the claim script counts it.
        let resumed = resumed.unwrap_or(0);
        let published: Option<Published> = serde_json::from_str(state)
            .ok()
            .filter(|p: &Published| p.snapshot.epoch == epoch);
        let mut claimed = SeqBits::default();
        for (i, byte) in claimed_bytes.iter().enumerate() {
            for bit in 0..8 {
                if byte & (0x80 >> bit) != 0 {
                    claimed.set(i as u64 * 8 + bit);
                }
            }
        }
        let (serving, floor, lane) = match &published {
            Some(p) => (p.snapshot.serving, p.floor, p.lane.clone()),
            None => (0, 0, Vec::new()),
        };
        let d = Durable {
            epoch,
            reserved_upto: issued + 1,
            issued_upto: issued,
            serving,
            noshow_floor: floor,
            claimed,
            settings: None,
            shuffle_seed: seed.as_ref().map(Seed::to_hex),
            opened_entries: opened,
            active_sessions: 0,
            // Sessions (and their end) are Redis's to keep, not the mirror's.
            ended: Default::default(),
        };
        let order = match (opened, &seed) {
            (Some(0), _) => Some(Vec::new()),
            (Some(n), Some(seed)) => {
                Some(shuffle::order(seed, u32::try_from(n).unwrap_or(u32::MAX)))
            }
            (Some(_), None) => {
                return Err(StoreError::Corrupt(
                    "the room opened a pre-queue but its seed is missing".into(),
                ));
            }
            (None, _) => None,
        };
        let now = room.clock.mono_ms();
        let mut queue = Queue::restore(&d, settings, order, now);
        let (mut called, mut missed, mut rejoining) = (Vec::new(), Vec::new(), Vec::new());
        for (seq, f) in &fates {
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            match parse_fate(f) {
                Some(Fate::Called(at)) => called.push((seq, self.mono_ms(at.max(resumed)))),
                Some(Fate::Missed(at)) => missed.push((seq, self.mono_ms(at))),
                Some(Fate::Rejoining) => rejoining.push(seq),
                None => {}
            }
        }
        // The published lane keeps its order; rejoiners beyond what was
        // published follow in arrival order, so nobody is left rejoining forever.
        let mut lane = lane;
        let listed: HashSet<u64> = lane.iter().copied().collect();
        rejoining.retain(|seq| !listed.contains(seq));
        rejoining.sort_unstable();
        lane.extend(rejoining);
        queue.set_outcomes(called, missed, lane);
        queue.record_changes();
        {
            let mut st = room.lock();
            st.queue = queue;
            st.drip = Drip::new(now);
        }
        *room.seed.lock().unwrap_or_else(|p| p.into_inner()) = seed;
        *self
            .applied_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = settings_json.to_string();
        Ok(())
    }

    /// Writes back sessions' activity (their idle end slides in Redis too)
    /// and forgets local sessions that ended.
    async fn flush_sessions(&self, room: &Core) {
        let active = take(&self.session_activity);
        let session_secs = room.snapshot().session_secs;
        let now = room.clock.mono_ms();
        room.sessions.retain(|_, s| {
            now < (s.last_active_ms.load(Ordering::Relaxed) + session_secs * 1000).min(s.max_end_ms)
        });
        if active.is_empty() {
            return;
        }
        let mut inv = self.key_args(&EXTEND);
        inv.arg(session_secs * 1000);
        for seq in &active {
            inv.arg(*seq);
        }
        match self.call::<Vec<u64>>(room.id(), inv).await {
            // Ended elsewhere (the checkout's end, or run out): not live here.
            Ok(gone) => {
                for seq in gone {
                    room.sessions.remove(&seq);
                }
            }
            Err(_) => {
                self.session_activity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(active);
            }
        }
    }
}

/// Drives a shared room until `stop`: a tick every `tick`, session
/// activity written back every second.
async fn run(
    room: Arc<Core>,
    sh: Arc<Shared>,
    tick: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => {
                // Shutting down: hand the lease over now, not when the
                // drain is over (admissions would pause a whole lease).
                if let Err(e) = sh.flush(&room).await {
                    tracing::warn!(room = %room.id(), error = %e, "could not give the drip lease up");
                }
                return;
            }
        }
        n += 1;
        sh.tick(&room).await;
        if n.is_multiple_of(SESSION_FLUSH_EVERY_TICKS) {
            sh.flush_sessions(&room).await;
        }
    }
}

/// Opens a room on the shared line: joins its current epoch, or starts the
/// first one. Waits up to [`STARTUP_WAIT`] for Redis.
pub async fn open_line(
    config: &RoomConfig,
    con: Primary,
    key_prefix: &str,
    on_failure: OnStoreFailure,
    lease_ms: u64,
    clock: Clock,
    upstream_hold: Duration,
) -> Result<Arc<SharedLine>, RoomError> {
    let configured = Settings::from_config(config);
    let keys: Vec<String> = KEY_NAMES
        .iter()
        .map(|name| format!("{key_prefix}:{{{}}}:{name}", config.id))
        .collect();
    let shared = Shared {
        con,
        keys,
        node: format!("{:016x}", rand::random::<u64>()),
        lease_ms,
        on_failure,
        healthy: AtomicBool::new(true),
        leading: AtomicBool::new(false),
        offset: AtomicI64::new(0),
        issued: Mutex::new((0, 0)),
        margin_applied: AtomicU64::new(0),
        lead_backoff_until: AtomicU64::new(0),
        clock,
        touches: Mutex::new(HashSet::new()),
        rejoins: Mutex::new(HashSet::new()),
        session_activity: Mutex::new(HashSet::new()),
        lane: Mutex::new(Vec::new()),
        applied_settings: Mutex::new(String::new()),
        order: Mutex::new(None),
        configured,
        upfail_sent: AtomicU64::new(0),
        arrivals: Arc::new(Batch::new()),
        unreported: Mutex::new(TickReport::default()),
    };
    let started = std::time::Instant::now();
    let joined = loop {
        match shared.init(&config.id).await {
            Ok(j) => break j,
            Err(e) if started.elapsed() < STARTUP_WAIT => {
                tracing::warn!(room = %config.id, error = %e, "waiting for Redis");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(RoomError::Store(e)),
        }
    };
    let (epoch, state) = (joined.epoch, joined.state.clone());
    let (queue, seed) = shared
        .queue_of(clock.mono_ms(), joined)
        .map_err(|e| RoomError::Store(StoreError::Corrupt(format!("room {}: {e}", config.id))))?;
    let core = Core::new(config.id.clone(), clock, queue, seed, upstream_hold);
    shared.adopt(&core, epoch, &state);
    Ok(Arc::new(SharedLine {
        core,
        shared: Arc::new(shared),
    }))
}

/// Every room's line on one Redis, shared by every replica.
pub struct RedisLines {
    pub con: Primary,
    pub key_prefix: String,
    pub on_failure: OnStoreFailure,
    pub lease_ms: u64,
}

impl crate::store::Lines for RedisLines {
    fn open<'a>(
        &'a self,
        room: &'a RoomConfig,
        clock: Clock,
        upstream_hold: Duration,
    ) -> LineFuture<'a, (Arc<Core>, Arc<dyn Line>)> {
        Box::pin(async move {
            let line = open_line(
                room,
                self.con.clone(),
                &self.key_prefix,
                self.on_failure,
                self.lease_ms,
                clock,
                upstream_hold,
            )
            .await?;
            Ok((line.core().clone(), line as Arc<dyn Line>))
        })
    }

    /// Each room's line answers for Redis (see [`Shared::healthy`]).
    fn healthy(&self) -> bool {
        true
    }

    fn on_failure(&self) -> Option<OnStoreFailure> {
        Some(self.on_failure)
    }

    fn close(&self) -> crate::store::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Every replica pushes its delta; the decider takes them all, steps
    /// the controller (resuming from the kept state when it starts
    /// deciding) and keeps the verdict and state in Redis, where the other
    /// replicas read the verdict.
    fn control<'a>(
        &'a self,
        group: &'a CapacityGroup,
        delta: WindowDelta,
        (deciding, promoter_total, now): (bool, u64, Millis),
    ) -> LineFuture<'a, ()> {
        Box::pin(async move {
            let base = format!("{}:{{cap:{}}}", self.key_prefix, group.name);
            let (deltas_key, kept_key) = (format!("{base}:deltas"), format!("{base}:verdict"));
            let mine = match delta.buckets.is_empty() && delta.errors == 0 {
                true => String::new(),
                false => to_json(&delta)?,
            };
            let mut inv = CAPACITY.prepare_invoke();
            inv.key(&deltas_key)
                .key(&kept_key)
                .arg(mine)
                .arg(if deciding { "1" } else { "0" });
            let (deltas, kept): (Vec<String>, String) =
                on_io(&self.con, move |mut con| async move {
                    inv.invoke_async(&mut con).await
                })
                .await?;
            let kept: Option<KeptVerdict> = serde_json::from_str(&kept).ok();
            if !deciding {
                group.stop_deciding();
                group.adopt(kept.map_or(Verdict::FULL, |k| k.verdict));
                return Ok(());
            }
            let deltas: Vec<WindowDelta> = deltas
                .iter()
                .filter_map(|d| serde_json::from_str(d).ok())
                .collect();
            let (verdict, state) =
                group.decide(now, &deltas, promoter_total, kept.map(|k| k.state));
            let now_kept = KeptVerdict { verdict, state };
            if kept != Some(now_kept) {
                let json = to_json(&now_kept)?;
                on_io(&self.con, move |mut con| async move {
                    redis::cmd("SET")
                        .arg(kept_key)
                        .arg(json)
                        .query_async::<()>(&mut con)
                        .await
                })
                .await?;
            }
            Ok(())
        })
    }
}

/// A capacity group's verdict and controller state, as kept in Redis for
/// every replica and for the next decider.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct KeptVerdict {
    verdict: Verdict,
    state: ControlState,
}

/// A room's line shared through Redis: the calls ([`Shared`]) and the
/// room's [`Core`], into which Redis's line is mirrored.
pub struct SharedLine {
    core: Arc<Core>,
    shared: Arc<Shared>,
}

impl SharedLine {
    /// What the line keeps in memory, shared with the room.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

impl Line for SharedLine {
    fn arrive(self: Arc<Self>) -> LineFuture<'static, (u64, u64, bool)> {
        Box::pin(async move { self.shared.arrive(&self.core).await })
    }

    fn touch(&self, epoch: u64, seq: u64) -> LineFuture<'_, Place> {
        Box::pin(self.shared.touch(&self.core, epoch, seq))
    }

    fn place(&self, epoch: u64, seq: u64) -> LineFuture<'_, Place> {
        Box::pin(self.shared.place(&self.core, epoch, seq))
    }

    fn claim<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        vid: &'a str,
        retry: Option<&'a RetryKey>,
    ) -> LineFuture<'a, Grant> {
        Box::pin(self.shared.claim(&self.core, epoch, seq, vid, retry))
    }

    fn find_session<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        vid: &'a str,
        session_started_wall: u64,
    ) -> LineFuture<'a, SessionCheck> {
        Box::pin(
            self.shared
                .find_session(&self.core, epoch, seq, vid, session_started_wall),
        )
    }

    fn session_active(&self, seq: u64) {
        self.shared
            .session_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq);
    }

    fn end_session(&self, epoch: u64, seq: u64) -> LineFuture<'_, bool> {
        Box::pin(self.shared.end_session(&self.core, epoch, seq))
    }

    fn spend_pow<'a>(&'a self, nonce: &'a str, expires: u64) -> Option<LineFuture<'a, bool>> {
        Some(Box::pin(self.shared.spend_once(&self.core, nonce, expires)))
    }

    fn update_settings<'a>(
        &'a self,
        change: &'a (dyn Fn(&mut Settings) + Send + Sync),
    ) -> LineFuture<'a, Settings> {
        Box::pin(self.shared.update_settings(&self.core, change))
    }

    fn reset(&self) -> LineFuture<'_, u64> {
        Box::pin(self.shared.reset(&self.core))
    }

    fn flush(&self) -> LineFuture<'_, ()> {
        Box::pin(self.shared.flush(&self.core))
    }

    /// The lease holder's drip runs in [`Line::run`]; the process's ticker
    /// only collects what it did.
    fn tick(self: Arc<Self>, _sweep_sessions: bool) -> TickReport {
        std::mem::take(
            &mut *self
                .shared
                .unreported
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn run(
        self: Arc<Self>,
        tick: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        Some(Box::pin(run(
            self.core.clone(),
            self.shared.clone(),
            tick,
            stop,
        )))
    }

    fn upstream_failed(&self) {
        self.shared.note_upstream_failure(
            self.core.id(),
            self.core.clock.mono_ms(),
            self.core.upstream_hold_ms(),
        );
    }

    fn bypass(&self) -> bool {
        self.shared.bypass()
    }

    fn healthy(&self) -> bool {
        self.shared.healthy()
    }

    fn leading(&self) -> bool {
        self.shared.leading()
    }
}

/// The settings a snapshot shows (admin changes apply on top of these).
fn settings_of(snap: &Snapshot, configured: &Settings) -> Settings {
    Settings {
        admit_rate_per_min: snap.admit_rate_per_min,
        max_active: snap.max_active,
        paused: snap.paused,
        closed: snap.closed,
        session_secs: snap.session_secs,
        session_max_secs: snap.session_max_secs,
        queue: snap.queue,
        claim_grace_secs: snap.claim_grace_secs,
        abandon_after_secs: configured.abandon_after_secs,
        rejoin_secs: configured.rejoin_secs,
        opens_at: snap.opens_at,
        closes_at: snap.closes_at,
        stock: snap.stock,
        sold_out: snap.sold_out,
        stock_at_ms: snap.stock_at_ms,
    }
}

/// The fields `after` changes from `before`, as a JSON object.
fn settings_patch(before: &Settings, after: &Settings) -> Result<String, StoreError> {
    let as_map = |s: &Settings| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) | Err(_) => Err(StoreError::Corrupt("settings are not an object".into())),
    };
    let (b, a) = (as_map(before)?, as_map(after)?);
    let patch: serde_json::Map<String, serde_json::Value> =
        a.into_iter().filter(|(k, v)| b.get(k) != Some(v)).collect();
    to_json(&patch)
}

fn apply_settings_to_snapshot(snap: &mut Snapshot, s: &Settings) {
    snap.admit_rate_per_min = s.admit_rate_per_min;
    snap.max_active = s.max_active;
    snap.paused = s.paused;
    snap.closed = s.closed;
    snap.session_secs = s.session_secs;
    snap.session_max_secs = s.session_max_secs;
    snap.opens_at = s.opens_at;
    snap.closes_at = s.closes_at;
    snap.stock = s.stock;
    snap.sold_out = s.sold_out;
    snap.stock_at_ms = s.stock_at_ms;
}

fn take(set: &Mutex<HashSet<u64>>) -> Vec<u64> {
    set.lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect()
}

fn csv(seqs: &[u64]) -> String {
    let mut out = String::with_capacity(seqs.len() * 8);
    for (i, s) in seqs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().map(|i| text(Some(i))).collect(),
        _ => Vec::new(),
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

// ---- scripts ---------------------------------------------------------------
// KEYS, always: 1 meta, 2 next, 3 lease, 4 state, 5 claimed, 6 fate, 7 seen,
// 8 claims, 9 rejoins, 10 sessions, 11 sess, 12 upfail, 13 spent, 14 ended,
// 15 gaps.

const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// A script from `scripts/`, with `now` (Redis's clock, ms) defined first.
fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// Joins the room's epoch, or starts the first one (ARGV: epoch, settings, seed).
static INIT: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/init.lua")));

/// New places: the counter, raised first to what this replica has seen
/// issued in this epoch, then moved on by the count (ARGV: epoch, floor,
/// count). Returns {the last of the new numbers, epoch}.
static ARRIVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/arrive.lua")));

/// Every tick (ARGV: node, lease_ms, seen csv, rejoins csv, epoch, counter
/// floor, may take the lease 0|1).
static PULL: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/pull.lua")));

/// The lease holder's decisions (ARGV: node, epoch, state, opened, a
/// settings patch, then seq/fate pairs; an empty fate deletes).
static COMMIT: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/commit.lua")));

/// Exchanges a called place for a session, once (ARGV: epoch, seq, vid,
/// grace_ms, session_ms, max_ms, retry key or '', retry window ms).
/// Returns {1 | 2 the same claim again | -1 unknown epoch | -2 claimed |
/// -3 not called or window passed | -4 paused | -5 closed, now}.
///
/// The room's settings are read here, not from a replica's view, which
/// lags an admin's pause by up to a tick. A call's window starts again when
/// the room resumes (`resumed` in `meta`), as the lease holder's line does.
static CLAIM: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/claim.lua")));

/// Where a place past its turn stands (ARGV: epoch, seq). Returns {found,
/// claimed, fate, now, when the room last resumed or 0}.
static LOOKUP: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/lookup.lua")));

/// A session this replica does not hold (ARGV: epoch, seq). Returns
/// {idle end or -1, visitor, hard end, now}.
static SESSION: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/session.lua")));

/// Activity slides sessions' idle end, never past their hard end
/// (ARGV: session_ms, seqs...). Returns the seqs whose session is gone.
static EXTEND: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/extend.lua")));

/// A capacity group's control tick (KEYS: deltas, verdict; ARGV: this
/// replica's delta or '', deciding 0|1). Returns {every delta if deciding,
/// the kept verdict or ''}.
static CAPACITY: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/capacity.lua")));

/// The checkout ended a session (ARGV: epoch, seq). Returns 1 when a
/// session was ended, 0 when there was none (already ended, run out, or
/// another epoch's).
static END: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/end.lua")));

/// Rounds of read-change-write before an admin change gives up (each lost
/// round means another replica changed the settings in between).
const SETTINGS_ATTEMPTS: usize = 5;

/// An admin change, merged field by field into the current settings if they
/// are still exactly what the change was computed from (ARGV: epoch, a JSON
/// object of the changed fields, the settings it was computed from).
/// Returns {1, merged}; {2, current} when they differ; {0, ''} after a reset.
static SETTINGS: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/settings.lua")));

/// A one-time proof is used (ARGV: its id, when it expires in wall-clock
/// ms). Returns 1 the first time, 0 after. Expired entries go as it goes.
static SPEND: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/spend.lua")));

/// A new epoch (ARGV: epoch, settings, seed, state).
static RESET: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/reset.lua")));

/// Shutdown: last signs of life, and the lease given up if held
/// (ARGV: node, seen csv, rejoins csv).
static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/release.lua")));

/// An upstream failure holds every replica's drip (ARGV: hold_ms).
static UPFAIL: LazyLock<Script> = LazyLock::new(|| script(include_str!("scripts/upfail.lua")));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_parse_strictly() {
        assert_eq!(
            parse_fate("c:1700000000000"),
            Some(Fate::Called(1_700_000_000_000))
        );
        assert_eq!(parse_fate("m:5"), Some(Fate::Missed(5)));
        assert_eq!(parse_fate("r"), Some(Fate::Rejoining));
        for bad in ["", "c", "c:", "x:1", "c:1x", "m:-", "rr"] {
            assert_eq!(parse_fate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn batches_are_comma_separated() {
        assert_eq!(csv(&[]), "");
        assert_eq!(csv(&[3, 17, 4]), "3,17,4");
    }
}
