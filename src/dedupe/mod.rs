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
//! - Each store partition knows the changelog offset it reflects the changelog up to: the restore's
//!   end, then one past the last changelog record of each commit ([`Store::advance`]). A stage
//!   with a state directory writes that state and offset to a local [`checkpoint`] when the
//!   partition leaves it and when its session ends; a restore then loads it and reads only the
//!   changelog from there.

pub mod checkpoint;
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

    /// The state of `partition`, if held.
    pub fn partition(&self, partition: i32) -> Option<&Partition<E>> {
        self.partitions.get(&partition)
    }

    /// After a commit that wrote `partition`'s changelog up to offset `next - 1`: the partition
    /// reflects its changelog up to `next` (exclusive).
    pub fn advance(&mut self, partition: i32, next: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.advance(next);
        }
    }

    /// Forgets a partition this instance no longer owns, and gives its state back.
    pub fn drop_partition(&mut self, partition: i32) -> Option<Partition<E>> {
        self.partitions.remove(&partition)
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

/// A restore of store partitions from their changelog (and local checkpoints, when a directory
/// is given).
#[derive(Debug, Clone)]
pub struct Restore<'a> {
    /// The cluster.
    pub kafka: &'a KafkaSettings,
    /// The changelog topic.
    pub changelog: &'a str,
    /// An id for the reader (it assigns, never joins nor commits).
    pub reader_group: &'a str,
    /// The partitions to restore.
    pub partitions: &'a [i32],
    /// The store's TTL.
    pub ttl: Duration,
    /// Now (epoch ms).
    pub now: i64,
    /// How long to wait for the changelog to become readable up to its end.
    pub max_wait: Duration,
    /// Where checkpoints are, if the stage keeps them ([`checkpoint`]).
    pub checkpoints: Option<&'a std::path::Path>,
}

/// What a restore produced.
#[derive(Debug)]
pub struct Restored<E: Entry> {
    /// The store partitions.
    pub partitions: HashMap<i32, Partition<E>>,
    /// Entries loaded from checkpoints.
    pub from_checkpoints: usize,
    /// Changelog records read.
    pub records_read: usize,
}

impl Restore<'_> {
    /// Reads the partitions (blocking; run it on a blocking thread): each from its checkpoint and
    /// the changelog from the checkpoint's offset, or the whole changelog without a usable one.
    pub fn run<E: Entry>(&self) -> Result<Restored<E>, RestoreError> {
        let (kafka, changelog) = (self.kafka, self.changelog);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut out = Restored {
            partitions: HashMap::new(),
            from_checkpoints: 0,
            records_read: 0,
        };
        if self.partitions.is_empty() {
            return Ok(out);
        }
        // The target is the high watermark as a read_uncommitted reader sees it: everything
        // written so far, open transactions included.
        let probe: BaseConsumer = client::consumer(
            kafka,
            "dedupe.restore",
            self.reader_group,
            Isolation::ReadUncommitted,
            StartAt::Earliest,
        )
        .create()?;
        let mut targets = HashMap::new();
        let mut starts = HashMap::new();
        for p in self.partitions {
            let (low, high) = probe.fetch_watermarks(changelog, *p, Duration::from_secs(10))?;
            let loaded = self.checkpoints.and_then(|dir| {
                match checkpoint::load::<E>(dir, changelog, *p, ttl_ms, self.now) {
                    Ok(Some(state)) if (low..=high).contains(&state.next_offset()) => Some(state),
                    Ok(Some(state)) => {
                        tracing::warn!(changelog, partition = *p, offset = state.next_offset(),
                            low, high, "checkpoint offset outside the changelog (topic recreated?); reading it whole");
                        None
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpoint not used; reading the changelog whole");
                        None
                    }
                }
            });
            let state = match loaded {
                Some(state) => {
                    out.from_checkpoints += state.len();
                    starts.insert(*p, Offset::Offset(state.next_offset()));
                    state
                }
                None => {
                    starts.insert(*p, Offset::Beginning);
                    Partition::new(ttl_ms)
                }
            };
            if high > state.next_offset() {
                targets.insert(*p, high);
            }
            out.partitions.insert(*p, state);
        }
        if targets.is_empty() {
            return Ok(out);
        }
        let reader: BaseConsumer = client::consumer(
            kafka,
            "dedupe.restore",
            self.reader_group,
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in targets.keys() {
            tpl.add_partition_offset(changelog, *p, starts[p])?;
        }
        reader.assign(&tpl)?;
        let started = Instant::now();
        loop {
            if let Some(polled) = reader.poll(Duration::from_millis(100)) {
                let Some(m) = crate::kafka::polled::record(&reader, polled)? else {
                    continue;
                };
                out.records_read += 1;
                let state = out
                    .partitions
                    .entry(m.partition())
                    .or_insert_with(|| Partition::new(ttl_ms));
                state.advance(m.offset() + 1);
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let entry = m
                    .payload()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(E::decode);
                state.restore(key, entry, self.now);
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
                // Read up to the target: the state reflects everything below it (transaction
                // markers and aborted records included, which a reader skips).
                for (p, target) in &targets {
                    if let Some(state) = out.partitions.get_mut(p) {
                        state.advance(*target);
                    }
                }
                return Ok(out);
            };
            if started.elapsed() > self.max_wait {
                return Err(RestoreError::Stuck {
                    topic: changelog.into(),
                    partition,
                    target,
                    waited: started.elapsed(),
                });
            }
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
