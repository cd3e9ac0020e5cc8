//! Marking a record as used: which records the flusher writes next.
//!
//! A request marks its record with one relaxed load when the time has not moved into a new
//! granule. Otherwise it raises the record's time and, if the record is not queued yet, pushes
//! it onto the [`MarkList`] (in `store::usage`, beside the counts it also carries) under a
//! lock: once per record per flush interval, not per request.

use std::sync::Arc;

use crate::store::{KeyRecord, MarkList};

/// Mark `record` as used at `now_nanos`, truncated to `granularity_nanos` (≥ 1).
#[inline]
pub(crate) fn mark(
    list: &MarkList,
    record: &Arc<KeyRecord>,
    now_nanos: u64,
    granularity_nanos: u64,
) {
    if record.usage.is_marked_at(now_nanos, granularity_nanos) {
        return;
    }
    mark_slow(list, record, now_nanos - now_nanos % granularity_nanos);
}

#[cold]
#[inline(never)]
fn mark_slow(list: &MarkList, record: &Arc<KeyRecord>, t: u64) {
    if record.usage.raise(t) {
        list.push(Arc::clone(record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::ids::{KeyId, OrgId};
    use crate::key::KeyHash;
    use crate::scopes::Scopes;
    use crate::store::UsageSlot;
    use crate::store::{UsageCounts, UsageMeter, UsageOutcome};

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
        list.drain(|r, t, _| {
            if let Some(t) = t {
                v.push((r.id.to_string(), t.as_unix_nanos()))
            }
        });
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
        list.drain(|_, _, _| {});
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

    #[test]
    fn counts_taken_while_requests_count_add_up_exactly() {
        // Four threads count (and move) on shared and own records while a fifth drains
        // repeatedly: every count is taken by exactly one drain, none lost or doubled.
        let list = Arc::new(MarkList::new());
        let meter = UsageMeter::new(Some(list.clone()));
        let shared = record("shared");
        let own: Vec<_> = (0..4).map(|i| record(&format!("own{i}"))).collect();
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut taken: std::collections::HashMap<String, UsageCounts> = Default::default();
        std::thread::scope(|s| {
            let workers: Vec<_> = own
                .iter()
                .map(|mine| {
                    let (meter, shared) = (&meter, &shared);
                    s.spawn(move || {
                        for i in 0..20_000u32 {
                            meter.count(shared, UsageOutcome::Accepted);
                            meter.count(mine, UsageOutcome::Accepted);
                            if i % 4 == 0 {
                                crate::store::move_accepted(mine, UsageOutcome::Scope);
                            }
                            if i % 8 == 0 {
                                meter.count(shared, UsageOutcome::RateLimited);
                            }
                        }
                    })
                })
                .collect();
            let drainer = s.spawn(|| {
                let mut got: std::collections::HashMap<String, UsageCounts> = Default::default();
                let drain = |got: &mut std::collections::HashMap<String, UsageCounts>| {
                    list.drain(|r, _, c| *got.entry(r.id.to_string()).or_default() += c)
                };
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    drain(&mut got);
                }
                drain(&mut got);
                got
            });
            for w in workers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            taken = drainer.join().unwrap();
        });
        list.drain(|r, _, c| *taken.entry(r.id.to_string()).or_default() += c);
        assert_eq!(
            taken["shared"],
            UsageCounts {
                accepted: 80_000,
                rate_limited: 4 * 2_500,
                ..Default::default()
            }
        );
        for i in 0..4 {
            assert_eq!(
                taken[&format!("own{i}")],
                UsageCounts {
                    accepted: 15_000,
                    scope: 5_000,
                    ..Default::default()
                },
                "own{i}"
            );
        }
        assert!(list.is_empty());
        assert!(own.iter().all(|r| !r.usage.queued()));
    }

    #[test]
    fn an_unmetered_snapshot_moves_nothing() {
        let a = record("a");
        crate::store::move_accepted(&a, UsageOutcome::Scope);
        assert!(!a.usage.queued());
        let list = MarkList::new();
        mark(&list, &a, SEC, SEC);
        let mut got = Vec::new();
        list.drain(|_, _, c| got.push(c));
        assert_eq!(got, vec![UsageCounts::default()]);
    }
}
