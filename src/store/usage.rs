//! Usage bookkeeping every [`KeyRecord`] carries: its last-used mark, its request counts by
//! outcome, and the queue that takes marked records to the flusher; plus the types the stores
//! keep usage in ([`UsageCounts`], [`UsageDelta`], [`UsageRow`], [`Granularity`]).

use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KeyRecord;
use crate::clock::Timestamp;
use crate::ids::{KeyId, OrgId};

/// What became of one authenticated request, for usage metering. The outcomes are disjoint:
/// each metered request counts under exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageOutcome {
    /// Passed authentication, the rate limit and the scope check.
    Accepted,
    /// Refused by the organization's rate limit (`429`).
    RateLimited,
    /// Refused by a scope check (`403`).
    Scope,
    /// Refused by the concurrent-session quota (`429 session_limit_exceeded`).
    SessionQuota,
}

impl UsageOutcome {
    const fn index(self) -> usize {
        match self {
            UsageOutcome::Accepted => 0,
            UsageOutcome::RateLimited => 1,
            UsageOutcome::Scope => 2,
            UsageOutcome::SessionQuota => 3,
        }
    }
}

/// Requests counted by outcome: one bucket of one key, a total, or a change to add.
///
/// ```
/// use tower_api_key::UsageCounts;
/// let mut total = UsageCounts::default();
/// total += UsageCounts { accepted: 3, rate_limited: 1, ..Default::default() };
/// assert_eq!(total.requests(), 4);
/// ```
///
/// Signed, because a flushed change may take a count back: a request counted `accepted`
/// when it was marked and refused later (scope, session quota) moves one count, and the two
/// halves of the move can fall in different flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub struct UsageCounts {
    /// Requests that passed authentication, the rate limit and the scope check.
    pub accepted: i64,
    /// Requests refused by the rate limit.
    pub rate_limited: i64,
    /// Requests refused by a scope check.
    pub scope: i64,
    /// Requests refused by the concurrent-session quota.
    pub session_quota: i64,
}

impl UsageCounts {
    /// All requests counted, whatever their outcome.
    pub fn requests(&self) -> i64 {
        self.accepted + self.rate_limited + self.scope + self.session_quota
    }

    /// Whether every count is zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The count of one outcome.
    pub fn get(&self, outcome: UsageOutcome) -> i64 {
        match outcome {
            UsageOutcome::Accepted => self.accepted,
            UsageOutcome::RateLimited => self.rate_limited,
            UsageOutcome::Scope => self.scope,
            UsageOutcome::SessionQuota => self.session_quota,
        }
    }
}

impl std::ops::AddAssign for UsageCounts {
    fn add_assign(&mut self, o: Self) {
        self.accepted += o.accepted;
        self.rate_limited += o.rate_limited;
        self.scope += o.scope;
        self.session_quota += o.session_quota;
    }
}

/// The size of a usage bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "admin", derive(utoipa::ToSchema))]
pub enum Granularity {
    /// One minute (UTC).
    Minute,
    /// One hour (UTC).
    Hour,
    /// One day (UTC).
    Day,
}

impl Granularity {
    /// Every granularity, finest first: a flushed change is added to one bucket of each.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// The bucket's length.
    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.secs())
    }

    const fn secs(self) -> u64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    /// The start of the bucket holding `t`.
    ///
    /// ```
    /// use tower_api_key::{Granularity, Timestamp};
    /// let t = Timestamp::from_unix_secs(3_725);
    /// assert_eq!(Granularity::Hour.bucket(t), Timestamp::from_unix_secs(3_600));
    /// ```
    pub const fn bucket(self, t: Timestamp) -> Timestamp {
        let s = t.as_unix_secs();
        Timestamp::from_unix_secs(s - s % self.secs())
    }

    /// The name stored in SQL rows and used in URLs: `minute`, `hour`, `day`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// The granularity named `s` (`minute`, `hour`, `day`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }
}

/// Counts to add to one key's buckets, as the flusher writes them: the minute they were
/// flushed in, and the hour and day holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key's organization.
    pub org_id: OrgId,
    /// The key.
    pub key_id: KeyId,
    /// The start of the minute the counts were flushed in.
    pub minute: Timestamp,
    /// What to add.
    pub counts: UsageCounts,
}

/// One stored bucket of one key, as [`KeyStore::usage`](super::KeyStore::usage) returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The key.
    pub key_id: KeyId,
    /// The bucket's start.
    pub bucket: Timestamp,
    /// The requests counted in it.
    pub counts: UsageCounts,
}

/// How long usage buckets are kept, per granularity (defaults: minutes 48 hours, hours 90 days,
/// days two years). The flusher deletes older buckets every few minutes.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::UsageRetention;
/// let keep = UsageRetention::default().minutes(Duration::from_secs(6 * 3600));
/// # let _ = keep;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRetention {
    minutes: Duration,
    hours: Duration,
    days: Duration,
}

impl Default for UsageRetention {
    fn default() -> Self {
        Self {
            minutes: Duration::from_secs(48 * 3_600),
            hours: Duration::from_secs(90 * 86_400),
            days: Duration::from_secs(730 * 86_400),
        }
    }
}

impl UsageRetention {
    /// Keep minute buckets this long.
    pub fn minutes(mut self, keep: Duration) -> Self {
        self.minutes = keep;
        self
    }

    /// Keep hour buckets this long.
    pub fn hours(mut self, keep: Duration) -> Self {
        self.hours = keep;
        self
    }

    /// Keep day buckets this long.
    pub fn days(mut self, keep: Duration) -> Self {
        self.days = keep;
        self
    }

    /// How long buckets of `granularity` are kept.
    pub fn keep(&self, granularity: Granularity) -> Duration {
        match granularity {
            Granularity::Minute => self.minutes,
            Granularity::Hour => self.hours,
            Granularity::Day => self.days,
        }
    }

    /// The oldest bucket start kept at `now`, for `granularity`.
    pub fn cutoff(&self, granularity: Granularity, now: Timestamp) -> Timestamp {
        let keep = self.keep(granularity).as_secs();
        Timestamp::from_unix_secs(now.as_unix_secs().saturating_sub(keep))
    }
}

/// The counts of one record snapshot, allocated the first time a metered request uses it
/// (once per snapshot, never per request). Aligned to a cache line of its own, so that the
/// counting of one hot key does not slow the reading of another's.
#[repr(align(64))]
struct Counters {
    counts: [AtomicU64; 4],
    /// Where the record goes when a count needs flushing. Weak: the queue holds the record,
    /// the record its counters.
    queue: Weak<MarkList>,
}

/// Bit 0 of [`UsageSlot::state`]: the record is in a queue.
const QUEUED: usize = 1;

// The queued flag lives in the counters pointer's low bit, which their alignment leaves free.
const _: () = assert!(std::mem::align_of::<Counters>() > QUEUED);

/// The usage bookkeeping of one record snapshot: the latest time a request used it (at the
/// recorder's granularity), whether it waits in a queue to be flushed, and its counts by
/// outcome since the last flush. Bookkeeping, not data: it compares equal to every other slot,
/// and a cloned record starts with a copy of the time, unqueued and uncounted.
///
/// Two words: the counts live behind a pointer (allocated on the first metered request), whose
/// low bit is the queued flag, so a record stays 208 bytes.
pub(crate) struct UsageSlot {
    /// Latest mark, nanoseconds since the epoch (0 = never marked through this snapshot). Only
    /// ever raised.
    last: AtomicU64,
    /// The counters (null until metered) with the queued flag in bit 0 (`Counters` is aligned
    /// to 64, so the bit is free).
    state: AtomicPtr<Counters>,
}

impl UsageSlot {
    pub(crate) const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            state: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The latest mark through this snapshot, if any.
    pub(crate) fn last(&self) -> Option<Timestamp> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Timestamp::from_unix_nanos(t)),
        }
    }

    /// Whether a mark at `now_nanos` adds nothing: the slot holds one in the same granule (or
    /// later, if the clock stepped back). One relaxed load: the per-request path.
    #[inline]
    pub(crate) fn is_marked_at(&self, now_nanos: u64, granularity_nanos: u64) -> bool {
        now_nanos
            < self
                .last
                .load(Ordering::Relaxed)
                .saturating_add(granularity_nanos)
    }

    /// Raise the mark to `t`; `true` when the caller must queue the record (it raised the mark
    /// and the record was not queued yet).
    ///
    /// SeqCst here, in [`count`] and in [`take`](Self::take): either the marker sees the record
    /// unqueued and queues it again, or the drainer, which unqueues it before reading the time
    /// and the counts, reads this mark. Nothing is lost between the two.
    pub(crate) fn raise(&self, t: u64) -> bool {
        if self.last.fetch_max(t, Ordering::SeqCst) >= t {
            // Another request raised it at least this far; that request queues the record.
            return false;
        }
        self.set_queued()
    }

    /// Set the queued flag; `true` if it was clear (the caller queues the record).
    fn set_queued(&self) -> bool {
        let mut cur = self.state.load(Ordering::SeqCst);
        loop {
            if cur.addr() & QUEUED != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur.map_addr(|a| a | QUEUED),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Whether the record is queued (SeqCst: read after a count, see [`raise`](Self::raise)).
    #[inline]
    fn is_queued(&self) -> bool {
        self.state.load(Ordering::SeqCst).addr() & QUEUED != 0
    }

    /// Take the record out of its queue: unqueue it, then read its latest mark and take its
    /// counts (left at zero).
    pub(crate) fn take(&self) -> (Option<Timestamp>, UsageCounts) {
        let mut cur = self.state.load(Ordering::SeqCst);
        while let Err(now) = self.state.compare_exchange_weak(
            cur,
            cur.map_addr(|a| a & !QUEUED),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            cur = now;
        }
        let last = match self.last.load(Ordering::SeqCst) {
            0 => None,
            t => Some(Timestamp::from_unix_nanos(t)),
        };
        let mut counts = UsageCounts::default();
        if let Some(c) = self.counters() {
            // Wrapping to i64: a move out of `accepted` may have landed after its count was
            // taken by an earlier flush, so a taken value can be "negative".
            let take = |i: usize| c.counts[i].swap(0, Ordering::SeqCst) as i64;
            counts = UsageCounts {
                accepted: take(0),
                rate_limited: take(1),
                scope: take(2),
                session_quota: take(3),
            };
        }
        (last, counts)
    }

    /// The counters, if this snapshot has been metered.
    #[inline]
    fn counters(&self) -> Option<&Counters> {
        let p = self.state.load(Ordering::Acquire).map_addr(|a| a & !QUEUED);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `counters_or_init` and is
        // freed only in `drop`, which takes `&mut self`: it is valid for as long as `&self`.
        unsafe { p.as_ref() }
    }

    /// The counters, allocated (tied to `queue`) if this is the snapshot's first metered
    /// request. Once per snapshot.
    #[inline]
    fn counters_or_init(&self, queue: &Arc<MarkList>) -> &Counters {
        match self.counters() {
            Some(c) => c,
            None => self.init_counters(queue),
        }
    }

    #[cold]
    #[inline(never)]
    fn init_counters(&self, queue: &Arc<MarkList>) -> &Counters {
        let fresh = Box::into_raw(Box::new(Counters {
            counts: Default::default(),
            queue: Arc::downgrade(queue),
        }));
        let mut cur = self.state.load(Ordering::Acquire);
        let installed = loop {
            if cur.addr() & !QUEUED != 0 {
                // Another request installed its counters first.
                // SAFETY: `fresh` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                break cur.map_addr(|a| a & !QUEUED);
            }
            match self.state.compare_exchange_weak(
                cur,
                fresh.map_addr(|a| a | (cur.addr() & QUEUED)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break fresh,
                Err(now) => cur = now,
            }
        };
        // SAFETY: `installed` is the slot's counters (non-null, from `Box::into_raw`), freed
        // only in `drop`, which takes `&mut self`: valid for as long as `&self`.
        unsafe { &*installed }
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> bool {
        self.is_queued()
    }
}

/// Count one request of `outcome` on `record`'s snapshot, allocating its counters (tied to
/// `queue`) the first time, and queue the record unless it is queued already. One
/// `fetch_add` and two loads per request; the queue's lock once per record per flush.
#[inline]
pub(crate) fn count(record: &Arc<KeyRecord>, queue: &Arc<MarkList>, outcome: UsageOutcome) {
    let counters = record.usage.counters_or_init(queue);
    counters.counts[outcome.index()].fetch_add(1, Ordering::SeqCst);
    if !record.usage.is_queued() {
        enqueue(record, counters);
    }
}

/// Move one count of `record` from `accepted` to `to` (a request counted when marked and
/// refused after). Nothing if the snapshot was never metered.
pub(crate) fn move_accepted(record: &Arc<KeyRecord>, to: UsageOutcome) {
    let Some(counters) = record.usage.counters() else {
        return;
    };
    counters.counts[to.index()].fetch_add(1, Ordering::SeqCst);
    counters.counts[UsageOutcome::Accepted.index()].fetch_sub(1, Ordering::SeqCst);
    if !record.usage.is_queued() {
        enqueue(record, counters);
    }
}

#[cold]
#[inline(never)]
fn enqueue(record: &Arc<KeyRecord>, counters: &Counters) {
    if record.usage.set_queued() {
        match counters.queue.upgrade() {
            Some(queue) => queue.push(Arc::clone(record)),
            // The recorder is gone, and its flusher with it: nothing will write these counts.
            None => record.usage.take_nothing(),
        }
    }
}

impl UsageSlot {
    /// Clear the queued flag set for a queue that no longer exists.
    fn take_nothing(&self) {
        let _ = self.take();
    }
}

impl Drop for UsageSlot {
    fn drop(&mut self) {
        let p = self.state.get_mut().map_addr(|a| a & !QUEUED);
        if !p.is_null() {
            // SAFETY: installed from `Box::into_raw` and freed only here, once.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl Default for UsageSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for UsageSlot {
    fn clone(&self) -> Self {
        Self {
            last: AtomicU64::new(self.last.load(Ordering::Relaxed)),
            state: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl PartialEq for UsageSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for UsageSlot {}

impl fmt::Debug for UsageSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageSlot")
            .field("last", &self.last())
            .field("queued", &self.is_queued())
            .field("metered", &self.counters().is_some())
            .finish()
    }
}

/// Where requests are counted by outcome: the queue of a
/// [`LastUsedRecorder`](crate::LastUsedRecorder) with usage metering on, whose flusher writes
/// the counts. Get it with
/// [`LastUsedRecorderLayer::usage_meter`](crate::LastUsedRecorderLayer::usage_meter) and give
/// it to the layers that refuse before the recorder runs (`OrgRateLimitLayer::meter`); the
/// [`ApiKeyStack`](crate::ApiKeyStack) wires it by itself.
///
/// ```
/// use tower_api_key::{LastUsedRecorder, MemoryStore, OrgRateLimit};
/// let recorder = LastUsedRecorder::new(MemoryStore::new()).meter_usage(true);
/// let limit = OrgRateLimit::new().meter(recorder.usage_meter());
/// # let _ = limit;
/// ```
#[derive(Clone)]
pub struct UsageMeter {
    queue: Option<Arc<MarkList>>,
}

impl fmt::Debug for UsageMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageMeter")
            .field("on", &self.queue.is_some())
            .finish()
    }
}

impl UsageMeter {
    /// A meter counting into `queue`, or one that counts nothing.
    pub(crate) fn new(queue: Option<Arc<MarkList>>) -> Self {
        Self { queue }
    }

    /// Whether this meter counts (its recorder meters usage).
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Count one request of `outcome` on `record`'s snapshot.
    #[inline]
    pub(crate) fn count(&self, record: &Arc<KeyRecord>, outcome: UsageOutcome) {
        if let Some(queue) = &self.queue {
            count(record, queue, outcome);
        }
    }
}

/// The records marked or counted since the last drain, each at most once: what the flusher
/// writes next. Pushed to under a lock once per record per flush interval, not per request;
/// holds a strong reference per queued record, so a record stays alive until flushed.
pub(crate) struct MarkList {
    records: Mutex<Vec<Arc<KeyRecord>>>,
}

impl fmt::Debug for MarkList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarkList")
            .field("empty", &self.is_empty())
            .finish()
    }
}

impl Default for MarkList {
    fn default() -> Self {
        Self::new()
    }
}

impl MarkList {
    pub(crate) const fn new() -> Self {
        Self {
            records: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<KeyRecord>>> {
        // A panic while pushing leaves a valid vector: the poison carries no broken invariant.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, record: Arc<KeyRecord>) {
        self.lock().push(record);
    }

    /// Take every queued record; for each, call `f` with the record, its latest mark and the
    /// counts taken from it.
    pub(crate) fn drain(&self, mut f: impl FnMut(&KeyRecord, Option<Timestamp>, UsageCounts)) {
        let records = std::mem::take(&mut *self.lock());
        for record in records {
            let (t, counts) = record.usage.take();
            f(&record, t, counts);
        }
    }

    /// Whether no record is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Drop for MarkList {
    fn drop(&mut self) {
        // Clear the queued flags, so that another recorder can queue the records.
        self.drain(|_, _, _| {});
    }
}
