//! What the checkout tells the gateway, in headers of its responses to
//! admitted requests: `Waitroom-Session: end` (this buyer is done) and
//! `Waitroom-Stock: <n> | sold-out` (tickets left).
//!
//! The proxy reads them only from the room's own upstream answering a
//! request that held a live session, before the `Waitroom-*` family is
//! removed from every response, so a fan never sees them and nothing a
//! client sends can fake them. A value that cannot be read is ignored
//! with a warning naming it: a checkout's typo must not end sessions or
//! close a sale.

use hyper::HeaderMap;

pub const SESSION_HEADER: &str = "waitroom-session";
pub const STOCK_HEADER: &str = "waitroom-stock";

/// Tickets left, as the checkout says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    Left(u64),
    SoldOut,
}

/// What one response said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// `Waitroom-Session: end`.
    pub end_session: bool,
    pub stock: Option<Stock>,
}

impl Signals {
    /// Reads the checkout's headers (the last of each, if repeated).
    pub fn read(headers: &HeaderMap) -> Signals {
        let mut signals = Signals::default();
        if let Some(v) = headers.get_all(SESSION_HEADER).iter().next_back() {
            match v.to_str().map(str::trim) {
                Ok(s) if s.eq_ignore_ascii_case("end") => signals.end_session = true,
                _ => {
                    tracing::warn!(value = ?v, "ignored Waitroom-Session from the checkout: only \"end\" is understood")
                }
            }
        }
        if let Some(v) = headers.get_all(STOCK_HEADER).iter().next_back() {
            match v.to_str().ok().and_then(parse_stock) {
                Some(stock) => signals.stock = Some(stock),
                None => {
                    tracing::warn!(value = ?v, "ignored Waitroom-Stock from the checkout: a whole number of tickets or \"sold-out\"")
                }
            }
        }
        signals
    }
}

fn parse_stock(s: &str) -> Option<Stock> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("sold-out") {
        return Some(Stock::SoldOut);
    }
    // Digits only: no sign, no fraction, at most what fits.
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().map(Stock::Left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &[u8])]) -> Signals {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        Signals::read(&h)
    }

    #[test]
    fn the_checkouts_headers_are_read_and_nonsense_is_ignored() {
        assert_eq!(read(&[]), Signals::default());
        assert!(read(&[("waitroom-session", b"end")]).end_session);
        assert!(read(&[("Waitroom-Session", b" END ")]).end_session);
        for bad in [&b"ended"[..], b"", b"end, end", b"\xff"] {
            assert!(!read(&[("waitroom-session", bad)]).end_session, "{bad:?}");
        }
        assert_eq!(
            read(&[("waitroom-stock", b"1200")]).stock,
            Some(Stock::Left(1200))
        );
        assert_eq!(
            read(&[("waitroom-stock", b"0")]).stock,
            Some(Stock::Left(0))
        );
        assert_eq!(
            read(&[("waitroom-stock", b"Sold-Out")]).stock,
            Some(Stock::SoldOut)
        );
        for bad in [
            &b"-1"[..],
            b"+5",
            b"1.5",
            b"1e3",
            b"",
            b"lots",
            b"9999999999999",
            b"\xff",
        ] {
            assert_eq!(read(&[("waitroom-stock", bad)]).stock, None, "{bad:?}");
        }
        assert_eq!(
            read(&[("waitroom-stock", b"5"), ("waitroom-stock", b"4")]).stock,
            Some(Stock::Left(4)),
            "the last value counts"
        );
    }
}
