//! The embedded line: the queue and drip in this process, made durable
//! in the journal before any promise is given. Sequence numbers are
//! reserved in blocks (one write covers every arrival waiting), a claim is
//! durable before its session opens, progress is written about once a
//! second, and a scheduled room's opening is durable before its draw.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::batch::Batch;
use crate::clock::Clock;
use crate::config::RoomConfig;
use crate::drip::{Drip, TickReport};
use crate::queue::{ClaimError, Millis, Place, Queue, Settings};
use crate::shuffle::{self, Seed};
use crate::store::line::{
    CLAIM_RETRY_WINDOW_MS, Core, Grant, Line, LineFuture, RESERVE_TIMEOUT, RetryKey, RoomError,
    SessionCheck, new_epoch, session_end,
};
use crate::store::{Record, Store, StoreError};

/// A room's line kept by this process alone (see the module doc).
pub struct EmbeddedLine {
    core: Arc<Core>,
    store: Arc<dyn Store>,
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
    /// An opening or closing is being made durable.
    scheduling: AtomicBool,
    /// A progress record is being written (the next waits for it).
    progress_writing: AtomicBool,
    /// Set by `flush` at shutdown: no further number may be handed out.
    sealed: AtomicBool,
    /// Sessions live before a restart, not re-registered yet: they keep
    /// their `max_active` slots until `restored_until` (idle sessions have
    /// ended by then; live ones have shown up again).
    restored_active: u64,
    restored_until: AtomicU64,
    reregistered: AtomicU64,
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

impl EmbeddedLine {
    /// Opens a room's line from what the store kept, or starts its first
    /// epoch.
    pub async fn open(
        config: &RoomConfig,
        store: Arc<dyn Store>,
        clock: Clock,
        seq_block: u64,
        upstream_hold: Duration,
    ) -> Result<Arc<EmbeddedLine>, RoomError> {
        let now = clock.mono_ms();
        let configured = Settings::from_config(config);
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
        let restored_active = queue.active_sessions();
        let restored_until = clock.mono_ms() + queue.settings.session_secs * 1000;
        let line = Arc::new(EmbeddedLine {
            core: Core::new(config.id.clone(), clock, queue, seed, upstream_hold),
            store,
            reservations: Arc::new(Batch::new()),
            reserving_ahead: AtomicBool::new(false),
            reserving: tokio::sync::Mutex::new(()),
            claiming: DashMap::new(),
            seq_block,
            scheduling: AtomicBool::new(false),
            progress_writing: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            restored_active,
            restored_until: AtomicU64::new(restored_until),
            reregistered: AtomicU64::new(0),
        });
        line.reserve_more(0).await?;
        Ok(line)
    }

    /// What the line keeps in memory, shared with the room.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Gives an arrival the next place. In `over_capacity` rooms with room
    /// to spare the place is called at once (`called == true`).
    ///
    /// An arrival that finds the reserved numbers used up waits for the
    /// next reservation, at most [`RESERVE_TIMEOUT`] in all; that
    /// reservation covers every arrival waiting, so a burst costs a store
    /// write per write-time of arrivals, not one per block.
    async fn arrive(self: &Arc<Self>) -> Result<(u64, u64, bool), RoomError> {
        let deadline = tokio::time::Instant::now() + RESERVE_TIMEOUT;
        loop {
            let now = self.core.clock.mono_ms();
            let healthy = self.core.upstream_healthy(now);
            let issued = {
                let mut st = self.core.lock();
                let st = &mut *st;
                if st.queue.settings.shut() {
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
                    self.core.publish(&st.queue, now);
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
                tracing::warn!(room = %room.core.id, error = %e, "sequence reservation failed");
            }
            room.reserving_ahead.store(false, Ordering::Release);
        });
    }

    /// Durably reserves more sequence numbers when the reserved ones are
    /// running low: a block, plus one for each of the `waiting` arrivals.
    /// Serialised so concurrent callers reserve once.
    async fn reserve_more(&self, waiting: u64) -> Result<(), RoomError> {
        let store = &self.store;
        let _only_one = self.reserving.lock().await;
        let (epoch, upto) = {
            let st = self.core.lock();
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
                room: self.core.id.clone(),
                epoch,
                upto,
            })
            .await?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(room = %self.core.id, upto, waiting, ms, "sequence numbers reserved");
        let mut st = self.core.lock();
        if st.queue.epoch() == epoch && !self.sealed.load(Ordering::Acquire) {
            st.queue.extend_reservation(upto);
        }
        Ok(())
    }

    /// A sign of life from `seq`'s fan (holding a token of `epoch`);
    /// returns where the place stands. A place of another epoch is unknown.
    async fn touch(&self, epoch: u64, seq: u64) -> Result<Place, RoomError> {
        let now = self.core.clock.mono_ms();
        let mut st = self.core.lock();
        if st.queue.epoch() != epoch {
            return Ok(Place::Unknown);
        }
        let place = st.queue.touch(seq, now);
        if matches!(place, Place::Rejoining { .. }) {
            self.core.publish(&st.queue, now);
        }
        Ok(place)
    }

    /// Where `seq` stands, without counting it as a sign of life.
    async fn place(&self, epoch: u64, seq: u64) -> Result<Place, RoomError> {
        let now = self.core.clock.mono_ms();
        let st = self.core.lock();
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
    async fn claim(
        &self,
        epoch: u64,
        seq: u64,
        vid: &str,
        retry: Option<&RetryKey>,
    ) -> Result<Grant, RoomError> {
        let store = &self.store;
        // The same claimant's claim still being written is waited for once;
        // then the place is either theirs (the same grant again) or, if the
        // write failed, called again and claimed here.
        let mut waited = false;
        loop {
            let now = self.core.clock.mono_ms();
            let step = {
                let mut st = self.core.lock();
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
                        self.core.publish(&st.queue, now);
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
                room: self.core.id.clone(),
                epoch,
                seq,
            })
            .await;
        if let Err(e) = written {
            let mut st = self.core.lock();
            if st.queue.epoch() == epoch {
                st.queue.unclaim(seq, self.core.clock.mono_ms());
            }
            self.claiming.remove(&seq);
            return Err(e.into());
        }
        // The session before the pending mark goes: a repeat finds one or
        // the other.
        let grant = self.core.open_session(
            (seq, vid, retry),
            now,
            (session_secs, session_max_secs),
            true,
        );
        self.claiming.remove(&seq);
        Ok(grant)
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
        let (retry, s) = retry
            .zip(self.core.sessions.get(&seq))
            .ok_or_else(refused)?;
        let claimed_at = match &s.retry {
            Some((key, at)) if key == retry && s.vid == vid => *at,
            _ => return Err(refused()),
        };
        if now.saturating_sub(claimed_at) >= CLAIM_RETRY_WINDOW_MS
            || now >= session_end(&s, session_secs)
        {
            return Err(refused());
        }
        let wall = self.core.clock.wall_secs();
        let end = (now + session_secs * 1000).min(s.max_end_ms);
        Ok(Grant {
            first: false,
            seq,
            session_started_wall: wall.saturating_sub((now - claimed_at) / 1000),
            expires_wall: wall + (end - now) / 1000,
        })
    }

    /// A session not live in memory: ended if it was here (swept or run
    /// out); after a restart the map is empty, and a valid token for a
    /// claimed place re-registers its session.
    async fn find_session(
        &self,
        epoch: u64,
        seq: u64,
        vid: &str,
        session_started_wall: u64,
    ) -> Result<SessionCheck, RoomError> {
        let now = self.core.clock.mono_ms();
        let (session_secs, session_max_secs, current) = self.core.session_view();
        if current != epoch || self.core.sessions.contains_key(&seq) {
            return Ok(SessionCheck::Ended);
        }
        // Not in memory: a restart, or a session already swept as ended.
        let age_secs = self
            .core
            .clock
            .wall_secs()
            .saturating_sub(session_started_wall);
        let resumable = {
            let q = &self.core.lock().queue;
            q.is_claimed(seq) && !q.session_ended(seq)
        };
        if age_secs >= session_max_secs || !resumable {
            return Ok(SessionCheck::Ended);
        }
        // What is left of session_max_secs, counted from the token's start
        // (not from this process's start, which may be more recent).
        let max_end_ms = now + (session_max_secs - age_secs) * 1000;
        let (live, registered) = self
            .core
            .resume_session(seq, vid, now, max_end_ms, session_secs);
        if registered && now < self.restored_until.load(Ordering::Relaxed) {
            self.reregistered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(live)
    }

    /// Marks `seq`'s session ended, durably (the journal), so a restart
    /// never resumes it.
    async fn end_session(&self, epoch: u64, seq: u64) -> Result<bool, RoomError> {
        {
            let mut st = self.core.lock();
            if st.queue.epoch() != epoch || !st.queue.end_session(seq) {
                return Ok(false);
            }
        }
        self.store
            .write(Record::SessionEnd {
                room: self.core.id.clone(),
                epoch,
                seq,
            })
            .await?;
        Ok(true)
    }

    /// Sessions holding `max_active` slots: the live ones, plus those from
    /// before a restart that have not shown up again (until they would
    /// have ended anyway).
    fn active_sessions(&self, now: Millis) -> u64 {
        let live = self.core.sessions.len() as u64;
        if now < self.restored_until.load(Ordering::Relaxed) {
            live + self
                .restored_active
                .saturating_sub(self.reregistered.load(Ordering::Relaxed))
        } else {
            live
        }
    }

    /// One drip step: expire sessions, advance the line, publish, persist
    /// progress when it moved. Called about ten times a second.
    fn tick(self: &Arc<Self>, sweep_sessions: bool) -> TickReport {
        let store = &self.store;
        let now = self.core.clock.mono_ms();
        self.follow_schedule(store);
        if sweep_sessions {
            let session_secs = self.core.session_secs();
            self.core
                .sessions
                .retain(|_, s| now < session_end(s, session_secs));
        }
        let healthy = self.core.upstream_healthy(now);
        let (report, progress) = {
            let mut st = self.core.lock();
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
            self.core.publish(&st.queue, now);
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
                    room: room.core.id.clone(),
                    epoch,
                    serving,
                    floor,
                    issued,
                    active,
                };
                if let Err(e) = store.write(record).await {
                    tracing::warn!(room = %room.core.id, error = %e, "progress write failed");
                    // Written again at the next sweep.
                    room.core.lock().last_progress = (0, 0, 0);
                }
                room.progress_writing.store(false, Ordering::Release);
            });
        } else if progress.is_some() {
            self.core.lock().last_progress = (0, 0, 0);
        }
        report
    }

    /// Opens a scheduled room when its time comes (the pre-queue is cut at
    /// that moment and shuffled once the opening is durable) and closes it
    /// at `closes_at`.
    fn follow_schedule(self: &Arc<Self>, store: &Arc<dyn Store>) {
        let wall = self.core.clock.wall_secs();
        let (epoch, open, opens_at, closes_at, closed, issued) = {
            let st = self.core.lock();
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
                room.update_settings(&|s: &mut Settings| s.closed = true)
                    .await
                    .map(|_| {
                        tracing::info!(room = %room.core.id(), "closed at closes_at");
                    })
            };
            if let Err(e) = result {
                tracing::error!(room = %room.core.id(), error = %e, "scheduled change failed; retrying");
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
        let seed = self
            .core
            .seed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(seed) = seed else {
            return Err(RoomError::Store(StoreError::Corrupt(
                "no shuffle seed".into(),
            )));
        };
        store
            .write(Record::Opened {
                room: self.core.id.clone(),
                epoch,
                entries,
            })
            .await?;
        let order = shuffle::order(&seed, u32::try_from(entries).unwrap_or(u32::MAX));
        let mut st = self.core.lock();
        if st.queue.epoch() == epoch && st.queue.open_with(order) {
            self.core.publish(&st.queue, self.core.clock.mono_ms());
        }
        tracing::info!(room = %self.core.id(), entries, commitment = %seed.commitment(), "opened: pre-queue shuffled");
        Ok(())
    }

    /// Applies an admin change; durable before it returns.
    async fn update_settings(
        &self,
        change: &(dyn Fn(&mut Settings) + Send + Sync),
    ) -> Result<Settings, RoomError> {
        let store = &self.store;
        let (epoch, settings) = {
            let mut st = self.core.lock();
            let mut s = st.queue.settings.clone();
            change(&mut s);
            self.core
                .note_rate_change(st.queue.settings.admit_rate_per_min, s.admit_rate_per_min);
            s.session_max_secs = s.session_max_secs.max(s.session_secs);
            st.queue.settings = s.clone();
            self.core.publish(&st.queue, self.core.clock.mono_ms());
            (st.queue.epoch(), s)
        };
        store
            .write(Record::Settings {
                room: self.core.id.clone(),
                epoch,
                settings: settings.clone(),
            })
            .await?;
        Ok(settings)
    }

    /// Starts the room over in a new epoch: every earlier token is void.
    async fn reset(&self) -> Result<u64, RoomError> {
        let store = &self.store;
        let epoch = new_epoch();
        store
            .write(Record::Epoch {
                room: self.core.id.clone(),
                epoch,
            })
            .await?;
        // A scheduled room draws its new epoch's pre-queue with a new seed,
        // committed before anyone can take a place in that epoch.
        let scheduled = self.core.lock().queue.settings.opens_at.is_some();
        let seed = if scheduled {
            let s = Seed::random();
            store
                .write(Record::Seed {
                    room: self.core.id.clone(),
                    epoch,
                    seed: s.to_hex(),
                })
                .await?;
            Some(s)
        } else {
            None
        };
        let settings = {
            let now = self.core.clock.mono_ms();
            let mut st = self.core.lock();
            let settings = st.queue.settings.clone();
            *self.core.seed.lock().unwrap_or_else(|p| p.into_inner()) = seed;
            st.queue = Queue::new(epoch, settings.clone());
            st.drip = Drip::new(now);
            st.last_progress = (0, 0, 0);
            self.core.sessions.clear();
            self.restored_until.store(0, Ordering::Relaxed);
            self.core.publish(&st.queue, now);
            settings
        };
        store
            .write(Record::Settings {
                room: self.core.id.clone(),
                epoch,
                settings,
            })
            .await?;
        self.reserve_more(0).await?;
        Ok(epoch)
    }

    /// Writes the latest progress and gives back the unused reservation.
    /// Only for graceful shutdown, once no request can issue a number.
    async fn flush(&self) -> Result<(), RoomError> {
        let store = &self.store;
        let (epoch, serving, floor, issued, active) = {
            let mut st = self.core.lock();
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
                room: self.core.id.clone(),
                epoch,
                serving,
                floor,
                issued,
                active,
            })
            .await?;
        store
            .write(Record::Release {
                room: self.core.id.clone(),
                epoch,
                upto: issued + 1,
            })
            .await?;
        Ok(())
    }
}

impl Line for EmbeddedLine {
    fn arrive(self: Arc<Self>) -> LineFuture<'static, (u64, u64, bool)> {
        Box::pin(async move { EmbeddedLine::arrive(&self).await })
    }

    fn touch(&self, epoch: u64, seq: u64) -> LineFuture<'_, Place> {
        Box::pin(EmbeddedLine::touch(self, epoch, seq))
    }

    fn place(&self, epoch: u64, seq: u64) -> LineFuture<'_, Place> {
        Box::pin(EmbeddedLine::place(self, epoch, seq))
    }

    fn claim<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        vid: &'a str,
        retry: Option<&'a RetryKey>,
    ) -> LineFuture<'a, Grant> {
        Box::pin(EmbeddedLine::claim(self, epoch, seq, vid, retry))
    }

    fn find_session<'a>(
        &'a self,
        epoch: u64,
        seq: u64,
        vid: &'a str,
        session_started_wall: u64,
    ) -> LineFuture<'a, SessionCheck> {
        Box::pin(EmbeddedLine::find_session(
            self,
            epoch,
            seq,
            vid,
            session_started_wall,
        ))
    }

    fn session_active(&self, _seq: u64) {}

    fn end_session(&self, epoch: u64, seq: u64) -> LineFuture<'_, bool> {
        Box::pin(EmbeddedLine::end_session(self, epoch, seq))
    }

    fn spend_pow<'a>(&'a self, _nonce: &'a str, _expires: u64) -> Option<LineFuture<'a, bool>> {
        None
    }

    fn update_settings<'a>(
        &'a self,
        change: &'a (dyn Fn(&mut Settings) + Send + Sync),
    ) -> LineFuture<'a, Settings> {
        Box::pin(EmbeddedLine::update_settings(self, change))
    }

    fn reset(&self) -> LineFuture<'_, u64> {
        Box::pin(EmbeddedLine::reset(self))
    }

    fn flush(&self) -> LineFuture<'_, ()> {
        Box::pin(EmbeddedLine::flush(self))
    }

    fn tick(self: Arc<Self>, sweep_sessions: bool) -> TickReport {
        EmbeddedLine::tick(&self, sweep_sessions)
    }

    fn run(
        self: Arc<Self>,
        _tick: Duration,
        _stop: watch::Receiver<bool>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        None
    }

    fn upstream_failed(&self) {}

    fn bypass(&self) -> bool {
        false
    }

    fn healthy(&self) -> bool {
        self.store.healthy()
    }

    fn leading(&self) -> bool {
        true
    }
}
