//! Reading dead letters: every record of a DLQ topic with its error envelope (what `make demo`
//! prints, and the base of the operator's `dlq` verbs).
//!
//! Invariant: reading never joins a group nor commits; it reads with `read_committed` up to the end
//! each partition has when the read starts.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};
use crate::model::headers::ErrorEnvelope;

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// DLQ partition.
    pub partition: i32,
    /// DLQ offset.
    pub offset: i64,
    /// Its envelope, when complete.
    pub envelope: Option<ErrorEnvelope>,
}

/// Every record of `topic` (blocking; call it off the async runtime). `reader` is the id the
/// assign-only reader uses.
pub fn read(
    kafka: &KafkaSettings,
    topic: &str,
    reader: &str,
) -> Result<Vec<DeadLetter>, KafkaError> {
    let consumer: BaseConsumer = client::consumer(
        kafka,
        "dlq.reader",
        reader,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > 0 {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                ends.push((p.id(), high));
            }
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            out.push(DeadLetter {
                partition: m.partition(),
                offset: m.offset(),
                envelope: ErrorEnvelope::read(m.headers()),
            });
            continue;
        }
        let position = consumer.position()?;
        let done = ends.iter().all(|(p, end)| {
            matches!(position.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *end)
        });
        if done {
            break;
        }
    }
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}
