//! The processor's dedupe store: event ids seen within a TTL, per input partition, backed by the
//! compacted changelog `<ns>.<adapter>.dedupe`.
//!
//! Invariants:
//! - Partition `p` of the store holds the ids of events read from partition `p` of the inputs (and
//!   of the process-stage retry topics, whose records keep their origin partition). Every duplicate
//!   of an event has the event's key, hence its partition, hence meets the original's entry.
//! - A change reaches the changelog in the same transaction as the commands and offsets it belongs
//!   to, and reaches memory only after that transaction committed ([`DedupeStore::apply`]); an
//!   aborted batch leaves no trace in either.
//! - Restoring a partition reads its changelog from the beginning with `read_committed` up to the
//!   high watermark taken before reading: while a zombie's transaction is open the read waits (the
//!   last stable offset is held back), so entries committed after it are never missed. The wait is
//!   bounded by the transaction timeout.
//! - Entries older than the TTL are dropped on restore and tombstoned by [`DedupeStore::expired`]
//!   sweeps, so the compacted changelog does not grow without bound.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};

/// One change of the store, as written to the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `event_id` was processed at `at` (epoch ms).
    Seen {
        /// Partition.
        partition: i32,
        /// Event id.
        event_id: String,
        /// Epoch ms.
        at: i64,
    },
    /// `event_id` expired (a tombstone).
    Forget {
        /// Partition.
        partition: i32,
        /// Event id.
        event_id: String,
    },
}

impl Change {
    /// The changelog record: (partition, key, value; `None` is a tombstone).
    pub fn record(&self) -> (i32, &str, Option<String>) {
        match self {
            Change::Seen {
                partition,
                event_id,
                at,
            } => (*partition, event_id, Some(at.to_string())),
            Change::Forget {
                partition,
                event_id,
            } => (*partition, event_id, None),
        }
    }
}

/// The in-memory store of the partitions this instance owns.
#[derive(Debug)]
pub struct DedupeStore {
    ttl_ms: i64,
    partitions: HashMap<i32, HashMap<String, i64>>,
}

impl DedupeStore {
    /// An empty store remembering ids for `ttl`.
    pub fn new(ttl: Duration) -> DedupeStore {
        DedupeStore {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            partitions: HashMap::new(),
        }
    }

    /// Partitions present.
    pub fn partitions(&self) -> HashSet<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Installs a restored partition.
    pub fn insert_partition(&mut self, partition: i32, entries: HashMap<String, i64>) {
        self.partitions.insert(partition, entries);
    }

    /// Forgets a partition this instance no longer owns.
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Whether `event_id` was seen on `partition` within the TTL before `now`.
    pub fn contains(&self, partition: i32, event_id: &str, now: i64) -> bool {
        self.partitions
            .get(&partition)
            .and_then(|p| p.get(event_id))
            .is_some_and(|at| now.saturating_sub(*at) < self.ttl_ms)
    }

    /// Applies the changes of a committed transaction.
    pub fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Seen {
                    partition,
                    event_id,
                    at,
                } => {
                    self.partitions
                        .entry(*partition)
                        .or_default()
                        .insert(event_id.clone(), *at);
                }
                Change::Forget {
                    partition,
                    event_id,
                } => {
                    if let Some(p) = self.partitions.get_mut(partition) {
                        p.remove(event_id);
                    }
                }
            }
        }
    }

    /// Tombstones for entries past the TTL at `now` (at most `limit`, to keep transactions small).
    pub fn expired(&self, now: i64, limit: usize) -> Vec<Change> {
        self.partitions
            .iter()
            .flat_map(|(p, entries)| {
                entries
                    .iter()
                    .filter(move |(_, at)| now.saturating_sub(**at) >= self.ttl_ms)
                    .map(move |(id, _)| Change::Forget {
                        partition: *p,
                        event_id: id.clone(),
                    })
            })
            .take(limit)
            .collect()
    }

    /// Entries held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
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
    #[error("restoring the dedupe store: {0}")]
    Kafka(#[from] KafkaError),
    /// The changelog did not become readable up to its end in time (an open transaction).
    #[error(
        "restoring the dedupe store: {topic} partition {partition} stuck below offset {target} after {waited:?}"
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
pub fn restore(
    kafka: &KafkaSettings,
    changelog: &str,
    reader_group: &str,
    partitions: &[i32],
    ttl: Duration,
    now: i64,
    max_wait: Duration,
) -> Result<HashMap<i32, HashMap<String, i64>>, RestoreError> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut out: HashMap<i32, HashMap<String, i64>> =
        partitions.iter().map(|p| (*p, HashMap::new())).collect();
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
            let entries = out.entry(m.partition()).or_default();
            match m
                .payload()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok())
            {
                Some(at) if now.saturating_sub(at) < ttl_ms => {
                    entries.insert(key.to_string(), at);
                }
                _ => {
                    entries.remove(key);
                }
            }
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
    fn seen_ids_expire_after_the_ttl() {
        let mut s = DedupeStore::new(Duration::from_secs(10));
        s.apply(&[Change::Seen {
            partition: 1,
            event_id: "e".into(),
            at: 1_000,
        }]);
        assert!(s.contains(1, "e", 10_999));
        assert!(!s.contains(1, "e", 11_000));
        assert!(!s.contains(2, "e", 1_000), "partitions are separate");
        assert_eq!(
            s.expired(11_000, 10),
            vec![Change::Forget {
                partition: 1,
                event_id: "e".into()
            }]
        );
        s.apply(&s.expired(11_000, 10));
        assert!(s.is_empty());
    }

    #[test]
    fn changelog_records_are_keyed_by_event_id() {
        let seen = Change::Seen {
            partition: 3,
            event_id: "e-1".into(),
            at: 42,
        };
        assert_eq!(seen.record(), (3, "e-1", Some("42".into())));
        assert_eq!(
            Change::Forget {
                partition: 3,
                event_id: "e-1".into()
            }
            .record(),
            (3, "e-1", None)
        );
    }
}
