//! The `[ingest]` section: the HTTP intake and its sources.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, SecretRef, check_name, invalid, millis, socket, within};
use crate::model::EventType;

/// HTTP intake (`onceflow ingest`).
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` listener.
    pub metrics_listen: SocketAddr,
    /// Input topic events are published to (one of `topics.inputs`).
    pub topic: String,
    /// Longest wait for the broker's acknowledgement before answering 503.
    pub publish_timeout: Duration,
    /// Senders, by the `{source}` of `POST /v1/sources/{source}/events`.
    pub sources: BTreeMap<String, SourceSettings>,
    /// Most hops an event may have made (`X-Onceflow-Hop`, set on onceflow's outgoing webhooks)
    /// before the intake refuses it as a cycle (422 `cycle_detected`).
    pub max_hops: u32,
}

/// One sender of webhooks.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Where the HMAC secret comes from; resolved by the ingest role at its start-up.
    pub secret: SecretRef,
    /// Event types this source may send.
    pub allowed_types: Vec<EventType>,
    /// Sustained requests per second (token-bucket refill).
    pub rate_per_second: u32,
    /// Requests allowed in a burst (bucket size).
    pub burst: u32,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIngest {
    listen: String,
    metrics_listen: String,
    topic: Option<String>,
    publish_timeout_ms: u64,
    max_body_bytes: usize,
    max_hops: u32,
    sources: BTreeMap<String, RawSource>,
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            topic: None,
            publish_timeout_ms: 10_000,
            max_body_bytes: 256 * 1024,
            max_hops: 5,
            sources: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSource {
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    allowed_types: Option<Vec<String>>,
    rate_per_second: Option<u32>,
    burst: Option<u32>,
    max_body_bytes: Option<usize>,
}

pub(super) fn validate(raw: RawIngest, inputs: &[String]) -> Result<IngestSettings, ConfigError> {
    let listen = socket("ingest.listen", &raw.listen)?;
    let metrics_listen = socket("ingest.metrics_listen", &raw.metrics_listen)?;
    let topic = match raw.topic {
        Some(t) if inputs.contains(&t) => t,
        Some(t) => {
            return Err(invalid(
                "ingest.topic",
                format!("`{t}` is not one of topics.inputs"),
            ));
        }
        None => inputs
            .first()
            .cloned()
            .ok_or_else(|| invalid("topics.inputs", "is empty"))?,
    };
    let publish_timeout = millis(
        "ingest.publish_timeout_ms",
        raw.publish_timeout_ms,
        500,
        300_000,
    )?;
    if raw.max_body_bytes < 1024 || raw.max_body_bytes > 16 * 1024 * 1024 {
        return Err(invalid(
            "ingest.max_body_bytes",
            "must be between 1 KiB and 16 MiB",
        ));
    }
    within("ingest.max_hops", raw.max_hops, 1..=100)?;
    let mut sources = BTreeMap::new();
    for (name, src) in raw.sources {
        let key = |k: &str| format!("ingest.sources.{name}.{k}");
        check_name(&format!("ingest.sources.{name}"), &name)?;
        let secret = match (src.secret_env, src.secret_file) {
            (Some(env), None) if !env.is_empty() => SecretRef::Env(env),
            (None, Some(path)) => SecretRef::File(path),
            _ => {
                return Err(invalid(
                    key("secret_env"),
                    "set exactly one of secret_env or secret_file",
                ));
            }
        };
        let allowed_types = match src.allowed_types {
            None => EventType::ALL.to_vec(),
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    EventType::from_name(n).ok_or_else(|| {
                        invalid(
                            format!("{}[{i}]", key("allowed_types")),
                            format!("unknown event type `{n}`"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let rate_per_second = src.rate_per_second.unwrap_or(50);
        let burst = src.burst.unwrap_or(rate_per_second.saturating_mul(2));
        if rate_per_second == 0 {
            return Err(invalid(key("rate_per_second"), "must be at least 1"));
        }
        if burst == 0 {
            return Err(invalid(key("burst"), "must be at least 1"));
        }
        let max_body_bytes = src.max_body_bytes.unwrap_or(raw.max_body_bytes);
        if max_body_bytes < 64 || max_body_bytes > raw.max_body_bytes {
            return Err(invalid(
                key("max_body_bytes"),
                "must be between 64 bytes and ingest.max_body_bytes",
            ));
        }
        sources.insert(
            name,
            SourceSettings {
                secret,
                allowed_types,
                rate_per_second,
                burst,
                max_body_bytes,
            },
        );
    }
    Ok(IngestSettings {
        listen,
        metrics_listen,
        topic,
        publish_timeout,
        sources,
        max_hops: raw.max_hops,
    })
}
