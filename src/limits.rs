//! The join rate limit: how fast one client address may take new places.
//!
//! Keys are an IPv4 address or an IPv6 /64 (one subscriber usually holds a
//! whole /64, so single IPv6 addresses would be free to rotate). Returning
//! fans presenting a valid place never reach the limiter: only issuing a
//! new place counts. The keyed store is trimmed by [`JoinLimiter::trim`],
//! which the app's ticker calls periodically, so memory stays bounded by the
//! clients seen within about one refill period.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// The rate-limit key of a client address: IPv4 as is, IPv6 cut to its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

pub struct JoinLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl JoinLimiter {
    pub fn new(config: &LimitsConfig) -> JoinLimiter {
        let limiter = NonZeroU32::new(config.joins_per_min_per_client).map(|per_min| {
            let burst = NonZeroU32::new(config.join_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst))
        });
        JoinLimiter {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one new place from `client`'s budget; `Err(wait)` when it is spent.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&client_key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients whose budget is full again (bounds memory).
    pub fn trim(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Clients currently remembered.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_min: u32, burst: u32) -> JoinLimiter {
        JoinLimiter::new(&LimitsConfig {
            joins_per_min_per_client: per_min,
            join_burst: burst,
        })
    }

    #[test]
    fn ipv6_addresses_share_their_slash_64_and_ipv4_stays_whole() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn burst_is_allowed_then_the_client_must_wait() {
        let l = limiter(30, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        let wait = l.check(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(
            l.check("192.0.2.2".parse().unwrap()).is_ok(),
            "others unaffected"
        );
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn zero_rate_turns_the_limit_off() {
        let l = limiter(0, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(l.check(ip).is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }
}
