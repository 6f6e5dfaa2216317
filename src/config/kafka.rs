//! The `[kafka]` section: the brokers, client ids, the transactional time-outs and how much a
//! consumer prefetches.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_name, invalid, millis, within};

/// Broker connection and client tuning.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port` list.
    pub bootstrap_servers: String,
    /// Client id prefix; the role is appended.
    pub client_id: String,
    /// Upper bound of one Kafka transaction before the coordinator aborts it.
    pub transaction_timeout: Duration,
    /// librdkafka's bound on one produce request being acknowledged.
    pub message_timeout: Duration,
    /// Consumer session timeout: how long a silent member keeps its partitions.
    pub session_timeout: Duration,
    /// Records a consumer prefetches before it stops fetching (librdkafka's
    /// `queued.min.messages`). librdkafka documents it per partition, but compares it with the
    /// length of the queue a partition's records go to, and a group consumer sends every
    /// partition's records to its one queue: in effect it bounds all partitions together (plus
    /// up to one fetch response a partition). A batch drains that queue, so the bound should hold
    /// a few batches (`batch_max_records`) for fetching to stay ahead of the stage.
    pub prefetch_records: u32,
    /// Kilobytes a consumer prefetches over all its partitions (`queued.max.messages.kbytes`):
    /// with the records bound, what keeps a stage's memory flat however far behind it is.
    pub prefetch_kbytes: u32,
    /// How long a partition found with a full prefetch waits before it is fetched again
    /// (`fetch.queue.backoff.ms`). librdkafka's 1 s suits its own large bounds; a busy stage
    /// drains 10 000 records in well under a second and would then wait for input
    /// (bench/PROCESSOR.md: 0.83× the throughput at 1 s, 0.97× at 10 ms).
    pub prefetch_backoff: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKafka {
    bootstrap_servers: String,
    client_id: String,
    transaction_timeout_ms: u64,
    message_timeout_ms: u64,
    session_timeout_ms: u64,
    prefetch_records: u32,
    prefetch_kbytes: u32,
    prefetch_backoff_ms: u64,
}

impl Default for RawKafka {
    fn default() -> Self {
        RawKafka {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "onceflow".into(),
            transaction_timeout_ms: 60_000,
            message_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            prefetch_records: 10_000,
            prefetch_kbytes: 16_384,
            prefetch_backoff_ms: 10,
        }
    }
}

pub(super) fn validate(k: RawKafka) -> Result<KafkaSettings, ConfigError> {
    if k.bootstrap_servers.trim().is_empty() {
        return Err(invalid(
            "kafka.bootstrap_servers",
            "must list at least one host:port",
        ));
    }
    for server in k.bootstrap_servers.split(',') {
        let ok = server.trim().rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(invalid(
                "kafka.bootstrap_servers",
                format!("`{server}` is not host:port"),
            ));
        }
    }
    check_name("kafka.client_id", &k.client_id)?;
    // The broker caps transaction.timeout.ms at transaction.max.timeout.ms (15 min by default).
    let transaction_timeout = millis(
        "kafka.transaction_timeout_ms",
        k.transaction_timeout_ms,
        1_000,
        900_000,
    )?;
    let message_timeout = millis(
        "kafka.message_timeout_ms",
        k.message_timeout_ms,
        1_000,
        900_000,
    )?;
    if message_timeout > transaction_timeout {
        return Err(invalid(
            "kafka.message_timeout_ms",
            "must not exceed kafka.transaction_timeout_ms (librdkafka refuses it)",
        ));
    }
    let session_timeout = millis(
        "kafka.session_timeout_ms",
        k.session_timeout_ms,
        1_000,
        300_000,
    )?;
    // librdkafka's own ranges for queued.min.messages and queued.max.messages.kbytes.
    within("kafka.prefetch_records", k.prefetch_records, 1..=10_000_000)?;
    within("kafka.prefetch_kbytes", k.prefetch_kbytes, 1..=2_097_151)?;
    let prefetch_backoff = millis(
        "kafka.prefetch_backoff_ms",
        k.prefetch_backoff_ms,
        0,
        300_000,
    )?;

    Ok(KafkaSettings {
        bootstrap_servers: k.bootstrap_servers,
        client_id: k.client_id,
        transaction_timeout,
        message_timeout,
        session_timeout,
        prefetch_records: k.prefetch_records,
        prefetch_kbytes: k.prefetch_kbytes,
        prefetch_backoff,
    })
}
