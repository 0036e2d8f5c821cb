//! A room at run time: its configuration, the line it is kept in (one
//! [`Line`], embedded or shared through Redis), and the rules that are not
//! storage, written once for either line: a session's check and slide,
//! the upstream's health, which proof-of-work record counts.
//!
//! Everything a reader takes without a store call (the snapshot, its
//! headline, the live sessions) is in the line's [`Core`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::capacity::CapacityGroup;
use crate::checkout::Stock;
pub use crate::clock::{Clock, ManualTime};
use crate::config::RoomConfig;
use crate::drip::TickReport;
use crate::queue::{Millis, Place, Settings};
use crate::store::Store;
use crate::store::embedded::EmbeddedLine;
use crate::store::line::session_end;
pub use crate::store::line::{
    CLAIM_RETRY_WINDOW_MS, Core, Grant, Headline, Line, RESERVE_TIMEOUT, RetryKey, RoomError,
    Session, SessionCheck, Snapshot,
};

pub struct Room {
    pub config: RoomConfig,
    pub clock: Clock,
    core: Arc<Core>,
    line: Arc<dyn Line>,
    /// The admission of fans let through unqueued (see `gate`).
    open_admission: crate::admission::Kept,
    /// The checkout's stock news on its way to the room's settings.
    stock_news: std::sync::Mutex<StockNews>,
    /// The checkout-health group the room's admitted requests feed and
    /// whose verdict its drip follows (`upstream_target_p95_ms`).
    pub capacity: Option<Arc<CapacityGroup>>,
}

impl Room {
    /// Opens a room on the embedded line: from what the store kept, or its
    /// first epoch.
    pub async fn open(
        config: RoomConfig,
        store: Arc<dyn Store>,
        clock: Clock,
        seq_block: u64,
        upstream_hold: Duration,
    ) -> Result<Arc<Room>, RoomError> {
        let line = EmbeddedLine::open(&config, store, clock, seq_block, upstream_hold).await?;
        Ok(Room::on(config, line.core().clone(), line, None))
    }

    /// A room kept in `line`, whose in-memory part is `core`, in the
    /// checkout-health group `capacity` if it has one.
    pub fn on(
        config: RoomConfig,
        core: Arc<Core>,
        line: Arc<dyn Line>,
        capacity: Option<Arc<CapacityGroup>>,
    ) -> Arc<Room> {
        Arc::new(Room {
            clock: core.clock,
            config,
            core,
            line,
            open_admission: Default::default(),
            stock_news: Default::default(),
            capacity,
        })
    }

    /// The signed admission kept for fans let through unqueued.
    pub fn open_admission(&self) -> &crate::admission::Kept {
        &self.open_admission
    }

    /// What the line keeps in memory (the queue, sessions, snapshot).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn snapshot(&self) -> Snapshot {
        self.core.snapshot()
    }

    /// The session idle window now, without copying the whole snapshot
    /// (every admitted request reads it).
    pub fn session_secs(&self) -> u64 {
        self.core.session_secs()
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.core.subscribe()
    }

    /// Changes of the room's [`Headline`] alone.
    pub fn subscribe_headline(&self) -> watch::Receiver<Headline> {
        self.core.subscribe_headline()
    }

    pub fn epoch(&self) -> u64 {
        self.core.epoch()
    }

    pub fn upstream_healthy(&self, now: Millis) -> bool {
        self.core.upstream_healthy(now)
    }

    /// The proxy reports a failed upstream exchange: the drip holds for a
    /// while (on every replica, when the line is shared).
    pub fn note_upstream_failure(&self) {
        self.core.note_upstream_failure();
        self.line.upstream_failed();
    }

    /// Whether requests pass unqueued (shared store down, `on_store_failure = "open"`).
    pub fn bypass(&self) -> bool {
        self.line.bypass()
    }

    /// Whether the store behind this room answers.
    pub fn store_healthy(&self) -> bool {
        self.line.healthy()
    }

    /// Whether this replica drives the drip (always, for an embedded room).
    pub fn leading(&self) -> bool {
        self.line.leading()
    }

    /// Gives an arrival the next place. In `over_capacity` rooms with room
    /// to spare the place is called at once (`called == true`).
    pub async fn arrive(&self) -> Result<(u64, u64, bool), RoomError> {
        self.line.clone().arrive().await
    }

    /// A sign of life from `seq`'s fan (holding a token of `epoch`);
    /// returns where the place stands. A place of another epoch is unknown.
    pub async fn touch(&self, epoch: u64, seq: u64) -> Result<Place, RoomError> {
        self.line.touch(epoch, seq).await
    }

    /// Where `seq` stands, without counting it as a sign of life.
    pub async fn place(&self, epoch: u64, seq: u64) -> Result<Place, RoomError> {
        self.line.place(epoch, seq).await
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
        self.line.claim(epoch, seq, vid, retry).await
    }

    /// Checks a verified access token against the live sessions and slides
    /// the session on activity. A session live in this process is answered
    /// here, with no store call (every admitted request asks); any other is
    /// the line's to find (ended, restarted, or held on another replica).
    pub async fn check_session(
        &self,
        epoch: u64,
        seq: u64,
        vid: &str,
        session_started_wall: u64,
    ) -> Result<SessionCheck, RoomError> {
        let (session_secs, _, current) = self.core.session_view();
        if current != epoch {
            return Ok(SessionCheck::Ended);
        }
        if let Some(s) = self.core.sessions.get(&seq) {
            if s.vid != vid {
                return Ok(SessionCheck::Foreign);
            }
            let now = self.clock.mono_ms();
            if now < session_end(&s, session_secs) {
                s.last_active_ms.store(now, Ordering::Relaxed);
                self.line.session_active(seq);
                return Ok(SessionCheck::Live {
                    ends_in_secs: (session_end(&s, session_secs) - now) / 1000,
                });
            }
        }
        self.line
            .find_session(epoch, seq, vid, session_started_wall)
            .await
    }

    /// Whether the session `(epoch, seq)`, live here when a request
    /// checked it, still is (not ended by the checkout, idle or
    /// `session_max_secs`, nor by a new epoch). `active`: the fan is using
    /// it now (bytes moved on its tunnel), which slides it as a request does
    /// in [`Room::check_session`]. A tunnel asks about once a second.
    pub fn hold_session(&self, epoch: u64, seq: u64, active: bool) -> bool {
        let (session_secs, _, current) = self.core.session_view();
        if current != epoch {
            return false;
        }
        let Some(s) = self.core.sessions.get(&seq) else {
            return false;
        };
        let now = self.clock.mono_ms();
        if now >= session_end(&s, session_secs) {
            return false;
        }
        if active {
            s.last_active_ms.store(now, Ordering::Relaxed);
            self.line.session_active(seq);
        }
        true
    }

    /// The checkout said `seq`'s fan is done (`Waitroom-Session: end`):
    /// the session ends at once here, for good everywhere. True when it
    /// ended a session (once: a completion).
    pub async fn end_session(&self, epoch: u64, seq: u64) -> Result<bool, RoomError> {
        let ended = self.line.end_session(epoch, seq).await?;
        if ended {
            self.core.sessions.remove(&seq);
        }
        Ok(ended)
    }

    /// The checkout said how many tickets are left (`Waitroom-Stock`) in
    /// its answer to a request sent at `sent_ms` (wall clock). Applied to
    /// the room's settings (every replica's) unless newer news was applied
    /// already; a checkout that repeats itself on every answer writes
    /// nothing, and news that comes faster than the store writes is taken
    /// newest first, one write at a time.
    pub fn offer_stock(self: &Arc<Self>, stock: Stock, sent_ms: u64) {
        let now = self.core.stock_view();
        if sent_ms <= now.at_ms {
            return;
        }
        {
            let mut news = self.stock_news.lock().unwrap_or_else(|p| p.into_inner());
            // What the room will say once the news taken is written: a
            // repeat of that writes nothing, anything else must be written
            // even when the room still says it now.
            let says = match news.taken {
                Some((at, taken)) if at > now.at_ms => taken == stock,
                _ => now.says(stock),
            };
            if says || news.taken.is_some_and(|(at, _)| at >= sent_ms) {
                return;
            }
            news.taken = Some((sent_ms, stock));
            news.unwritten = Some((sent_ms, stock));
            if std::mem::replace(&mut news.writing, true) {
                return;
            }
        }
        let room = self.clone();
        tokio::spawn(async move {
            loop {
                let news = {
                    let mut news = room.stock_news.lock().unwrap_or_else(|p| p.into_inner());
                    let next = news.unwritten.take();
                    // Under the same lock as the news: nothing comes in
                    // between finding none and the writer leaving.
                    news.writing = next.is_some();
                    next
                };
                let Some((sent_ms, stock)) = news else {
                    return;
                };
                let applied = room
                    .update_settings(|s| {
                        if sent_ms > s.stock_at_ms {
                            s.stock_at_ms = sent_ms;
                            match stock {
                                Stock::Left(n) => s.stock = Some(n),
                                Stock::SoldOut => s.sold_out = true,
                            }
                        }
                    })
                    .await;
                if let Err(e) = applied {
                    // Not what the room says after all: the next repeat
                    // tries again.
                    let mut news = room.stock_news.lock().unwrap_or_else(|p| p.into_inner());
                    if news.taken == Some((sent_ms, stock)) {
                        news.taken = None;
                    }
                    drop(news);
                    tracing::warn!(room = %room.id(), error = %e, ?stock, "could not apply the checkout's stock news");
                }
            }
        });
    }

    /// Follows the checkout-health verdict of the room's group (from the
    /// next drip tick on).
    pub fn follow_capacity(&self) {
        if let Some(group) = &self.capacity {
            self.core.limit_rate(|promoter| group.rate_for(promoter));
        }
    }

    /// One drip step (about ten a second; `sweep_sessions` about once a
    /// second): what it did, for the metrics.
    pub fn tick(&self, sweep_sessions: bool) -> TickReport {
        self.line.clone().tick(sweep_sessions)
    }

    /// Work the room's line runs on its own until `stop` (a shared line's
    /// drip lease), if any: the caller spawns it.
    pub fn background(
        &self,
        tick: Duration,
        stop: watch::Receiver<bool>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + use<>> {
        self.line.clone().run(tick, stop)
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
        match self.line.spend_pow(&solved.nonce, solved.expires) {
            Some(shared) => shared.await,
            None => Ok(local.spend(solved)),
        }
    }

    /// Applies an admin change; durable before it returns.
    pub async fn update_settings(
        &self,
        change: impl Fn(&mut Settings) + Send + Sync,
    ) -> Result<Settings, RoomError> {
        self.line.update_settings(&change).await
    }

    /// Starts the room over in a new epoch: every earlier token is void.
    pub async fn reset(&self) -> Result<u64, RoomError> {
        self.line.reset().await
    }

    /// At graceful shutdown, once no request can issue a number: what is
    /// in memory made durable (the embedded line's progress and unused
    /// reservation; the shared line's lease handed over).
    pub async fn flush(&self) -> Result<(), RoomError> {
        self.line.flush().await
    }
}

/// The checkout's stock news, each as (wall ms its request was sent,
/// what it said).
#[derive(Default)]
struct StockNews {
    /// The newest news taken (written, being written or waiting).
    taken: Option<(u64, Stock)>,
    /// The newest news not yet handed to the writer.
    unwritten: Option<(u64, Stock)>,
    /// A task is writing news (one at a time; it takes the newest).
    writing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EnvOverrides};
    use crate::queue::ClaimError;
    use crate::store::Record;
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
        assert_eq!(room.core().sessions.len(), 1);
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
    async fn a_held_session_slides_while_active_and_lets_go_when_idle_ended_or_another_epoch() {
        let (room, time, _dir) = manual_room("").await;
        let (epoch, seq, _) = room.arrive().await.unwrap();
        time.advance(Duration::from_secs(1));
        room.tick(false);
        room.claim(epoch, seq, "v", None).await.unwrap();
        assert!(!room.hold_session(epoch ^ 2, seq, false), "another epoch");
        assert!(!room.hold_session(epoch, seq + 1, false), "another place");
        // Active (bytes moving on a tunnel) slides it past its first idle end.
        time.advance(Duration::from_secs(599));
        assert!(room.hold_session(epoch, seq, true));
        time.advance(Duration::from_secs(599));
        assert!(room.hold_session(epoch, seq, false));
        // Quiet since: ends on time.
        time.advance(Duration::from_secs(1));
        assert!(!room.hold_session(epoch, seq, false));

        let (epoch, seq, _) = room.arrive().await.unwrap();
        time.advance(Duration::from_secs(1));
        room.tick(false);
        room.claim(epoch, seq, "w", None).await.unwrap();
        assert!(room.hold_session(epoch, seq, true));
        assert!(room.end_session(epoch, seq).await.unwrap());
        assert!(
            !room.hold_session(epoch, seq, true),
            "the checkout ended it"
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
        assert_eq!(room.core().lock().queue.free_slots(), 0);
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

    /// The checkout says 5, then 0, then 5 again faster than the store
    /// writes: the last word holds, though the room still showed 5 when
    /// it came (a lost 5 would hold the drip for good).
    #[tokio::test]
    async fn stock_news_that_undoes_news_not_yet_written_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let room = open(room_config(""), store).await;
        let settled = || async {
            for _ in 0..100 {
                if !room
                    .stock_news
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .writing
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the stock writer never finished");
        };
        room.offer_stock(Stock::Left(5), 1);
        settled().await;
        assert_eq!(room.snapshot().stock, Some(5));
        room.offer_stock(Stock::Left(0), 2);
        room.offer_stock(Stock::Left(5), 3);
        settled().await;
        let snap = room.snapshot();
        assert_eq!((snap.stock, snap.stock_at_ms), (Some(5), 3));
    }
}
