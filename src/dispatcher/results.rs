//! Receipts: what a delivered command came to, encoded (Avro, `io.onceflow.results.DeliveryReceipt`)
//! for `<ns>.<adapter>.results`, keyed by the command's entity key.
//!
//! Invariant: a receipt is written in the same transaction as the ledger's `done` record of its
//! command, so there is exactly one receipt per delivered command.

use apache_avro::types::Value;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

use crate::codec::catalog::Catalog;
use crate::codec::{AvroCodec, Codec, CodecError, RecordSchema};
use crate::config::RegistrySettings;
use crate::model::command::Command;
use crate::model::headers::name;
use crate::stage::Out;

/// The receipt's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// The provider performed it.
    Delivered,
    /// The provider answered with its stored response to an earlier call with the same key.
    Replayed,
    /// Nothing was sent (`dry_run`).
    DryRun,
}

impl ReceiptStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Replayed => "replayed",
            ReceiptStatus::DryRun => "dry_run",
        }
    }
}

/// Encodes receipts for one adapter's results topic.
pub struct Results {
    codec: AvroCodec,
    schema: RecordSchema,
    topic: String,
}

impl Results {
    /// Receipts for `topic`.
    pub fn new(registry: &RegistrySettings, topic: String) -> Result<Results, CodecError> {
        let catalog = Catalog::builtin()?;
        let schema = catalog
            .latest("delivery_receipt")
            .map(|(_, s)| s.clone())
            .ok_or_else(|| CodecError::Schema {
                origin: "delivery_receipt".into(),
                reason: "not in the catalog".into(),
            })?;
        Ok(Results {
            codec: AvroCodec::new(registry)?,
            schema,
            topic,
        })
    }

    /// The receipt record of `command`, read from outbox record `m`.
    #[allow(clippy::too_many_arguments)]
    pub async fn receipt(
        &self,
        m: &OwnedMessage,
        command: &Command,
        status: ReceiptStatus,
        provider_id: Option<String>,
        http_status: Option<u16>,
        attempt: u32,
        now: i64,
    ) -> Result<Out, CodecError> {
        let string = |s: &str| Value::String(s.to_string());
        let value = Value::Record(vec![
            ("command_id".into(), string(&command.meta.command_id)),
            ("event_id".into(), string(&command.meta.event_id)),
            (
                "correlation_id".into(),
                string(&command.meta.correlation_id),
            ),
            ("adapter".into(), string(&command.meta.adapter)),
            ("command_type".into(), string(command.command_type.name())),
            ("status".into(), string(status.as_str())),
            (
                "provider_id".into(),
                match provider_id {
                    Some(id) => Value::Union(1, Box::new(Value::String(id))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            (
                "http_status".into(),
                match http_status {
                    Some(s) => Value::Union(1, Box::new(Value::Int(i32::from(s)))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            (
                "attempt".into(),
                Value::Int(i32::try_from(attempt).unwrap_or(i32::MAX)),
            ),
            ("delivered_at".into(), Value::TimestampMillis(now)),
        ]);
        let payload = self.codec.encode(&self.topic, &self.schema, value).await?;
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for h in h.iter().filter(|h| h.key == name::TRACEPARENT) {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        Ok(Out {
            topic: self.topic.clone(),
            partition: None,
            key: m.key().map(<[u8]>::to_vec),
            payload: Some(payload),
            headers: Some(headers),
        })
    }
}
