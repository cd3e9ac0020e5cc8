//! The last-used mark every [`KeyRecord`](super::KeyRecord) carries.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::clock::Timestamp;

/// The last-used mark of one record snapshot: the latest time a request used it (at the
/// recorder's granularity) and whether the record waits in a recorder's queue to be flushed.
/// Bookkeeping, not data: it compares equal to every other slot, and a cloned record starts
/// with a copy of the time, unqueued.
pub(crate) struct UsageSlot {
    /// Latest mark, nanoseconds since the epoch (0 = never marked through this snapshot). Only
    /// ever raised.
    last: AtomicU64,
    /// Whether the record is in a recorder's queue; keeps it there at most once.
    queued: AtomicBool,
}

impl UsageSlot {
    pub(crate) const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            queued: AtomicBool::new(false),
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
    /// SeqCst here and in [`take`](Self::take): either the marker sees the record unqueued and
    /// queues it again, or the drainer, which unqueues it before reading the time, reads this
    /// mark. A mark is never lost between the two.
    pub(crate) fn raise(&self, t: u64) -> bool {
        if self.last.fetch_max(t, Ordering::SeqCst) >= t {
            // Another request raised it at least this far; that request queues the record.
            return false;
        }
        !self.queued.swap(true, Ordering::SeqCst)
    }

    /// Take the record out of its queue: unqueue it, then read its latest mark.
    pub(crate) fn take(&self) -> Option<Timestamp> {
        self.queued.store(false, Ordering::SeqCst);
        match self.last.load(Ordering::SeqCst) {
            0 => None,
            t => Some(Timestamp::from_unix_nanos(t)),
        }
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
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
            queued: AtomicBool::new(false),
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
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}
