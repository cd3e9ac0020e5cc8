//! Memory per key of a `MemoryStore` holding many keys (the budget: ≤ 300 bytes per key at 1M).
//!
//! ```text
//! cargo run --release --example store_memory            # 1,000,000 keys
//! cargo run --release --example store_memory -- 10000   # another count
//! cargo run --release --example store_memory -- 1000000 --used
//! ```
//!
//! Keys are created the way an application creates them, through `KeyManager::create` (random
//! key and id from the OS RNG, two scopes, a name), spread over one organization per 100 keys.
//! A counting global allocator reports the heap bytes the store holds per key (requested sizes,
//! after everything the manager returned has been dropped); the resident-set growth per key is
//! printed beside it, which adds the allocator's own per-chunk overhead.
//!
//! With `--used`, every key is then marked as used through `KeyStore::touch_last_used`, in
//! batches of 10,000 (one organization's keys after another), as the `LastUsedRecorder`'s
//! flusher writes them: a store whose keys are all in use must stay within the bar too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tower_api_key::{KeyManager, KeyStore, MemoryStore, NewKey, OrgId, Scopes, Timestamp};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments; the counter is only
// bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Keys per `touch_last_used` call with `--used`.
const BATCH: usize = 10_000;

fn main() {
    let mut n: usize = 1_000_000;
    let mut used = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--used" => used = true,
            count => n = count.parse().expect("a key count or --used"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let orgs: Vec<OrgId> = (0..n.div_ceil(100).max(1))
        .map(|i| OrgId::from(format!("org_{i:08}")))
        .collect();
    let scopes = Scopes::parse(["browser_sessions:create", "browser_sessions:read"]).unwrap();

    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let store = MemoryStore::new();
    let manager = KeyManager::new(store.clone());
    rt.block_on(async {
        for i in 0..n {
            let created = manager
                .create(
                    &orgs[i / 100],
                    NewKey::new("ci-pipeline").scopes(scopes.clone()),
                )
                .await
                .unwrap();
            drop(created);
        }
        if used {
            // The ids come from `list`, as a flusher's batch holds ids rather than records; the
            // batches and listed records are all dropped before the heap is measured.
            let now = Timestamp::now();
            let mut batch = Vec::with_capacity(BATCH);
            for org in &orgs {
                for record in manager.list(org).await.unwrap() {
                    batch.push((record.id.clone(), now));
                }
                if batch.len() >= BATCH {
                    store.touch_last_used(&batch).await.unwrap();
                    batch.clear();
                }
            }
            store.touch_last_used(&batch).await.unwrap();
            drop(batch);
            let sample = manager.list(&orgs[0]).await.unwrap();
            assert!(sample.iter().all(|r| r.last_used_at == Some(now)));
        }
    });
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    let rss = rss_bytes()
        .zip(rss_before)
        .map(|(a, b)| a.saturating_sub(b));
    assert_eq!(store.len(), n);
    println!(
        "keys: {n} in {} organizations{}",
        orgs.len(),
        if used { ", all marked as used" } else { "" }
    );
    println!(
        "heap held by the store: {} bytes = {:.0} bytes/key",
        heap,
        heap as f64 / n as f64
    );
    if let Some(rss) = rss {
        println!(
            "resident set growth:    {} bytes = {:.0} bytes/key",
            rss,
            rss as f64 / n as f64
        );
    }
    drop(store);
    drop(manager);
}
