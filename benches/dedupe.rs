//! Dedupe state benchmark: the bytes a key the dedupe store holds in memory, and how fast a store
//! is restored from its changelog (bench/DEDUPE.md).
//!
//! Run with `make bench-dedupe` (starts the local stack first) or `cargo bench --bench dedupe`
//! against a running stack. Knobs: `BENCH_KEYS` (store sizes for part 1, default
//! `1000000,10000000`), `BENCH_RESTORE_KEYS` (changelog records for part 2, default 1000000).
//!
//! Part 1, memory: `n` event ids (UUID v5, as ingest derives them) over 12 partitions, written at
//! times spread over the whole TTL (a store at rest after a TTL of traffic), put through
//! `Store::apply` in batches of 500 as the processor does. The allocator counts the bytes held
//! (`stats_alloc` around the system allocator). The baseline, in the same run, is the layout the
//! store had before: a `HashMap<String, i64>` per partition.
//!
//! Part 2, restore: `n` dedupe changelog records (key = event id, value = epoch ms) are written to
//! a fresh 12-partition topic; then the topic is read twice from the beginning with the same
//! `read_committed` client settings: once by a bare consumer that only counts records (the
//! ceiling: what librdkafka delivers), once by `dedupe::restore` into a store. Figures: records a
//! second each, and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is the failure

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::System;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use onceflow::dedupe::{self, Change, DedupeStore};
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::model::event::now_ms;
use onceflow::model::identity;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PARTITIONS: i32 = 12;
const TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v:?}")))
        .collect()
}

/// Bytes held between the region's start and now.
fn held(region: &Region<'_, System>) -> f64 {
    let c = region.change();
    // A realloc is counted in both figures already (its growth or its shrinking).
    c.bytes_allocated as f64 - c.bytes_deallocated as f64
}

fn id(i: usize) -> String {
    identity::event_id("bench", &format!("evt-{i}"))
}

fn memory(n: usize) {
    let now = now_ms();
    let ttl_ms = TTL.as_millis() as i64;
    let at = |i: usize| now - ttl_ms + (i as i64 * ttl_ms) / n as i64;

    let region = Region::new(GLOBAL);
    let mut old: HashMap<i32, HashMap<String, i64>> = HashMap::new();
    for i in 0..n {
        old.entry(i as i32 % PARTITIONS)
            .or_default()
            .insert(id(i), at(i));
    }
    let old_bytes = held(&region) / n as f64;
    drop(old);

    let region = Region::new(GLOBAL);
    let mut store = DedupeStore::new(TTL);
    let mut batch = Vec::with_capacity(500);
    for i in 0..n {
        batch.push(Change::Put {
            partition: i as i32 % PARTITIONS,
            key: id(i),
            entry: at(i),
        });
        if batch.len() == 500 {
            store.apply(&batch, &[]).unwrap();
            batch.clear();
        }
    }
    store.apply(&batch, &[]).unwrap();
    drop(batch);
    let new_bytes = held(&region) / n as f64;
    assert_eq!(store.len(), n);
    println!(
        "memory  {n:>10} keys: {new_bytes:5.1} B/key (before: {old_bytes:5.1} B/key, {:.2}×)",
        new_bytes / old_bytes
    );
}

async fn restore(n: usize) {
    let s = common::settings();
    let topic = format!("{}.bench.dedupe", s.namespace);
    let admin: AdminClient<_> = client::admin(&s.kafka).create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let now = now_ms();
    let producer: ThreadedProducer<DefaultProducerContext> =
        client::producer(&s.kafka, "bench.writer").create().unwrap();
    let started = Instant::now();
    for i in 0..n {
        let (key, value) = (id(i), (now - (i % 1000) as i64).to_string());
        let mut record = BaseRecord::to(&topic)
            .key(&key)
            .payload(&value)
            .partition(i as i32 % PARTITIONS);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    println!(
        "restore {n:>10} changelog records written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let parts: Vec<i32> = (0..PARTITIONS).collect();
    let (k, t) = (s.kafka.clone(), topic.clone());
    let ceiling = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client::consumer(
            &k,
            "bench.count",
            "bench.count",
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()
        .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&t, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let started = Instant::now();
        let mut seen = 0;
        while seen < n {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                m.unwrap();
                seen += 1;
            }
        }
        started.elapsed()
    })
    .await
    .unwrap();

    let dir = std::env::temp_dir().join(format!("onceflow-bench-{}", s.namespace));
    let (k, t, d) = (s.kafka.clone(), topic.clone(), dir.clone());
    let runs = tokio::task::spawn_blocking(move || {
        let restore = |state_dir, backend| {
            let region = Region::new(GLOBAL);
            let started = Instant::now();
            let restored = dedupe::Restore {
                kafka: &k,
                changelog: &t,
                reader_group: "bench.restore",
                partitions: &parts,
                ttl: TTL,
                now: now_ms(),
                max_wait: Duration::from_secs(60),
                state_dir,
                backend,
            }
            .run::<i64>()
            .unwrap();
            let took = started.elapsed();
            let entries: usize = restored
                .partitions
                .values()
                .map(dedupe::Partition::len)
                .sum();
            assert_eq!(entries, n);
            let bytes = held(&region) / n as f64;
            let mut store = DedupeStore::new(TTL);
            for (p, state) in restored.partitions {
                store.insert_partition(p, state);
            }
            Run {
                took,
                bytes,
                read: (restored.from_checkpoints, restored.records_read),
                lookups: lookups(&store, n),
                store,
            }
        };
        let memory = restore(None, dedupe::Backend::Memory);
        // Checkpoints of what was restored, then a restore from them (the changelog's tail is
        // empty: what a restart after a clean stop reads).
        for p in 0..PARTITIONS {
            if let Some(dedupe::Partition::Memory(state)) = memory.store.partition(p) {
                dedupe::checkpoint::write(&d, &t, p, state, now_ms()).unwrap();
            }
        }
        let checkpointed = restore(Some(&d), dedupe::Backend::Memory);
        // On disk: the whole changelog into fresh files, then a restart that finds them (the
        // restore ends with a durable commit; dropping the store closes the files).
        let files = d.join("disk");
        let mut disk = restore(Some(&files), dedupe::Backend::Disk);
        disk.store = DedupeStore::new(TTL);
        let reopened = restore(Some(&files), dedupe::Backend::Disk);
        let file_bytes = dir_bytes(&files);
        (memory, checkpointed, disk, reopened, file_bytes)
    })
    .await
    .unwrap();
    let (memory, checkpointed, disk, reopened, disk_bytes) = runs;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(memory.read, (0, n));
    assert_eq!(
        checkpointed.read,
        (n, 0),
        "all from the checkpoints, nothing from the changelog"
    );
    assert_eq!(disk.read, (0, n), "fresh files read the changelog whole");
    assert_eq!(reopened.read, (n, 0), "a restart finds its files");
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "restore {n:>10} keys: {:.0} keys/s in {:.2} s; a bare consumer {:.0} records/s in {:.2} s; \
         restore/bare {:.2}×",
        rate(memory.took),
        memory.took.as_secs_f64(),
        rate(ceiling),
        ceiling.as_secs_f64(),
        rate(memory.took) / rate(ceiling)
    );
    println!(
        "restore {n:>10} keys from checkpoints: {:.0} keys/s in {:.2} s; {:.2}× the changelog restore",
        rate(checkpointed.took),
        checkpointed.took.as_secs_f64(),
        rate(checkpointed.took) / rate(memory.took)
    );
    println!(
        "disk    {n:>10} keys: changelog into files {:.0} keys/s in {:.2} s ({:.2}× the memory restore); \
         restart on the files {:.2} s; {:.1} MB of files",
        rate(disk.took),
        disk.took.as_secs_f64(),
        rate(disk.took) / rate(memory.took),
        reopened.took.as_secs_f64(),
        disk_bytes as f64 / 1e6
    );
    println!(
        "heap    {n:>10} keys: memory {:.1} B/key, disk {:.1} B/key (redb cache and index pages)",
        memory.bytes, disk.bytes
    );
    let per = |l: Duration| l.as_nanos() as f64 / (2 * n) as f64;
    println!(
        "lookup  {n:>10} keys (half hits, half misses): memory {:.0} ns, disk {:.0} ns ({:.1}×)",
        per(memory.lookups),
        per(disk.lookups),
        per(disk.lookups) / per(memory.lookups)
    );
    common::cleanup(&s, &[&topic]).await;
}

/// One restore's figures, and the store it built.
struct Run {
    took: Duration,
    bytes: f64,
    read: (usize, usize),
    lookups: Duration,
    store: DedupeStore,
}

/// Time to look up every key written (hits) and as many that were not (misses).
fn lookups(store: &DedupeStore, n: usize) -> Duration {
    let now = now_ms();
    let started = Instant::now();
    let mut hits = 0;
    for i in 0..n {
        let p = i as i32 % PARTITIONS;
        hits += usize::from(store.contains(p, &id(i), now).unwrap());
        hits += usize::from(store.contains(p, &id(n + i), now).unwrap());
    }
    assert_eq!(hits, n);
    started.elapsed()
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::main]
async fn main() {
    for n in env_list("BENCH_KEYS", "1000000,10000000") {
        memory(n);
    }
    for n in env_list("BENCH_RESTORE_KEYS", "1000000") {
        restore(n).await;
    }
}
