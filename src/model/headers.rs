//! Every Kafka header onceflow writes, typed, and the error envelope of retry and DLQ records
//! (DESIGN.md §4).
//!
//! Invariants:
//! - Header names live here and nowhere else.
//! - A record moving to a retry or DLQ topic keeps its key, value bytes and every header of its
//!   own; onceflow's envelope headers are *replaced* on each hop ([`ErrorEnvelope::headers_for`]),
//!   never accumulated, so a record that failed five times carries one envelope.
//! - The envelope carries the first failure's time and origin across hops: `origin.*` always
//!   names the record's position in the input topic, not in a retry topic.
//! - `error.message` is PII-masked and at most [`MAX_MESSAGE_BYTES`] bytes.

use std::fmt;

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::kafka::names::Stage;
use crate::telemetry::mask::mask_pii;

/// Header names.
pub mod name {
    /// Error class: retryable, permanent, decode, schema, timeout.
    pub const ERROR_CLASS: &str = "onceflow.error.class";
    /// PII-masked error text, at most 1 KiB.
    pub const ERROR_MESSAGE: &str = "onceflow.error.message";
    /// Attempts made so far.
    pub const ATTEMPT: &str = "onceflow.attempt";
    /// Epoch ms of the first failure.
    pub const FIRST_FAILED_AT: &str = "onceflow.first_failed_at";
    /// Epoch ms before which the next attempt must not run.
    pub const NOT_BEFORE: &str = "onceflow.not_before";
    /// Input topic of the original record.
    pub const ORIGIN_TOPIC: &str = "onceflow.origin.topic";
    /// Input partition of the original record.
    pub const ORIGIN_PARTITION: &str = "onceflow.origin.partition";
    /// Input offset of the original record.
    pub const ORIGIN_OFFSET: &str = "onceflow.origin.offset";
    /// Adapter whose stage failed.
    pub const ADAPTER: &str = "onceflow.adapter";
    /// Stage that failed: process or deliver.
    pub const STAGE: &str = "onceflow.stage";
    /// Correlation id of the event, when it could be read.
    pub const CORRELATION_ID: &str = "onceflow.correlation_id";
    /// HTTP status of the external API's answer, when a delivery failed on one.
    pub const HTTP_STATUS: &str = "onceflow.error.http_status";
    /// Hops an event has made through onceflow and external automations (ingest refuses an event
    /// past `ingest.max_hops`); carried from an event to its commands and outgoing webhooks.
    pub const HOP: &str = "onceflow.hop";
    /// W3C trace context, carried from ingest to the provider.
    pub const TRACEPARENT: &str = "traceparent";
    /// On a command: when onceflow accepted the event it was decided from (epoch ms), for the
    /// end-to-end latency measured at the provider's answer.
    pub const EVENT_RECEIVED_AT: &str = "onceflow.event.received_at";

    /// Headers a command inherits from the event record it was decided from.
    pub const INHERITED: [&str; 2] = [HOP, TRACEPARENT];
    /// Replay: DLQ coordinates (`topic/partition/offset`) of the replayed record.
    pub const REPLAY_OF: &str = "onceflow.replay.of";
    /// Replay: the operator's reason.
    pub const REPLAY_REASON: &str = "onceflow.replay.reason";
    /// Replay: epoch ms of the replay.
    pub const REPLAY_AT: &str = "onceflow.replay.at";

    /// The envelope's headers, replaced on every hop.
    pub const ENVELOPE: [&str; 12] = [
        ERROR_CLASS,
        ERROR_MESSAGE,
        ATTEMPT,
        FIRST_FAILED_AT,
        NOT_BEFORE,
        ORIGIN_TOPIC,
        ORIGIN_PARTITION,
        ORIGIN_OFFSET,
        ADAPTER,
        STAGE,
        CORRELATION_ID,
        HTTP_STATUS,
    ];
}

/// Longest `error.message`, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Why a record left the happy path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A transient failure; retried through the tiers.
    Retryable,
    /// Will never succeed; straight to the DLQ.
    Permanent,
    /// The bytes are not a decodable record (bad magic byte, unknown schema id, truncated).
    Decode,
    /// Decodable, but not a record this stage understands.
    Schema,
    /// A call ran out of time.
    Timeout,
    /// A delivery was attempted and its outcome is unknown (a crash or a lost answer between the
    /// call and the commit) at a provider that cannot tell a duplicate: an operator decides.
    InDoubt,
}

impl ErrorClass {
    /// Every class.
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::Retryable,
        ErrorClass::Permanent,
        ErrorClass::Decode,
        ErrorClass::Schema,
        ErrorClass::Timeout,
        ErrorClass::InDoubt,
    ];

    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Decode => "decode",
            ErrorClass::Schema => "schema",
            ErrorClass::Timeout => "timeout",
            ErrorClass::InDoubt => "in_doubt",
        }
    }

    /// The class named by a header value.
    pub fn parse(s: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl serde::Serialize for ErrorClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a record first entered the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The error envelope of a retry or DLQ record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEnvelope {
    /// Why.
    pub class: ErrorClass,
    /// What happened (masked, truncated).
    pub message: String,
    /// Attempts made so far, this one included.
    pub attempt: u32,
    /// Epoch ms of the first failure.
    pub first_failed_at: i64,
    /// Epoch ms before which the next attempt must not run (0 for DLQ records).
    pub not_before: i64,
    /// The record's place in the input topic.
    pub origin: Origin,
    /// Adapter.
    pub adapter: String,
    /// Stage.
    pub stage: Stage,
    /// Correlation id, when known.
    pub correlation_id: Option<String>,
    /// HTTP status of the external API's answer, when a delivery failed on one.
    pub http_status: Option<u16>,
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A W3C `traceparent` for a new span: `inherited`'s trace continued with a new span id, or a new
/// trace when `inherited` is missing or not a valid version-00 traceparent. Ingest starts (or
/// continues) the event's trace; each call to a provider is a child span of it.
///
/// Ids come from a per-thread generator (fastrand, seeded per process), not the OS: W3C asks ids
/// to be random and unique, not secret, and a `getrandom` call per record was a visible share of
/// the processor's time. Never all zeros, which W3C reserves as invalid.
pub fn continue_trace(inherited: Option<&str>) -> String {
    let parsed = inherited.and_then(|t| {
        let mut parts = t.trim().split('-');
        let (version, trace, _parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (version == "00" && hex(trace, 32) && hex(flags, 2) && trace.bytes().any(|b| b != b'0'))
            .then_some((trace, flags))
    });
    // One allocation: a record's path calls this once per event (a `format!` each part was
    // about 2.5 % of the processor's loop thread, bench/PROFILE.md).
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    match parsed {
        Some((trace, _)) => out.extend(trace.chars().map(|c| c.to_ascii_lowercase())),
        None => {
            out.push_str(const_hex::Buffer::<16>::new().format(&fastrand::u128(1..).to_be_bytes()))
        }
    }
    out.push('-');
    out.push_str(const_hex::Buffer::<8>::new().format(&fastrand::u64(1..).to_be_bytes()));
    out.push('-');
    out.push_str(parsed.map_or("01", |(_, flags)| flags));
    out
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), if it is one.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

/// The UTF-8 value of header `key` (the last one of that name), if present.
pub fn get<'h, H: Headers>(headers: Option<&'h H>, key: &str) -> Option<&'h str> {
    let headers = headers?;
    headers
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

impl ErrorEnvelope {
    /// An envelope; the message is masked and truncated here.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        class: ErrorClass,
        message: &str,
        attempt: u32,
        first_failed_at: i64,
        not_before: i64,
        origin: Origin,
        adapter: &str,
        stage: Stage,
        correlation_id: Option<String>,
    ) -> ErrorEnvelope {
        ErrorEnvelope {
            class,
            message: truncate(&mask_pii(message), MAX_MESSAGE_BYTES),
            attempt,
            first_failed_at,
            not_before,
            origin,
            adapter: adapter.to_string(),
            stage,
            correlation_id,
            http_status: None,
        }
    }

    /// The envelope with the HTTP status of the answer the delivery failed on.
    pub fn with_http_status(mut self, status: Option<u16>) -> ErrorEnvelope {
        self.http_status = status;
        self
    }

    /// Reads the envelope of a record, when it has a complete one.
    pub fn read<H: Headers>(headers: Option<&H>) -> Option<ErrorEnvelope> {
        let g = |k| get(headers, k);
        let stage = match g(name::STAGE)? {
            "process" => Stage::Process,
            "deliver" => Stage::Deliver,
            _ => return None,
        };
        Some(ErrorEnvelope {
            class: ErrorClass::parse(g(name::ERROR_CLASS)?)?,
            message: g(name::ERROR_MESSAGE).unwrap_or_default().to_string(),
            attempt: g(name::ATTEMPT)?.parse().ok()?,
            first_failed_at: g(name::FIRST_FAILED_AT)?.parse().ok()?,
            not_before: g(name::NOT_BEFORE)?.parse().ok()?,
            origin: Origin {
                topic: g(name::ORIGIN_TOPIC)?.to_string(),
                partition: g(name::ORIGIN_PARTITION)?.parse().ok()?,
                offset: g(name::ORIGIN_OFFSET)?.parse().ok()?,
            },
            adapter: g(name::ADAPTER)?.to_string(),
            stage,
            correlation_id: g(name::CORRELATION_ID).map(str::to_string),
            http_status: g(name::HTTP_STATUS).and_then(|s| s.parse().ok()),
        })
    }

    /// The headers of the republished record: the original's own headers (any previous envelope
    /// removed) followed by this envelope.
    pub fn headers_for<H: Headers>(&self, original: Option<&H>) -> OwnedHeaders {
        let mut out = OwnedHeaders::new();
        if let Some(original) = original {
            for h in original.iter().filter(|h| !name::ENVELOPE.contains(&h.key)) {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let attempt = self.attempt.to_string();
        let first = self.first_failed_at.to_string();
        let not_before = self.not_before.to_string();
        let partition = self.origin.partition.to_string();
        let offset = self.origin.offset.to_string();
        let mut pairs: Vec<(&str, &str)> = vec![
            (name::ERROR_CLASS, self.class.as_str()),
            (name::ERROR_MESSAGE, &self.message),
            (name::ATTEMPT, &attempt),
            (name::FIRST_FAILED_AT, &first),
            (name::NOT_BEFORE, &not_before),
            (name::ORIGIN_TOPIC, &self.origin.topic),
            (name::ORIGIN_PARTITION, &partition),
            (name::ORIGIN_OFFSET, &offset),
            (name::ADAPTER, &self.adapter),
            (name::STAGE, self.stage.as_str()),
        ];
        if let Some(c) = &self.correlation_id {
            pairs.push((name::CORRELATION_ID, c));
        }
        let status = self.http_status.map(|s| s.to_string());
        if let Some(s) = &status {
            pairs.push((name::HTTP_STATUS, s));
        }
        for (key, value) in pairs {
            out = out.insert(Header {
                key,
                value: Some(value),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(attempt: u32, class: ErrorClass) -> ErrorEnvelope {
        ErrorEnvelope::new(
            class,
            "crm said no for ada@example.com",
            attempt,
            1_000,
            2_000,
            Origin {
                topic: "events".into(),
                partition: 3,
                offset: 42,
            },
            "crm",
            Stage::Process,
            Some("corr-1".into()),
        )
    }

    #[test]
    fn the_envelope_round_trips_and_masks() {
        let e = envelope(1, ErrorClass::Retryable);
        assert_eq!(e.message, "crm said no for a***@example.com");
        let headers = e.headers_for::<OwnedHeaders>(None);
        assert_eq!(ErrorEnvelope::read(Some(&headers)), Some(e));
    }

    #[test]
    fn hops_replace_the_envelope_and_keep_the_originals_headers() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-abc-def-01"),
            })
            .insert(Header {
                key: "binary",
                value: Some(&[0u8, 159, 146, 150][..]),
            });
        let hop1 = envelope(1, ErrorClass::Retryable).headers_for(Some(&original));
        let hop2 = envelope(2, ErrorClass::Permanent)
            .with_http_status(Some(400))
            .headers_for(Some(&hop1));
        let keys: Vec<&str> = hop2.iter().map(|h| h.key).collect();
        assert_eq!(
            keys.iter().filter(|k| **k == name::ATTEMPT).count(),
            1,
            "{keys:?}"
        );
        assert_eq!(keys.len(), 2 + name::ENVELOPE.len(), "{keys:?}");
        assert_eq!(get(Some(&hop2), "traceparent"), Some("00-abc-def-01"));
        let binary = hop2
            .iter()
            .find(|h| h.key == "binary")
            .and_then(|h| h.value);
        assert_eq!(
            binary,
            Some(&[0u8, 159, 146, 150][..]),
            "non-UTF-8 headers travel byte for byte"
        );
        let read = ErrorEnvelope::read(Some(&hop2)).unwrap();
        assert_eq!(
            (read.attempt, read.class, read.http_status),
            (2, ErrorClass::Permanent, Some(400))
        );
    }

    #[test]
    fn messages_are_truncated_to_1_kib_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let e = ErrorEnvelope::new(
            ErrorClass::Permanent,
            &long,
            1,
            0,
            0,
            Origin {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            "crm",
            Stage::Process,
            None,
        );
        assert!(e.message.len() <= MAX_MESSAGE_BYTES && e.message.len() >= MAX_MESSAGE_BYTES - 1);
    }

    #[test]
    fn a_trace_is_continued_with_a_new_span_or_started() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = continue_trace(Some(parent));
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{t}");
        assert!(t.ends_with("-01"));
        assert_ne!(t, parent);
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00";
        let t = continue_trace(Some(upper));
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{t}");
        assert!(t.ends_with("-00"), "the parent's flags are kept: {t}");
        let zeros = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        for bad in [None, Some("garbage"), Some("01-abc-def-01"), Some(&zeros)] {
            let t = continue_trace(bad);
            assert_eq!(t.len(), 55, "{t}");
            assert!(t.starts_with("00-") && t.ends_with("-01"), "{t}");
            assert_ne!(trace_id(&t), Some("0".repeat(32).as_str()));
        }
        // New ids are distinct and valid: hex, the right lengths, never all zeros.
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| continue_trace(None)).collect();
        assert_eq!(ids.len(), 1000);
        for t in &ids {
            let trace = trace_id(t).unwrap();
            let span = &t[36..52];
            assert!(span.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
            assert_ne!(trace, "0".repeat(32));
            assert_ne!(span, "0".repeat(16));
        }
    }
}
