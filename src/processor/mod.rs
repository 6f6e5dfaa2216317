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
//! - An aborted transaction is not sent again in place: the batch is redone from its input, its
//!   commands made anew (`Work::commit_attempts` is 1), so their header lists go to the producer
//!   without a copy.
//! - A large batch is judged on `processor.threads` threads ([`parallel`]); its result is the
//!   one of judging its records one after the other on one thread.

mod parallel;

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
    BatchCx, BatchError, Counts, Due, Failure, Handled, Out, Precondition, Routed, Runner,
    StageSpec, Work,
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
            codec: Arc::new(AvroCodec::new(&settings.registry)?),
            catalog: Catalog::builtin()?,
            outbox: names.outbox(&name),
            adapter,
            threads: settings.processor.threads,
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
    codec: Arc<AvroCodec>,
    catalog: Catalog,
    outbox: String,
    /// Threads a large batch is judged on ([`parallel`]).
    threads: usize,
}

/// What one record came to, judged on its own. Whether an earlier record of the batch was the
/// same event is settled afterwards, in the batch's order ([`settle`]). The variants are boxed: a
/// batch's verdicts are kept until it is settled, and a span is large.
enum Verdict {
    Decided(Box<Decision>),
    /// A duplicate of an event the store remembers.
    Duplicate,
    /// Routed to a retry tier or the DLQ; with the record's (partition, event id) when it failed
    /// after the dedupe check (a duplicate of an event decided earlier in the batch is still one).
    Failed(Box<Routed>, Option<(i32, String)>),
}

/// An event decided: its commands, and the span of the decision (ended once it is kept).
struct Decision {
    partition: i32,
    event_id: String,
    correlation_id: String,
    outs: Vec<Out>,
    span: trace::Hop,
}

impl Verdict {
    /// The (partition, event id) an earlier decision in the batch makes this record a duplicate of.
    fn key(&self) -> Option<(i32, &str)> {
        match self {
            Verdict::Decided(d) => Some((d.partition, d.event_id.as_str())),
            Verdict::Failed(_, key) => key.as_ref().map(|(p, id)| (*p, id.as_str())),
            Verdict::Duplicate => None,
        }
    }
}

/// Folds a batch's verdicts, in the batch's order, into what the batch makes. A record whose event
/// an earlier record of the batch decided is a duplicate, whatever it was judged on its own:
/// the batch's result is the one of deciding its records one after the other.
fn settle(verdicts: Vec<Verdict>, now: i64, adapter: &str) -> Handled<i64> {
    // First, borrowing the ids: which records repeat an event an earlier record of the batch
    // decided. foldhash: a batch holds at most `batch_max_records` ids, so keys chosen to collide
    // could slow one batch, not the process. Sized for the batch at once: growing it was a tenth
    // of this function.
    let mut seen: HashSet<(i32, &str), foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(verdicts.len(), Default::default());
    let repeats: Vec<bool> = verdicts
        .iter()
        .map(|verdict| {
            let Some(key) = verdict.key() else {
                return false;
            };
            if seen.contains(&key) {
                return true;
            }
            if matches!(verdict, Verdict::Decided(_)) {
                seen.insert(key);
            }
            false
        })
        .collect();
    drop(seen);
    let mut h = Handled::default();
    h.outs.reserve(verdicts.len());
    h.changes.reserve(verdicts.len());
    for (verdict, repeat) in verdicts.into_iter().zip(repeats) {
        if repeat {
            if let Verdict::Decided(mut d) = verdict {
                d.span.set(trace::KeyValue::new("onceflow.duplicate", true));
            }
            h.tally.duplicate += 1;
            continue;
        }
        match verdict {
            // Taken apart in its box: a decision holds a span, too large to move by value.
            Verdict::Decided(mut d) => {
                tracing::debug!(adapter, event_id = %d.event_id, correlation_id = %d.correlation_id,
                    trace_id = crate::model::headers::trace_id(d.span.traceparent()).unwrap_or(""),
                    commands = d.outs.len(), "event decided");
                h.tally.outputs += d.outs.len() as u64;
                h.tally.ok += 1;
                h.outs.append(&mut d.outs);
                h.changes.push(Change::Put {
                    partition: d.partition,
                    key: std::mem::take(&mut d.event_id),
                    entry: now,
                });
            }
            Verdict::Duplicate => h.tally.duplicate += 1,
            Verdict::Failed(routed, _) => h.push_routed(*routed),
        }
    }
    h
}

impl Work for Decide {
    type Entry = i64;

    fn adapter(&self) -> &str {
        self.adapter.name()
    }

    /// Judging a batch again has no effect outside Kafka: an aborted transaction is redone from
    /// the input, and the commands' header lists go to the producer without a copy (a quarter of
    /// the committer's CPU samples, bench/PROCESSOR.md).
    fn commit_attempts(&self) -> usize {
        1
    }

    async fn handle(
        &self,
        due: &[Due<'_>],
        cx: &mut BatchCx<'_, i64>,
    ) -> Result<Handled<i64>, BatchError> {
        let cx: &BatchCx<'_, i64> = cx;
        let verdicts =
            parallel::map_parts(due, self.threads, |part| self.judge_all(part, cx)).await?;
        let mut h = settle(verdicts, cx.now(), self.adapter.name());
        // The commands were encoded with cached schema ids: before they are committed, the
        // registry confirms it still has them (a registry that lost its schemas would otherwise
        // get commands nobody can decode). A lost id: the batch is redone and encoded anew. The
        // stage runs the lookup while the batch waits for its transaction and is sent, not on
        // the loop (crate::stage::precondition).
        let ids: BTreeSet<u32> = h
            .outs
            .iter()
            .filter(|o| o.topic == self.outbox)
            .filter_map(|o| split_wire_format(o.payload.as_deref()?).ok())
            .map(|(id, _)| id)
            .collect();
        if !ids.is_empty() {
            let codec = Arc::clone(&self.codec);
            h.precondition = Some(Precondition::new(async move {
                codec.confirm(ids).await.map_err(|e| e.to_string())
            }));
        }
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
    /// Judges `due`, a run of a batch's records, one after the other.
    async fn judge_all(
        &self,
        due: &[Due<'_>],
        cx: &BatchCx<'_, i64>,
    ) -> Result<Vec<Verdict>, BatchError> {
        let mut verdicts = Vec::with_capacity(due.len());
        for d in due {
            verdicts.push(self.judge(d, cx).await?);
        }
        Ok(verdicts)
    }

    /// Decodes, checks against the store, decides and encodes one record.
    async fn judge(&self, d: &Due<'_>, cx: &BatchCx<'_, i64>) -> Result<Verdict, BatchError> {
        let m = d.msg;
        let route = |class, message: &str, retry_after, correlation_id| {
            cx.fail(
                m,
                d.envelope.as_ref(),
                Failure {
                    class,
                    message,
                    retry_after,
                    correlation_id,
                    http_status: None,
                },
            )
        };
        // Before the dedupe check.
        let fail = |class, message: &str, correlation_id: Option<String>| {
            Ok(Verdict::Failed(
                Box::new(route(class, message, None, correlation_id)),
                None,
            ))
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
        if cx
            .store()
            .contains(partition, &event.meta.event_id, cx.now())?
        {
            return Ok(Verdict::Duplicate);
        }
        // After it: a duplicate of an event decided earlier in the batch is one, even if it fails.
        let key = || Some((partition, event.meta.event_id.clone()));
        let corr = Some(event.meta.correlation_id.clone());
        let failed = |class, message: &str| {
            Ok(Verdict::Failed(
                Box::new(route(class, message, None, corr.clone())),
                key(),
            ))
        };
        let parent = crate::model::headers::get(m.headers(), name::TRACEPARENT);
        let mut span = trace::hop(
            "onceflow.process",
            trace::SpanKind::Consumer,
            parent,
            || {
                vec![
                    trace::KeyValue::new("onceflow.adapter", self.adapter.name().to_string()),
                    trace::KeyValue::new("onceflow.event_id", event.meta.event_id.clone()),
                ]
            },
        );
        let commands = match self.adapter.decide(&event) {
            Ok(c) => c,
            Err(AdapterError::Retry { after, message }) => {
                span.fail(message.clone());
                let routed = route(ErrorClass::Retryable, &message, after, corr.clone());
                return Ok(Verdict::Failed(Box::new(routed), key()));
            }
            Err(AdapterError::Permanent { reason }) => {
                span.fail(reason.clone());
                return failed(ErrorClass::Permanent, &reason);
            }
        };
        let mut headers = Some(command_headers(m, &event, span.traceparent()));
        let mut outs = Vec::with_capacity(commands.len());
        let last = commands.len().saturating_sub(1);
        for (i, c) in commands.into_iter().enumerate() {
            let Some((_, schema)) = self.catalog.latest(c.command_type.schema_name()) else {
                return failed(
                    ErrorClass::Permanent,
                    &format!("no schema for {}", c.command_type),
                );
            };
            let datum = match c.to_datum(schema) {
                Ok(d) => d,
                Err(e) => {
                    return failed(ErrorClass::Permanent, &format!("{}: {e}", c.command_type));
                }
            };
            let payload = match self.codec.encode_datum(&self.outbox, schema, &datum).await {
                Ok(b) => b,
                Err(e) if e.is_retriable() => return Err(BatchError::Transient(e.to_string())),
                Err(e) => return failed(ErrorClass::Permanent, &e.to_string()),
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
        Ok(Verdict::Decided(Box::new(Decision {
            partition,
            event_id: event.meta.event_id,
            correlation_id: event.meta.correlation_id,
            outs,
            span,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(topic: &str) -> Out {
        Out {
            topic: topic.into(),
            partition: None,
            key: None,
            payload: None,
            headers: None,
        }
    }

    fn decided(partition: i32, id: &str) -> Verdict {
        Verdict::Decided(Box::new(Decision {
            partition,
            event_id: id.into(),
            correlation_id: "corr".into(),
            outs: vec![out(&format!("command {id}"))],
            span: trace::hop("test", trace::SpanKind::Consumer, None, Vec::new),
        }))
    }

    fn put(partition: i32, key: &str) -> Change<i64> {
        Change::Put {
            partition,
            key: key.into(),
            entry: 7,
        }
    }

    #[test]
    fn an_event_decided_earlier_in_the_batch_makes_its_later_copies_duplicates() {
        let h = settle(
            vec![
                decided(0, "a"),
                // Another partition: another dedupe partition, so another event for the store.
                decided(1, "a"),
                decided(0, "a"),
                // A copy that failed on its own is still a copy.
                Verdict::Failed(Box::new(Routed::Retry(out("retry"))), Some((0, "a".into()))),
                Verdict::Failed(Box::new(Routed::DeadLetter(out("dlq"))), None),
                Verdict::Duplicate,
                decided(0, "b"),
            ],
            7,
            "test",
        );
        let t = &h.tally;
        assert_eq!(
            (t.ok, t.outputs, t.duplicate, t.retry, t.dlq),
            (3, 3, 3, 0, 1)
        );
        let topics: Vec<&str> = h.outs.iter().map(|o| o.topic.as_str()).collect();
        assert_eq!(topics, ["command a", "command a", "dlq", "command b"]);
        assert_eq!(h.changes, [put(0, "a"), put(1, "a"), put(0, "b")]);
    }

    #[test]
    fn a_failed_record_is_not_remembered_so_a_later_copy_is_decided() {
        let h = settle(
            vec![
                Verdict::Failed(Box::new(Routed::Retry(out("retry"))), Some((0, "a".into()))),
                decided(0, "a"),
            ],
            7,
            "test",
        );
        let t = &h.tally;
        assert_eq!((t.ok, t.duplicate, t.retry), (1, 0, 1));
        assert_eq!(h.changes, [put(0, "a")]);
    }
}
