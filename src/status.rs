//! The status document: where a fan's place stands, as the waiting page,
//! `/_waitroom/status`, join, apps and every event stream tell it.
//!
//! ```text
//!   a room's snapshot + a fan's place ── status_of (gate) ──→ Status
//!   Status ── serde ──────→ JSON answers (status, join, protected routes)
//!   Status ── write_json ─→ each SSE event's `data:` (the same bytes)
//!   State ─── as_str ─────→ SSE event names
//! ```
//!
//! A low layer: it knows the document's shape, not rooms or requests.

use serde::Serialize;

/// Where a fan's place stands. Serialized as its [`State::as_str`] text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No place: none presented, or the room has none for the fan.
    #[serde(rename = "none")]
    NoPlace,
    /// In line before a scheduled opening; the draw has not been made.
    Prequeue,
    /// In line, with a position.
    Waiting,
    /// In line or called while the room is paused: the place is kept.
    Paused,
    /// Called: the fan may claim within the window.
    Admitted,
    /// The place was already exchanged for access.
    Claimed,
    /// The place is gone (turn missed, room reset, unknown).
    Expired,
    /// The room is closed to everyone not already let in.
    Closed,
    /// The fan's session has ended (JSON answer of a protected route).
    Ended,
    /// The fan holds a live session (join's answer).
    Active,
    /// Newer streams of the same place took this one's room (SSE only).
    Superseded,
}

impl State {
    /// The JSON text of the state (without quotes): plain ASCII that needs
    /// no escaping, which [`Status::write_json`] relies on.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::NoPlace => "none",
            State::Prequeue => "prequeue",
            State::Waiting => "waiting",
            State::Paused => "paused",
            State::Admitted => "admitted",
            State::Claimed => "claimed",
            State::Expired => "expired",
            State::Closed => "closed",
            State::Ended => "ended",
            State::Active => "active",
            State::Superseded => "superseded",
        }
    }
}

/// Why waits are longer than they were. Serialized as its
/// [`EtaReason::as_str`] text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EtaReason {
    /// Entry is paused.
    Paused,
    /// The promoter lowered the admit rate lately.
    RateLowered,
    /// The checkout is failing its health checks.
    CheckoutUnavailable,
    /// The checkout holds as many sessions as it may.
    CheckoutFull,
    /// Every ticket left is in someone's cart (stock 0): nobody is called
    /// until some come back.
    TicketsInCarts,
    /// The checkout is slow or failing some requests: the rate is held
    /// below the promoter's until it recovers.
    CheckoutSlow,
}

impl EtaReason {
    /// The JSON text of the reason (without quotes), plain ASCII.
    pub const fn as_str(self) -> &'static str {
        match self {
            EtaReason::Paused => "paused",
            EtaReason::RateLowered => "rate_lowered",
            EtaReason::CheckoutUnavailable => "checkout_unavailable",
            EtaReason::CheckoutFull => "checkout_full",
            EtaReason::TicketsInCarts => "tickets_in_carts",
            EtaReason::CheckoutSlow => "checkout_slow",
        }
    }
}

/// Why a room is closed. Serialized as its [`ClosedReason::as_str`] text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedReason {
    /// The promoter closed it.
    Closed,
    /// Every ticket is sold.
    SoldOut,
}

impl ClosedReason {
    /// The JSON text of the reason (without quotes), plain ASCII.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClosedReason::Closed => "closed",
            ClosedReason::SoldOut => "sold_out",
        }
    }
}

/// The status document: the same for the page, `/_waitroom/status`, join and apps.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub room: String,
    /// `waiting` | `admitted` | `paused` | `closed`, or `claimed` (place
    /// already exchanged), `expired` (place gone), `none` (no place); join
    /// and protected routes also answer `active` and `ended`.
    pub state: State,
    pub position: Option<u64>,
    pub people_ahead: Option<u64>,
    /// The typical wait (the low end of `eta_range_seconds`).
    pub eta_seconds: Option<u64>,
    /// Typical and slow case, from the pace the line really moved lately.
    pub eta_range_seconds: Option<[u64; 2]>,
    /// Why waits are longer than they were, if the room knows.
    pub eta_reason: Option<EtaReason>,
    /// A scheduled room's opening time (RFC 3339).
    pub opens_at: Option<String>,
    /// SHA-256 of the pre-queue shuffle seed (see `/_waitroom/shuffle`).
    pub shuffle_commitment: Option<String>,
    pub queue_length: u64,
    pub admit_rate_per_min: u64,
    pub serving: u64,
    /// Seconds left to claim once admitted.
    pub claim_within_secs: Option<u64>,
    /// Where to go once admitted (same host, inside the room's route).
    pub url: Option<String>,
    pub message: Option<String>,
    /// Tickets left, if the checkout or the promoter said.
    pub tickets_left: Option<u64>,
    /// The line ahead may buy every ticket left before this fan's turn
    /// (people ahead × tickets per order × the share of called fans who
    /// enter exceeds the tickets left). Never a promise either way.
    pub tickets_may_run_out: bool,
    /// Why the room is closed (`state` is `closed`).
    pub closed_reason: Option<ClosedReason>,
}

impl Status {
    /// Appends the same JSON as `serde_json::to_writer(out, self)`, byte for
    /// byte (a property test holds them equal), at about a third of the
    /// instructions: every event stream writes one per change, so at
    /// 100,000 fans the derived serializer's per-field work was most of a
    /// fan-out's user-space time (callgrind).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        fn text(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
            out.extend_from_slice(key);
            match value {
                // Escaped as serde_json escapes; a Vec cannot fail to take it.
                Some(v) => {
                    let _ = serde_json::to_writer(&mut *out, v);
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        /// A name from one of our enums: plain ASCII, written as it is.
        fn name(out: &mut Vec<u8>, key: &[u8], value: Option<&'static str>) {
            out.extend_from_slice(key);
            match value {
                Some(v) => {
                    out.push(b'"');
                    out.extend_from_slice(v.as_bytes());
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        fn number(out: &mut Vec<u8>, key: &[u8], value: Option<u64>) {
            out.extend_from_slice(key);
            match value {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        text(out, b"{\"room\":", Some(&self.room));
        name(out, b",\"state\":", Some(self.state.as_str()));
        number(out, b",\"position\":", self.position);
        number(out, b",\"people_ahead\":", self.people_ahead);
        number(out, b",\"eta_seconds\":", self.eta_seconds);
        out.extend_from_slice(b",\"eta_range_seconds\":");
        match self.eta_range_seconds {
            Some([lo, hi]) => {
                let _ = write!(out, "[{lo},{hi}]");
            }
            None => out.extend_from_slice(b"null"),
        }
        name(
            out,
            b",\"eta_reason\":",
            self.eta_reason.map(EtaReason::as_str),
        );
        text(out, b",\"opens_at\":", self.opens_at.as_deref());
        text(
            out,
            b",\"shuffle_commitment\":",
            self.shuffle_commitment.as_deref(),
        );
        number(out, b",\"queue_length\":", Some(self.queue_length));
        number(
            out,
            b",\"admit_rate_per_min\":",
            Some(self.admit_rate_per_min),
        );
        number(out, b",\"serving\":", Some(self.serving));
        number(out, b",\"claim_within_secs\":", self.claim_within_secs);
        text(out, b",\"url\":", self.url.as_deref());
        text(out, b",\"message\":", self.message.as_deref());
        number(out, b",\"tickets_left\":", self.tickets_left);
        out.extend_from_slice(if self.tickets_may_run_out {
            b",\"tickets_may_run_out\":true"
        } else {
            b",\"tickets_may_run_out\":false"
        });
        name(
            out,
            b",\"closed_reason\":",
            self.closed_reason.map(ClosedReason::as_str),
        );
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [State; 11] = [
        State::NoPlace,
        State::Prequeue,
        State::Waiting,
        State::Paused,
        State::Admitted,
        State::Claimed,
        State::Expired,
        State::Closed,
        State::Ended,
        State::Active,
        State::Superseded,
    ];
    const REASONS: [EtaReason; 6] = [
        EtaReason::CheckoutSlow,
        EtaReason::Paused,
        EtaReason::RateLowered,
        EtaReason::CheckoutUnavailable,
        EtaReason::CheckoutFull,
        EtaReason::TicketsInCarts,
    ];
    const CLOSED: [ClosedReason; 2] = [ClosedReason::Closed, ClosedReason::SoldOut];

    #[test]
    fn state_and_reason_texts_are_their_json_and_need_no_escaping() {
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        for state in STATES {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
            assert!(plain(state.as_str()), "{state:?}");
        }
        for reason in REASONS {
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.as_str())
            );
            assert!(plain(reason.as_str()), "{reason:?}");
        }
        for reason in CLOSED {
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.as_str())
            );
            assert!(plain(reason.as_str()), "{reason:?}");
        }
    }

    proptest::proptest! {
        /// The hand-written JSON is serde's, byte for byte, whatever the
        /// strings hold (quotes, backslashes, controls, non-ASCII).
        #[test]
        fn written_status_json_is_serdes(
            room in ".{0,12}",
            state in proptest::sample::select(STATES.to_vec()),
            position in proptest::option::of(proptest::num::u64::ANY),
            people_ahead in proptest::option::of(0u64..1000),
            eta_seconds in proptest::option::of(proptest::num::u64::ANY),
            eta_range in proptest::option::of((proptest::num::u64::ANY, proptest::num::u64::ANY)),
            eta_reason in proptest::option::of(proptest::sample::select(REASONS.to_vec())),
            opens_at in proptest::option::of(".{0,8}"),
            shuffle_commitment in proptest::option::of("[0-9a-f\"\\\\]{0,8}"),
            queue_length in proptest::num::u64::ANY,
            admit_rate_per_min in proptest::num::u64::ANY,
            serving in proptest::num::u64::ANY,
            claim_within_secs in proptest::option::of(proptest::num::u64::ANY),
            url in proptest::option::of("\\PC{0,10}"),
            message in proptest::option::of(".{0,10}"),
            tickets_left in proptest::option::of(proptest::num::u64::ANY),
            tickets_may_run_out in proptest::bool::ANY,
            closed_reason in proptest::option::of(proptest::sample::select(CLOSED.to_vec())),
        ) {
            let status = Status {
                room,
                state,
                position,
                people_ahead,
                eta_seconds,
                eta_range_seconds: eta_range.map(|(a, b)| [a, b]),
                eta_reason,
                opens_at,
                shuffle_commitment,
                queue_length,
                admit_rate_per_min,
                serving,
                claim_within_secs,
                url,
                message,
                tickets_left,
                tickets_may_run_out,
                closed_reason,
            };
            let mut written = Vec::new();
            status.write_json(&mut written);
            proptest::prop_assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&status).unwrap()
            );
        }
    }
}
