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
    /// Records a consumer prefetches per partition before it stops fetching that partition
    /// (librdkafka's `queued.min.messages`; Kafka Streams' `buffered.records.per.partition`).
    pub prefetch_records: u32,
    /// Kilobytes a consumer prefetches over all its partitions (`queued.max.messages.kbytes`):
    /// with the records bound, what keeps a stage's memory flat however far behind it is.
    pub prefetch_kbytes: u32,
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
}

impl Default for RawKafka {
    fn default() -> Self {
        RawKafka {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "onceflow".into(),
            transaction_timeout_ms: 60_000,
            message_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            prefetch_records: 100_000,
            prefetch_kbytes: 65_536,
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

    Ok(KafkaSettings {
        bootstrap_servers: k.bootstrap_servers,
        client_id: k.client_id,
        transaction_timeout,
        message_timeout,
        session_timeout,
        prefetch_records: k.prefetch_records,
        prefetch_kbytes: k.prefetch_kbytes,
    })
}
