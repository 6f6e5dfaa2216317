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

/// Installs the Prometheus exporter with its own HTTP listener serving `/metrics`.
pub fn install_prometheus(listen: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| e.to_string())
}
