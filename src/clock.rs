//! Time, injectable.
//!
//! Every layer reads the time through a [`Clock`], so expiry, rate limits and last-used marks can
//! be tested with a [`ManualClock`] and no sleeping. The default is [`Clock::coarse`].
//!
//! On Linux (and Android) [`Clock::coarse`] reads the kernel's `CLOCK_REALTIME_COARSE` through
//! the vDSO: several times cheaper than `SystemTime::now`, at the resolution of the scheduler
//! tick (1–10 ms). Elsewhere the time is cached by a background thread every millisecond.
//!
//! Coarse time is safe for every use here: a clock that lags by a tick makes rate limits
//! slightly stricter (never looser), expiry a tick late, and revocation is stamped with
//! [`KeyRecord::REVOCATION_LEEWAY`](crate::KeyRecord::REVOCATION_LEEWAY) of slack anyway.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: nanoseconds since the Unix epoch.
///
/// Serialized as whole Unix seconds. The last representable nanosecond (`u64::MAX`, in the year
/// 2554) saturates to the one before it, so that `Option<Timestamp>` is as small as a
/// `Timestamp` (8 bytes): the value is stored inverted in a `NonZeroU64`, and the comparisons
/// below undo the inversion.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp(NonZeroU64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp::from_unix_nanos(0);

    /// The latest representable time, `u64::MAX - 1` nanoseconds after the epoch.
    pub const MAX: Timestamp = Timestamp::from_unix_nanos(u64::MAX - 1);

    /// From nanoseconds since the epoch (`u64::MAX` saturates to [`MAX`](Self::MAX)).
    #[inline]
    pub const fn from_unix_nanos(nanos: u64) -> Self {
        let nanos = if nanos == u64::MAX {
            u64::MAX - 1
        } else {
            nanos
        };
        match NonZeroU64::new(!nanos) {
            Some(v) => Self(v),
            // Unreachable: `nanos < u64::MAX`, so `!nanos != 0`.
            None => Self(NonZeroU64::MAX),
        }
    }

    /// From milliseconds since the epoch (saturating).
    pub const fn from_unix_millis(ms: u64) -> Self {
        Self::from_unix_nanos(ms.saturating_mul(1_000_000))
    }

    /// From whole seconds since the epoch (saturating).
    pub const fn from_unix_secs(secs: u64) -> Self {
        Self::from_unix_nanos(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the epoch.
    #[inline]
    pub const fn as_unix_nanos(self) -> u64 {
        !self.0.get()
    }

    /// Milliseconds since the epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.as_unix_nanos() / 1_000_000
    }

    /// Whole seconds since the epoch, rounded down.
    pub const fn as_unix_secs(self) -> u64 {
        self.as_unix_nanos() / 1_000_000_000
    }

    /// The current system time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self::from_unix_nanos(self.as_unix_nanos().saturating_add(duration_nanos(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self::from_unix_nanos(self.as_unix_nanos().saturating_sub(duration_nanos(d)))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.as_unix_nanos().saturating_sub(earlier.as_unix_nanos()))
    }

    /// Truncate to a multiple of `granularity` (no-op for a zero granularity).
    pub fn truncate(self, granularity: Duration) -> Self {
        let g = duration_nanos(granularity);
        if g == 0 {
            self
        } else {
            let t = self.as_unix_nanos();
            Self::from_unix_nanos(t - t % g)
        }
    }
}

pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self::from_unix_nanos(duration_nanos(d)),
            Err(_) => Self::EPOCH,
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_nanos(t.as_unix_nanos())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Timestamp({}.{:09})",
            self.as_unix_nanos() / 1_000_000_000,
            self.as_unix_nanos() % 1_000_000_000
        )
    }
}

impl Default for Timestamp {
    /// The epoch.
    fn default() -> Self {
        Self::EPOCH
    }
}

impl PartialOrd for Timestamp {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timestamp {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Stored inverted: the later time has the smaller stored value.
        other.0.cmp(&self.0)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.as_unix_secs())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Self::from_unix_secs)
    }
}

/// Where the layers read the time.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::{Clock, Timestamp};
///
/// let (clock, manual) = Clock::manual(Timestamp::from_unix_secs(1_000));
/// manual.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), Timestamp::from_unix_secs(1_005));
/// ```
#[derive(Clone, Default)]
pub struct Clock(ClockKind);

#[derive(Clone, Default)]
enum ClockKind {
    #[default]
    Coarse,
    System,
    Manual(Arc<AtomicU64>),
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ClockKind::Coarse => f.write_str("Clock::Coarse"),
            ClockKind::System => f.write_str("Clock::System"),
            ClockKind::Manual(t) => write!(
                f,
                "Clock::Manual({:?})",
                Timestamp::from_unix_nanos(t.load(Ordering::Relaxed))
            ),
        }
    }
}

impl Clock {
    /// The default: the system time at a coarse resolution, cheap to read.
    ///
    /// On Linux and Android, the kernel's `CLOCK_REALTIME_COARSE` (the scheduler tick's
    /// resolution, 1–10 ms; no thread). Elsewhere, the system time cached by a background thread
    /// refreshed every millisecond (or read directly if the thread cannot be started). See the
    /// [module docs](self).
    pub fn coarse() -> Self {
        Self(ClockKind::Coarse)
    }

    /// The system time, read at every call.
    pub fn system() -> Self {
        Self(ClockKind::System)
    }

    /// A clock that moves only when told to, for tests. Returns the clock and its handle.
    pub fn manual(start: Timestamp) -> (Self, ManualClock) {
        let cell = Arc::new(AtomicU64::new(start.as_unix_nanos()));
        (
            Self(ClockKind::Manual(cell.clone())),
            ManualClock { now: cell },
        )
    }

    /// Whether `self` and `other` read the same time: both coarse, both system, or handles of
    /// one manual clock. Layers run together in one service read such clocks once per request.
    pub(crate) fn same_as(&self, other: &Clock) -> bool {
        match (&self.0, &other.0) {
            (ClockKind::Coarse, ClockKind::Coarse) | (ClockKind::System, ClockKind::System) => true,
            (ClockKind::Manual(a), ClockKind::Manual(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            ClockKind::Coarse => coarse_now(),
            ClockKind::System => Timestamp::now(),
            ClockKind::Manual(t) => Timestamp::from_unix_nanos(t.load(Ordering::Acquire)),
        }
    }
}

/// The handle of a manual [`Clock`].
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// Move the clock forward.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(duration_nanos(d), Ordering::AcqRel);
    }

    /// Set the clock.
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.as_unix_nanos(), Ordering::Release);
    }

    /// The clock's time.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix_nanos(self.now.load(Ordering::Acquire))
    }
}

/// The kernel's coarse real-time clock (vDSO, no system call), or the system time if the call
/// fails (it cannot with this clock id and a valid pointer, but no panic path is left).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn coarse_now() -> Timestamp {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` that outlives the call; `clock_gettime` only
    // writes into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    match (rc, u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) {
        (0, Ok(secs), Ok(nanos)) => {
            Timestamp::from_unix_nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
        }
        _ => Timestamp::now(),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
const COARSE_TICK: Duration = Duration::from_millis(1);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
struct Coarse {
    now: AtomicU64,
    running: bool,
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
static COARSE: OnceLock<Coarse> = OnceLock::new();

/// Elsewhere: the system time cached by a background thread, refreshed every millisecond.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn coarse_now() -> Timestamp {
    let c = COARSE.get_or_init(start_coarse);
    if c.running {
        Timestamp::from_unix_nanos(c.now.load(Ordering::Relaxed))
    } else {
        Timestamp::now()
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn start_coarse() -> Coarse {
    let running = std::thread::Builder::new()
        .name("tower-api-key-clock".into())
        .spawn(|| {
            loop {
                std::thread::sleep(COARSE_TICK);
                if let Some(c) = COARSE.get() {
                    c.now
                        .store(Timestamp::now().as_unix_nanos(), Ordering::Relaxed);
                }
            }
        })
        .is_ok();
    Coarse {
        now: AtomicU64::new(Timestamp::now().as_unix_nanos()),
        running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (c, m) = Clock::manual(Timestamp::from_unix_secs(10));
        assert_eq!(c.now(), Timestamp::from_unix_secs(10));
        m.advance(Duration::from_millis(1500));
        assert_eq!(c.now().as_unix_millis(), 11_500);
        m.set(Timestamp::from_unix_secs(3));
        assert_eq!(c.now().as_unix_secs(), 3);
    }

    #[test]
    fn coarse_clock_is_close_to_system_time() {
        let sys = Timestamp::now();
        let coarse = Clock::coarse().now();
        // The coarse value lags by at most a few ticks; allow a generous second for loaded CI.
        let diff = sys
            .saturating_duration_since(coarse)
            .max(coarse.saturating_duration_since(sys));
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }

    #[test]
    fn coarse_clock_moves_forward() {
        // Waits for the next tick of the coarse clock (1–10 ms) by polling, not sleeping.
        let start = Clock::coarse().now();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut later = start;
        while later == start && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
            later = Clock::coarse().now();
        }
        assert!(later > start, "the coarse clock did not move in 5 s");
        assert!(later.saturating_duration_since(start) < Duration::from_secs(1));
    }

    #[test]
    fn option_timestamp_is_one_word_and_order_is_time_order() {
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 8);
        let times = [
            0,
            1,
            2,
            1_000_000_000,
            u64::MAX / 2,
            u64::MAX - 2,
            u64::MAX - 1,
        ];
        for (i, &a) in times.iter().enumerate() {
            let ta = Timestamp::from_unix_nanos(a);
            assert_eq!(ta.as_unix_nanos(), a, "round trip");
            for &b in &times[i + 1..] {
                let tb = Timestamp::from_unix_nanos(b);
                assert!(ta < tb, "{a} < {b}");
                assert_eq!(ta.max(tb), tb);
            }
        }
        assert_eq!(Timestamp::from_unix_nanos(u64::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::MAX.as_unix_nanos(), u64::MAX - 1);
        assert_eq!(Timestamp::default(), Timestamp::EPOCH);
        assert_eq!(Timestamp::EPOCH.as_unix_nanos(), 0);
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert!(Some(Timestamp::EPOCH).is_some());
    }

    #[test]
    fn timestamp_arithmetic() {
        let t = Timestamp::from_unix_secs(100);
        assert_eq!(t.saturating_add(Duration::from_secs(5)).as_unix_secs(), 105);
        assert_eq!(t.saturating_sub(Duration::from_secs(500)), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::from_unix_millis(1_999).truncate(Duration::from_secs(1)),
            Timestamp::from_unix_secs(1)
        );
        assert_eq!(
            serde_json::to_string(&Timestamp::from_unix_millis(1_999)).unwrap(),
            "1"
        );
    }
}
