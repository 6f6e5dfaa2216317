//! `onceflow dlq list|stats|show`: dead letters of one adapter and stage, filtered, counted by class
//! and reason, and previewed with PII masked. The replay verb selects with the same [`Filter`].
//!
//! Invariants:
//! - Reading never joins a group nor commits (it is [`crate::kafka::scan`]).
//! - A preview shows a few fields of the decoded event or command with every personal value masked
//!   ([`crate::telemetry::mask::mask_json`]); bytes that do not decode are shown as a bounded hex
//!   excerpt, never as text.
//! - Reasons are grouped by their shape: ids, numbers and hex runs in a message are replaced, so
//!   "timed out for 3a7f…" and "timed out for 9c1e…" count as one reason.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use regex::Regex;
use serde::Serialize;
use serde_json::Value as Json;

use crate::codec::{AvroCodec, Codec};
use crate::config::KafkaSettings;
use crate::kafka::names::Stage;
use crate::kafka::scan::{Range, scan};
use crate::model::headers::{ErrorClass, ErrorEnvelope};
use crate::telemetry::mask::{mask_json, mask_pii};

/// Longest hex excerpt of an undecodable record, in bytes.
pub const HEX_BYTES: usize = 48;
/// Fields a preview shows at most.
pub const PREVIEW_FIELDS: usize = 8;

/// Which dead letters an operator means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Dead-lettered at or after (epoch ms, the record's timestamp).
    pub since: Option<i64>,
    /// Dead-lettered before (epoch ms).
    pub until: Option<i64>,
    /// Error class.
    pub class: Option<ErrorClass>,
    /// Text the (masked) error message contains, case-insensitively.
    pub reason: Option<String>,
    /// The record key (entity key).
    pub key: Option<String>,
    /// The event id (decodes the record).
    pub event_id: Option<String>,
    /// Only these partitions.
    pub partitions: Option<Vec<i32>>,
    /// First offset to consider, in every partition.
    pub from_offset: Option<i64>,
    /// First offset not to consider.
    pub to_offset: Option<i64>,
}

impl Filter {
    /// Whether `d` matches everything but the event id (which needs decoding).
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let env = d.envelope.as_ref();
        self.since
            .is_none_or(|t| d.timestamp.is_some_and(|ts| ts >= t))
            && self
                .until
                .is_none_or(|t| d.timestamp.is_some_and(|ts| ts < t))
            && self.class.is_none_or(|c| env.is_some_and(|e| e.class == c))
            && self.reason.as_ref().is_none_or(|r| {
                env.is_some_and(|e| e.message.to_lowercase().contains(&r.to_lowercase()))
            })
            && self
                .key
                .as_ref()
                .is_none_or(|k| d.key.as_deref() == Some(k.as_str()))
    }

    /// The scan range of the filter's partitions and offsets.
    pub fn range(&self) -> Range {
        Range {
            partitions: self.partitions.clone(),
            from: BTreeMap::new(),
            from_all: self.from_offset,
            from_time: self.since,
            to: self.to_offset,
        }
    }
}

/// One dead letter as read.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// DLQ topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// When it was dead-lettered (epoch ms).
    pub timestamp: Option<i64>,
    /// Key (the entity key).
    pub key: Option<String>,
    /// Value bytes, as the original record had them.
    pub value: Option<Vec<u8>>,
    /// Headers (name, bytes), envelope included.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The error envelope, when complete.
    pub envelope: Option<ErrorEnvelope>,
}

impl DeadLetter {
    /// `topic/partition/offset`, the coordinates `onceflow.replay.of` carries.
    pub fn coordinates(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    /// The headers as rdkafka headers.
    pub fn owned_headers(&self) -> rdkafka::message::OwnedHeaders {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in &self.headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: v.as_deref(),
            });
        }
        h
    }

    /// Its grouping reason: `class: message shape`.
    pub fn reason(&self) -> String {
        match &self.envelope {
            Some(e) => format!("{}: {}", e.class, reason_shape(&e.message)),
            None => "no envelope".into(),
        }
    }
}

/// A dead letter as read from its record.
pub fn from_message<M: Message>(m: &M) -> DeadLetter {
    let headers: Vec<(String, Option<Vec<u8>>)> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    DeadLetter {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        value: m.payload().map(<[u8]>::to_vec),
        envelope: ErrorEnvelope::read(m.headers()),
        headers,
    }
}

/// Every dead letter of `topic` matching `filter` (but its event id), oldest first per partition
/// (blocking).
pub fn read(
    kafka: &KafkaSettings,
    topic: &str,
    filter: &Filter,
) -> Result<Vec<DeadLetter>, KafkaError> {
    let mut out = Vec::new();
    scan(kafka, topic, "onceflow.dlq.reader", &filter.range(), |m| {
        let d = from_message(m);
        if filter.matches(&d) {
            out.push(d);
        }
        true
    })?;
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

static SHAPES: LazyLock<[(Regex, &'static str); 3]> = LazyLock::new(|| {
    let re = |p: &str| {
        Regex::new(p).unwrap_or_else(|_| Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!()))
    };
    [
        (
            re(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
            "<id>",
        ),
        (re(r"\b[0-9a-fA-F]{16,}\b"), "<hex>"),
        (re(r"\d+"), "<n>"),
    ]
});

/// A message with its ids, hex runs and numbers replaced, for counting reasons.
pub fn reason_shape(message: &str) -> String {
    let mut s = message.to_string();
    for (re, with) in SHAPES.iter() {
        s = re.replace_all(&s, *with).into_owned();
    }
    s
}

/// What a preview shows of a dead letter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Preview {
    /// The event id (an event) or the command's event id (a command), when it decodes.
    pub event_id: Option<String>,
    /// The command id, for a command.
    pub command_id: Option<String>,
    /// The record type (`LeadCaptured`, `EmailSend`), when it decodes.
    pub record: Option<String>,
    /// `field: value` lines, masked, at most [`PREVIEW_FIELDS`].
    pub fields: Vec<String>,
    /// The whole decoded value, masked (for `show`).
    pub masked: Option<Json>,
    /// Hex of the first bytes, when the value does not decode.
    pub hex: Option<String>,
    /// Why it does not decode.
    pub undecodable: Option<String>,
}

/// Decodes `d` through the registry and masks it for display.
pub async fn preview(codec: &AvroCodec, d: &DeadLetter) -> Preview {
    let Some(bytes) = d.value.as_deref() else {
        return Preview {
            undecodable: Some("no value".into()),
            ..Preview::default()
        };
    };
    let decoded = match codec.decode(bytes).await {
        Ok(v) => v,
        Err(e) => {
            let n = bytes.len().min(HEX_BYTES);
            let more = if bytes.len() > n { "…" } else { "" };
            return Preview {
                hex: Some(format!(
                    "{}{more} ({} bytes)",
                    hex::encode(&bytes[..n]),
                    bytes.len()
                )),
                undecodable: Some(mask_pii(&e.to_string())),
                ..Preview::default()
            };
        }
    };
    let json = crate::model::json_avro::to_json(&decoded.value);
    let masked = mask_json(&json);
    let meta = &json["meta"];
    let text = |v: &Json| v.as_str().map(str::to_string);
    let mut fields = Vec::new();
    if let Json::Object(map) = &masked {
        for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "meta") {
            if fields.len() >= PREVIEW_FIELDS {
                break;
            }
            let shown = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            let shown: String = shown.chars().take(80).collect();
            fields.push(format!("{k}: {shown}"));
        }
    }
    Preview {
        event_id: text(&meta["event_id"]),
        command_id: text(&meta["command_id"]),
        record: decoded
            .record_name
            .map(|n| n.rsplit('.').next().unwrap_or(&n).to_string()),
        fields,
        masked: Some(masked),
        hex: None,
        undecodable: None,
    }
}

/// Counts of dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// All of them.
    pub total: u64,
    /// By error class.
    pub by_class: BTreeMap<String, u64>,
    /// By `class: reason shape`.
    pub by_reason: BTreeMap<String, u64>,
    /// Oldest and newest dead-lettering time (epoch ms).
    pub first: Option<i64>,
    /// Newest.
    pub last: Option<i64>,
}

/// Counts `letters` by class and reason.
pub fn stats<'a>(letters: impl IntoIterator<Item = &'a DeadLetter>) -> Stats {
    let mut s = Stats::default();
    for d in letters {
        s.total += 1;
        let class = d
            .envelope
            .as_ref()
            .map_or("unknown".to_string(), |e| e.class.to_string());
        *s.by_class.entry(class).or_insert(0) += 1;
        *s.by_reason.entry(d.reason()).or_insert(0) += 1;
        if let Some(t) = d.timestamp {
            s.first = Some(s.first.map_or(t, |f| f.min(t)));
            s.last = Some(s.last.map_or(t, |l| l.max(t)));
        }
    }
    s
}

/// Dead letters of `topic` matching `filter` fully (event id included), with their previews, at
/// most `limit`.
pub async fn select(
    kafka: &KafkaSettings,
    codec: &AvroCodec,
    topic: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<(DeadLetter, Preview)>, KafkaError> {
    let (k, t, f) = (kafka.clone(), topic.to_string(), filter.clone());
    let letters = tokio::task::spawn_blocking(move || read(&k, &t, &f))
        .await
        .map_err(|_| KafkaError::Canceled)??;
    let mut out = Vec::new();
    for d in letters {
        if out.len() >= limit {
            break;
        }
        let p = preview(codec, &d).await;
        if filter
            .event_id
            .as_ref()
            .is_some_and(|id| p.event_id.as_deref() != Some(id.as_str()))
        {
            continue;
        }
        out.push((d, p));
    }
    Ok(out)
}

/// The DLQ of `adapter`'s `stage`, by the names module.
pub fn topic(names: &crate::kafka::names::Names, adapter: &str, stage: Stage) -> String {
    names.dlq(adapter, stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_grouped_by_shape() {
        assert_eq!(
            reason_shape("timed out for 3a7f0e2c-1b2d-4c3e-8f9a-0b1c2d3e4f50 after 1000 ms"),
            "timed out for <id> after <n> ms"
        );
        assert_eq!(
            reason_shape("currency XTS is not supported"),
            "currency XTS is not supported"
        );
    }
}
