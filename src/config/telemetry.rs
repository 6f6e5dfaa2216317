//! The `[telemetry]` section: OpenTelemetry trace export over OTLP/HTTP, off unless
//! `otlp_endpoint` is set. Metrics stay on each role's Prometheus endpoint (`*.metrics_listen`).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, millis};

/// Trace export.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// Where spans go (`http://collector:4318`, or the full `…/v1/traces` URL); `None`: nowhere.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans; each role adds `onceflow.role`.
    pub service_name: String,
    /// How long finished spans wait to be sent in one batch.
    pub export_delay: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: String,
    export_delay_ms: u64,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: None,
            service_name: "onceflow".into(),
            export_delay_ms: 1_000,
        }
    }
}

pub(super) fn validate(raw: RawTelemetry) -> Result<TelemetrySettings, ConfigError> {
    let otlp_endpoint = match raw.otlp_endpoint.filter(|e| !e.is_empty()) {
        None => None,
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            let url = url.trim_end_matches('/');
            Some(if url.ends_with("/v1/traces") {
                url.to_string()
            } else {
                format!("{url}/v1/traces")
            })
        }
        Some(url) => {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                format!("`{url}` is not an http(s) URL"),
            ));
        }
    };
    if raw.service_name.trim().is_empty() {
        return Err(invalid("telemetry.service_name", "must not be empty"));
    }
    Ok(TelemetrySettings {
        otlp_endpoint,
        service_name: raw.service_name,
        export_delay: millis("telemetry.export_delay_ms", raw.export_delay_ms, 10, 60_000)?,
    })
}
