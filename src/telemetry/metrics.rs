//! Every metric name onceflow records, in one place, with its labels. Labels take bounded values
//! only (status codes, source names from the settings, outcomes), never ids or payload values.

/// Counter of intake requests; labels `source` (configured name or `unknown`), `status` (HTTP code).
pub const INGEST_REQUESTS: &str = "onceflow_ingest_requests_total";
/// Histogram of seconds from request to the broker's acknowledgement; label `source`.
pub const INGEST_PUBLISH_SECONDS: &str = "onceflow_ingest_publish_seconds";
/// Counter of events published through the producer API; labels `topic`, `outcome` (ok, invalid,
/// unavailable).
pub const PRODUCER_EVENTS: &str = "onceflow_producer_events_total";

/// Counter of records the processor handled; labels `adapter`, `outcome` (ok, duplicate, retry,
/// dlq).
pub const PROCESSOR_RECORDS: &str = "onceflow_processor_records_total";
/// Histogram of seconds one transaction commit took; label `adapter`.
pub const PROCESSOR_COMMIT_SECONDS: &str = "onceflow_processor_commit_seconds";
/// Counter of aborted transactions; label `adapter`.
pub const PROCESSOR_ABORTS: &str = "onceflow_processor_aborts_total";
/// Counter of producer fencings and fatal errors that made the processor rejoin; label `adapter`.
pub const PROCESSOR_FENCINGS: &str = "onceflow_processor_fencings_total";
/// Counter of rebalances (assignments and revocations); label `adapter`.
pub const PROCESSOR_REBALANCES: &str = "onceflow_processor_rebalances_total";
/// Gauge of consumer lag per partition; labels `adapter`, `topic`, `partition`.
pub const PROCESSOR_LAG: &str = "onceflow_processor_lag_records";
/// Gauge of records waiting in a retry tier; labels `adapter`, `stage`, `tier`.
pub const RETRY_DEPTH: &str = "onceflow_retry_depth_records";
/// Counter of records sent to a DLQ; labels `adapter`, `stage`, `class`.
pub const DLQ_RECORDS: &str = "onceflow_dlq_records_total";

/// Counter of records the dispatcher handled; labels `adapter`, `outcome` (ok, duplicate, retry,
/// dlq, in_doubt).
pub const DISPATCHER_RECORDS: &str = "onceflow_dispatcher_records_total";
/// Histogram of seconds one dispatcher transaction commit took; label `adapter`.
pub const DISPATCHER_COMMIT_SECONDS: &str = "onceflow_dispatcher_commit_seconds";
/// Counter of aborted dispatcher transactions; label `adapter`.
pub const DISPATCHER_ABORTS: &str = "onceflow_dispatcher_aborts_total";
/// Counter of dispatcher fencings and fatal errors (each followed by a rejoin); label `adapter`.
pub const DISPATCHER_FENCINGS: &str = "onceflow_dispatcher_fencings_total";
/// Counter of dispatcher rebalances; label `adapter`.
pub const DISPATCHER_REBALANCES: &str = "onceflow_dispatcher_rebalances_total";
/// Gauge of the dispatcher's consumer lag per partition; labels `adapter`, `topic`, `partition`.
pub const DISPATCHER_LAG: &str = "onceflow_dispatcher_lag_records";

/// Counter of calls to an external API; labels `adapter`, `outcome` (ok, retry, rate_limited,
/// permanent, unknown: sent and no answer, not_sent: no connection).
pub const DELIVERY_CALLS: &str = "onceflow_delivery_calls_total";
/// Histogram of seconds one call to an external API took; label `adapter`.
pub const DELIVERY_CALL_SECONDS: &str = "onceflow_delivery_call_seconds";
/// Histogram of seconds one call waited for the rate limit (token bucket, Retry-After,
/// `X-RateLimit-Remaining: 0`); labels `adapter`, `reason` (bucket, retry_after, remaining).
pub const DELIVERY_RATE_LIMIT_WAIT_SECONDS: &str = "onceflow_delivery_rate_limit_wait_seconds";
/// Gauge of the circuit breaker's state: 0 closed, 1 half-open, 2 open; label `adapter`.
pub const BREAKER_STATE: &str = "onceflow_breaker_state";
/// Counter of circuit breaker transitions; labels `adapter`, `to` (closed, half_open, open).
pub const BREAKER_TRANSITIONS: &str = "onceflow_breaker_transitions_total";
/// Counter of commands found in doubt (attempted, outcome unknown); labels `adapter`, `action`
/// (park, resend).
pub const IN_DOUBT: &str = "onceflow_delivery_in_doubt_total";
/// Counter of commands already in the ledger as done, not sent again; label `adapter`.
pub const LEDGER_DUPLICATES: &str = "onceflow_ledger_duplicates_total";
/// Histogram of seconds from an event's `received_at` to the provider's 2xx for its command; label
/// `adapter`.
pub const END_TO_END_SECONDS: &str = "onceflow_end_to_end_seconds";

/// The names of the metrics the shared transactional-stage skeleton records, per stage.
#[derive(Debug)]
pub struct StageMetrics {
    /// Records handled, by outcome.
    pub records: &'static str,
    /// Commit durations.
    pub commit_seconds: &'static str,
    /// Aborted transactions.
    pub aborts: &'static str,
    /// Fencings and fatal errors.
    pub fencings: &'static str,
    /// Rebalances.
    pub rebalances: &'static str,
    /// Consumer lag.
    pub lag: &'static str,
}

/// The processor's stage metrics.
pub const PROCESSOR: StageMetrics = StageMetrics {
    records: PROCESSOR_RECORDS,
    commit_seconds: PROCESSOR_COMMIT_SECONDS,
    aborts: PROCESSOR_ABORTS,
    fencings: PROCESSOR_FENCINGS,
    rebalances: PROCESSOR_REBALANCES,
    lag: PROCESSOR_LAG,
};

/// The dispatcher's stage metrics.
pub const DISPATCHER: StageMetrics = StageMetrics {
    records: DISPATCHER_RECORDS,
    commit_seconds: DISPATCHER_COMMIT_SECONDS,
    aborts: DISPATCHER_ABORTS,
    fencings: DISPATCHER_FENCINGS,
    rebalances: DISPATCHER_REBALANCES,
    lag: DISPATCHER_LAG,
};

/// Counter of dead letters a replay read; labels `adapter`, `stage`, `outcome` (replayed,
/// skipped).
pub const REPLAY_RECORDS: &str = "onceflow_replay_records_total";
/// Gauge of dead letters not yet replayed (beyond the replay group's committed offsets); labels
/// `adapter`, `stage`. Exported by the stage's processor or dispatcher.
pub const DLQ_DEPTH: &str = "onceflow_dlq_depth_records";

/// Histogram of seconds a stage's store took to restore newly assigned partitions from its
/// changelog, waits for open transactions included (a zombie's open transaction holds the last
/// stable offset until the broker aborts it, at most its transaction timeout); labels `adapter`,
/// `stage`.
pub const STORE_RESTORE_SECONDS: &str = "onceflow_store_restore_seconds";
/// Counter of store entries restored when partitions were assigned, by where they came from:
/// `from` = `checkpoint` (entries loaded from local checkpoints) or `changelog` (changelog records
/// read); labels `adapter`, `stage`, `from`.
pub const STORE_RESTORED: &str = "onceflow_store_restored_total";
/// Counter of commit calls that timed out with the outcome unknown and were asked again (never
/// aborted); labels `adapter`, `stage`.
pub const COMMIT_UNKNOWN: &str = "onceflow_commit_outcome_unknown_total";

/// What a metric is, as Prometheus sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter (`rate()` it).
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram: exported as `<name>_bucket`, `<name>_sum` and `<name>_count` with the
    /// [`BUCKETS`] bounds.
    Histogram,
}

/// Every metric onceflow exports, with its kind: the names dashboards and alert rules may use
/// (tests/deploy.rs checks them against this list).
pub const EXPORTED: &[(&str, Kind)] = &[
    (INGEST_REQUESTS, Kind::Counter),
    (INGEST_PUBLISH_SECONDS, Kind::Histogram),
    (PRODUCER_EVENTS, Kind::Counter),
    (PROCESSOR_RECORDS, Kind::Counter),
    (PROCESSOR_COMMIT_SECONDS, Kind::Histogram),
    (PROCESSOR_ABORTS, Kind::Counter),
    (PROCESSOR_FENCINGS, Kind::Counter),
    (PROCESSOR_REBALANCES, Kind::Counter),
    (PROCESSOR_LAG, Kind::Gauge),
    (RETRY_DEPTH, Kind::Gauge),
    (DLQ_RECORDS, Kind::Counter),
    (DISPATCHER_RECORDS, Kind::Counter),
    (DISPATCHER_COMMIT_SECONDS, Kind::Histogram),
    (DISPATCHER_ABORTS, Kind::Counter),
    (DISPATCHER_FENCINGS, Kind::Counter),
    (DISPATCHER_REBALANCES, Kind::Counter),
    (DISPATCHER_LAG, Kind::Gauge),
    (DELIVERY_CALLS, Kind::Counter),
    (DELIVERY_CALL_SECONDS, Kind::Histogram),
    (DELIVERY_RATE_LIMIT_WAIT_SECONDS, Kind::Histogram),
    (BREAKER_STATE, Kind::Gauge),
    (BREAKER_TRANSITIONS, Kind::Counter),
    (IN_DOUBT, Kind::Counter),
    (LEDGER_DUPLICATES, Kind::Counter),
    (END_TO_END_SECONDS, Kind::Histogram),
    (REPLAY_RECORDS, Kind::Counter),
    (DLQ_DEPTH, Kind::Gauge),
    (STORE_RESTORE_SECONDS, Kind::Histogram),
    (STORE_RESTORED, Kind::Counter),
    (COMMIT_UNKNOWN, Kind::Counter),
];

/// Histogram bucket bounds in seconds (every onceflow histogram measures seconds: 1 ms to 2 min).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_in_this_file_is_exported_once_and_well_formed() {
        let source = include_str!("metrics.rs");
        let names: Vec<&str> = source
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("onceflow_") && !s.contains(' '))
            .collect();
        assert!(names.len() >= EXPORTED.len(), "{names:?}");
        for name in names {
            let kinds: Vec<_> = EXPORTED.iter().filter(|(n, _)| *n == name).collect();
            assert_eq!(kinds.len(), 1, "{name} must be in EXPORTED exactly once");
            match kinds[0].1 {
                Kind::Counter => assert!(name.ends_with("_total"), "counter {name}"),
                Kind::Histogram => assert!(name.ends_with("_seconds"), "histogram {name}"),
                Kind::Gauge => assert!(!name.ends_with("_total"), "gauge {name}"),
            }
        }
    }
}
