//! The line itself: sequence numbers, the serving counter, who was called,
//! who claimed, who left. Pure: no I/O, no clocks — every method that cares
//! about time takes `now` (monotonic milliseconds) as an argument.
//!
//! ```text
//!   seq:   1 2 3 4 5 6 7 8 9 10 11 ...        next_seq
//!          └── ≤ serving: turn has come ──┘└── waiting: position = seq − serving
//! ```
//!
//! A place whose turn has come is *called* (it may claim within the claim
//! window), *claimed* (exchanged once for an access session), *skipped* (no
//! sign of life for `abandon_after` when its turn came) or a *no-show* (called
//! but never claimed). Skipped places and no-shows may *rejoin* within
//! `rejoin` of missing their turn: they go to a short lane served before the
//! main line, so they get the next free slot rather than the back.
//!
//! Admission pacing (how fast `serving` moves) is the `drip` module's job.
//!
//! **Pre-queue.** A room with `opens_at` collects arrivals before opening
//! (sequence numbers 1 … N, in arrival order) without positions. At opening
//! their order is shuffled (`shuffle`): the line runs in *rank* order, where
//! rank = the shuffled place for pre-queue entries and rank = seq for every
//! later arrival. `serving` and positions count ranks; without a pre-queue,
//! rank and seq are the same.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::capacity::Reason;
use crate::config::{QueueMode, RoomConfig};

pub use crate::clock::Millis;

/// Settings that the admin API may change at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub admit_rate_per_min: u64,
    pub max_active: Option<u64>,
    pub paused: bool,
    pub closed: bool,
    pub session_secs: u64,
    pub session_max_secs: u64,
    pub queue: QueueMode,
    pub claim_grace_secs: u64,
    pub abandon_after_secs: u64,
    pub rejoin_secs: u64,
    /// Wall-clock seconds when a scheduled room opens (pre-queue before).
    #[serde(default)]
    pub opens_at: Option<u64>,
    /// Wall-clock seconds when the room closes by itself.
    #[serde(default)]
    pub closes_at: Option<u64>,
    /// Tickets left, as the checkout or the promoter said last (`None`:
    /// unknown). 0 holds the drip: carts that time out give tickets back.
    #[serde(default)]
    pub stock: Option<u64>,
    /// Sold out: closed to everyone not already let in, every place kept
    /// for a reopening.
    #[serde(default)]
    pub sold_out: bool,
    /// Wall-clock ms of the stock news applied last: older news is ignored.
    #[serde(default)]
    pub stock_at_ms: u64,
}

impl Settings {
    pub fn from_config(room: &RoomConfig) -> Settings {
        Settings {
            admit_rate_per_min: room.admit_rate_per_min,
            max_active: room.max_active,
            paused: false,
            closed: false,
            session_secs: room.session_secs,
            session_max_secs: room.session_max_secs,
            queue: room.queue,
            claim_grace_secs: room.claim_grace_secs,
            abandon_after_secs: room.abandon_after_secs,
            rejoin_secs: room.rejoin_secs,
            opens_at: room.opens_at,
            closes_at: room.closes_at,
            stock: None,
            sold_out: false,
            stock_at_ms: 0,
        }
    }

    /// Closed to everyone not already let in: by the promoter, or sold out.
    pub fn shut(&self) -> bool {
        self.closed || self.sold_out
    }

    /// Every ticket is in someone's cart: nobody new is called until some
    /// come back.
    pub fn stock_held(&self) -> bool {
        self.stock == Some(0)
    }
}

/// Where a place in line stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Arrived before a scheduled opening: the place is drawn at opening.
    PreQueue,
    /// In the main line; `position` 1 is next.
    Waiting { position: u64 },
    /// Back after missing their turn, in the rejoin lane.
    Rejoining { position: u64 },
    /// Their turn has come: they may claim until `claim_by`.
    Called { claim_by: Millis },
    /// Already exchanged for an access session.
    Claimed,
    /// Missed their turn; a sign of life before `rejoin_by` puts them in the rejoin lane.
    Missed { rejoin_by: Millis },
    /// Missed their turn too long ago (or before a restart): the place is gone.
    Expired,
    /// Not a sequence number this room has issued in this epoch.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("this place's turn has not come yet")]
    NotYet,
    #[error("this place in line has already been exchanged for access")]
    AlreadyClaimed,
    #[error("this place's turn has passed")]
    Missed,
    #[error("this place in line does not exist")]
    Unknown,
    /// Paused: a called place keeps its call (its claim window stops) and
    /// may enter once the room resumes.
    #[error("the room is paused: your turn is kept, and you can enter when it resumes")]
    Paused,
    #[error("the room is closed")]
    Closed,
}

/// What survives a restart (see `store`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub epoch: u64,
    /// Every seq below this may have been issued; new ones start here after a restart.
    pub reserved_upto: u64,
    /// Highest seq known to have been issued (written lazily).
    pub issued_upto: u64,
    pub serving: u64,
    /// Every unclaimed seq ≤ this is skipped or a no-show.
    pub noshow_floor: u64,
    pub claimed: SeqBits,
    pub settings: Option<Settings>,
    /// The pre-queue shuffle seed (hex), fixed before opening.
    #[serde(default)]
    pub shuffle_seed: Option<String>,
    /// Set once the room opened: how many pre-queue entries were shuffled.
    #[serde(default)]
    pub opened_entries: Option<u64>,
    /// Sessions live at the last progress record (they hold `max_active`
    /// slots after a restart until they end or show up again).
    #[serde(default)]
    pub active_sessions: u64,
    /// Claimed places whose session the checkout ended.
    #[serde(default)]
    pub ended: SeqBits,
}

/// A change to a place whose turn has come, for replicas that mirror the
/// line's outcomes (the shared store). Times are the queue's `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Called (from the main line or the rejoin lane) at this time.
    Called(u64, Millis),
    /// Skipped or a no-show at this time; may rejoin within `rejoin_secs`.
    Missed(u64, Millis),
    /// Came back in time: in the rejoin lane.
    Rejoined(u64),
    /// Its turn is over for good (claim window and rejoin window passed).
    Gone(u64),
}

/// A growable bitset over sequence numbers (claim-once memory: one bit per place issued).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeqBits {
    words: Vec<u64>,
}

impl SeqBits {
    pub fn get(&self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }
    /// Sets the bit; returns whether it was clear.
    pub fn set(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let was_clear = self.words[w] & (1 << b) == 0;
        self.words[w] |= 1 << b;
        was_clear
    }
    pub fn clear(&mut self, seq: u64) {
        if let Some(word) = self.words.get_mut((seq / 64) as usize) {
            *word &= !(1 << (seq % 64));
        }
    }
    /// Every set bit, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64u64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u64 * 64 + b)
        })
    }

    /// The highest set bit, if any.
    pub fn highest(&self) -> Option<u64> {
        let (i, w) = self
            .words
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)?;
        Some(i as u64 * 64 + 63 - u64::from(w.leading_zeros()))
    }
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// How far back observed progress counts for ETAs.
const ADVANCE_WINDOW_MS: Millis = 60_000;
/// Observed pace is measured over windows this long...
const PACE_WINDOW_MS: Millis = 10_000;
/// ...and trusted once there are this many.
const MIN_PACE_WINDOWS: usize = 10;

#[derive(Debug, Clone)]
pub struct Queue {
    pub settings: Settings,
    epoch: u64,
    next_seq: u64,
    reserved_upto: u64,
    serving: u64,
    /// Last sign of life (seconds, on the monotonic clock) of each waiting
    /// place, indexed by `seq - serving - 1`. 0 means never seen.
    last_seen: VecDeque<u32>,
    claimed: SeqBits,
    /// Claimed places whose session the checkout ended (never resumed).
    ended: SeqBits,
    /// Called, unclaimed places: seq → when called.
    pending: HashMap<u64, Millis>,
    pending_order: VecDeque<(u64, Millis)>,
    /// Places that missed their turn: seq → when.
    missed: HashMap<u64, Millis>,
    missed_order: VecDeque<(u64, Millis)>,
    rejoin_lane: VecDeque<u64>,
    /// Every unclaimed seq ≤ this and not pending/missed is expired.
    noshow_floor: u64,
    /// Sessions counted by the runtime (access tokens in use).
    active_sessions: u64,
    admitted_total: u64,
    /// Called places that never claimed (no-shows), since this view began.
    noshows_total: u64,
    /// The checkout's health limits the rate to this (see `capacity`).
    checkout_limit: Option<(u64, Reason)>,
    /// Places called or skipped so far (main line and rejoin lane).
    advanced_total: u64,
    advance_samples: VecDeque<Sample>,
    /// False until a scheduled room opens.
    open: bool,
    /// After opening a room with a pre-queue: ranks ↔ sequence numbers.
    shuffled: Option<Shuffled>,
    /// Pending places restored after a restart: nobody knows whether their
    /// turn had really come, so they may claim but hold no `max_active`
    /// slot and cost no token (a subset of `pending`).
    restored: HashSet<u64>,
    /// Places that used their one rejoin (a place cannot rejoin forever).
    rejoined: SeqBits,
    /// Outcome changes since the last [`Queue::take_changes`], if recorded.
    changes: Option<Vec<Change>>,
    /// The room was paused or closed at the last expiry pass: no call
    /// expires, and every call gets a whole claim window when it resumes.
    held: bool,
}

/// The pre-queue's drawn order. Shared (`Arc`) so readers can map a fan's
/// sequence number to their rank without the queue lock.
#[derive(Debug, Clone)]
pub struct Shuffled {
    /// `order[r - 1]` is the sequence number at rank `r`.
    pub order: std::sync::Arc<Vec<u32>>,
    /// `rank_of[seq - 1]` is the rank of pre-queue entry `seq`.
    pub rank_of: std::sync::Arc<Vec<u32>>,
}

/// Identity, not contents: a room draws its order once, and comparing
/// snapshots every tick must not walk a million entries.
impl PartialEq for Shuffled {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.order, &other.order)
    }
}

impl Shuffled {
    pub fn new(order: Vec<u32>) -> Shuffled {
        let mut rank_of = vec![0u32; order.len()];
        for (i, &seq) in order.iter().enumerate() {
            rank_of[seq as usize - 1] = i as u32 + 1;
        }
        Shuffled {
            order: std::sync::Arc::new(order),
            rank_of: std::sync::Arc::new(rank_of),
        }
    }

    pub fn len(&self) -> u64 {
        self.order.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The rank of `seq` (later arrivals keep their number).
    pub fn rank(&self, seq: u64) -> u64 {
        match seq
            .checked_sub(1)
            .and_then(|i| self.rank_of.get(i as usize))
        {
            Some(&r) => u64::from(r),
            None => seq,
        }
    }

    /// The sequence number at `rank`.
    pub fn seq_at(&self, rank: u64) -> u64 {
        match rank.checked_sub(1).and_then(|i| self.order.get(i as usize)) {
            Some(&s) => u64::from(s),
            None => rank,
        }
    }
}

fn secs(now: Millis) -> u32 {
    // Monotonic seconds since process start; 0 is reserved for "never seen".
    u32::try_from(now / 1000 + 1).unwrap_or(u32::MAX)
}

impl Queue {
    /// A new, empty room in a fresh epoch. Nothing is reserved yet.
    pub fn new(epoch: u64, settings: Settings) -> Queue {
        let scheduled = settings.opens_at.is_some();
        let mut q = Queue {
            settings,
            epoch,
            next_seq: 1,
            reserved_upto: 1,
            serving: 0,
            last_seen: VecDeque::new(),
            claimed: SeqBits::default(),
            ended: SeqBits::default(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            missed: HashMap::new(),
            missed_order: VecDeque::new(),
            rejoin_lane: VecDeque::new(),
            noshow_floor: 0,
            active_sessions: 0,
            admitted_total: 0,
            noshows_total: 0,
            checkout_limit: None,
            advanced_total: 0,
            advance_samples: VecDeque::new(),
            open: true,
            shuffled: None,
            restored: HashSet::new(),
            rejoined: SeqBits::default(),
            changes: None,
            held: false,
        };
        q.open = !scheduled;
        q
    }

    /// Whether the room has opened (always, for rooms without `opens_at`).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The shuffled pre-queue order, once open.
    pub fn shuffled(&self) -> Option<&Shuffled> {
        self.shuffled.as_ref()
    }

    /// The rank (place in the line's order) of `seq`.
    pub fn rank(&self, seq: u64) -> u64 {
        self.shuffled.as_ref().map_or(seq, |s| s.rank(seq))
    }

    /// The sequence number at `rank`.
    pub fn seq_at(&self, rank: u64) -> u64 {
        self.shuffled.as_ref().map_or(rank, |s| s.seq_at(rank))
    }

    /// Opens a scheduled room: the pre-queue (every seq issued so far, 1 … N
    /// with N = `order.len()`) takes the drawn order. Arrivals after the cut
    /// keep their numbers as ranks.
    /// An order longer than the places issued is refused (returns false).
    pub fn open_with(&mut self, order: Vec<u32>) -> bool {
        if self.open || order.len() as u64 > self.next_seq - 1 {
            return false;
        }
        let shuffled = Shuffled::new(order);
        // Nobody is served before opening, so last_seen[i] is seq i + 1's.
        let before = std::mem::take(&mut self.last_seen);
        self.last_seen = (1..self.next_seq)
            .map(|rank| {
                let seq = shuffled.seq_at(rank);
                before.get(seq as usize - 1).copied().unwrap_or(0)
            })
            .collect();
        if !shuffled.is_empty() {
            self.shuffled = Some(shuffled);
        }
        self.open = true;
        true
    }

    /// Rebuilds a room after a restart. Places issued before the crash keep
    /// their numbers; numbers reserved but maybe never issued are skipped for
    /// new arrivals (a gap, never a reuse). Places called but unclaimed at the
    /// crash get a fresh claim window. Places known to be issued count as seen
    /// now; the ones in the unknown tail count as never seen until their fan
    /// shows a sign of life.
    pub fn restore(d: &Durable, settings: Settings, order: Option<Vec<u32>>, now: Millis) -> Queue {
        let mut q = Queue::new(d.epoch, settings);
        q.next_seq = d.reserved_upto.max(1);
        q.reserved_upto = q.next_seq;
        q.claimed = d.claimed.clone();
        q.ended = d.ended.clone();
        q.admitted_total = q.claimed.count();
        match order {
            Some(order) => {
                q.open = true;
                if !order.is_empty() {
                    q.shuffled = Some(Shuffled::new(order));
                }
            }
            // Not opened yet: a scheduled room still collecting its
            // pre-queue has a committed seed; a room that ran unscheduled
            // and got an `opens_at` later is open already (no re-draw).
            None => {
                q.open = q.settings.opens_at.is_none()
                    || (d.shuffle_seed.is_none() && (d.issued_upto > 0 || d.serving > 0))
            }
        }
        // Every claimed place had its turn, even if the last progress
        // record before a crash did not say so yet.
        let claimed_max = match &q.shuffled {
            None => q.claimed.highest().unwrap_or(0),
            Some(s) => q.claimed.ones().map(|seq| s.rank(seq)).max().unwrap_or(0),
        };
        q.serving = d.serving.max(claimed_max).min(q.next_seq - 1);
        q.noshow_floor = d.noshow_floor.min(q.serving);
        for rank in (q.noshow_floor + 1)..=q.serving {
            let seq = q.seq_at(rank);
            if !q.claimed.get(seq) {
                q.pending.insert(seq, now);
                q.pending_order.push_back((seq, now));
                q.restored.insert(seq);
            }
        }
        q.active_sessions = d.active_sessions;
        for rank in (q.serving + 1)..q.next_seq {
            let seq = q.seq_at(rank);
            q.last_seen
                .push_back(if seq <= d.issued_upto { secs(now) } else { 0 });
        }
        q
    }

    /// Outcomes of places past their turn, known exactly (the shared store
    /// keeps them), replacing the guesses of [`Queue::restore`]: called
    /// places with when they were called, missed ones with when they
    /// missed, and the rejoin lane in order.
    pub fn set_outcomes(
        &mut self,
        mut called: Vec<(u64, Millis)>,
        mut missed: Vec<(u64, Millis)>,
        lane: Vec<u64>,
    ) {
        self.pending.clear();
        self.pending_order.clear();
        self.restored.clear();
        called.retain(|&(seq, _)| !self.claimed.get(seq));
        called.sort_by_key(|&(seq, at)| (at, seq));
        for (seq, at) in called {
            self.pending.insert(seq, at);
            self.pending_order.push_back((seq, at));
        }
        self.missed.clear();
        self.missed_order.clear();
        missed.retain(|&(seq, _)| !self.claimed.get(seq));
        missed.sort_by_key(|&(seq, at)| (at, seq));
        for (seq, at) in missed {
            self.missed.insert(seq, at);
            self.missed_order.push_back((seq, at));
        }
        self.rejoin_lane = lane
            .into_iter()
            .filter(|&seq| !self.claimed.get(seq))
            .collect();
        for &seq in &self.rejoin_lane {
            self.rejoined.set(seq);
        }
    }

    /// The rejoin lane in order (first is next).
    pub fn rejoin_lane(&self) -> impl Iterator<Item = u64> + '_ {
        self.rejoin_lane.iter().copied()
    }

    /// Places up to `upto` were handed out elsewhere (the shared store's
    /// counter): they join the line, seen now.
    pub fn sync_issued(&mut self, upto: u64, now: Millis) {
        while self.next_seq <= upto {
            self.next_seq += 1;
            self.last_seen.push_back(secs(now));
        }
        self.reserved_upto = self.reserved_upto.max(self.next_seq);
    }

    /// Places in `gaps` (inclusive ranges) may never have been handed out:
    /// numbers the shared counter skipped when a replica raised it past a
    /// failover or a lost write. Like the unknown tail after a restart they
    /// count as never seen until their fan shows a sign of life, so the
    /// line skips the ones nobody holds for free instead of waiting
    /// `abandon_after_secs` for them.
    pub fn mark_unseen(&mut self, gaps: &[(u64, u64)]) {
        for &(from, to) in gaps {
            for seq in from.max(1)..=to.min(self.next_seq.saturating_sub(1)) {
                let rank = self.rank(seq);
                if rank > self.serving
                    && let Some(slot) = self.last_seen.get_mut((rank - self.serving - 1) as usize)
                {
                    *slot = 0;
                }
            }
        }
    }

    /// A claim already made durable elsewhere (the shared store checked the
    /// claim window atomically): the place is claimed whatever this view
    /// thought of it a moment ago.
    pub fn force_claim(&mut self, seq: u64) {
        if seq == 0 || seq >= self.next_seq || !self.claimed.set(seq) {
            return;
        }
        let was_pending = self.pending.remove(&seq).is_some();
        self.restored.remove(&seq);
        let was_missed = self.missed.remove(&seq).is_some();
        self.rejoin_lane.retain(|&s| s != seq);
        self.active_sessions += 1;
        self.admitted_total += 1;
        if was_pending || was_missed {
            // A claim that raced this view's no-show: its outcome is settled.
            self.record(Change::Gone(seq));
        }
    }

    pub fn durable(&self) -> Durable {
        Durable {
            epoch: self.epoch,
            reserved_upto: self.reserved_upto,
            issued_upto: self.next_seq - 1,
            serving: self.serving,
            noshow_floor: self.durable_floor(),
            claimed: self.claimed.clone(),
            settings: Some(self.settings.clone()),
            shuffle_seed: None,
            opened_entries: self
                .open
                .then(|| self.shuffled.as_ref().map_or(0, Shuffled::len)),
            active_sessions: self.active_sessions,
            ended: self.ended.clone(),
        }
    }

    /// The floor to persist: below the oldest pending place.
    pub fn durable_floor(&self) -> u64 {
        let oldest_pending = self.pending.keys().map(|&seq| self.rank(seq)).min();
        match oldest_pending {
            Some(r) => r - 1,
            None => self.serving,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn serving(&self) -> u64 {
        self.serving
    }
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn reserved_upto(&self) -> u64 {
        self.reserved_upto
    }
    /// Places issued and still waiting in the main line, plus the rejoin lane.
    pub fn queue_length(&self) -> u64 {
        self.next_seq - 1 - self.serving + self.rejoin_lane.len() as u64
    }
    pub fn pending_count(&self) -> u64 {
        self.pending.len() as u64
    }
    pub fn active_sessions(&self) -> u64 {
        self.active_sessions
    }
    /// The rate the checkout's health allows (`None`: the promoter's).
    pub fn set_checkout_limit(&mut self, limit: Option<(u64, Reason)>) {
        self.checkout_limit = limit;
    }

    /// The rate the drip admits at: the promoter's, or lower while the
    /// checkout's health limits it.
    pub fn admit_rate(&self) -> u64 {
        match self.checkout_limit {
            Some((limit, _)) => limit.min(self.settings.admit_rate_per_min),
            None => self.settings.admit_rate_per_min,
        }
    }

    /// Why the rate is what it is.
    pub fn rate_reason(&self) -> Reason {
        match self.checkout_limit {
            Some((limit, reason)) if limit < self.settings.admit_rate_per_min => reason,
            _ => Reason::PromoterRate,
        }
    }

    pub fn noshows_total(&self) -> u64 {
        self.noshows_total
    }

    pub fn admitted_total(&self) -> u64 {
        self.admitted_total
    }
    pub fn rejoin_len(&self) -> u64 {
        self.rejoin_lane.len() as u64
    }

    /// Sessions in use plus places called and still holding a slot.
    pub fn occupied(&self) -> u64 {
        self.active_sessions + (self.pending.len() - self.restored.len()) as u64
    }

    /// Room left under `max_active` (`u64::MAX` when uncapped).
    pub fn free_slots(&self) -> u64 {
        match self.settings.max_active {
            Some(cap) => cap.saturating_sub(self.occupied()),
            None => u64::MAX,
        }
    }

    /// The runtime reports how many sessions are live after expiring old ones.
    pub fn set_active_sessions(&mut self, n: u64) {
        self.active_sessions = n;
    }

    /// Numbers that may be handed out without another store write.
    pub fn reserved_left(&self) -> u64 {
        self.reserved_upto - self.next_seq
    }

    /// No further number may be handed out (graceful shutdown).
    pub fn seal(&mut self) {
        self.reserved_upto = self.next_seq;
    }

    /// Records that the store durably reserved every seq below `upto`.
    pub fn extend_reservation(&mut self, upto: u64) {
        self.reserved_upto = self.reserved_upto.max(upto);
    }

    /// Hands out the next place, if one is reserved.
    pub fn try_issue(&mut self, now: Millis) -> Option<u64> {
        if self.next_seq >= self.reserved_upto {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.last_seen.push_back(secs(now));
        Some(seq)
    }

    /// Nobody is waiting: the next issued place would be next in line.
    pub fn nobody_waiting(&self) -> bool {
        self.serving + 1 == self.next_seq && self.rejoin_lane.is_empty()
    }

    /// Where `seq` stands now.
    pub fn place(&self, seq: u64, now: Millis) -> Place {
        if seq == 0 || seq >= self.next_seq {
            return Place::Unknown;
        }
        if !self.open {
            return Place::PreQueue;
        }
        let rank = self.rank(seq);
        if rank > self.serving {
            return Place::Waiting {
                position: rank - self.serving,
            };
        }
        if self.claimed.get(seq) {
            return Place::Claimed;
        }
        if let Some(&at) = self.pending.get(&seq) {
            return Place::Called {
                claim_by: at + self.settings.claim_grace_secs * 1000,
            };
        }
        if let Some(i) = self.rejoin_lane.iter().position(|&s| s == seq) {
            return Place::Rejoining {
                position: i as u64 + 1,
            };
        }
        if let Some(&at) = self.missed.get(&seq) {
            let rejoin_by = at + self.settings.rejoin_secs * 1000;
            if now < rejoin_by {
                return Place::Missed { rejoin_by };
            }
        }
        Place::Expired
    }

    /// A sign of life from the fan holding `seq` (page, status, SSE). A
    /// missed place that comes back in time joins the rejoin lane.
    pub fn touch(&mut self, seq: u64, now: Millis) -> Place {
        let rank = self.rank(seq);
        if rank > self.serving && seq < self.next_seq {
            let i = (rank - self.serving - 1) as usize;
            if let Some(slot) = self.last_seen.get_mut(i) {
                *slot = secs(now);
            }
        }
        let place = self.place(seq, now);
        if let Place::Missed { .. } = place {
            return self.rejoin(seq, now);
        }
        place
    }

    /// A missed place that came back in time joins the rejoin lane (once per
    /// place: a second miss is final). Returns where it stands.
    pub fn rejoin(&mut self, seq: u64, now: Millis) -> Place {
        if !matches!(self.place(seq, now), Place::Missed { .. }) {
            return self.place(seq, now);
        }
        self.missed.remove(&seq);
        self.rejoined.set(seq);
        self.rejoin_lane.push_back(seq);
        self.record(Change::Rejoined(seq));
        Place::Rejoining {
            position: self.rejoin_lane.len() as u64,
        }
    }

    /// Starts recording outcome changes (see [`Change`]).
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// The outcome changes recorded since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, change: Change) {
        if let Some(c) = self.changes.as_mut() {
            c.push(change);
        }
    }

    /// Whether the head of the main line has shown no sign of life for `abandon_after`.
    pub fn head_abandoned(&self, now: Millis) -> bool {
        match self.last_seen.front() {
            Some(&seen) => {
                seen == 0
                    || u64::from(secs(now).saturating_sub(seen)) >= self.settings.abandon_after_secs
            }
            None => false,
        }
    }

    /// The head of the main line's turn comes: it is called.
    pub fn call_head(&mut self, now: Millis) -> Option<u64> {
        if self.serving + 1 >= self.next_seq {
            return None;
        }
        self.serving += 1;
        self.last_seen.pop_front();
        let seq = self.seq_at(self.serving);
        self.mark_called(seq, now);
        Some(seq)
    }

    /// The head of the main line left before its turn: skipped, free of charge.
    pub fn skip_head(&mut self, now: Millis) -> Option<u64> {
        if self.serving + 1 >= self.next_seq {
            return None;
        }
        self.serving += 1;
        self.advanced_total += 1;
        self.last_seen.pop_front();
        let seq = self.seq_at(self.serving);
        self.mark_missed(seq, now);
        Some(seq)
    }

    /// The first fan in the rejoin lane gets the next free slot.
    pub fn call_rejoiner(&mut self, now: Millis) -> Option<u64> {
        let seq = self.rejoin_lane.pop_front()?;
        self.mark_called(seq, now);
        Some(seq)
    }

    fn mark_called(&mut self, seq: u64, now: Millis) {
        self.advanced_total += 1;
        self.pending.insert(seq, now);
        self.pending_order.push_back((seq, now));
        self.record(Change::Called(seq, now));
    }

    fn mark_missed(&mut self, seq: u64, now: Millis) {
        if self.settings.rejoin_secs > 0 && !self.rejoined.get(seq) {
            self.missed.insert(seq, now);
            self.missed_order.push_back((seq, now));
            self.record(Change::Missed(seq, now));
        } else {
            self.record(Change::Gone(seq));
        }
    }

    /// Called places whose claim window has closed become no-shows; their
    /// slot is freed. Returns how many. Also forgets missed places past
    /// their rejoin window.
    ///
    /// While the room is paused or closed no call expires (nobody may claim
    /// then); when it resumes, every call still pending starts a whole claim
    /// window again, so a fan called just before a pause is not cut short.
    pub fn expire_pending(&mut self, now: Millis) -> u64 {
        if self.is_held() {
            self.held = true;
        } else if std::mem::take(&mut self.held) {
            self.recall_pending(now);
        }
        let grace = self.settings.claim_grace_secs * 1000;
        let mut noshows = 0;
        while let Some(&(seq, at)) = self.pending_order.front() {
            if at + grace > now || self.held {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&seq) == Some(&at) {
                self.pending.remove(&seq);
                self.mark_missed(seq, now);
                // A restored place never cost a token: nothing to refund.
                if !self.restored.remove(&seq) {
                    noshows += 1;
                    self.noshows_total += 1;
                }
            }
        }
        let rejoin = self.settings.rejoin_secs * 1000;
        while let Some(&(seq, at)) = self.missed_order.front() {
            if at + rejoin > now {
                break;
            }
            self.missed_order.pop_front();
            if self.missed.get(&seq) == Some(&at) {
                self.missed.remove(&seq);
                self.record(Change::Gone(seq));
            }
        }
        noshows
    }

    /// Paused or closed: called places may not enter, and keep their call.
    pub fn is_held(&self) -> bool {
        self.settings.paused || self.settings.shut()
    }

    /// Every pending call is made again at `now` (after a pause or closing).
    fn recall_pending(&mut self, now: Millis) {
        let mut pending: Vec<u64> = self.pending_order.drain(..).map(|(seq, _)| seq).collect();
        let mut seen = HashSet::new();
        pending.retain(|&seq| self.pending.contains_key(&seq) && seen.insert(seq));
        for seq in pending {
            self.pending.insert(seq, now);
            self.pending_order.push_back((seq, now));
            self.record(Change::Called(seq, now));
        }
    }

    /// Exchanges a called place for access, once. The runtime must persist
    /// the claim before handing out the access token, and call
    /// [`Queue::unclaim`] if it cannot.
    pub fn claim(&mut self, seq: u64, now: Millis) -> Result<(), ClaimError> {
        match self.place(seq, now) {
            Place::Called { .. } if self.settings.shut() => Err(ClaimError::Closed),
            Place::Called { .. } if self.settings.paused => Err(ClaimError::Paused),
            Place::Called { .. } => {
                self.claimed.set(seq);
                self.pending.remove(&seq);
                self.restored.remove(&seq);
                self.active_sessions += 1;
                self.admitted_total += 1;
                Ok(())
            }
            Place::Claimed => Err(ClaimError::AlreadyClaimed),
            Place::PreQueue | Place::Waiting { .. } | Place::Rejoining { .. } => {
                Err(ClaimError::NotYet)
            }
            Place::Missed { .. } | Place::Expired => Err(ClaimError::Missed),
            Place::Unknown => Err(ClaimError::Unknown),
        }
    }

    /// Undoes a claim that could not be persisted: the place is called again.
    pub fn unclaim(&mut self, seq: u64, now: Millis) {
        self.claimed.clear(seq);
        self.active_sessions = self.active_sessions.saturating_sub(1);
        self.admitted_total = self.admitted_total.saturating_sub(1);
        self.pending.insert(seq, now);
        self.pending_order.push_back((seq, now));
    }

    pub fn is_claimed(&self, seq: u64) -> bool {
        self.claimed.get(seq)
    }

    /// The checkout said `seq`'s session is over: it never resumes. True
    /// the first time, for a claimed place.
    pub fn end_session(&mut self, seq: u64) -> bool {
        self.claimed.get(seq) && self.ended.set(seq)
    }

    /// A claimed place whose session the checkout ended.
    pub fn session_ended(&self, seq: u64) -> bool {
        self.ended.get(seq)
    }

    /// Records line progress once a second, for ETAs from what really happens.
    pub fn sample_progress(&mut self, now: Millis) {
        if self
            .advance_samples
            .back()
            .is_some_and(|s| now < s.at + 1000)
        {
            return;
        }
        self.advance_samples.push_back(Sample {
            at: now,
            advanced: self.advanced_total,
            busy: self.queue_length() > 0
                && !self.settings.paused
                && !self.settings.shut()
                && !self.settings.stock_held(),
        });
        while self
            .advance_samples
            .front()
            .is_some_and(|s| s.at + ADVANCE_WINDOW_MS < now)
        {
            self.advance_samples.pop_front();
        }
    }

    /// Places per second the line moved in each 10-second window of the last
    /// minute during which people were waiting (skips count: they shorten
    /// everyone's wait), sorted ascending.
    fn window_paces(&self) -> Vec<f64> {
        let samples: Vec<&Sample> = self.advance_samples.iter().collect();
        let mut paces = Vec::new();
        for (i, a) in samples.iter().enumerate() {
            let Some(b) = samples[i..].iter().find(|b| b.at >= a.at + PACE_WINDOW_MS) else {
                break;
            };
            if a.busy && b.busy {
                paces.push((b.advanced - a.advanced) as f64 * 1000.0 / (b.at - a.at) as f64);
            }
        }
        paces.sort_by(f64::total_cmp);
        paces
    }

    /// Places per minute the line moved lately (median window), if known.
    pub fn observed_advance_per_min(&self) -> Option<f64> {
        let paces = self.window_paces();
        (paces.len() >= MIN_PACE_WINDOWS).then(|| paces[paces.len() / 2] * 60.0)
    }

    /// Places per second for the typical case (median recent pace) and a
    /// slow case (10th-percentile pace). Before there is a minute of
    /// history, the configured rate is the typical case and 25% slower the
    /// slow one. `None` while paused or closed.
    pub fn paces(&self) -> Option<(f64, f64)> {
        if self.settings.paused || self.settings.shut() || self.settings.stock_held() {
            return None;
        }
        let configured = self.admit_rate() as f64 / 60.0;
        let fallback = (configured, configured / 1.25);
        let paces = self.window_paces();
        if paces.len() < MIN_PACE_WINDOWS {
            return Some(fallback);
        }
        let p50 = paces[paces.len() / 2];
        let p10 = paces[paces.len() / 10];
        if p50 <= 0.0 {
            return Some(fallback);
        }
        Some((p50, p10.max(p50 / 4.0)))
    }

    /// The wait for a place at `position` as a (typical, slow) range.
    pub fn eta_range_secs(&self, position: u64) -> Option<(u64, u64)> {
        self.paces().map(|p| eta_range(position, p))
    }

    /// The typical wait (the low end of [`Queue::eta_range_secs`]).
    pub fn eta_secs(&self, position: u64) -> Option<u64> {
        self.eta_range_secs(position).map(|(lo, _)| lo)
    }
}

/// Seconds until `position` is reached at the (typical, slow) paces.
pub fn eta_range(position: u64, (typical, slow): (f64, f64)) -> (u64, u64) {
    let lo = (position as f64 / typical).ceil() as u64;
    let hi = ((position as f64 / slow).ceil() as u64).max(lo);
    (lo, hi)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Millis,
    advanced: u64,
    busy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn settings() -> Settings {
        Settings {
            admit_rate_per_min: 600,
            max_active: None,
            paused: false,
            closed: false,
            session_secs: 600,
            session_max_secs: 1800,
            queue: QueueMode::Always,
            claim_grace_secs: 60,
            abandon_after_secs: 30,
            rejoin_secs: 300,
            opens_at: None,
            closes_at: None,
            stock: None,
            sold_out: false,
            stock_at_ms: 0,
        }
    }

    fn queue_with(n: u64) -> Queue {
        let mut q = Queue::new(1, settings());
        q.extend_reservation(n + 1);
        for _ in 0..n {
            q.try_issue(0).unwrap();
        }
        q
    }

    #[test]
    fn issues_increasing_numbers_only_within_reservation() {
        let mut q = Queue::new(1, settings());
        assert_eq!(q.try_issue(0), None);
        q.extend_reservation(3);
        assert_eq!(q.try_issue(0), Some(1));
        assert_eq!(q.try_issue(0), Some(2));
        assert_eq!(q.try_issue(0), None);
    }

    #[test]
    fn position_is_sequence_minus_serving() {
        let mut q = queue_with(5);
        assert_eq!(q.place(3, 0), Place::Waiting { position: 3 });
        q.call_head(0);
        assert_eq!(q.place(3, 0), Place::Waiting { position: 2 });
        assert_eq!(q.queue_length(), 4);
        assert!(matches!(q.place(1, 0), Place::Called { .. }));
        assert_eq!(q.place(6, 0), Place::Unknown);
        assert_eq!(q.place(0, 0), Place::Unknown);
    }

    #[test]
    fn numbers_in_a_gap_count_as_never_seen_until_their_fan_shows_life() {
        let mut q = Queue::new(1, settings());
        q.sync_issued(6, 1_000);
        q.mark_unseen(&[(2, 3), (5, 9)]);
        // 1 was seen; 2 and 3 are in the gap; 4 was seen.
        assert!(!q.head_abandoned(1_000));
        q.call_head(1_000);
        assert!(q.head_abandoned(1_000), "2 nobody holds: skipped at once");
        q.touch(3, 1_000);
        q.skip_head(1_000);
        assert!(
            !q.head_abandoned(1_000),
            "3's fan showed life: it waits its turn"
        );
    }

    #[test]
    fn a_place_is_claimed_once() {
        let mut q = queue_with(2);
        assert_eq!(q.claim(1, 0), Err(ClaimError::NotYet));
        q.call_head(0);
        assert_eq!(q.claim(1, 0), Ok(()));
        assert_eq!(q.claim(1, 0), Err(ClaimError::AlreadyClaimed));
        assert_eq!(q.place(1, 0), Place::Claimed);
        assert_eq!(q.active_sessions(), 1);
    }

    #[test]
    fn unclaimed_place_becomes_a_no_show_and_may_rejoin_for_the_next_slot() {
        let mut q = queue_with(3);
        q.call_head(0);
        assert_eq!(q.occupied(), 1);
        assert_eq!(q.expire_pending(59_999), 0);
        assert_eq!(q.expire_pending(60_000), 1);
        assert_eq!(q.occupied(), 0);
        assert!(matches!(q.place(1, 60_000), Place::Missed { .. }));
        // Returns within rejoin_secs: goes ahead of the main line.
        assert_eq!(q.touch(1, 100_000), Place::Rejoining { position: 1 });
        assert_eq!(q.call_rejoiner(100_000), Some(1));
        assert!(matches!(q.place(1, 100_000), Place::Called { .. }));
    }

    #[test]
    fn a_place_rejoins_once_and_a_second_miss_is_final() {
        let mut q = queue_with(3);
        q.skip_head(0);
        assert_eq!(q.touch(1, 1_000), Place::Rejoining { position: 1 });
        assert_eq!(q.call_rejoiner(1_000), Some(1));
        // Called again but never claims: a no-show for the second time.
        q.expire_pending(61_000);
        assert_eq!(q.place(1, 61_000), Place::Expired);
        assert_eq!(
            q.touch(1, 62_000),
            Place::Expired,
            "no second trip through the rejoin lane"
        );
        assert_eq!(q.rejoin_len(), 0);
    }

    #[test]
    fn restored_calls_hold_no_slot_and_refund_no_token() {
        let mut s = settings();
        s.max_active = Some(2);
        let mut q = Queue::new(1, s.clone());
        q.extend_reservation(10);
        for _ in 0..5 {
            q.try_issue(0).unwrap();
        }
        // Place 1 was called and place 2 skipped before the crash; the
        // durable floor says nothing about which was which.
        q.call_head(0);
        q.skip_head(0);
        let mut d = q.durable();
        d.noshow_floor = 0;
        let mut r = Queue::restore(&d, s, None, 5_000);
        assert!(matches!(r.place(1, 5_000), Place::Called { .. }));
        assert!(matches!(r.place(2, 5_000), Place::Called { .. }));
        assert_eq!(r.occupied(), 0, "restored calls must not fill max_active");
        assert_eq!(r.free_slots(), 2);
        assert_eq!(r.claim(1, 6_000), Ok(()));
        assert_eq!(r.occupied(), 1, "a claimed one is a real session");
        assert_eq!(
            r.expire_pending(65_000),
            0,
            "a restored no-show cost no token, so none comes back"
        );
    }

    #[test]
    fn an_order_longer_than_the_prequeue_is_refused() {
        let mut s = settings();
        s.opens_at = Some(1_000);
        let mut q = Queue::new(1, s);
        q.extend_reservation(10);
        q.try_issue(0).unwrap();
        assert!(!q.open_with(vec![2, 1]), "drawn for a longer pre-queue");
        assert!(!q.is_open());
        assert!(q.open_with(vec![1]));
    }

    #[test]
    fn recorded_changes_tell_what_happened_to_places_past_their_turn() {
        let mut q = queue_with(3);
        q.record_changes();
        q.call_head(10);
        q.skip_head(20);
        q.touch(2, 30);
        q.expire_pending(60_010);
        assert_eq!(
            q.take_changes(),
            vec![
                Change::Called(1, 10),
                Change::Missed(2, 20),
                Change::Rejoined(2),
                Change::Missed(1, 60_010),
            ]
        );
        assert!(q.take_changes().is_empty());
    }

    #[test]
    fn a_claim_made_elsewhere_wins_over_a_no_show_seen_here() {
        let mut q = queue_with(2);
        q.record_changes();
        q.call_head(0);
        // The shared store took the claim just inside the window; this view
        // expired the place in the same instant.
        q.expire_pending(60_000);
        q.take_changes();
        q.force_claim(1);
        assert_eq!(q.place(1, 60_001), Place::Claimed);
        assert_eq!(q.take_changes(), vec![Change::Gone(1)]);
        assert_eq!(q.admitted_total(), 1);
        q.force_claim(1);
        assert_eq!(q.admitted_total(), 1, "once");
    }

    #[test]
    fn missed_place_expires_after_rejoin_window() {
        let mut q = queue_with(1);
        q.skip_head(0);
        assert!(matches!(q.place(1, 299_999), Place::Missed { .. }));
        assert_eq!(q.place(1, 300_000), Place::Expired);
        q.expire_pending(300_000);
        assert_eq!(q.touch(1, 300_001), Place::Expired);
    }

    #[test]
    fn head_is_abandoned_without_sign_of_life() {
        let mut q = queue_with(2);
        assert!(!q.head_abandoned(29_000));
        assert!(q.head_abandoned(31_000));
        q.touch(1, 31_000);
        assert!(!q.head_abandoned(31_000));
    }

    #[test]
    fn restore_leaves_a_gap_and_keeps_claims() {
        let mut q = queue_with(10);
        q.extend_reservation(100);
        q.call_head(0);
        q.call_head(0);
        q.claim(1, 0).unwrap();
        let mut d = q.durable();
        d.issued_upto = 10;
        let r = Queue::restore(&d, settings(), None, 5_000);
        assert_eq!(
            r.next_seq(),
            100,
            "numbers reserved before the crash are never reused"
        );
        assert_eq!(r.place(1, 5_000), Place::Claimed);
        assert!(matches!(r.place(2, 5_000), Place::Called { claim_by } if claim_by == 65_000));
        assert_eq!(r.place(3, 5_000), Place::Waiting { position: 1 });
        assert!(
            !r.head_abandoned(5_000),
            "issued places count as seen at restart"
        );
        // The unknown tail counts as never seen.
        let mut r2 = r.clone();
        for _ in 0..8 {
            r2.call_head(5_000);
        }
        assert!(r2.head_abandoned(5_000));
    }

    #[test]
    fn prequeue_has_no_positions_until_opening_then_follows_the_draw() {
        let mut s = settings();
        s.opens_at = Some(1_000);
        let mut q = Queue::new(1, s);
        q.extend_reservation(100);
        for _ in 0..5 {
            q.try_issue(0).unwrap();
        }
        assert!(!q.is_open());
        assert_eq!(q.place(3, 0), Place::PreQueue);
        assert_eq!(q.claim(3, 0), Err(ClaimError::NotYet));
        // Seq 3 showed a sign of life before opening; the others did not since issue.
        q.touch(3, 40_000);
        q.open_with(vec![3, 5, 1, 4, 2]);
        let late = q.try_issue(41_000).unwrap();
        assert_eq!(late, 6);
        assert_eq!(q.place(3, 41_000), Place::Waiting { position: 1 });
        assert_eq!(q.place(2, 41_000), Place::Waiting { position: 5 });
        assert_eq!(
            q.place(6, 41_000),
            Place::Waiting { position: 6 },
            "later arrivals queue after"
        );
        // Liveness moved with the places: seq 3 (now first) is alive, seq 5 (second) is not.
        assert!(!q.head_abandoned(41_000));
        assert_eq!(q.call_head(41_000), Some(3));
        assert!(q.head_abandoned(41_000));
        assert_eq!(q.skip_head(41_000), Some(5));
        assert_eq!(q.place(1, 41_000), Place::Waiting { position: 1 });
    }

    #[test]
    fn an_opened_prequeue_survives_restore() {
        let mut s = settings();
        s.opens_at = Some(1_000);
        let mut q = Queue::new(1, s.clone());
        q.extend_reservation(10);
        for _ in 0..4 {
            q.try_issue(0).unwrap();
        }
        q.open_with(vec![4, 2, 3, 1]);
        q.call_head(0);
        q.claim(4, 0).unwrap();
        let mut d = q.durable();
        d.issued_upto = 4;
        assert_eq!(d.opened_entries, Some(4));
        let r = Queue::restore(&d, s, Some(vec![4, 2, 3, 1]), 5_000);
        assert!(r.is_open());
        assert_eq!(r.place(4, 5_000), Place::Claimed);
        assert_eq!(r.place(2, 5_000), Place::Waiting { position: 1 });
        assert_eq!(r.place(1, 5_000), Place::Waiting { position: 3 });
    }

    #[test]
    fn bitset_sets_and_clears() {
        let mut b = SeqBits::default();
        assert!(b.set(1000));
        assert!(!b.set(1000));
        assert!(b.get(1000) && !b.get(999));
        b.clear(1000);
        assert!(!b.get(1000));
        assert_eq!(b.count(), 0);
        assert_eq!(b.highest(), None);
        b.set(3);
        b.set(130);
        assert_eq!(b.highest(), Some(130));
    }

    #[test]
    fn eta_is_a_range_from_the_observed_pace() {
        let mut q = queue_with(100_000);
        // Before any history: the configured rate (10/s), slow case 25% more.
        assert_eq!(q.eta_range_secs(100), Some((10, 13)));
        for t in 0..=60 {
            // The line moves 20 places a second (skips included)...
            for _ in 0..20 {
                q.skip_head(t * 1000);
            }
            q.sample_progress(t * 1000);
        }
        // ...so the typical wait follows it, not the configured rate.
        let (lo, hi) = q.eta_range_secs(100).unwrap();
        assert_eq!(lo, 5);
        assert!(hi >= lo);
        assert_eq!(q.observed_advance_per_min(), Some(1200.0));
        q.settings.paused = true;
        assert_eq!(q.eta_range_secs(100), None);
    }

    #[test]
    fn a_pause_holds_called_places_and_resuming_gives_a_whole_claim_window() {
        let mut q = queue_with(2);
        q.record_changes();
        q.call_head(0);
        q.settings.paused = true;
        assert_eq!(q.expire_pending(1_000), 0);
        assert_eq!(q.claim(1, 1_000), Err(ClaimError::Paused));
        // Long past the 60 s window: still called, not a no-show.
        assert_eq!(q.expire_pending(500_000), 0);
        assert!(matches!(q.place(1, 500_000), Place::Called { .. }));
        q.settings.paused = false;
        q.settings.closed = true;
        assert_eq!(q.claim(1, 500_000), Err(ClaimError::Closed));
        assert_eq!(q.expire_pending(500_000), 0);
        q.settings.closed = false;
        q.take_changes();
        // Resumed: a whole window from now, told to the replicas as a new call.
        assert_eq!(q.expire_pending(600_000), 0);
        assert_eq!(q.take_changes(), vec![Change::Called(1, 600_000)]);
        assert_eq!(q.place(1, 600_000), Place::Called { claim_by: 660_000 });
        assert_eq!(q.expire_pending(659_999), 0);
        assert_eq!(q.claim(1, 659_999), Ok(()));
    }

    #[test]
    fn a_call_not_claimed_after_resuming_is_a_no_show_as_before() {
        let mut q = queue_with(1);
        q.call_head(0);
        q.settings.paused = true;
        q.expire_pending(10_000);
        q.settings.paused = false;
        q.expire_pending(20_000);
        assert_eq!(q.expire_pending(79_999), 0);
        assert_eq!(q.expire_pending(80_000), 1);
        assert!(matches!(q.place(1, 80_000), Place::Missed { .. }));
    }

    #[test]
    fn an_uneven_pace_widens_the_range() {
        let mut q = queue_with(100_000);
        for t in 0..=60u64 {
            // Fast at first, slower lately.
            let per_sec = if t < 30 { 20 } else { 5 };
            for _ in 0..per_sec {
                q.skip_head(t * 1000);
            }
            q.sample_progress(t * 1000);
        }
        let (lo, hi) = q.eta_range_secs(1000).unwrap();
        assert!(hi > lo, "{lo}..{hi}");
        assert_eq!(hi, 200, "the slow case follows the slow windows (5/s)");
    }

    #[test]
    fn an_empty_line_does_not_count_as_a_slow_one() {
        let mut q = Queue::new(1, settings());
        q.extend_reservation(10);
        for t in 0..=60 {
            q.sample_progress(t * 1000);
        }
        assert_eq!(q.observed_advance_per_min(), None);
    }
}
