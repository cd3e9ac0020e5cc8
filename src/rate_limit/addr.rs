//! [`AddrRateLimit`]: a GCRA limit per client address, for endpoints without a key.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use super::gcra::{Decision, Gcra};
use super::memory::MemoryRateLimiter;
use crate::clock::Clock;
use crate::ids::OrgId;

/// A limit of `requests` per period for each client address, on the same GCRA and the same
/// bounded, swept state as the organization limit.
///
/// IPv4 addresses are counted one by one; IPv6 addresses per `/64`, the block one client
/// usually holds, so that a client cannot escape the limit by walking its own prefix.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::rate_limit::AddrRateLimit;
///
/// let limit = AddrRateLimit::new(2, Duration::from_secs(60));
/// let a = "203.0.113.7".parse()?;
/// assert!(limit.check(a).allowed);
/// assert!(limit.check(a).allowed);
/// assert!(!limit.check(a).allowed);
/// assert!(limit.check("203.0.113.8".parse()?).allowed);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Clone, Debug)]
pub struct AddrRateLimit {
    limiter: MemoryRateLimiter,
    gcra: Gcra,
    clock: Clock,
}

impl AddrRateLimit {
    /// `requests` per `per` for each address; a burst of `requests`, then an even refill.
    pub fn new(requests: u32, per: Duration) -> Self {
        Self {
            limiter: MemoryRateLimiter::new(),
            gcra: Gcra::new(requests, per),
            clock: Clock::coarse(),
        }
    }

    /// Read time from `clock` (tests use [`Clock::manual`]).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Spend one request of `ip`'s allowance. Refused decisions carry the `Retry-After`.
    pub fn check(&self, ip: IpAddr) -> Decision {
        self.check_at(ip, self.clock.now())
    }

    /// [`check`](Self::check) at `now`, read by the caller.
    pub(crate) fn check_at(&self, ip: IpAddr, now: crate::clock::Timestamp) -> Decision {
        self.limiter.decide(&bucket(ip), &self.gcra, 1, now)
    }

    /// Addresses with state now, and the limiter holding it (to sweep it).
    pub(crate) fn limiter(&self) -> &MemoryRateLimiter {
        &self.limiter
    }

    /// The GCRA each address gets.
    pub(crate) fn gcra(&self) -> &Gcra {
        &self.gcra
    }
}

/// The client an address counts as: an IPv4 address itself, an IPv6 address its `/64` (what
/// one host is usually given, so rotating within it gains nothing).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The limiter's key for an address: its [`client_of`], the `/64` written as such.
fn bucket(ip: IpAddr) -> OrgId {
    let mut key = String::with_capacity(24);
    match client_of(ip) {
        IpAddr::V4(v4) => {
            let _ = write!(key, "{v4}");
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let _ = write!(key, "{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]);
        }
    }
    OrgId::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    #[test]
    fn ipv6_addresses_of_one_64_share_a_bucket_and_others_do_not() {
        let (clock, _) = Clock::manual(Timestamp::from_unix_secs(1_000));
        let limit = AddrRateLimit::new(1, Duration::from_secs(60)).clock(clock);
        assert!(limit.check("2001:db8:1:2::1".parse().unwrap()).allowed);
        assert!(!limit.check("2001:db8:1:2:ffff::9".parse().unwrap()).allowed);
        assert!(limit.check("2001:db8:1:3::1".parse().unwrap()).allowed);
    }

    #[test]
    fn a_mapped_address_is_its_ipv4_bucket() {
        let (clock, _) = Clock::manual(Timestamp::from_unix_secs(1_000));
        let limit = AddrRateLimit::new(1, Duration::from_secs(60)).clock(clock);
        assert!(limit.check("192.0.2.1".parse().unwrap()).allowed);
        let refused = limit.check("::ffff:192.0.2.1".parse().unwrap());
        assert!(!refused.allowed);
        assert_eq!(refused.info.retry_after, 60);
    }

    #[test]
    fn the_allowance_refills_with_time() {
        let (clock, hand) = Clock::manual(Timestamp::from_unix_secs(1_000));
        let limit = AddrRateLimit::new(1, Duration::from_secs(60)).clock(clock);
        let a = "192.0.2.1".parse().unwrap();
        assert!(limit.check(a).allowed);
        assert!(!limit.check(a).allowed);
        hand.advance(Duration::from_secs(60));
        assert!(limit.check(a).allowed);
    }
}
