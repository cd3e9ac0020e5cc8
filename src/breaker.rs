//! [`Breaker`]: fail fast while a backend is down (a circuit breaker).
//!
//! A backend that refuses connections or hangs makes every call that reaches it wait for its
//! timeout, so requests pile up at (request rate × timeout). A breaker counts consecutive
//! failures; at [`BreakerConfig::failures`] of them it *opens* and refuses calls at once, without
//! touching the backend, for [`BreakerConfig::cool_down`]. Then it is *half-open*: exactly one
//! call (the probe) goes through while the others are still refused. The probe's success closes
//! the breaker; its failure opens it for another cool-down.
//!
//! [`CachedStore`](crate::CachedStore) puts one in front of its backend store (a miss while open
//! is answered `503 auth_unavailable` with `Retry-After` at once; hits keep working), and the
//! Redis rate limiter puts one in front of Redis (the layer's
//! [`OnBackendError`](crate::OnBackendError) policy then decides at once).
//!
//! The state is a few atomics, shared by the clones of a breaker: no lock on any path.
//! Transitions are logged with `tracing` (`warn` on open, `info` on close), naming the breaker and
//! nothing else: no key material ever reaches a breaker.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, Timestamp, duration_nanos};

/// When a [`Breaker`] opens, and for how long.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::BreakerConfig;
///
/// // Open after 3 consecutive failures, for 10 s.
/// let config = BreakerConfig::default()
///     .failures(3)
///     .cool_down(Duration::from_secs(10));
/// assert!(config.is_enabled());
/// assert!(!BreakerConfig::disabled().is_enabled());
/// ```
///
/// The defaults (5 failures, 5 s) keep a single blip from tripping it and bound an outage's cost
/// to five timeouts per cool-down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    failures: u32,
    cool_down: Duration,
}

impl Default for BreakerConfig {
    /// Open after 5 consecutive failures, for 5 s.
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(5),
        }
    }
}

impl BreakerConfig {
    /// A breaker that never opens: every call goes to the backend.
    pub fn disabled() -> Self {
        Self {
            failures: 0,
            cool_down: Duration::ZERO,
        }
    }

    /// Open after this many consecutive failures (default 5; zero never opens).
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    /// How long an open breaker refuses calls before letting one probe through (default 5 s;
    /// zero never opens).
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }

    /// Whether a breaker with this configuration can open (non-zero failures and cool-down).
    pub fn is_enabled(&self) -> bool {
        self.failures > 0 && !self.cool_down.is_zero()
    }
}

/// Where a [`Breaker`] stands; see [`Breaker::state`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go to the backend.
    #[default]
    Closed,
    /// Calls are refused at once, until the cool-down ends.
    Open,
    /// The cool-down has ended: the next call is the probe (or the probe is under way and the
    /// other calls are refused).
    HalfOpen,
}

/// The state and counters of a [`Breaker`], for metrics; see [`Breaker::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// Where the breaker stands now.
    pub state: BreakerState,
    /// Times it opened (a failed probe opens it again and counts).
    pub opened: u64,
    /// Calls refused without touching the backend.
    pub refused: u64,
    /// Probes let through after a cool-down.
    pub probes: u64,
}

/// A call refused by an open [`Breaker`].
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{Breaker, BreakerConfig, Clock, Timestamp};
///
/// let (clock, _manual) = Clock::manual(Timestamp::from_unix_secs(1_000));
/// let config = BreakerConfig::default().failures(1).cool_down(Duration::from_millis(2_500));
/// let breaker = Breaker::new("example", config, clock);
/// breaker.try_acquire().unwrap().failure();
/// let refused = breaker.try_acquire().unwrap_err();
/// assert_eq!(refused.retry_after(), Duration::from_millis(2_500));
/// assert_eq!(refused.retry_after_secs(), 3); // rounded up, for `Retry-After`
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit open after repeated failures; not tried for {retry_after:?}")]
pub struct Refused {
    retry_after: Duration,
}

impl Refused {
    /// What is left of the cool-down (zero while another call is the probe).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up, at least 1: the value of
    /// a `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        duration_nanos(self.retry_after)
            .div_ceil(NANOS_PER_SEC)
            .max(1)
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A circuit breaker: fail fast while a backend is down. See the [module docs](self).
///
/// Cheap to clone; clones share one state. Ask it before each backend call with
/// [`try_acquire`](Self::try_acquire), and report the call's outcome on the [`Permit`]:
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{Breaker, BreakerConfig, BreakerState, Clock, Timestamp};
///
/// let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(1_000));
/// let breaker = Breaker::new("example backend", BreakerConfig::default(), clock);
/// for _ in 0..5 {
///     let permit = breaker.try_acquire().expect("closed");
///     // ... the backend call fails ...
///     permit.failure();
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(breaker.try_acquire().is_err(), "refused at once");
///
/// manual.advance(Duration::from_secs(5));
/// let probe = breaker.try_acquire().expect("one probe after the cool-down");
/// assert!(breaker.try_acquire().is_err(), "the others wait for the probe");
/// probe.success();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// ```
///
/// A [`Permit`] dropped without an outcome (its call was cancelled, e.g. its request timed out)
/// counts as a failure: a backend that hangs is as down as one that refuses.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    config: BreakerConfig,
    clock: Clock,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// Nanoseconds since the epoch until which calls are refused; 0 = closed.
    open_until: AtomicU64,
    /// A probe is under way (half-open).
    probing: AtomicBool,
    opened: AtomicU64,
    refused: AtomicU64,
    probes: AtomicU64,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker named `name` (in its log lines), reading the time from `clock`.
    pub fn new(name: &'static str, config: BreakerConfig, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                config,
                clock,
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                probing: AtomicBool::new(false),
                opened: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                probes: AtomicU64::new(0),
            }),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> BreakerConfig {
        self.inner.config
    }

    /// May a call go to the backend now? A [`Permit`] to report its outcome on, or the refusal
    /// with what is left of the cool-down.
    pub fn try_acquire(&self) -> Result<Permit, Refused> {
        self.try_acquire_at(self.inner.clock.now())
    }

    /// [`try_acquire`](Self::try_acquire) at `now`, for callers that read their own clock.
    pub fn try_acquire_at(&self, now: Timestamp) -> Result<Permit, Refused> {
        let i = &*self.inner;
        let now_ns = now.as_unix_nanos();
        loop {
            let until = i.open_until.load(Ordering::Acquire);
            if until == 0 {
                return Ok(self.permit(false, now));
            }
            if now_ns < until {
                return Err(self.refuse(Duration::from_nanos(until - now_ns)));
            }
            if i.probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(self.refuse(Duration::ZERO));
            }
            // The previous probe may have closed or re-opened the breaker since we read it.
            if i.open_until.load(Ordering::Acquire) == until {
                i.probes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(breaker = i.name, "cool-down over; one probe goes through");
                return Ok(self.permit(true, now));
            }
            i.probing.store(false, Ordering::Release);
        }
    }

    /// Refuse now, if the breaker is open or a probe is under way; counted like a refusal of
    /// [`try_acquire`](Self::try_acquire). `Ok` reserves nothing: it is a cheap early answer
    /// (one atomic load while closed) for a caller that takes its permit later, right before
    /// the backend call (e.g. only if no identical call is already under way).
    pub fn check(&self) -> Result<(), Refused> {
        let until = self.inner.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now_ns = self.inner.clock.now().as_unix_nanos();
        if now_ns < until {
            Err(self.refuse(Duration::from_nanos(until - now_ns)))
        } else if self.inner.probing.load(Ordering::Acquire) {
            Err(self.refuse(Duration::ZERO))
        } else {
            Ok(())
        }
    }

    /// Where it stands now.
    pub fn state(&self) -> BreakerState {
        self.state_at(self.inner.clock.now())
    }

    /// Where it stands at `now`.
    pub fn state_at(&self, now: Timestamp) -> BreakerState {
        match self.inner.open_until.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if now.as_unix_nanos() < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Its state and counters.
    pub fn stats(&self) -> BreakerStats {
        let i = &*self.inner;
        BreakerStats {
            state: self.state(),
            opened: i.opened.load(Ordering::Relaxed),
            refused: i.refused.load(Ordering::Relaxed),
            probes: i.probes.load(Ordering::Relaxed),
        }
    }

    fn permit(&self, probe: bool, acquired: Timestamp) -> Permit {
        Permit {
            breaker: self.clone(),
            probe,
            acquired,
            settled: false,
            neutral_if_dropped: false,
        }
    }

    fn refuse(&self, retry_after: Duration) -> Refused {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        Refused { retry_after }
    }

    fn succeeded(&self, probe: bool) {
        let i = &*self.inner;
        i.failures.store(0, Ordering::Relaxed);
        if probe {
            i.open_until.store(0, Ordering::Release);
            i.probing.store(false, Ordering::Release);
            tracing::info!(
                breaker = i.name,
                "backend answered the probe; breaker closed"
            );
        }
    }

    fn failed(&self, probe: bool, now: Timestamp) {
        let i = &*self.inner;
        if !i.config.is_enabled() {
            return;
        }
        let until = now.saturating_add(i.config.cool_down).as_unix_nanos();
        if probe {
            i.open_until.store(until, Ordering::Release);
            i.probing.store(false, Ordering::Release);
            i.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                breaker = i.name,
                cool_down = ?i.config.cool_down,
                "probe failed; breaker open again, failing fast"
            );
            return;
        }
        let failures = i.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if failures >= i.config.failures
            && i.open_until
                .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            i.failures.store(0, Ordering::Relaxed);
            i.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                breaker = i.name,
                failures,
                cool_down = ?i.config.cool_down,
                "backend failed repeatedly; breaker open, failing fast"
            );
        }
    }
}

/// Leave to make one backend call, from [`Breaker::try_acquire`]: report its outcome with
/// [`success`](Self::success) or [`failure`](Self::failure).
///
/// Dropped without either, it counts as a failure at the time it was acquired (the call was
/// abandoned, e.g. its request timed out while the backend hung), unless
/// [`neutral_if_dropped`](Self::neutral_if_dropped) was called.
#[must_use = "report the call's outcome; a dropped permit counts as a failure"]
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    /// When it was acquired.
    acquired: Timestamp,
    settled: bool,
    /// Dropped without an outcome: free the probe slot, count nothing.
    neutral_if_dropped: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.inner.name)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit {
    /// Whether this call is the probe of a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Dropped without an outcome, count nothing (a probe's slot goes to the next caller). For
    /// calls bounded by a timeout of their own, reported with [`failure`](Self::failure): a
    /// drop then means the caller gave up (e.g. its client went away), which says nothing
    /// about the backend.
    pub fn neutral_if_dropped(mut self) -> Self {
        self.neutral_if_dropped = true;
        self
    }

    /// The backend answered: resets the failure count; a probe closes the breaker.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.succeeded(self.probe);
    }

    /// The backend failed (now, on the breaker's clock).
    pub fn failure(self) {
        let now = self.breaker.inner.clock.now();
        self.failure_at(now);
    }

    /// The backend failed; a breaker that opens now stays open until `now` + the cool-down.
    pub fn failure_at(mut self, now: Timestamp) {
        self.settled = true;
        self.breaker.failed(self.probe, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if !self.neutral_if_dropped {
            self.breaker.failed(self.probe, self.acquired);
        } else if self.probe {
            self.breaker.inner.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn breaker() -> (Breaker, ManualClock) {
        let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(1_000));
        (
            Breaker::new("test", BreakerConfig::default(), clock),
            manual,
        )
    }

    fn fail(b: &Breaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().expect("closed").failure();
        }
    }

    #[test]
    fn stays_closed_after_fewer_failures_than_the_threshold_and_a_success() {
        let (b, _) = breaker();
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().success();
        fail(&b, 4);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the success reset the count"
        );
        assert_eq!(b.stats().opened, 0);
    }

    #[test]
    fn opens_at_the_threshold_and_refuses_with_the_remaining_cool_down() {
        let (b, manual) = breaker();
        fail(&b, 5);
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after(), Duration::from_secs(5));
        assert_eq!(refused.retry_after_secs(), 5);
        manual.advance(Duration::from_millis(3_200));
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after(), Duration::from_millis(1_800));
        assert_eq!(refused.retry_after_secs(), 2, "rounded up");
        assert_eq!(b.check(), Err(refused));
        let s = b.stats();
        assert_eq!(
            (s.state, s.opened, s.refused, s.probes),
            (BreakerState::Open, 1, 3, 0)
        );
    }

    #[test]
    fn one_probe_after_the_cool_down_the_others_refused() {
        let (b, manual) = breaker();
        fail(&b, 5);
        manual.advance(Duration::from_secs(5));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.check(), Ok(()), "the next call is the probe");
        let probe = b.try_acquire().expect("the probe");
        assert!(probe.is_probe());
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after_secs(), 1, "at least one second");
        assert!(b.check().is_err());
        assert_eq!(b.stats().probes, 1);
        drop(probe);
    }

    #[test]
    fn probe_success_closes() {
        let (b, manual) = breaker();
        fail(&b, 5);
        manual.advance(Duration::from_secs(5));
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        let permit = b.try_acquire().unwrap();
        assert!(!permit.is_probe());
        permit.success();
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed, "the count started over");
    }

    #[test]
    fn probe_failure_reopens_for_another_cool_down() {
        let (b, manual) = breaker();
        fail(&b, 5);
        manual.advance(Duration::from_secs(6));
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after(),
            Duration::from_secs(5),
            "a full cool-down from the probe's failure"
        );
        assert_eq!(b.stats().opened, 2);
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure() {
        let (b, manual) = breaker();
        fail(&b, 5);
        manual.advance(Duration::from_secs(5));
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.stats().opened, 2);
    }

    #[test]
    fn a_neutral_permit_dropped_counts_nothing_and_frees_the_probe() {
        let (b, manual) = breaker();
        fail(&b, 4);
        drop(b.try_acquire().unwrap().neutral_if_dropped());
        assert_eq!(b.state(), BreakerState::Closed, "not a fifth failure");
        fail(&b, 1);
        manual.advance(Duration::from_secs(5));
        drop(b.try_acquire().unwrap().neutral_if_dropped());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("the next caller probes");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(b.stats().probes, 2);
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        for config in [
            BreakerConfig::disabled(),
            BreakerConfig::default().failures(0),
            BreakerConfig::default().cool_down(Duration::ZERO),
        ] {
            let (clock, _) = Clock::manual(Timestamp::from_unix_secs(1_000));
            let b = Breaker::new("test", config, clock);
            fail(&b, 100);
            assert_eq!(b.state(), BreakerState::Closed, "{config:?}");
        }
    }

    #[test]
    fn concurrent_callers_in_half_open_get_exactly_one_probe() {
        let (b, manual) = breaker();
        fail(&b, 5);
        manual.advance(Duration::from_secs(5));
        let barrier = std::sync::Barrier::new(8);
        let probes: Vec<Permit> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        b.try_acquire().ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("no panic"))
                .collect()
        });
        assert_eq!(probes.len(), 1);
        assert_eq!(b.stats().refused, 7);
        probes.into_iter().for_each(Permit::success);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
