//! Times an HTTP/2 client's header blocks from the frame headers alone.
//!
//! hyper does not say when an HTTP/2 request's headers began arriving, so
//! a client could send them one byte at a time for as long as it liked,
//! each byte keeping the connection from looking idle. [`FrameClock`]
//! watches the bytes the server reads, frame header by frame header (nine
//! bytes: length, type, flags, stream id), and says when something that
//! must arrive promptly began and when it ended:
//!
//! - the client preface (24 bytes);
//! - a header block: a `HEADERS` or `PUSH_PROMISE` frame and the
//!   `CONTINUATION` frames that follow it, up to the end of the frame
//!   flagged `END_HEADERS`;
//! - any other frame but `DATA`, header and payload (settings, pings,
//!   window updates: small, sent whole);
//! - the nine bytes of any frame header.
//!
//! `DATA` payloads are request bodies and are not timed, as in HTTP/1. The
//! clock reads no HPACK and keeps no stream state: the connection's own
//! HTTP/2 implementation (hyper's) judges everything else.

use std::cmp::min;

const FRAME_HEADER_LEN: usize = 9;
const PREFACE_LEN: u8 = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// What a read did to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Nothing new: still timing the same thing, or still nothing.
    Unchanged,
    /// Something timed began in these bytes and is not complete: time it from now.
    Started,
    /// Nothing timed is in progress any more.
    Stopped,
}

/// Where a connection's incoming bytes stand, frame-wise.
#[derive(Debug)]
pub struct FrameClock {
    preface_left: u8,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: u32,
    /// A `HEADERS` or `PUSH_PROMISE` without `END_HEADERS` was seen: the
    /// block goes on in `CONTINUATION` frames.
    in_header_block: bool,
    timing: bool,
}

impl Default for FrameClock {
    fn default() -> Self {
        FrameClock::new()
    }
}

impl FrameClock {
    /// A clock for a connection whose first bytes are the client preface.
    pub fn new() -> FrameClock {
        FrameClock {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            in_header_block: false,
            timing: false,
        }
    }

    /// Follows the next bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Clock {
        let was_timing = self.timing;
        let mut began = false;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                began |= self.start();
                let take = min(usize::from(self.preface_left), bytes.len());
                bytes = &bytes[take..];
                // `take` is at most `preface_left`, a u8.
                self.preface_left -= take as u8;
                if self.preface_left == 0 {
                    self.timing = false;
                }
            } else if self.payload_left > 0 {
                let take = min(self.payload_left as usize, bytes.len());
                bytes = &bytes[take..];
                self.payload_left -= take as u32;
                if self.payload_left == 0 {
                    self.frame_ended();
                }
            } else {
                if self.header_len == 0 {
                    began |= self.start();
                }
                let take = min(FRAME_HEADER_LEN - self.header_len, bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.header_len = 0;
                    self.frame_began();
                }
            }
        }
        match (was_timing, self.timing, began) {
            (_, true, true) => Clock::Started,
            (true, false, _) => Clock::Stopped,
            _ => Clock::Unchanged,
        }
    }

    /// Starts timing unless already; true if it started.
    fn start(&mut self) -> bool {
        !std::mem::replace(&mut self.timing, true)
    }

    /// A whole frame header has arrived.
    fn frame_began(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        let length = u32::from_be_bytes([0, l0, l1, l2]);
        match kind {
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                self.in_header_block = flags & END_HEADERS == 0;
            }
            // A body's bytes come at the client's pace, as in HTTP/1.
            DATA if !self.in_header_block => self.timing = false,
            _ => {}
        }
        self.payload_left = length;
        if length == 0 {
            self.frame_ended();
        }
    }

    fn frame_ended(&mut self) {
        if !self.in_header_block {
            self.timing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn after_preface() -> FrameClock {
        let mut clock = FrameClock::new();
        assert_eq!(clock.feed(PREFACE), Clock::Unchanged);
        clock
    }

    #[test]
    fn the_preface_is_timed_from_its_first_byte_to_its_last() {
        let mut clock = FrameClock::new();
        assert_eq!(clock.feed(b"P"), Clock::Started);
        for b in &PREFACE[1..23] {
            assert_eq!(
                clock.feed(&[*b]),
                Clock::Unchanged,
                "slow bytes never restart it"
            );
        }
        assert_eq!(clock.feed(&PREFACE[23..]), Clock::Stopped);
    }

    #[test]
    fn whole_frames_in_one_read_leave_nothing_timed() {
        let mut clock = after_preface();
        let mut bytes = frame(0x4, 0, 0, &[0; 6]);
        bytes.extend(frame(HEADERS, END_HEADERS | 0x1, 1, &[0x82, 0x86, 0x84]));
        bytes.extend(frame(DATA, 0x1, 1, b"body"));
        assert_eq!(clock.feed(&bytes), Clock::Unchanged);
    }

    #[test]
    fn a_header_block_is_timed_until_the_frame_that_ends_it() {
        let mut clock = after_preface();
        let headers = frame(HEADERS, 0, 1, &[0x82; 10]);
        let continuation = frame(CONTINUATION, 0, 1, &[0x82; 10]);
        let last = frame(CONTINUATION, END_HEADERS, 1, &[0x82; 10]);
        assert_eq!(clock.feed(&headers[..1]), Clock::Started);
        for b in &headers[1..] {
            assert_eq!(clock.feed(&[*b]), Clock::Unchanged);
        }
        assert_eq!(clock.feed(&continuation), Clock::Unchanged);
        assert_eq!(clock.feed(&last[..15]), Clock::Unchanged);
        assert_eq!(clock.feed(&last[15..]), Clock::Stopped);
    }

    #[test]
    fn a_data_payload_is_not_timed_but_its_frame_header_is() {
        let mut clock = after_preface();
        let data = frame(DATA, 0, 1, &[7; 100]);
        assert_eq!(clock.feed(&data[..4]), Clock::Started);
        assert_eq!(clock.feed(&data[4..20]), Clock::Stopped);
        assert_eq!(clock.feed(&data[20..]), Clock::Unchanged);
    }

    #[test]
    fn a_new_frame_begun_in_the_same_read_restarts_the_clock() {
        let mut clock = after_preface();
        let first = frame(HEADERS, END_HEADERS, 1, &[0x82; 4]);
        let second = frame(HEADERS, END_HEADERS, 3, &[0x82; 4]);
        assert_eq!(clock.feed(&first[..3]), Clock::Started);
        let mut rest = first[3..].to_vec();
        rest.extend_from_slice(&second[..5]);
        assert_eq!(clock.feed(&rest), Clock::Started);
        assert_eq!(clock.feed(&second[5..]), Clock::Stopped);
    }

    #[test]
    fn other_frames_are_timed_whole() {
        let mut clock = after_preface();
        let ping = frame(0x6, 0, 0, &[1; 8]);
        assert_eq!(clock.feed(&ping[..12]), Clock::Started);
        assert_eq!(clock.feed(&ping[12..]), Clock::Stopped);
    }
}
