//! Every metric name onceflow records, in one place, with its labels. Labels take bounded values
//! only (status codes, source names from the settings, outcomes), never ids or payload values.

/// Counter of intake requests; labels `source` (configured name or `unknown`), `status` (HTTP code).
pub const INGEST_REQUESTS: &str = "onceflow_ingest_requests_total";
/// Histogram of seconds from request to the broker's acknowledgement; label `source`.
pub const INGEST_PUBLISH_SECONDS: &str = "onceflow_ingest_publish_seconds";
/// Counter of events published through the producer API; labels `topic`, `outcome` (ok, invalid,
/// unavailable).
pub const PRODUCER_EVENTS: &str = "onceflow_producer_events_total";

/// Installs the Prometheus exporter with its own HTTP listener serving `/metrics`.
pub fn install_prometheus(listen: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| e.to_string())
}
