//! `onceflow ingest`: the signed HTTP intake in front of the [`Producer`].
//!
//! `POST /v1/sources/{source}/events` with `{type, id?, occurred_at?, data}`; `/healthz`, `/readyz`
//! and `/openapi.json` beside it.
//!
//! Invariants:
//! - 202 `{event_id, correlation_id}` only after the broker acknowledged the record; the same
//!   source event sent twice gets the same `event_id`.
//! - The checks run cheapest and least revealing first: unknown source 404, wrong content type 415,
//!   body over the source's limit 413 (counted while reading, never buffered past the limit), bad or
//!   stale signature 401 (over the raw bytes, before parsing), rate limit 429 with Retry-After
//!   (spent only by authenticated requests, so strangers cannot drain a sender's bucket), malformed
//!   JSON 400, schema or rule violation 422 naming the field, broker or registry unavailable 503
//!   with Retry-After.
//! - Every error body is JSON `{error, detail, field?}` with its detail PII-masked, and so is every
//!   log line; event data is never logged.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde_json::{Map, Value as Json, json};
use tracing::{info, warn};

use super::producer::{Context, Producer, PublishError};
use super::signature;
use crate::codec::catalog::Catalog;
use crate::config::{ConfigError, Settings};
use crate::model::json_avro::parse_timestamp_ms;
use crate::model::{Event, EventType, FieldError};
use crate::telemetry::mask::mask_pii;
use crate::telemetry::{metrics, trace};

/// The correlation id a caller may send; echoed back and carried in the event's meta.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Hops the event has made (onceflow's own outgoing webhooks set it, counting up).
pub const HOP_HEADER: &str = "x-onceflow-hop";
/// W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Seconds a client should wait after a 503.
const UNAVAILABLE_RETRY_AFTER: u64 = 5;
/// How long a readiness probe waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest sender-supplied event id.
const MAX_ID_LEN: usize = 256;

/// Why the intake could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A source's secret or another setting could not be resolved.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The producer could not be built.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The HTTP client for readiness probes could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

struct Source {
    secret: Vec<u8>,
    allowed: Vec<EventType>,
    limiter: DefaultDirectRateLimiter,
    max_body: usize,
}

struct App {
    sources: HashMap<String, Source>,
    max_hops: u32,
    producer: Producer,
    registry_url: String,
    http: reqwest::Client,
    openapi: Json,
}

/// An error answer: status, a stable machine-readable `error`, a human `detail`, the `field` when
/// one is at fault, and Retry-After for 429 and 503.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
    field: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            detail: mask_pii(&detail.into()),
            field: None,
            retry_after: None,
        }
    }

    fn field(mut self, field: impl Into<String>) -> ApiError {
        // A field name comes from the sender's keys and may itself be PII.
        self.field = Some(mask_pii(&field.into()));
        self
    }

    fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }

    fn invalid(e: FieldError) -> ApiError {
        let detail = format!("{} {}", e.field, e.detail);
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "schema_violation", detail).field(e.field)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            detail: &self.detail,
            field: self.field.as_deref(),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[derive(Serialize)]
struct Accepted {
    event_id: String,
    correlation_id: String,
    /// For the log line only.
    #[serde(skip)]
    trace_id: String,
}

/// Builds the intake for `settings`: resolves every source's secret (a missing one stops start-up
/// naming its key), connects the producer, prepares the OpenAPI document.
pub fn build(settings: &Settings) -> Result<Router, IngestError> {
    let catalog = Catalog::builtin().map_err(PublishError::from)?;
    let mut sources = HashMap::new();
    for (name, s) in &settings.ingest.sources {
        let key = match &s.secret {
            crate::config::SecretRef::File(_) => format!("ingest.sources.{name}.secret_file"),
            _ => format!("ingest.sources.{name}.secret_env"),
        };
        let secret = s.secret.resolve(&key)?.into_bytes();
        // Validated non-zero in config; `max(1)` keeps the types honest without a panic path.
        let rate = NonZeroU32::new(s.rate_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(s.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
        sources.insert(
            name.clone(),
            Source {
                secret,
                allowed: s.allowed_types.clone(),
                limiter,
                max_body: s.max_body_bytes,
            },
        );
    }
    let app = App {
        sources,
        max_hops: settings.ingest.max_hops,
        producer: Producer::new(settings)?,
        registry_url: settings.registry.url.clone(),
        http: reqwest::Client::builder().timeout(READY_TIMEOUT).build()?,
        openapi: super::openapi::document(&catalog),
    };
    Ok(router(Arc::new(app)))
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/sources/{source}/events", post(post_event))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(|State(app): State<Arc<App>>| async move { axum::Json(app.openapi.clone()) }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The envelope fields, checked; `data` stays JSON until the schema checks it.
struct Envelope {
    event_type: EventType,
    id: Option<String>,
    occurred_at: i64,
    data: Map<String, Json>,
}

fn envelope(json: Json, allowed: &[EventType]) -> Result<Envelope, ApiError> {
    let violation = |field: &str, detail: String| {
        ApiError::invalid(FieldError {
            field: field.into(),
            detail,
        })
    };
    let Json::Object(mut obj) = json else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema_violation",
            "the body must be a JSON object",
        ));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| !["type", "id", "occurred_at", "data"].contains(&k.as_str()))
    {
        return Err(violation(unknown, "unknown field".into()));
    }
    let type_name = match obj.remove("type") {
        Some(Json::String(s)) => s,
        Some(_) => return Err(violation("type", "must be a string".into())),
        None => return Err(violation("type", "is required".into())),
    };
    let event_type = EventType::from_name(&type_name).ok_or_else(|| {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
        violation(
            "type",
            format!(
                "unknown event type `{type_name}`; known: {}",
                known.join(", ")
            ),
        )
    })?;
    if !allowed.contains(&event_type) {
        return Err(violation(
            "type",
            format!("`{type_name}` is not allowed for this source"),
        ));
    }
    let id = match obj.remove("id") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(s),
        Some(_) => {
            return Err(violation(
                "id",
                format!("must be a string of 1 to {MAX_ID_LEN} characters"),
            ));
        }
    };
    let occurred_at = match obj.remove("occurred_at") {
        None | Some(Json::Null) => crate::model::event::now_ms(),
        Some(Json::String(s)) => parse_timestamp_ms(&s)
            .map_err(|e| violation("occurred_at", format!("not an RFC 3339 timestamp: {e}")))?,
        Some(Json::Number(n)) => n.as_i64().ok_or_else(|| {
            violation(
                "occurred_at",
                "epoch milliseconds must be an integer".into(),
            )
        })?,
        Some(_) => {
            return Err(violation(
                "occurred_at",
                "must be an RFC 3339 string or epoch milliseconds".into(),
            ));
        }
    };
    let data = match obj.remove("data") {
        Some(Json::Object(map)) => map,
        Some(_) => return Err(violation("data", "must be an object".into())),
        None => return Err(violation("data", "is required".into())),
    };
    Ok(Envelope {
        event_type,
        id,
        occurred_at,
        data,
    })
}

fn record(source: &str, status: StatusCode) {
    ::metrics::counter!(metrics::INGEST_REQUESTS, "source" => source.to_string(), "status" => status.as_str().to_string())
        .increment(1);
}

async fn post_event(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The framework's own refusal (a source name that is not UTF-8, `%ff`) is an ApiError too.
    let source_name = match path {
        Ok(Path(name)) => name,
        Err(e) => {
            record("unknown", StatusCode::BAD_REQUEST);
            return ApiError::new(StatusCode::BAD_REQUEST, "malformed_path", e.body_text())
                .into_response();
        }
    };
    let correlation_id = correlation_id(&headers);
    let started = Instant::now();
    let known = app.sources.contains_key(&source_name);
    // Unknown source names are not echoed into metric labels (unbounded cardinality).
    let label = if known {
        source_name.as_str()
    } else {
        "unknown"
    };
    match accept(&app, &source_name, &headers, body, &correlation_id).await {
        Ok(accepted) => {
            record(label, StatusCode::ACCEPTED);
            ::metrics::histogram!(metrics::INGEST_PUBLISH_SECONDS, "source" => label.to_string())
                .record(started.elapsed().as_secs_f64());
            info!(source = label, event_id = %accepted.event_id, correlation_id = %accepted.correlation_id, trace_id = %accepted.trace_id, status = 202, "event accepted");
            (StatusCode::ACCEPTED, axum::Json(accepted)).into_response()
        }
        Err(e) => {
            record(label, e.status);
            warn!(
                source = label,
                correlation_id = %correlation_id,
                status = e.status.as_u16(),
                error = e.error,
                field = e.field.as_deref().unwrap_or(""),
                detail = %e.detail,
                "event refused"
            );
            e.into_response()
        }
    }
}

async fn accept(
    app: &App,
    source_name: &str,
    headers: &HeaderMap,
    body: Body,
    correlation_id: &str,
) -> Result<Accepted, ApiError> {
    let source = app.sources.get(source_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no source named `{source_name}`"),
        )
    })?;

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, got `{content_type}`"),
        ));
    }

    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > source.max_body) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {} bytes", source.max_body),
        ));
    }
    let raw = read_limited(body, source.max_body).await?;

    let signature_header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    signature::verify(&source.secret, signature_header, &raw, unix_now())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string()))?;

    if let Err(not_until) = source.limiter.check() {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this source",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64));
    }

    // The sender's trace continued with ingest's own span, or a new trace: every record carries
    // one, so every stage, retry and call after it logs and sends the same trace id.
    let given = headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok());
    let mut span = trace::hop("onceflow.ingest", trace::SpanKind::Server, given, || {
        vec![trace::KeyValue::new(
            "onceflow.source",
            source_name.to_string(),
        )]
    });
    let context = context(headers, app.max_hops, &span)?;
    let json: Json = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
    let env = envelope(json, &source.allowed)?;
    let event = Event::new(
        env.event_type,
        source_name,
        env.id.as_deref(),
        env.occurred_at,
        env.data,
        Some(correlation_id.to_string()),
    );
    let published = app.producer.publish_with(&event, &context).await;
    match &published {
        Ok(d) => span.set(trace::KeyValue::new(
            "onceflow.event_id",
            d.event_id.clone(),
        )),
        Err(e) => span.fail(e.to_string()),
    }
    match published {
        Ok(d) => Ok(Accepted {
            event_id: d.event_id,
            correlation_id: d.correlation_id,
            trace_id: context
                .traceparent
                .as_deref()
                .and_then(crate::model::headers::trace_id)
                .unwrap_or_default()
                .to_string(),
        }),
        Err(PublishError::Invalid(e)) => Err(ApiError::invalid(e)),
        Err(e) if e.is_retriable() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
        .retry_after(UNAVAILABLE_RETRY_AFTER)),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

/// The hop count and trace context of a request: an event past `max_hops` is a loop through
/// external automations (A → B → A) and is refused. The record carries `span`'s traceparent.
fn context(headers: &HeaderMap, max_hops: u32, span: &trace::Hop) -> Result<Context, ApiError> {
    let hop = match headers.get(HOP_HEADER) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_header",
                    "X-Onceflow-Hop must be a non-negative integer",
                )
                .field("X-Onceflow-Hop")
            })?,
    };
    if hop > max_hops {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cycle_detected",
            format!("the event has made {hop} hops, more than ingest.max_hops ({max_hops}): a loop through external automations"),
        )
        .field("X-Onceflow-Hop"));
    }
    Ok(Context {
        hop,
        traceparent: Some(span.traceparent().to_string()),
    })
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let probe = Arc::clone(&app);
    let broker = tokio::task::spawn_blocking(move || probe.producer.probe_broker(READY_TIMEOUT))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let registry = match app
        .http
        .get(format!("{}/subjects", app.registry_url))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("status {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    match (broker, registry) {
        (Ok(()), Ok(())) => axum::Json(json!({"status": "ready"})).into_response(),
        (b, r) => {
            let mut problems = Vec::new();
            if let Err(e) = b {
                problems.push(format!("broker: {e}"));
            }
            if let Err(e) = r {
                problems.push(format!("registry: {e}"));
            }
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                problems.join("; "),
            )
            .retry_after(UNAVAILABLE_RETRY_AFTER)
            .into_response()
        }
    }
}
