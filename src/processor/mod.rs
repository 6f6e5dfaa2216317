//! `onceflow process --adapter NAME`: the transactional consume → decide → produce stage.
//!
//! The loop, the transaction, retries, pausing, rebalances and fencing are the shared
//! transactional-stage skeleton ([`crate::stage`]); this module is the processor's part of it:
//! decode each event, drop duplicates, let the adapter decide, encode the commands for the outbox.
//! Its store is the dedupe store ([`crate::dedupe`]) on `<ns>.<adapter>.dedupe`.
//!
//! Invariants:
//! - An event id seen within the dedupe TTL on its partition (or earlier in the same batch) yields
//!   nothing: duplicates of one event never become a second command. The id is remembered in the
//!   same transaction as the commands.
//! - Undecodable records, records of an unknown type and permanent adapter failures go to the DLQ
//!   with their reason; retryable failures walk the retry tiers and then go to the DLQ. A poison
//!   record never blocks its partition.
//! - An unreachable schema registry is not the record's fault: the batch is rewound and retried
//!   after a pause, and nothing is dead-lettered for it.
//! - No command is committed with a schema id the registry does not have: before the batch is
//!   committed the registry confirms every id its commands were encoded with; a registry that lost
//!   its schemas makes the batch be redone, registering them again.
//! - A command inherits the event record's hop count and trace context headers, and carries the
//!   event's `received_at`, so the dispatcher can pass them on and measure end-to-end latency.
//! - A dead-lettered event is not remembered as seen, so a replay of it is processed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use tokio::sync::watch;

use crate::adapters::{Adapter, AdapterError};
use crate::codec::catalog::Catalog;
use crate::codec::{AvroCodec, Codec, CodecError, split_wire_format};
use crate::config::Settings;
use crate::dedupe::Change;
use crate::kafka::names::{Names, Stage};
use crate::model::datum_json::EnvelopeError;
use crate::model::headers::{ErrorClass, name};
use crate::model::{Event, EventType};
use crate::retry::RetryPolicy;
use crate::stage::fault::FaultPlan;
use crate::stage::{
    BatchCx, BatchError, Counts, Due, Failure, Handled, Out, Routed, Runner, StageSpec, Work,
};
use crate::telemetry::{metrics, trace};

/// Why the processor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The schema catalog or codec could not be built.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stage stopped early (a newer process of the same instance).
    #[error(transparent)]
    Stage(#[from] crate::stage::StageError),
}

/// The processor of one adapter.
pub struct Processor {
    runner: Runner<Decide>,
}

impl Processor {
    /// A processor of `adapter` (a built-in from the registry, or any other implementation).
    pub fn new(settings: &Settings, adapter: Arc<dyn Adapter>) -> Result<Processor, ProcessError> {
        let names = Names::new(settings);
        let name = adapter.name().to_string();
        let work = Decide {
            codec: AvroCodec::new(&settings.registry)?,
            catalog: Catalog::builtin()?,
            outbox: names.outbox(&name),
            adapter,
        };
        let spec = StageSpec {
            stage: Stage::Process,
            inputs: settings.topics.inputs.clone(),
            changelog: names.dedupe(&name),
            ttl: settings.processor.dedupe_ttl,
            state_dir: settings.processor.state_dir.clone(),
            store: settings.processor.store,
            metrics: &metrics::PROCESSOR,
        };
        Ok(Processor {
            runner: Runner::new(
                work,
                spec,
                &settings.kafka,
                settings.processor.stage(),
                names,
                RetryPolicy::new(settings.retry.tiers.clone()),
            ),
        })
    }

    /// Reports on `readiness` whether it is processing (for `/readyz`).
    pub fn with_readiness(self, readiness: crate::telemetry::endpoint::Readiness) -> Processor {
        Processor {
            runner: self.runner.with_readiness(readiness),
        }
    }

    /// Injects `fault` (tests; see [`crate::stage::fault`]).
    pub fn with_fault(self, fault: FaultPlan) -> Processor {
        Processor {
            runner: self.runner.with_fault(fault),
        }
    }

    /// Runs until `shutdown` turns true; every batch in flight is finished first. Fatal errors
    /// rejoin with a fresh consumer and producer instead of returning.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<Counts, ProcessError> {
        Ok(self.runner.run(shutdown).await?)
    }
}

/// The processor's work: decode, dedupe, decide, encode.
struct Decide {
    adapter: Arc<dyn Adapter>,
    codec: AvroCodec,
    catalog: Catalog,
    outbox: String,
}

/// The (partition, event id) pairs decided earlier in the batch being handled.
type SeenInBatch = HashSet<(i32, String), foldhash::fast::RandomState>;

/// What one record came to.
enum Verdict {
    Decided(Vec<Out>, Change<i64>),
    Duplicate,
    Failed(Routed),
}

impl Work for Decide {
    type Entry = i64;

    fn adapter(&self) -> &str {
        self.adapter.name()
    }

    async fn handle(
        &self,
        due: &[Due<'_>],
        cx: &mut BatchCx<'_, i64>,
    ) -> Result<Handled<i64>, BatchError> {
        let mut h = Handled::default();
        // foldhash: a batch holds at most `batch_max_records` ids, so keys chosen to collide
        // could slow one batch, not the process.
        let mut seen_in_batch: SeenInBatch = HashSet::default();
        for d in due {
            match self.verdict(d, cx, &seen_in_batch).await? {
                Verdict::Decided(cmds, change) => {
                    if let Change::Put { partition, key, .. } = &change {
                        seen_in_batch.insert((*partition, key.clone()));
                    }
                    h.tally.outputs += cmds.len() as u64;
                    h.tally.ok += 1;
                    h.outs.extend(cmds);
                    h.changes.push(change);
                }
                Verdict::Duplicate => h.tally.duplicate += 1,
                Verdict::Failed(Routed::Retry(out)) => {
                    h.tally.retry += 1;
                    h.outs.push(out);
                }
                Verdict::Failed(Routed::DeadLetter(out)) => {
                    h.tally.dlq += 1;
                    h.outs.push(out);
                }
            }
        }
        // The commands were encoded with cached schema ids: before they are committed, the
        // registry confirms it still has them (a registry that lost its schemas would otherwise
        // get commands nobody can decode). A lost id: the batch is redone and encoded anew.
        let ids: BTreeSet<u32> = h
            .outs
            .iter()
            .filter(|o| o.topic == self.outbox)
            .filter_map(|o| split_wire_format(o.payload.as_deref()?).ok())
            .map(|(id, _)| id)
            .collect();
        self.codec
            .confirm(ids)
            .await
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        Ok(h)
    }
}

/// The headers of a command decided from event record `m`.
/// A command's headers: the event's hop count, the processor span's `traceparent` (a child of the
/// event's) and when the event was received.
fn command_headers(m: &OwnedMessage, event: &Event, traceparent: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(headers) = m.headers() {
        for h in headers
            .iter()
            .filter(|h| name::INHERITED.contains(&h.key) && h.key != name::TRACEPARENT)
        {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out.insert(Header {
        key: name::TRACEPARENT,
        value: Some(traceparent),
    })
    .insert(Header {
        key: name::EVENT_RECEIVED_AT,
        value: Some(&event.meta.received_at.to_string()),
    })
}

impl Decide {
    async fn verdict(
        &self,
        d: &Due<'_>,
        cx: &BatchCx<'_, i64>,
        seen_in_batch: &SeenInBatch,
    ) -> Result<Verdict, BatchError> {
        let m = d.msg;
        let fail = |class, message: &str, correlation_id: Option<String>| {
            Ok(Verdict::Failed(cx.fail(
                m,
                d.envelope.as_ref(),
                Failure {
                    class,
                    message,
                    retry_after: None,
                    correlation_id,
                    http_status: None,
                },
            )))
        };
        let Some(bytes) = m.payload() else {
            return fail(ErrorClass::Decode, "record has no value", None);
        };
        let written = match self.codec.written(bytes).await {
            Ok(w) => w,
            Err(e) if e.is_retriable() => return Err(BatchError::Transient(e.to_string())),
            Err(e) => return fail(ErrorClass::Decode, &e.to_string(), None),
        };
        let Some(event_type) = written
            .reader
            .record_name()
            .and_then(EventType::from_record_name)
        else {
            let name = written.reader.record_name().unwrap_or("an unnamed schema");
            return fail(
                ErrorClass::Schema,
                &format!("{name} is not an event type this stage reads"),
                None,
            );
        };
        let event = match Event::from_written(&written) {
            Ok(e) if e.event_type() == Some(event_type) => e,
            Ok(e) => {
                let msg = format!("record {event_type} says its type is {}", e.meta.event_type);
                return fail(ErrorClass::Schema, &msg, Some(e.meta.correlation_id));
            }
            Err(EnvelopeError::Decode(e)) => return fail(ErrorClass::Decode, &e.to_string(), None),
            Err(EnvelopeError::Field(e)) => return fail(ErrorClass::Schema, &e.to_string(), None),
        };
        let partition = m.partition();
        let id = &event.meta.event_id;
        if cx.store().contains(partition, id, cx.now())?
            || seen_in_batch.contains(&(partition, id.clone()))
        {
            return Ok(Verdict::Duplicate);
        }
        let corr = Some(event.meta.correlation_id.clone());
        let parent = crate::model::headers::get(m.headers(), name::TRACEPARENT);
        let mut span = trace::hop(
            "onceflow.process",
            trace::SpanKind::Consumer,
            parent.as_deref(),
            vec![
                trace::KeyValue::new("onceflow.adapter", self.adapter.name().to_string()),
                trace::KeyValue::new("onceflow.event_id", event.meta.event_id.clone()),
            ],
        );
        let commands = match self.adapter.decide(&event) {
            Ok(c) => c,
            Err(AdapterError::Retry { after, message }) => {
                span.fail(message.clone());
                return Ok(Verdict::Failed(cx.fail(
                    m,
                    d.envelope.as_ref(),
                    Failure {
                        class: ErrorClass::Retryable,
                        message: &message,
                        retry_after: after,
                        correlation_id: corr,
                        http_status: None,
                    },
                )));
            }
            Err(AdapterError::Permanent { reason }) => {
                span.fail(reason.clone());
                return fail(ErrorClass::Permanent, &reason, corr);
            }
        };
        let mut headers = Some(command_headers(m, &event, span.traceparent()));
        let mut outs = Vec::with_capacity(commands.len());
        let last = commands.len().saturating_sub(1);
        for (i, c) in commands.into_iter().enumerate() {
            let Some((_, schema)) = self.catalog.latest(c.command_type.schema_name()) else {
                let msg = format!("no schema for {}", c.command_type);
                return fail(ErrorClass::Permanent, &msg, corr);
            };
            let datum = match c.to_datum(schema) {
                Ok(d) => d,
                Err(e) => {
                    let msg = format!("{}: {e}", c.command_type);
                    return fail(ErrorClass::Permanent, &msg, corr);
                }
            };
            let payload = match self.codec.encode_datum(&self.outbox, schema, &datum).await {
                Ok(b) => b,
                Err(e) if e.is_retriable() => return Err(BatchError::Transient(e.to_string())),
                Err(e) => return fail(ErrorClass::Permanent, &e.to_string(), corr),
            };
            outs.push(Out {
                topic: self.outbox.clone(),
                partition: None,
                key: Some(c.key.into_bytes()),
                payload: Some(payload),
                // librdkafka copies headers one by one: the last command takes the original.
                headers: if i == last {
                    headers.take()
                } else {
                    headers.clone()
                },
            });
        }
        span.set(trace::KeyValue::new("onceflow.commands", outs.len() as i64));
        tracing::debug!(adapter = self.adapter.name(), event_id = %event.meta.event_id,
            correlation_id = %event.meta.correlation_id,
            trace_id = crate::model::headers::trace_id(span.traceparent()).unwrap_or(""),
            commands = outs.len(), "event decided");
        Ok(Verdict::Decided(
            outs,
            Change::Put {
                partition,
                key: event.meta.event_id,
                entry: cx.now(),
            },
        ))
    }
}
