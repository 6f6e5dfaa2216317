//! The audit trail: every executed offset reset and replay is a record on `<ns>.audit` saying
//! who (the OS user or `--operator`), what (the plan or the selection, with counts), why (the
//! operator's reason) and when.
//!
//! Invariants:
//! - Values are JSON ([`AuditRecord`]), readable with any console consumer at three in the
//!   morning; the key is the target (a group, or `<adapter>.<stage>` for a replay), so one
//!   target's actions stay in order in one partition.
//! - A replay's audit record is written in the same transaction as the records it copies and
//!   the replay group's offsets; a reset's is written after the reset was applied. A dry run
//!   writes none.
//! - Reading never joins a group nor commits.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::config::KafkaSettings;
use crate::kafka::client;
use crate::kafka::scan::{Range, scan};
use crate::stage::Out;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (epoch ms).
    pub at: i64,
    /// Who: `--operator`, else the OS user.
    pub operator: String,
    /// `offsets.reset` or `replay`.
    pub action: String,
    /// The group reset, or the DLQ replayed.
    pub target: String,
    /// The operator's reason.
    pub reason: Option<String>,
    /// The plan or the selection, with counts.
    pub detail: Json,
}

/// The operator: `explicit`, else `USER` / `LOGNAME`, else `unknown`.
pub fn operator(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl AuditRecord {
    /// The record to write to `topic`, keyed by the target.
    pub fn out(&self, topic: &str) -> Out {
        Out {
            topic: topic.to_string(),
            partition: None,
            key: Some(self.target.as_bytes().to_vec()),
            payload: Some(serde_json::to_vec(self).unwrap_or_default()),
            headers: None,
        }
    }
}

/// Writes `record` to `topic` (idempotent producer, `acks=all`), outside any transaction.
pub async fn write(
    kafka: &KafkaSettings,
    topic: &str,
    record: &AuditRecord,
) -> Result<(), KafkaError> {
    let producer: FutureProducer = client::producer(kafka, "audit").create()?;
    let out = record.out(topic);
    let key = out.key.unwrap_or_default();
    let payload = out.payload.unwrap_or_default();
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// Every audit record on `topic` (read_committed), oldest first (blocking).
pub fn list(kafka: &KafkaSettings, topic: &str) -> Result<Vec<AuditRecord>, KafkaError> {
    let mut out = Vec::new();
    scan(
        kafka,
        topic,
        "onceflow.audit.reader",
        &Range::default(),
        |m| {
            if let Some(r) = m.payload().and_then(|v| serde_json::from_slice(v).ok()) {
                out.push(r);
            }
            true
        },
    )?;
    out.sort_by_key(|r: &AuditRecord| r.at);
    Ok(out)
}
