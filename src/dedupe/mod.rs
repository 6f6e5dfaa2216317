//! Keyed changelog stores: the processor's dedupe store (event ids seen within a TTL) and the
//! dispatcher's effect ledger (command ids attempting or done) are both a [`Store`] of entries per
//! partition, backed by a compacted changelog topic (`<ns>.<adapter>.dedupe`,
//! `<ns>.<adapter>.ledger`) and restored from it when a partition is assigned.
//!
//! Invariants:
//! - Partition `p` of a store holds the keys of records read from partition `p` of the stage's
//!   inputs (and of its retry topics, whose records keep their origin partition). Every duplicate
//!   of an event, and every copy of a command, has the same key, hence partition, hence meets the
//!   original's entry.
//! - A change reaches the changelog in the same transaction as the outputs and offsets it belongs
//!   to, and reaches memory only after that transaction committed ([`Store::apply`]); an aborted
//!   batch leaves no trace in either.
//! - Restoring a partition reads its changelog from the beginning with `read_committed` up to the
//!   high watermark taken before reading: while a zombie's transaction is open the read waits (the
//!   last stable offset is held back), so entries committed after it are never missed. The wait is
//!   bounded by the transaction timeout.
//! - An entry is remembered for at least the TTL and at most an eighth longer (it counts from the
//!   end of its time slice, [`slices`]); entries past that are dropped on restore and tombstoned
//!   by [`Store::expired`] sweeps, so the compacted changelog does not grow without bound.
//! - Memory holds a canonical UUID key as 16 bytes and a dedupe entry as no bytes at all beyond
//!   its slice ([`slices`]): under 40 bytes a key (`tests/dedupe_memory.rs`).
//! - The changelog value of an entry is its [`Entry::encode`] text; a value that does not decode is
//!   treated as a tombstone.

mod slices;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};

pub use slices::{Partition, SLICES_PER_TTL};

/// What a store keeps per key.
pub trait Entry: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// What memory keeps of an entry besides its key and its time slice.
    type Packed: Copy + std::fmt::Debug + Send + Sync + 'static;
    /// When the entry was written (epoch ms); the TTL counts from the end of its slice.
    fn at(&self) -> i64;
    /// The entry as memory keeps it.
    fn pack(&self) -> Self::Packed;
    /// The entry of `packed`, kept in the slice whose last millisecond is `slice_last_ms`.
    fn unpack(packed: Self::Packed, slice_last_ms: i64) -> Self;
    /// The changelog value.
    fn encode(&self) -> String;
    /// The entry of a changelog value, if it is one.
    fn decode(value: &str) -> Option<Self>;
}

/// The dedupe store's entry: when an event was processed (epoch ms). Its changelog value is the
/// decimal number; memory keeps only its slice, so it reads back as the slice's last millisecond.
impl Entry for i64 {
    type Packed = ();

    fn at(&self) -> i64 {
        *self
    }

    fn pack(&self) {}

    fn unpack((): (), slice_last_ms: i64) -> i64 {
        slice_last_ms
    }

    fn encode(&self) -> String {
        self.to_string()
    }

    fn decode(value: &str) -> Option<i64> {
        value.parse().ok()
    }
}

/// One change of a store, as written to the changelog.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<E> {
    /// `key` now maps to `entry`.
    Put {
        /// Partition.
        partition: i32,
        /// Event id or command id.
        key: String,
        /// The entry.
        entry: E,
    },
    /// `key` is forgotten (a tombstone).
    Forget {
        /// Partition.
        partition: i32,
        /// Event id or command id.
        key: String,
    },
}

impl<E: Entry> Change<E> {
    /// The changelog record: (partition, key, value; `None` is a tombstone).
    pub fn record(&self) -> (i32, &str, Option<String>) {
        match self {
            Change::Put {
                partition,
                key,
                entry,
            } => (*partition, key, Some(entry.encode())),
            Change::Forget { partition, key } => (*partition, key, None),
        }
    }
}

/// The in-memory store of the partitions this instance owns.
#[derive(Debug)]
pub struct Store<E: Entry> {
    ttl_ms: i64,
    partitions: HashMap<i32, Partition<E>>,
}

/// The processor's dedupe store: event id → when it was processed.
pub type DedupeStore = Store<i64>;

impl<E: Entry> Store<E> {
    /// An empty store remembering keys for `ttl`.
    pub fn new(ttl: Duration) -> Store<E> {
        Store {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            partitions: HashMap::new(),
        }
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.ttl_ms).unwrap_or(u64::MAX))
    }

    /// Partitions present.
    pub fn partitions(&self) -> HashSet<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Installs a restored partition.
    pub fn insert_partition(&mut self, partition: i32, entries: Partition<E>) {
        self.partitions.insert(partition, entries);
    }

    /// Forgets a partition this instance no longer owns.
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The entry of `key` on `partition`, if it is remembered at `now`.
    pub fn get(&self, partition: i32, key: &str, now: i64) -> Option<E> {
        self.partitions.get(&partition)?.get(key, now)
    }

    /// Whether `key` is remembered on `partition` at `now`.
    pub fn contains(&self, partition: i32, key: &str, now: i64) -> bool {
        self.get(partition, key, now).is_some()
    }

    /// Applies the changes of a committed transaction.
    pub fn apply(&mut self, changes: &[Change<E>]) {
        let ttl_ms = self.ttl_ms;
        for c in changes {
            match c {
                Change::Put {
                    partition,
                    key,
                    entry,
                } => self
                    .partitions
                    .entry(*partition)
                    .or_insert_with(|| Partition::new(ttl_ms))
                    .put(key, entry),
                Change::Forget { partition, key } => {
                    if let Some(p) = self.partitions.get_mut(partition) {
                        p.remove(key);
                    }
                }
            }
        }
    }

    /// Tombstones for entries no longer remembered at `now` (at most `limit`, to keep
    /// transactions small).
    pub fn expired(&self, now: i64, limit: usize) -> Vec<Change<E>> {
        let mut out = Vec::new();
        for (p, entries) in &self.partitions {
            let room = limit.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            out.extend(
                entries
                    .expired(now, room)
                    .into_iter()
                    .map(|key| Change::Forget { partition: *p, key }),
            );
        }
        out
    }

    /// Entries held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(Partition::len).sum()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A client call failed.
    #[error("restoring a changelog store: {0}")]
    Kafka(#[from] KafkaError),
    /// The changelog did not become readable up to its end in time (an open transaction).
    #[error(
        "restoring a changelog store: {topic} partition {partition} stuck below offset {target} after {waited:?}"
    )]
    Stuck {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset the read had to reach.
        target: i64,
        /// How long it waited.
        waited: Duration,
    },
}

/// Reads `partitions` of `changelog` into store partitions (blocking; run it on a blocking thread).
/// `reader_group` is only an id (the reader assigns, never joins nor commits).
pub fn restore<E: Entry>(
    kafka: &KafkaSettings,
    changelog: &str,
    reader_group: &str,
    partitions: &[i32],
    ttl: Duration,
    now: i64,
    max_wait: Duration,
) -> Result<HashMap<i32, Partition<E>>, RestoreError> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut out: HashMap<i32, Partition<E>> = partitions
        .iter()
        .map(|p| (*p, Partition::new(ttl_ms)))
        .collect();
    if partitions.is_empty() {
        return Ok(out);
    }
    // The target is the high watermark as a read_uncommitted reader sees it: everything written
    // so far, open transactions included.
    let probe: BaseConsumer = client::consumer(
        kafka,
        "dedupe.restore",
        reader_group,
        Isolation::ReadUncommitted,
        StartAt::Earliest,
    )
    .create()?;
    let mut targets = HashMap::new();
    for p in partitions {
        let (_, high) = probe.fetch_watermarks(changelog, *p, Duration::from_secs(10))?;
        if high > 0 {
            targets.insert(*p, high);
        }
    }
    if targets.is_empty() {
        return Ok(out);
    }
    let reader: BaseConsumer = client::consumer(
        kafka,
        "dedupe.restore",
        reader_group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in targets.keys() {
        tpl.add_partition_offset(changelog, *p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let started = Instant::now();
    loop {
        if let Some(m) = reader.poll(Duration::from_millis(100)) {
            let m = m?;
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let entry = m
                .payload()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(E::decode);
            out.entry(m.partition())
                .or_insert_with(|| Partition::new(ttl_ms))
                .restore(key, entry, now);
            continue;
        }
        let position = reader.position()?;
        let pending: Vec<(i32, i64)> = targets
            .iter()
            .filter(|(p, target)| {
                !matches!(position.find_partition(changelog, **p).map(|e| e.offset()),
                          Some(Offset::Offset(o)) if o >= **target)
            })
            .map(|(p, t)| (*p, *t))
            .collect();
        let Some((partition, target)) = pending.first().copied() else {
            return Ok(out);
        };
        if started.elapsed() > max_wait {
            return Err(RestoreError::Stuck {
                topic: changelog.into(),
                partition,
                target,
                waited: started.elapsed(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_expire_after_the_ttl_and_at_most_an_eighth_more() {
        let mut s = DedupeStore::new(Duration::from_secs(10));
        s.apply(&[Change::Put {
            partition: 1,
            key: "e".into(),
            entry: 1_000,
        }]);
        // Slices of 1.25 s: written at 1 000, it counts as written at 1 249.
        assert!(s.contains(1, "e", 10_999));
        assert!(s.contains(1, "e", 11_248));
        assert!(!s.contains(1, "e", 11_249));
        assert!(!s.contains(2, "e", 1_000), "partitions are separate");
        assert!(s.expired(11_248, 10).is_empty());
        assert_eq!(
            s.expired(11_249, 10),
            vec![Change::Forget {
                partition: 1,
                key: "e".into()
            }]
        );
        s.apply(&s.expired(11_249, 10));
        assert!(s.is_empty());
    }

    #[test]
    fn changelog_records_are_keyed_by_event_id() {
        let seen = Change::Put {
            partition: 3,
            key: "e-1".to_string(),
            entry: 42_i64,
        };
        assert_eq!(seen.record(), (3, "e-1", Some("42".into())));
        assert_eq!(
            Change::<i64>::Forget {
                partition: 3,
                key: "e-1".into()
            }
            .record(),
            (3, "e-1", None)
        );
    }
}
