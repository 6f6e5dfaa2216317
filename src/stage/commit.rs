//! Writing a batch: the records to write ([`Out`]), the batch context a [`Work`](super::Work) sees
//! ([`BatchCx`]: the store, failure routing through the retry tiers, changes committed ahead of the
//! batch), and the transactional commit with its retries.
//!
//! Invariants:
//! - Offsets and outputs of a batch are committed together or not at all; an abortable failure is
//!   retried with the same outputs and offsets in a fresh transaction (as many attempts as the
//!   work asks for, [`COMMIT_ATTEMPTS`] by default) before the batch is given up and redone.
//! - An attempt that cannot be followed by another (the last) moves the outputs' header lists into
//!   the producer; every earlier one gives it copies, so that a retry sends the same headers.
//! - Failed records keep their key, value bytes and own headers, carry one replaced error envelope
//!   and go to the origin's partition number of the next retry tier or of the DLQ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::fault::{FaultPlan, Point};
use super::precondition::Started;
use super::{BatchError, SessionError};
use crate::dedupe::{Change, DiskError, Entry, Store};
use crate::kafka::names::{Names, Stage};
use crate::kafka::txn::{TxError, TxErrorKind, TxProducer, group_metadata};
use crate::model::headers::{self, ErrorClass, ErrorEnvelope, Origin};
use crate::retry::{Next, RetryPolicy};
use crate::telemetry::metrics;

/// A stage's metric labels: its adapter and stage names.
pub(super) type Labels<'a> = (&'a str, &'static str);

/// How many transactions one batch's outputs are tried in before the batch is redone.
pub const COMMIT_ATTEMPTS: usize = 3;

/// One record to write.
#[derive(Debug, Clone)]
pub struct Out {
    /// Topic.
    pub topic: String,
    /// Partition; `None` lets the partitioner pick by key.
    pub partition: Option<i32>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Option<OwnedHeaders>,
}

/// The producer record of `o`, with a copy of its header list.
pub fn to_record(o: &Out) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
    let r = without_headers(o);
    match &o.headers {
        Some(h) => r.headers(h.clone()),
        None => r,
    }
}

/// The producer record of `o`, its header list moved out of `o` into the record: librdkafka
/// takes a record's list over, so this spares a copy of it (and freeing the original) a record.
fn moving_headers(o: &mut Out) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
    let headers = o.headers.take();
    let r = without_headers(o);
    match headers {
        Some(h) => r.headers(h),
        None => r,
    }
}

fn without_headers(o: &Out) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
    let mut r = FutureRecord::to(&o.topic);
    if let Some(p) = o.partition {
        r = r.partition(p);
    }
    if let Some(k) = &o.key {
        r = r.key(k);
    }
    if let Some(v) = &o.payload {
        r = r.payload(v);
    }
    r
}

/// The changelog records of a batch's store changes ([`crate::dedupe::changelog`]).
pub(super) fn changelog_outs<E: Entry>(changelog: &str, changes: &[Change<E>]) -> Vec<Out> {
    crate::dedupe::changelog::records(changes)
        .into_iter()
        .map(|r| Out {
            topic: changelog.to_string(),
            partition: Some(r.partition),
            key: Some(r.key.into_bytes()),
            payload: r.value.map(String::into_bytes),
            headers: None,
        })
        .collect()
}

/// Why one record failed.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// Its class.
    pub class: ErrorClass,
    /// What happened (masked and bounded in the envelope).
    pub message: &'a str,
    /// The earliest sensible retry, when known (a Retry-After).
    pub retry_after: Option<std::time::Duration>,
    /// The event's correlation id, when known.
    pub correlation_id: Option<String>,
    /// The HTTP status a delivery failed on.
    pub http_status: Option<u16>,
}

/// Where a failed record went.
#[derive(Debug)]
pub enum Routed {
    /// To a retry tier.
    Retry(Out),
    /// To the DLQ.
    DeadLetter(Out),
}

/// The store changes of a batch whose transaction is still committing, by partition and key
/// (`None`: forgotten); the last change of a key wins, as in [`Store::apply`]. Keys are hashed
/// with foldhash, as the store's are: SipHash here was 1 % of a processed record's CPU.
#[derive(Debug)]
pub(super) struct Pending<E>(HashMap<i32, Keys<E>>);

type Keys<E> = HashMap<String, Option<E>, foldhash::fast::RandomState>;

impl<E: Entry> Pending<E> {
    pub(super) fn of(changes: &[Change<E>]) -> Pending<E> {
        let mut by_partition: HashMap<i32, Keys<E>> = HashMap::new();
        for c in changes {
            let (partition, key, entry) = c.parts();
            by_partition
                .entry(partition)
                .or_default()
                .insert(key.to_string(), entry.cloned());
        }
        Pending(by_partition)
    }

    /// Whether `key` of `partition` has a change here.
    pub(super) fn has(&self, partition: i32, key: &str) -> bool {
        self.0.get(&partition).is_some_and(|m| m.contains_key(key))
    }
}

/// The store as a batch sees it: what is committed, overlaid with the changes of the batch
/// before it while that one is still committing. The batch is sent only after that one
/// committed; had it failed, this batch is redone with it.
pub struct StoreView<'a, E: Entry> {
    store: &'a Store<E>,
    pending: Option<&'a Pending<E>>,
}

impl<E: Entry> StoreView<'_, E> {
    /// The entry of `key` on `partition`, if it is remembered at `now`.
    pub fn get(&self, partition: i32, key: &str, now: i64) -> Result<Option<E>, DiskError> {
        if let Some(change) = self
            .pending
            .and_then(|p| p.0.get(&partition))
            .and_then(|m| m.get(key))
        {
            return Ok(change.clone());
        }
        self.store.get(partition, key, now)
    }

    /// Whether `key` is remembered on `partition` at `now`.
    pub fn contains(&self, partition: i32, key: &str, now: i64) -> Result<bool, DiskError> {
        Ok(self.get(partition, key, now)?.is_some())
    }
}

/// What a [`Work`](super::Work) sees of the session while it handles a batch.
pub struct BatchCx<'s, E: Entry> {
    pub(super) store: &'s mut Store<E>,
    /// The changes of the batch still committing, if any.
    pub(super) pending: Option<&'s Pending<E>>,
    pub(super) tx: Option<&'s TxProducer>,
    pub(super) changelog: &'s str,
    pub(super) names: &'s Names,
    pub(super) adapter: &'s str,
    pub(super) stage: Stage,
    pub(super) policy: &'s RetryPolicy,
    pub(super) dlq: &'s str,
    pub(super) fault: FaultPlan,
    pub(super) batch_no: u64,
    pub(super) now: i64,
}

impl<E: Entry> BatchCx<'_, E> {
    /// When the batch is handled (epoch ms).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The stage's store: as committed, and with the changes of the batch before this one that
    /// is still committing.
    pub fn store(&self) -> StoreView<'_, E> {
        StoreView {
            store: self.store,
            pending: self.pending,
        }
    }

    /// Whether the injected test fault `point` applies to this batch.
    pub fn fault(&self, point: Point) -> bool {
        self.fault.hit(point, self.batch_no)
    }

    /// Routes a failed record to its next retry tier or the DLQ, with a new envelope that keeps the
    /// first failure's time and origin.
    pub fn fail(
        &self,
        m: &OwnedMessage,
        previous: Option<&ErrorEnvelope>,
        failure: Failure<'_>,
    ) -> Routed {
        let attempt = previous.map_or(1, |e| e.attempt + 1);
        let origin = previous.map_or_else(
            || Origin {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
            },
            |e| e.origin.clone(),
        );
        let first_failed_at = previous.map_or(self.now, |e| e.first_failed_at);
        let next = if matches!(failure.class, ErrorClass::Retryable | ErrorClass::Timeout) {
            self.policy
                .next(attempt, failure.retry_after, self.now, fastrand::f64())
        } else {
            Next::DeadLetter
        };
        let (topic, not_before) = match next {
            Next::Retry { tier, not_before } => {
                (self.names.retry(self.adapter, self.stage, tier), not_before)
            }
            Next::DeadLetter => (self.dlq.to_string(), 0),
        };
        let envelope = ErrorEnvelope::new(
            failure.class,
            failure.message,
            attempt,
            first_failed_at,
            not_before,
            origin,
            self.adapter,
            self.stage,
            failure.correlation_id,
        )
        .with_http_status(failure.http_status);
        let out = Out {
            topic,
            partition: Some(m.partition()),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: Some(envelope.headers_for(m.headers())),
        };
        let traceparent = headers::get(m.headers(), headers::name::TRACEPARENT);
        let trace_id = traceparent.and_then(headers::trace_id).unwrap_or("");
        match next {
            Next::Retry { tier, not_before } => {
                tracing::debug!(adapter = self.adapter, stage = self.stage.as_str(), class = failure.class.as_str(),
                      tier, not_before, correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
                      trace_id, error = %envelope.message, "record sent to a retry tier");
                Routed::Retry(out)
            }
            Next::DeadLetter => {
                warn!(adapter = self.adapter, stage = self.stage.as_str(), class = failure.class.as_str(),
                      topic = m.topic(), partition = m.partition(), offset = m.offset(),
                      correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
                      trace_id, error = %envelope.message, "record dead-lettered");
                ::metrics::counter!(metrics::DLQ_RECORDS, "adapter" => self.adapter.to_string(),
                    "stage" => self.stage.as_str(), "class" => failure.class.as_str())
                .increment(1);
                Routed::DeadLetter(out)
            }
        }
    }

    /// Parks a record that must not be handled before `until` (epoch ms) in the last retry tier,
    /// without counting an attempt: a send scheduled further ahead than the provider can schedule.
    pub fn delay(&self, m: &OwnedMessage, previous: Option<&ErrorEnvelope>, until: i64) -> Out {
        let envelope = ErrorEnvelope::new(
            ErrorClass::Retryable,
            &format!("scheduled: waits until {until} (epoch ms) to be within the provider's reach"),
            previous.map_or(0, |e| e.attempt),
            previous.map_or(self.now, |e| e.first_failed_at),
            until,
            previous.map_or_else(
                || Origin {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                },
                |e| e.origin.clone(),
            ),
            self.adapter,
            self.stage,
            previous.and_then(|e| e.correlation_id.clone()),
        );
        Out {
            topic: self
                .names
                .retry(self.adapter, self.stage, self.policy.tiers()),
            partition: Some(m.partition()),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: Some(envelope.headers_for(m.headers())),
        }
    }

    /// Commits `changes` to the changelog in a transaction of their own (no offsets), ahead of the
    /// batch, and applies them to the store. A stage without a transactional producer (the
    /// at-least-once benchmark mode) only applies them.
    /// Only a work that does not overlap its batches with their commits
    /// ([`Work::overlaps_commit`](super::Work::overlaps_commit) false) may call it: the producer
    /// holds one transaction at a time.
    pub async fn precommit(&mut self, changes: Vec<Change<E>>) -> Result<(), BatchError> {
        if changes.is_empty() {
            return Ok(());
        }
        debug_assert!(
            self.pending.is_none(),
            "precommit while a batch is committing"
        );
        if let Some(tx) = self.tx {
            let outs = changelog_outs(self.changelog, &changes);
            let attempt = async {
                tx.begin().await?;
                for o in &outs {
                    tx.send(to_record(o))?;
                }
                let at = tx.delivered().await?;
                tx.commit().await.map(|()| at)
            };
            match attempt.await {
                Ok(at) => {
                    return self.store.apply(&changes, &at).map_err(BatchError::from);
                }
                Err(e) => return Err(abort_after(tx, e).await),
            }
        }
        self.store.apply(&changes, &[]).map_err(BatchError::from)
    }
}

/// Aborts the open transaction after `e`; the error to return for the batch.
async fn abort_after(tx: &TxProducer, e: TxError) -> BatchError {
    if e.kind == TxErrorKind::Fatal {
        return BatchError::Fatal(e.into());
    }
    match tx.abort().await {
        Ok(()) => BatchError::Aborted(e.to_string()),
        Err(abort) => BatchError::Fatal(SessionError::Tx(abort)),
    }
}

/// Writes `outs` and `offsets` in one transaction, retrying abortable failures with a fresh one up
/// to `attempts` transactions in all; the (partition, offset) each of `outs` was written at in the
/// committed transaction. The last attempt takes `outs`' header lists over. The
/// transaction commits only once `precondition` held (it runs while the records are sent); one
/// that failed aborts it, a transient failure of the batch.
#[allow(clippy::too_many_arguments)] // one batch's parts
pub(super) async fn transactional<C, X>(
    tx: &TxProducer,
    consumer: &C,
    outs: &mut [Out],
    attempts: usize,
    offsets: &TopicPartitionList,
    mut precondition: Option<Started>,
    fault: &FaultPlan,
    batch_no: u64,
    labels: Labels<'_>,
) -> Result<Vec<(i32, i64)>, BatchError>
where
    X: rdkafka::consumer::ConsumerContext,
    C: Consumer<X>,
{
    let attempts = attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let sent = once(
            tx,
            consumer,
            outs,
            (attempt, attempts),
            offsets.clone(),
            &mut precondition,
            fault,
            batch_no,
            labels,
        );
        match sent.await {
            Ok(at) => return Ok(at),
            Err(BatchError::Aborted(e)) => {
                if attempt < attempts {
                    warn!(attempt, error = %e, "transaction aborted; sending the batch's outputs again");
                }
                last = e;
            }
            Err(other) => return Err(other),
        }
    }
    Err(BatchError::Aborted(last))
}

#[allow(clippy::too_many_arguments)] // one batch's parts
async fn once<C, X>(
    tx: &TxProducer,
    consumer: &C,
    outs: &mut [Out],
    (attempt, attempts): (usize, usize),
    offsets: TopicPartitionList,
    precondition: &mut Option<Started>,
    fault: &FaultPlan,
    batch_no: u64,
    labels: Labels<'_>,
) -> Result<Vec<(i32, i64)>, BatchError>
where
    X: rdkafka::consumer::ConsumerContext,
    C: Consumer<X>,
{
    let t0 = Instant::now();
    tx.begin().await.map_err(|e| match e.kind {
        TxErrorKind::Fatal => BatchError::Fatal(e.into()),
        _ => BatchError::Aborted(e.to_string()),
    })?;
    let mut phases = [Duration::ZERO; 4];
    let body = async {
        phases[0] = t0.elapsed();
        let group = group_metadata(consumer).map_err(|e| TxError {
            op: "group_metadata",
            kind: TxErrorKind::Abortable,
            source: e,
        })?;
        if fault.hit(Point::SendOffsetsHangs, batch_no) {
            tx.send_offsets_hanging(tx.timeout() + Duration::from_secs(60))
                .await?;
        }
        // The offsets first: their round trips to the coordinators go on while the records are
        // enqueued, rather than after them. A failed send still waits for that call, so that
        // the abort after it is the only transactional call in progress.
        let offsets_sent = tx.send_offsets(offsets, group);
        // The last attempt's records take the header lists over: nothing sends them again.
        let enqueued = match attempt == attempts {
            true => outs.iter_mut().try_for_each(|o| tx.send(moving_headers(o))),
            false => outs.iter().try_for_each(|o| tx.send(to_record(o))),
        };
        phases[3] = t0.elapsed();
        let offsets_sent = offsets_sent.await;
        enqueued?;
        offsets_sent?;
        phases[1] = t0.elapsed();
        let at = tx.delivered().await;
        phases[2] = t0.elapsed();
        at
    };
    let sent = body.await;
    // Checked once: a check that held covers the batch's records in any later attempt.
    if sent.is_ok()
        && let Some(check) = precondition.take()
        && let Err(e) = check.holds().await
    {
        return Err(match tx.abort().await {
            Ok(()) => e,
            Err(abort) => BatchError::Fatal(SessionError::Tx(abort)),
        });
    }
    if sent.is_ok() && fault.hit(Point::CrashBeforeCommit, batch_no) {
        std::process::abort();
    }
    let failed = match sent {
        Err(e) => e,
        Ok(_)
            if fault.hit(Point::AbortBeforeCommit, batch_no)
                || (attempt == 1 && fault.hit(Point::AbortFirstAttempt, batch_no)) =>
        {
            TxError {
                op: "injected fault",
                kind: TxErrorKind::Abortable,
                source: KafkaError::Canceled,
            }
        }
        Ok(at) => {
            let settled = settle(tx, fault.hit(Point::CommitTimesOut, batch_no), labels).await;
            debug!(
                adapter = labels.0,
                stage = labels.1,
                records = outs.len(),
                begin_ms = phases[0].as_millis(),
                enqueued_ms = phases[3].as_millis(),
                offsets_ms = phases[1].as_millis(),
                delivered_ms = phases[2].as_millis(),
                committed_ms = t0.elapsed().as_millis(),
                "transaction (times from its begin)"
            );
            return settled.map(|()| at);
        }
    };
    Err(abort_after(tx, failed).await)
}

/// How many times a commit whose outcome is unknown is asked again before the session gives up.
const COMMIT_ASKS: usize = 5;

/// Commits the open transaction and learns its outcome. A commit call that times out has an
/// unknown outcome: the commit goes on in the background and may well have committed, so the
/// transaction is never aborted then and the batch never redone in this session. The call is
/// repeated instead (librdkafka answers a repeated call with the outcome); still unknown after
/// [`COMMIT_ASKS`] calls, the session ends (`Fatal`): the next session's `init_transactions`
/// makes the coordinator finish that transaction, one way or the other, before anything is read
/// again from the committed offsets. A commit that failed for certain (abortable) is aborted.
async fn settle(tx: &TxProducer, short: bool, labels: Labels<'_>) -> Result<(), BatchError> {
    let mut unknown = None;
    for ask in 1..=COMMIT_ASKS {
        let call = if short && ask == 1 {
            Err(TxError {
                op: "commit_transaction",
                kind: TxErrorKind::Retriable,
                source: KafkaError::Global(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
            })
        } else {
            tx.commit().await
        };
        match call {
            Ok(()) => return Ok(()),
            Err(e) if e.kind == TxErrorKind::Retriable => {
                warn!(adapter = labels.0, stage = labels.1, ask, error = %e,
                      "commit outcome unknown (the call timed out); asking again, not aborting");
                ::metrics::counter!(metrics::COMMIT_UNKNOWN, "adapter" => labels.0.to_string(),
                    "stage" => labels.1)
                .increment(1);
                unknown = Some(e);
            }
            Err(e) => return Err(abort_after(tx, e).await),
        }
    }
    Err(BatchError::Fatal(SessionError::Tx(unknown.unwrap_or(
        TxError {
            op: "commit_transaction",
            kind: TxErrorKind::Fatal,
            source: KafkaError::Canceled,
        },
    ))))
}

/// The at-least-once path (benchmarks only): write `outs`, await them, then commit `offsets`.
pub(super) async fn at_least_once<C, X>(
    plain: &FutureProducer,
    consumer: Arc<C>,
    outs: &[Out],
    offsets: TopicPartitionList,
) -> Result<(), BatchError>
where
    X: rdkafka::consumer::ConsumerContext,
    C: Consumer<X> + Send + Sync + 'static,
{
    let mut pending = Vec::with_capacity(outs.len());
    for o in outs {
        pending.push(
            plain
                .send_result(to_record(o))
                .map_err(|(e, _)| BatchError::Aborted(e.to_string()))?,
        );
    }
    for d in pending {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(BatchError::Aborted(e.to_string())),
            Err(_) => return Err(BatchError::Aborted("delivery cancelled".into())),
        }
    }
    tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
        .await
        .map_err(|e| BatchError::Fatal(e.into()))?
        .map_err(|e| BatchError::Aborted(e.to_string()))
}
