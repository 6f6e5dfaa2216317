//! The producer API for Rust services: `Producer::publish(&event).await`, the same path the HTTP
//! intake uses.
//!
//! Invariants:
//! - `publish` resolves `Ok` only after the broker acknowledged the record with `acks=all` on an
//!   idempotent producer: the event is durable when the caller learns so.
//! - Every event goes through [`Event::to_avro`] with the newest schema version in the catalog, so
//!   nothing reaches Kafka that a processor could not decode.
//! - The record key is the event's entity key, so every duplicate of an event lands in the
//!   partition of the original.
//! - A failure says whether a retry can help ([`PublishError::is_retriable`]). A retry after a
//!   broker timeout may write the event twice; downstream deduplication by event id absorbs it
//!   (at-least-once into `events`, DESIGN.md §2).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::codec::catalog::Catalog;
use crate::codec::{AvroCodec, Codec, CodecError};
use crate::config::Settings;
use crate::kafka::client;
use crate::model::headers::name;
use crate::model::{Event, FieldError};
use crate::telemetry::metrics;

/// Where a published event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event's idempotency key.
    pub event_id: String,
    /// The event's correlation id.
    pub correlation_id: String,
    /// Topic written.
    pub topic: String,
    /// Partition written.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event does not satisfy its schema or its type's rules; retrying will not help.
    #[error("invalid event: {0}")]
    Invalid(#[from] FieldError),
    /// The event type has no schema in the catalog.
    #[error("no schema for event type `{0}`")]
    NoSchema(String),
    /// Encoding failed (the registry refused the schema, or was unreachable).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The broker did not acknowledge the record in time, or refused it.
    #[error("broker did not acknowledge: {0}")]
    Broker(KafkaError),
}

impl PublishError {
    /// A later attempt may succeed (broker or registry unavailable).
    pub fn is_retriable(&self) -> bool {
        match self {
            PublishError::Invalid(_) | PublishError::NoSchema(_) => false,
            PublishError::Codec(e) => e.is_retriable(),
            PublishError::Broker(_) => true,
        }
    }
}

/// What travels with an event besides its value, as Kafka headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Hops the event has made through onceflow's outgoing webhooks and back (0 from outside).
    pub hop: u32,
    /// The W3C trace context it arrived with.
    pub traceparent: Option<String>,
}

/// Publishes events to one input topic.
pub struct Producer<C: Codec = AvroCodec> {
    kafka: FutureProducer,
    codec: Arc<C>,
    catalog: Arc<Catalog>,
    topic: String,
    timeout: Duration,
}

impl Producer<AvroCodec> {
    /// A producer for the configured ingest topic, registry and catalog. Its codec confirms each
    /// record's schema id with the registry before the record is sent (see [`crate::codec::ids`]).
    pub fn new(settings: &Settings) -> Result<Producer<AvroCodec>, PublishError> {
        let codec = Arc::new(AvroCodec::verifying(&settings.registry)?);
        let catalog = Arc::new(Catalog::builtin()?);
        Producer::with_codec(settings, codec, catalog)
    }
}

impl<C: Codec> Producer<C> {
    /// A producer with a given codec and catalog (shared between producers of one process).
    pub fn with_codec(
        settings: &Settings,
        codec: Arc<C>,
        catalog: Arc<Catalog>,
    ) -> Result<Producer<C>, PublishError> {
        let timeout = settings.ingest.publish_timeout;
        let kafka = client::producer_with_timeout(&settings.kafka, "ingest", timeout)
            .create()
            .map_err(PublishError::Broker)?;
        Ok(Producer {
            kafka,
            codec,
            catalog,
            topic: settings.ingest.topic.clone(),
            timeout,
        })
    }

    /// The topic events are published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Validates, encodes and publishes `event`; resolves after the broker's acknowledgement.
    pub async fn publish(&self, event: &Event) -> Result<Delivery, PublishError> {
        self.publish_with(event, &Context::default()).await
    }

    /// [`Producer::publish`] with the event's hop count and trace context as record headers.
    pub async fn publish_with(
        &self,
        event: &Event,
        context: &Context,
    ) -> Result<Delivery, PublishError> {
        let result = self.publish_inner(event, context).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_retriable() => "unavailable",
            Err(_) => "invalid",
        };
        ::metrics::counter!(metrics::PRODUCER_EVENTS, "topic" => self.topic.clone(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn publish_inner(
        &self,
        event: &Event,
        context: &Context,
    ) -> Result<Delivery, PublishError> {
        let mut event = event.clone();
        let t = event.event_type().ok_or_else(|| {
            PublishError::Invalid(FieldError {
                field: "type".into(),
                detail: format!("unknown event type `{}`", event.meta.event_type),
            })
        })?;
        let (version, schema) = self
            .catalog
            .latest(t.schema_name())
            .ok_or_else(|| PublishError::NoSchema(t.name().to_string()))?;
        let datum = event.to_datum(schema, version)?;
        let key = event.entity_key()?;
        let payload = self.codec.encode_datum(&self.topic, schema, &datum).await?;
        let hop = context.hop.to_string();
        let mut headers = OwnedHeaders::new().insert(Header {
            key: name::HOP,
            value: Some(&hop),
        });
        if let Some(t) = &context.traceparent {
            headers = headers.insert(Header {
                key: name::TRACEPARENT,
                value: Some(t),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let ack = self
            .kafka
            .send(record, self.timeout)
            .await
            .map_err(|(e, _)| PublishError::Broker(e))?;
        let (partition, offset) = (ack.partition, ack.offset);
        Ok(Delivery {
            event_id: event.meta.event_id,
            correlation_id: event.meta.correlation_id,
            topic: self.topic.clone(),
            partition,
            offset,
        })
    }

    /// Asks the broker for metadata within `timeout`: is it reachable? (Blocking; call it off the
    /// async runtime.)
    pub fn probe_broker(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.kafka
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map(|_| ())
    }

    /// Waits for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.kafka.flush(timeout)
    }
}
