//! The one place that knows librdkafka configuration keys: it builds every client config (producer,
//! transactional producer, `read_committed` consumer, admin) from typed [`KafkaSettings`].
//!
//! Invariants:
//! - Every producer is idempotent with `acks=all`; nothing onceflow writes can be reordered or
//!   duplicated by a librdkafka retry.
//! - Every consumer reads with `isolation.level=read_committed`, never auto-commits offsets and
//!   never auto-stores them: offsets move only through a transaction or an explicit commit.
//! - Every consumer's prefetch is bounded in records and in bytes over all its partitions
//!   ([`KafkaSettings::prefetch_records`], [`KafkaSettings::prefetch_kbytes`]), with the
//!   back-off of a partition found full ([`KafkaSettings::prefetch_backoff`]), set explicitly
//!   from the settings. The defaults (10 000 records, 16 MB, 10 ms; librdkafka's own are
//!   100 000, 64 MB, 1 s) keep a stage that is behind from holding more queued input than its
//!   whole dedupe state: bench/PROCESSOR.md measures them.
//! - A transactional producer's `transaction.timeout.ms` bounds how long a crashed instance can hold
//!   back `read_committed` readers; librdkafka requires `message.timeout.ms` not to exceed it, which
//!   the settings validation enforces.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

/// librdkafka keys, named once.
mod key {
    pub const BOOTSTRAP_SERVERS: &str = "bootstrap.servers";
    pub const CLIENT_ID: &str = "client.id";
    pub const ENABLE_IDEMPOTENCE: &str = "enable.idempotence";
    pub const ACKS: &str = "acks";
    pub const MESSAGE_TIMEOUT_MS: &str = "message.timeout.ms";
    pub const LINGER_MS: &str = "linger.ms";
    pub const TRANSACTIONAL_ID: &str = "transactional.id";
    pub const TRANSACTION_TIMEOUT_MS: &str = "transaction.timeout.ms";
    pub const RETRY_BACKOFF_MS: &str = "retry.backoff.ms";
    pub const GROUP_ID: &str = "group.id";
    pub const GROUP_INSTANCE_ID: &str = "group.instance.id";
    pub const ISOLATION_LEVEL: &str = "isolation.level";
    pub const ENABLE_AUTO_COMMIT: &str = "enable.auto.commit";
    pub const ENABLE_AUTO_OFFSET_STORE: &str = "enable.auto.offset.store";
    pub const AUTO_OFFSET_RESET: &str = "auto.offset.reset";
    pub const SESSION_TIMEOUT_MS: &str = "session.timeout.ms";
    pub const PARTITION_ASSIGNMENT_STRATEGY: &str = "partition.assignment.strategy";
    pub const ENABLE_PARTITION_EOF: &str = "enable.partition.eof";
    pub const QUEUED_MIN_MESSAGES: &str = "queued.min.messages";
    pub const QUEUED_MAX_MESSAGES_KBYTES: &str = "queued.max.messages.kbytes";
    pub const FETCH_QUEUE_BACKOFF_MS: &str = "fetch.queue.backoff.ms";
    pub const PARTITIONER: &str = "partitioner";
    pub const STATISTICS_INTERVAL_MS: &str = "statistics.interval.ms";
}

/// Isolation of a consumer. Onceflow's own stages always use [`Isolation::ReadCommitted`]; tests and
/// operators may look at uncommitted data to prove what a transaction hid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional records).
    ReadCommitted,
    /// Everything written, including open and aborted transactions.
    ReadUncommitted,
}

/// Where a consumer group without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record: nothing published before the group existed is skipped.
    Earliest,
    /// Only records published after the group joined.
    Latest,
}

fn base(settings: &KafkaSettings, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(key::BOOTSTRAP_SERVERS, &settings.bootstrap_servers)
        .set(key::CLIENT_ID, format!("{}.{role}", settings.client_id));
    c
}

/// An idempotent producer with `acks=all` whose delivery report means the record is durable.
pub fn producer(settings: &KafkaSettings, role: &str) -> ClientConfig {
    producer_with_timeout(settings, role, settings.message_timeout)
}

/// [`producer`] with its own bound on a record's delivery (librdkafka retries until then): the
/// intake answers 503 after `delivery_timeout` rather than holding a sender for the default.
pub fn producer_with_timeout(
    settings: &KafkaSettings,
    role: &str,
    delivery_timeout: Duration,
) -> ClientConfig {
    let mut c = base(settings, role);
    c.set(key::ENABLE_IDEMPOTENCE, "true")
        .set(key::ACKS, "all")
        .set(
            key::MESSAGE_TIMEOUT_MS,
            delivery_timeout.as_millis().to_string(),
        )
        .set(key::LINGER_MS, "5")
        // The Java client's partitioner: a key lands in the same partition whichever client wrote
        // it, so duplicates from Java and Rust senders meet in one dedupe partition.
        .set(key::PARTITIONER, "murmur2_random");
    c
}

/// Emits librdkafka statistics (lag per partition, among others) every `interval` to the client
/// context.
pub fn with_statistics(mut config: ClientConfig, interval: Duration) -> ClientConfig {
    config.set(
        key::STATISTICS_INTERVAL_MS,
        interval.as_millis().to_string(),
    );
    config
}

/// A transactional producer (implies idempotence) under a stable `transactional.id`.
pub fn transactional_producer(
    settings: &KafkaSettings,
    role: &str,
    transactional_id: &str,
) -> ClientConfig {
    let mut c = producer(settings, role);
    c.set(key::TRANSACTIONAL_ID, transactional_id)
        .set(
            key::TRANSACTION_TIMEOUT_MS,
            settings.transaction_timeout.as_millis().to_string(),
        )
        // Requests the coordinator answers with CONCURRENT_TRANSACTIONS (the last transaction's
        // markers still being written) are retried after 10 ms, not librdkafka's 100 ms; other
        // retries back off exponentially from there as before (retry.backoff.max.ms).
        .set(key::RETRY_BACKOFF_MS, "10")
        // A stage enqueues a whole batch and then waits for every delivery before it commits: a
        // linger only held back the batch's last produce requests (about 4 ms a transaction in
        // bench/PROCESSOR.md), and batching comes from the requests in flight meanwhile.
        .set(key::LINGER_MS, "0");
    c
}

/// A consumer in `group_id` that never commits on its own.
pub fn consumer(
    settings: &KafkaSettings,
    role: &str,
    group_id: &str,
    isolation: Isolation,
    start_at: StartAt,
) -> ClientConfig {
    let mut c = base(settings, role);
    c.set(key::GROUP_ID, group_id)
        .set(
            key::ISOLATION_LEVEL,
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .set(key::ENABLE_AUTO_COMMIT, "false")
        .set(key::ENABLE_AUTO_OFFSET_STORE, "false")
        .set(
            key::AUTO_OFFSET_RESET,
            match start_at {
                StartAt::Earliest => "earliest",
                StartAt::Latest => "latest",
            },
        )
        .set(
            key::SESSION_TIMEOUT_MS,
            settings.session_timeout.as_millis().to_string(),
        )
        // Co-partitioned: the range assignor gives each member the same partition numbers of
        // every topic it subscribes (they have as many partitions), so partition p of the input
        // and of each retry tier, which share dedupe partition p, have one owner. The
        // cooperative-sticky assignor balances counts over all topics and gave one instance the
        // input's partitions and another the retry tiers' (tests/processor.rs,
        // a_duplicate_of_an_event_waiting_in_a_retry_tier_…). Rebalances revoke everything.
        .set(key::PARTITION_ASSIGNMENT_STRATEGY, "range")
        .set(key::ENABLE_PARTITION_EOF, "false")
        .set(
            key::QUEUED_MIN_MESSAGES,
            settings.prefetch_records.to_string(),
        )
        .set(
            key::QUEUED_MAX_MESSAGES_KBYTES,
            settings.prefetch_kbytes.to_string(),
        )
        .set(
            key::FETCH_QUEUE_BACKOFF_MS,
            settings.prefetch_backoff.as_millis().to_string(),
        );
    c
}

/// A static group member (`group.instance.id`): a restart within the session timeout keeps its
/// partitions without a rebalance.
pub fn with_static_membership(mut config: ClientConfig, instance_id: &str) -> ClientConfig {
    config.set(key::GROUP_INSTANCE_ID, instance_id);
    config
}

/// An admin client.
pub fn admin(settings: &KafkaSettings) -> ClientConfig {
    base(settings, "admin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn kafka() -> KafkaSettings {
        Settings::from_toml_str("[adapters.crm]").unwrap().kafka
    }

    #[test]
    fn producers_are_idempotent_with_acks_all() {
        let c = transactional_producer(&kafka(), "crm.process", "tx-1");
        assert_eq!(c.get(key::ENABLE_IDEMPOTENCE), Some("true"));
        assert_eq!(c.get(key::ACKS), Some("all"));
        assert_eq!(c.get(key::TRANSACTIONAL_ID), Some("tx-1"));
        assert_eq!(c.get(key::CLIENT_ID), Some("onceflow.crm.process"));
        // A transaction begun right after the last one committed meets the coordinator still
        // writing that one's markers (CONCURRENT_TRANSACTIONS): librdkafka's 100 ms default
        // backoff was most of the outbox p99 at 2 000 events/s (bench/DELIVERY.md).
        assert_eq!(c.get(key::RETRY_BACKOFF_MS), Some("10"));
        // A transaction's records go at once; a plain producer (the intake's) lingers to batch.
        assert_eq!(c.get(key::LINGER_MS), Some("0"));
        assert_eq!(producer(&kafka(), "intake").get(key::LINGER_MS), Some("5"));
    }

    #[test]
    fn consumers_read_committed_and_never_auto_commit() {
        let c = consumer(
            &kafka(),
            "t",
            "g",
            Isolation::ReadCommitted,
            StartAt::Earliest,
        );
        assert_eq!(c.get(key::ISOLATION_LEVEL), Some("read_committed"));
        assert_eq!(c.get(key::ENABLE_AUTO_COMMIT), Some("false"));
        assert_eq!(c.get(key::ENABLE_AUTO_OFFSET_STORE), Some("false"));
        assert_eq!(c.get(key::AUTO_OFFSET_RESET), Some("earliest"));
        assert_eq!(c.get(key::QUEUED_MIN_MESSAGES), Some("10000"));
        assert_eq!(c.get(key::QUEUED_MAX_MESSAGES_KBYTES), Some("16384"));
        assert_eq!(c.get(key::FETCH_QUEUE_BACKOFF_MS), Some("10"));
        assert_eq!(c.get(key::PARTITION_ASSIGNMENT_STRATEGY), Some("range"));
    }
}
