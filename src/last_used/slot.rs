//! The per-record mark and the list of marked records.
//!
//! Each [`KeyRecord`] carries a [`UsageSlot`] (16 bytes): the latest time a request used it (at
//! the recorder's granularity) and an intrusive `next` link whose low bit is the `queued` flag. A request marks its
//! record with one relaxed load when the time has not moved into a new granule; otherwise it
//! raises the time with `fetch_max` and, if the record is not already queued, pushes the record
//! onto a [`MarkList`], a Treiber stack whose only consumer takes the whole list at once. No
//! allocation (the link lives in the record), no lock, no map lookup.
//!
//! The stack holds one strong reference (`Arc::into_raw`) per queued record, so a record stays
//! alive until it has been flushed. The `queued` flag keeps each record in the list at most once,
//! which bounds the list by the number of record snapshots used since the last drain.

use std::fmt;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::clock::Timestamp;
use crate::store::KeyRecord;

/// The last-used mark of one record snapshot. Bookkeeping, not data: it compares equal to every
/// other slot, and a cloned record starts with a copy of the time, unqueued.
pub(crate) struct UsageSlot {
    /// Latest mark, nanoseconds since the epoch, truncated to the recorder's granularity
    /// (0 = never marked through this snapshot). Only ever raised.
    last: AtomicU64,
    /// Null while the record is not in a [`MarkList`]. While it is: the next record in the list
    /// with [`QUEUED`] set in its low bit (records are 8-aligned), or [`QUEUED`] alone at the
    /// end of the list. One word for the flag and the link keeps the slot at 16 bytes.
    next: AtomicPtr<KeyRecord>,
}

/// The tag bit of [`UsageSlot::next`] that says "queued".
const QUEUED: usize = 1;

// The tag needs the low bit of a record's address to be free.
const _: () = assert!(std::mem::align_of::<KeyRecord>() > QUEUED);

#[inline]
fn tagged(p: *mut KeyRecord) -> *mut KeyRecord {
    p.map_addr(|a| a | QUEUED)
}

#[inline]
fn untagged(p: *mut KeyRecord) -> *mut KeyRecord {
    p.map_addr(|a| a & !QUEUED)
}

impl UsageSlot {
    pub(crate) const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Whether the record is in a [`MarkList`].
    #[cfg(test)]
    fn queued(&self) -> bool {
        !self.next.load(Ordering::Relaxed).is_null()
    }

    /// The latest mark through this snapshot, if any.
    pub(crate) fn last(&self) -> Option<Timestamp> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Timestamp::from_unix_nanos(t)),
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
            next: AtomicPtr::new(ptr::null_mut()),
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
            .field("queued", &!self.next.load(Ordering::Relaxed).is_null())
            .finish()
    }
}

/// Mark `record` as used at `now_nanos`, truncated to `granularity_nanos` (≥ 1).
///
/// The fast path is one relaxed load and a compare: a record already marked in the current
/// granule (or later, if the clock stepped back) is left alone.
#[inline]
pub(crate) fn mark(
    list: &MarkList,
    record: &Arc<KeyRecord>,
    now_nanos: u64,
    granularity_nanos: u64,
) {
    let last = record.usage.last.load(Ordering::Relaxed);
    if now_nanos < last.saturating_add(granularity_nanos) {
        return;
    }
    mark_slow(list, record, now_nanos, granularity_nanos);
}

#[cold]
#[inline(never)]
fn mark_slow(list: &MarkList, record: &Arc<KeyRecord>, now_nanos: u64, granularity_nanos: u64) {
    let t = now_nanos - now_nanos % granularity_nanos;
    let slot = &record.usage;
    // SeqCst on `last` and `next` (the queued flag), here and in `drain`: either this thread sees
    // the record unqueued (and queues it again), or the drainer, which unqueues it before reading
    // `last`, reads this mark. A mark is never lost between the two.
    if slot.last.fetch_max(t, Ordering::SeqCst) >= t {
        // Another request raised it at least this far; that request queues the record.
        return;
    }
    // Unqueued (null) → queued (the bare tag): only the thread that wins this owns `next`.
    if slot
        .next
        .compare_exchange(
            ptr::null_mut(),
            ptr::without_provenance_mut(QUEUED),
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        list.push(record);
    }
}

/// A lock-free stack of marked records; many producers, one consumer that takes everything.
///
/// Taking the whole list with one `swap` means nodes are never popped one by one, so the stack
/// has no ABA problem.
pub(crate) struct MarkList {
    head: AtomicPtr<KeyRecord>,
}

impl fmt::Debug for MarkList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarkList")
            .field("empty", &self.head.load(Ordering::Relaxed).is_null())
            .finish()
    }
}

impl MarkList {
    pub(crate) const fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Push a record whose queued tag this thread has just set.
    /// The list takes a strong reference to it.
    fn push(&self, record: &Arc<KeyRecord>) {
        let slot_next = &record.usage.next;
        let raw = Arc::into_raw(Arc::clone(record)).cast_mut();
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // Only the thread that queued the record writes `next`, and nobody reads it until
            // the push below publishes the node. The tag keeps the record marked as queued.
            slot_next.store(tagged(head), Ordering::Relaxed);
            match self
                .head
                .compare_exchange_weak(head, raw, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Take every queued record; for each, call `f` with the record and its latest mark.
    pub(crate) fn drain(&self, mut f: impl FnMut(&KeyRecord, Timestamp)) {
        let mut p = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: every pointer in the list comes from `Arc::into_raw` in `push`, and the
            // swap above made this thread the only owner of the detached chain, so each pointer is
            // turned back into an `Arc` exactly once. The acquire swap synchronizes with every
            // release push in the chain (later pushes are read-modify-writes, part of the release
            // sequence), so the `next` links written before each push are visible.
            let record = unsafe { Arc::from_raw(p) };
            let slot = &record.usage;
            // Read the link and unqueue the record in one step; after it a marker may queue the
            // record again (writing `next`, already read).
            p = untagged(slot.next.swap(ptr::null_mut(), Ordering::SeqCst));
            let t = slot.last.load(Ordering::SeqCst);
            if t != 0 {
                f(&record, Timestamp::from_unix_nanos(t));
            }
        }
    }

    /// Whether no record is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire).is_null()
    }
}

impl Drop for MarkList {
    fn drop(&mut self) {
        // Release the queued records iteratively (a long chain must not recurse) and clear their
        // flags, so that another recorder can queue them.
        self.drain(|_, _| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyHash;
    use crate::principal::{KeyId, OrgId, Scopes};

    fn record(id: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord::new(
            KeyId::from(id),
            OrgId::from("org"),
            "n".into(),
            KeyHash::of(id),
            "h".into(),
            Scopes::full_access(),
            Arc::from("live"),
            Timestamp::EPOCH,
        ))
    }

    fn drained(list: &MarkList) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        list.drain(|r, t| v.push((r.id.to_string(), t.as_unix_nanos())));
        v.sort();
        v
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_slot_is_two_words() {
        assert_eq!(std::mem::size_of::<UsageSlot>(), 16);
    }

    #[test]
    fn same_granule_queues_once_new_granule_updates_the_time() {
        let list = MarkList::new();
        let a = record("a");
        mark(&list, &a, 10 * SEC + 5, SEC);
        mark(&list, &a, 10 * SEC + 900, SEC);
        assert_eq!(Arc::strong_count(&a), 2, "queued once");
        mark(&list, &a, 12 * SEC + 1, SEC);
        assert_eq!(Arc::strong_count(&a), 2, "still queued once");
        assert_eq!(drained(&list), vec![("a".into(), 12 * SEC)]);
        assert_eq!(Arc::strong_count(&a), 1, "released after drain");
        assert!(list.is_empty());
    }

    #[test]
    fn clock_stepping_back_never_lowers_the_mark() {
        let list = MarkList::new();
        let a = record("a");
        mark(&list, &a, 20 * SEC, SEC);
        mark(&list, &a, 5 * SEC, SEC);
        assert_eq!(drained(&list), vec![("a".into(), 20 * SEC)]);
        mark(&list, &a, 5 * SEC, SEC);
        assert!(list.is_empty(), "an older time queues nothing");
    }

    #[test]
    fn a_drained_record_is_queued_again_by_its_next_granule() {
        let list = MarkList::new();
        let a = record("a");
        let b = record("b");
        mark(&list, &a, SEC, SEC);
        mark(&list, &b, SEC, SEC);
        assert_eq!(drained(&list), vec![("a".into(), SEC), ("b".into(), SEC)]);
        mark(&list, &a, SEC + 1, SEC);
        assert!(list.is_empty(), "same granule as the flushed mark");
        mark(&list, &a, 2 * SEC, SEC);
        assert_eq!(drained(&list), vec![("a".into(), 2 * SEC)]);
    }

    #[test]
    fn dropping_a_list_releases_its_records() {
        let a = record("a");
        {
            let list = MarkList::new();
            mark(&list, &a, SEC, SEC);
            assert_eq!(Arc::strong_count(&a), 2);
        }
        assert_eq!(Arc::strong_count(&a), 1);
        assert!(!a.usage.queued());
    }

    #[test]
    fn long_chains_drop_without_recursion() {
        let list = MarkList::new();
        let records: Vec<_> = (0..100_000).map(|i| record(&format!("k{i}"))).collect();
        for r in &records {
            mark(&list, r, SEC, SEC);
        }
        drop(list);
        assert!(records.iter().all(|r| Arc::strong_count(r) == 1));
    }

    #[test]
    fn cloned_records_start_unqueued_with_the_time() {
        let list = MarkList::new();
        let a = record("a");
        mark(&list, &a, 7 * SEC, SEC);
        let copy = KeyRecord::clone(&a);
        assert_eq!(copy.usage.last(), Some(Timestamp::from_unix_secs(7)));
        assert!(!copy.usage.queued());
        assert_eq!(copy, *a);
        list.drain(|_, _| {});
    }

    #[test]
    fn concurrent_marks_of_shared_and_distinct_records_are_all_drained() {
        let list = Arc::new(MarkList::new());
        let shared = record("shared");
        let own: Vec<_> = (0..4).map(|i| record(&format!("own{i}"))).collect();
        std::thread::scope(|s| {
            for (i, mine) in own.iter().enumerate() {
                let list = &list;
                let shared = &shared;
                s.spawn(move || {
                    for step in 0..1_000u64 {
                        let t = (step + 1) * SEC + i as u64;
                        mark(list, shared, t, SEC);
                        mark(list, mine, t, SEC);
                    }
                });
            }
        });
        let got = drained(&list);
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|(_, t)| *t == 1_000 * SEC), "{got:?}");
    }
}
