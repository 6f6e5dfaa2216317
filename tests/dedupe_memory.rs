//! The dedupe store's memory per key, counted by the allocator itself (`stats_alloc` wraps the
//! system allocator for this test binary only): the bytes the store holds after `n` event ids
//! were put, over `n`. Ids are the ones ingest derives (UUID v5), spread over 12 partitions and
//! over the whole TTL, as a store at rest after a week of traffic holds them. The bound is the
//! issue's (≤ 40 bytes a key); the layout gives about 17–39 bytes whatever `n` is
//! (`src/dedupe/slices.rs`). `benches/dedupe.rs` measures 1 M and 10 M keys in a release build.
//!
//! The one test of this binary: the allocator counts every thread.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::alloc::System;
use std::time::Duration;

use onceflow::dedupe::{Change, DedupeStore};
use onceflow::model::identity;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const NOW: i64 = 1_796_000_000_000;

/// The store's bytes a key after putting `n` ids.
fn bytes_per_key(n: usize) -> f64 {
    let ttl_ms = TTL.as_millis() as i64;
    let changes: Vec<Change<i64>> = (0..n)
        .map(|i| Change::Put {
            partition: (i % 12) as i32,
            key: identity::event_id("typeform", &format!("form-{i}")),
            entry: NOW - ttl_ms + (i as i64 * ttl_ms) / n as i64,
        })
        .collect();
    let region = Region::new(GLOBAL);
    let mut store = DedupeStore::new(TTL);
    for batch in changes.chunks(500) {
        store.apply(batch, &[]).unwrap();
    }
    let held = region.change();
    assert_eq!(store.len(), n);
    assert!(
        store
            .contains(5, &identity::event_id("typeform", "form-5"), NOW)
            .unwrap()
    );
    let bytes = held.bytes_allocated as f64 - held.bytes_deallocated as f64; // reallocs are in both
    drop(store);
    bytes / n as f64
}

#[test]
fn a_dedupe_key_costs_at_most_40_bytes_in_memory() {
    // Sizes where the tables are least full (just grown) and most full, and a round million.
    for n in [50_000, 117_000, 200_000, 1_000_000] {
        let b = bytes_per_key(n);
        println!("{n} keys: {b:.1} bytes a key");
        assert!(b <= 40.0, "{n} keys: {b:.1} bytes a key");
    }
}
