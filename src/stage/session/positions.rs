//! Where the session's consumer reads: the partitions it owns, rewinds to a batch's first
//! records, and pauses until a retry record is due.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::Session;
use crate::model::event::now_ms;
use crate::stage::{SessionError, Work};

impl<W: Work> Session<'_, W> {
    pub(super) fn assigned(&self) -> Result<HashSet<(String, i32)>, KafkaError> {
        Ok(self
            .consumer
            .assignment()?
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect())
    }

    /// Seeks every partition of `records` back to its first record there (only those still owned
    /// when `only_owned`), so nothing in `records` is skipped.
    pub(super) async fn rewind(
        &mut self,
        records: &[OwnedMessage],
        only_owned: bool,
    ) -> Result<(), SessionError> {
        self.seek(first_offsets(records), only_owned).await
    }

    pub(super) async fn seek(
        &mut self,
        to: BTreeMap<(String, i32), i64>,
        only_owned: bool,
    ) -> Result<(), SessionError> {
        if to.is_empty() {
            return Ok(());
        }
        let owned = if only_owned {
            self.assigned()?
        } else {
            to.keys().cloned().collect()
        };
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
            for ((topic, partition), offset) in to {
                if owned.contains(&(topic.clone(), partition)) {
                    consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(10),
                    )?;
                }
            }
            Ok(())
        })
        .await??;
        Ok(())
    }

    pub(super) fn resume_due(&mut self) -> Result<(), KafkaError> {
        let now = now_ms();
        let due: Vec<(String, i32)> = self
            .paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &due {
            tpl.add_partition(topic, *partition);
            self.paused.remove(&(topic.clone(), *partition));
        }
        self.consumer.resume(&tpl)
    }

    /// Pauses `partitions` until `until` (epoch ms; a later pause already set wins).
    pub(super) fn pause(
        &mut self,
        partitions: &[(String, i32)],
        until: i64,
    ) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
            let due = self
                .paused
                .entry((topic.clone(), *partition))
                .or_insert(until);
            *due = (*due).max(until);
        }
        self.consumer.pause(&tpl)
    }
}

/// Each partition's first offset among `records`.
pub(super) fn first_offsets(records: &[OwnedMessage]) -> BTreeMap<(String, i32), i64> {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in records {
        let e = first
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(m.offset());
        *e = (*e).min(m.offset());
    }
    first
}
