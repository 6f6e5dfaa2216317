//! Reading a topic from given positions to its end as it is when the read starts, without joining
//! a group or committing: what the operator verbs (`dlq`, `audit`, the dry run of `replay`) read
//! with.
//!
//! Invariants:
//! - The end of each partition is its high watermark taken before reading (or the caller's
//!   bound, whichever is lower); records written after the start are not read, so a scan of a
//!   busy topic finishes.
//! - `read_committed`: records of aborted or open transactions are never returned; an open
//!   transaction can hold the read back, so the scan gives up after [`MAX_WAIT`] and returns what
//!   it read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::client::{self, Isolation, StartAt};
use crate::config::KafkaSettings;

/// How long a scan waits without progress before it stops.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to start and stop per partition. `None` starts at the beginning / stops at the end.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// Only these partitions (all when `None`).
    pub partitions: Option<Vec<i32>>,
    /// First offset per partition.
    pub from: BTreeMap<i32, i64>,
    /// First offset of every partition not in `from` (the beginning when `None`).
    pub from_all: Option<i64>,
    /// Skip the records written before this time (epoch ms), by the broker's time index.
    pub from_time: Option<i64>,
    /// First offset NOT to read, for every partition (the end when `None`).
    pub to: Option<i64>,
}

/// Per partition, the offset of the first record at or after `at` (the log end where none is).
fn offsets_at(
    c: &BaseConsumer,
    topic: &str,
    metadata: &rdkafka::metadata::Metadata,
    at: i64,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let mut q = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            q.add_partition_offset(topic, p.id(), Offset::Offset(at))?;
        }
    }
    let found = c.offsets_for_times(q, TIMEOUT)?;
    let mut out = BTreeMap::new();
    for e in found.elements() {
        let o = match e.offset() {
            Offset::Offset(o) if o >= 0 => o,
            _ => c.fetch_watermarks(topic, e.partition(), TIMEOUT)?.1,
        };
        out.insert(e.partition(), o);
    }
    Ok(out)
}

/// Calls `visit` on every record of `topic` within `range`, in offset order per partition, until
/// it returns false or every partition reached its end (blocking). `reader` is only a client id.
pub fn scan(
    kafka: &KafkaSettings,
    topic: &str,
    reader: &str,
    range: &Range,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<(), KafkaError> {
    let c: BaseConsumer = client::consumer(
        kafka,
        "scan",
        reader,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let metadata = c.fetch_metadata(Some(topic), TIMEOUT)?;
    let by_time = match range.from_time {
        Some(at) => offsets_at(&c, topic, &metadata, at)?,
        None => BTreeMap::new(),
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let id = p.id();
            if range
                .partitions
                .as_ref()
                .is_some_and(|ps| !ps.contains(&id))
            {
                continue;
            }
            let (low, high) = c.fetch_watermarks(topic, id, TIMEOUT)?;
            let end = range.to.map_or(high, |to| to.min(high));
            let start = range
                .from
                .get(&id)
                .copied()
                .or(range.from_all)
                .unwrap_or(low)
                .max(low)
                .max(by_time.get(&id).copied().unwrap_or(low));
            if start < end {
                tpl.add_partition_offset(topic, id, Offset::Offset(start))?;
                ends.insert(id, end);
            }
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    c.assign(&tpl)?;
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < MAX_WAIT {
        if let Some(polled) = c.poll(Duration::from_millis(100)) {
            let Some(m) = super::polled::record(&c, polled)? else {
                continue;
            };
            last_progress = Instant::now();
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() < *end)
                && !visit(&m)
            {
                return Ok(());
            }
            continue;
        }
        let position = c.position()?;
        let done = ends.iter().all(|(p, end)| {
            matches!(position.find_partition(topic, *p).map(|e| e.offset()),
                     Some(Offset::Offset(o)) if o >= *end)
        });
        if done {
            return Ok(());
        }
    }
    Ok(())
}
