//! Spans of an event's way through onceflow, one per hop, each the child of the hop before it
//! (W3C trace context: the `traceparent` record header between stages, the HTTP header at both
//! ends):
//!
//! ```text
//! sender ─▶ onceflow.ingest (server) ─▶ onceflow.process (consumer) ─▶ onceflow.deliver (client,
//!           one per HTTP attempt, retries included) ─▶ provider
//! ```
//!
//! Exported over OTLP/HTTP (JSON) when `telemetry.otlp_endpoint` is set ([`install`]); otherwise
//! the same traceparents travel, with span ids drawn here, and nothing is exported.
//!
//! Invariants:
//! - A hop's outgoing traceparent is its own span's: the parent the next hop names is a span the
//!   collector receives (when the sender's sampling flag allows: a parent marked not sampled keeps
//!   the whole trace unrecorded).
//! - Export never slows a stage: spans are batched on the SDK's own thread and dropped when its
//!   queue is full; an unreachable collector costs log lines, never records.

use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use crate::config::TelemetrySettings;
use crate::model::headers;

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The exporter could not be built.
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// Where spans were to go.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// Called outside a Tokio runtime (the exporter sends on it).
    #[error("trace export needs a Tokio runtime")]
    NoRuntime,
}

/// Export in progress; [`Exporting::shutdown`] sends what is left.
#[derive(Debug)]
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Sends the spans not yet sent and stops exporting (at the end of a role).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans");
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "stopping span export");
        }
    }
}

/// Starts exporting spans of `role` when `settings` name an endpoint; `Ok(None)` when they do not.
/// Call it once per process, inside the Tokio runtime.
pub fn install(settings: &TelemetrySettings, role: &str) -> Result<Option<Exporting>, TraceError> {
    let Some(endpoint) = &settings.otlp_endpoint else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TraceError::NoRuntime)?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(10))
        .with_http_client(OnRuntime {
            client: reqwest::Client::new(),
            runtime,
        })
        .build()
        .map_err(|e| TraceError::Exporter {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        })?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(settings.export_delay)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_resource(
            Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .with_attribute(KeyValue::new("onceflow.role", role.to_string()))
                .build(),
        )
        .build();
    if TRACER.set(provider.tracer("onceflow")).is_err() {
        tracing::warn!("trace export was installed already; keeping the first");
    }
    tracing::info!(endpoint = %endpoint, role, "exporting spans over OTLP/HTTP");
    Ok(Some(Exporting { provider }))
}

/// One hop's span: its traceparent goes to the next hop.
#[derive(Debug)]
pub struct Hop {
    span: Option<opentelemetry_sdk::trace::Span>,
    traceparent: String,
}

/// Starts the span of hop `name`, the child of `parent` (a `traceparent`; a new trace when it is
/// missing or invalid). Its `attributes` are built only when spans are exported: the processor
/// starts a hop for every record.
pub fn hop(
    name: &'static str,
    kind: SpanKind,
    parent: Option<&str>,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Hop {
    let Some(tracer) = TRACER.get() else {
        return Hop {
            span: None,
            traceparent: headers::continue_trace(parent),
        };
    };
    let cx = match parent.and_then(parse) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes())
        .start_with_context(tracer, &cx);
    let sc = span.span_context();
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    Hop {
        span: Some(span),
        traceparent,
    }
}

impl Hop {
    /// The traceparent naming this span, for the next hop.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Adds an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.span {
            span.set_attribute(attribute);
        }
    }

    /// Marks the hop failed, with why.
    pub fn fail(&mut self, why: impl Into<String>) {
        if let Some(span) = &mut self.span {
            span.set_status(Status::error(why.into()));
        }
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        if let Some(span) = &mut self.span {
            span.end();
        }
    }
}

/// A version-00 traceparent as a remote span context.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The exporter's HTTP client: the SDK exports from a thread of its own, outside Tokio, so each
/// request runs on the role's runtime (with onceflow's reqwest) and is awaited from there.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let call = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        let answer = self
            .runtime
            .spawn(async move {
                let r = call.send().await?;
                let status = r.status();
                let headers = r.headers().clone();
                let body = r.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let (status, headers, body) = answer;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_version_00_traceparents_are_parents() {
        let sc = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_export_a_hop_does_not_build_its_attributes() {
        let mut built = false;
        let hop = hop("onceflow.test", SpanKind::Internal, None, || {
            built = true;
            vec![KeyValue::new("onceflow.test", "value")]
        });
        assert!(!built, "attributes are built only for an exported span");
        assert!(hop.traceparent().starts_with("00-"));
    }

    #[test]
    fn without_export_a_hop_still_continues_the_trace() {
        let hop = hop(
            "onceflow.test",
            SpanKind::Internal,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Vec::new,
        );
        assert!(
            hop.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(!hop.traceparent().contains("00f067aa0ba902b7"));
    }
}
