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
/// permanent, in_doubt, transport).
pub const DELIVERY_CALLS: &str = "onceflow_delivery_calls_total";
/// Histogram of seconds one call to an external API took; label `adapter`.
pub const DELIVERY_CALL_SECONDS: &str = "onceflow_delivery_call_seconds";
/// Counter of seconds calls waited for the rate limit (token bucket, Retry-After,
/// `X-RateLimit-Remaining: 0`); labels `adapter`, `reason` (bucket, retry_after, remaining).
pub const DELIVERY_RATE_LIMIT_WAIT_SECONDS: &str =
    "onceflow_delivery_rate_limit_wait_seconds_total";
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

/// Installs the Prometheus exporter with its own HTTP listener serving `/metrics`.
pub fn install_prometheus(listen: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| e.to_string())
}
