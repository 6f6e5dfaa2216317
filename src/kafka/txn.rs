//! Transactional loop helpers: a transactional producer whose blocking calls run off the async
//! runtime, the offsets a batch consumed, and the classification of transaction errors.
//!
//! Invariants:
//! - `init_transactions`, `begin`, `send_offsets_to_transaction`, `commit` and `abort` block in
//!   librdkafka; they always run on tokio's blocking pool, never on an async worker.
//! - Offsets sent with a transaction are the *next* offsets to read (last consumed + 1), per
//!   partition, and carry the consumer's group metadata, so a zombie from an older generation is
//!   fenced by the group coordinator (KIP-447).
//! - Before a commit, the caller awaits every delivery of the transaction ([`await_deliveries`]).
//!   rdkafka's `commit_transaction` flushes first, and its flush waits for outstanding records by
//!   polling a queue that the `FutureProducer`'s own thread drains, so with records still in
//!   flight every commit stalls a full 100 ms poll interval; awaited deliveries leave nothing to
//!   flush (and a failed delivery aborts the batch before the commit is even tried).
//! - Every failure is classified once ([`TxErrorKind`]): `Fatal` (including fenced) means the producer
//!   must be dropped and a new one initialised; `Abortable` means abort, rewind the consumer to the
//!   committed offsets and redo the batch; `Retriable` means the same call may be repeated.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;

/// What to do about a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxErrorKind {
    /// The producer is unusable (fenced by a newer instance or a fatal error): drop it, build a new
    /// one, rejoin.
    Fatal,
    /// The transaction must be aborted; its batch is then redone from the committed offsets.
    Abortable,
    /// The call may simply be repeated.
    Retriable,
}

/// A failed transactional call, with its classification.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source} ({kind:?})")]
pub struct TxError {
    /// The call that failed.
    pub op: &'static str,
    /// What to do about it.
    pub kind: TxErrorKind,
    /// librdkafka's error.
    #[source]
    pub source: KafkaError,
}

impl TxError {
    fn new(op: &'static str, source: KafkaError) -> TxError {
        TxError {
            op,
            kind: classify(&source),
            source,
        }
    }

    /// The producer was fenced by another instance with the same `transactional.id` or a newer
    /// group generation.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self.source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        )
    }
}

/// Classifies a librdkafka error from a transactional call.
pub fn classify(e: &KafkaError) -> TxErrorKind {
    if let KafkaError::Transaction(t) = e {
        if t.is_fatal() {
            return TxErrorKind::Fatal;
        }
        if t.txn_requires_abort() {
            return TxErrorKind::Abortable;
        }
        if t.is_retriable() {
            return TxErrorKind::Retriable;
        }
    }
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fatal,
        ) => TxErrorKind::Fatal,
        // A failed produce inside a transaction poisons it: abort and redo.
        _ => TxErrorKind::Abortable,
    }
}

/// A transactional producer. Cheap to clone; clones share one librdkafka producer.
#[derive(Clone)]
pub struct TxProducer {
    inner: Arc<FutureProducer>,
    timeout: Duration,
}

impl TxProducer {
    /// Creates the producer under `transactional_id` and initialises transactions, which fences any
    /// older producer with the same id and aborts its open transaction.
    pub async fn init(
        settings: &KafkaSettings,
        role: &str,
        transactional_id: &str,
    ) -> Result<TxProducer, TxError> {
        let producer: FutureProducer =
            super::client::transactional_producer(settings, role, transactional_id)
                .create()
                .map_err(|e| TxError::new("create producer", e))?;
        let p = TxProducer {
            inner: Arc::new(producer),
            timeout: settings.transaction_timeout,
        };
        p.blocking("init_transactions", |p, t| p.init_transactions(t))
            .await?;
        Ok(p)
    }

    async fn blocking<F>(&self, op: &'static str, f: F) -> Result<(), TxError>
    where
        F: FnOnce(&FutureProducer, Duration) -> Result<(), KafkaError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let timeout = self.timeout;
        match tokio::task::spawn_blocking(move || f(&inner, timeout)).await {
            Ok(result) => result.map_err(|e| TxError::new(op, e)),
            // The closure panicked or the runtime is shutting down: nothing about the transaction is
            // known, so treat the producer as unusable.
            Err(_) => Err(TxError {
                op,
                kind: TxErrorKind::Fatal,
                source: KafkaError::Canceled,
            }),
        }
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<(), TxError> {
        self.blocking("begin_transaction", |p, _| p.begin_transaction())
            .await
    }

    /// Enqueues a record in the open transaction; `commit` waits for every enqueued record.
    pub fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, TxError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        self.inner
            .send_result(record)
            .map_err(|(e, _)| TxError::new("send", e))
    }

    /// Adds the consumer's offsets to the open transaction.
    pub async fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), TxError> {
        self.blocking("send_offsets_to_transaction", move |p, t| {
            p.send_offsets_to_transaction(&offsets, &group, t)
        })
        .await
    }

    /// Commits the open transaction (flushing every enqueued record first).
    pub async fn commit(&self) -> Result<(), TxError> {
        self.blocking("commit_transaction", |p, t| p.commit_transaction(t))
            .await
    }

    /// Commits the open transaction, waiting at most `timeout` for the outcome (a time-out leaves
    /// the commit going on in the background: ask again).
    pub async fn commit_within(&self, timeout: Duration) -> Result<(), TxError> {
        self.blocking("commit_transaction", move |p, _| {
            p.commit_transaction(timeout)
        })
        .await
    }

    /// Aborts the open transaction; its records stay invisible to `read_committed` readers.
    pub async fn abort(&self) -> Result<(), TxError> {
        self.blocking("abort_transaction", |p, t| p.abort_transaction(t))
            .await
    }

    /// The underlying producer, for calls this wrapper does not cover.
    pub fn producer(&self) -> &FutureProducer {
        &self.inner
    }
}

/// Waits for every record of the open transaction to be acknowledged (see the module invariants).
pub async fn await_deliveries(deliveries: Vec<DeliveryFuture>) -> Result<(), TxError> {
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(TxError::new("delivery", e)),
            Err(_) => {
                return Err(TxError {
                    op: "delivery",
                    kind: TxErrorKind::Abortable,
                    source: KafkaError::Canceled,
                });
            }
        }
    }
    Ok(())
}

/// Tracks the next offset to commit per partition over a batch of consumed records.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    next: std::collections::BTreeMap<(String, i32), i64>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// Records that `message` was consumed: its partition's next offset is at least `offset + 1`.
    pub fn consumed<M: Message>(&mut self, message: &M) {
        let next = message.offset() + 1;
        let slot = self
            .next
            .entry((message.topic().to_string(), message.partition()))
            .or_insert(next);
        *slot = (*slot).max(next);
    }

    /// Nothing consumed since the last `take`.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The offsets to commit, and a fresh start.
    pub fn take(&mut self) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in std::mem::take(&mut self.next) {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(next))?;
        }
        Ok(tpl)
    }
}

/// The group metadata a transaction needs to commit `consumer`'s offsets with KIP-447 fencing.
pub fn group_metadata<X, C>(consumer: &C) -> Result<ConsumerGroupMetadata, KafkaError>
where
    X: rdkafka::consumer::ConsumerContext,
    C: Consumer<X>,
{
    consumer.group_metadata().ok_or(KafkaError::ClientCreation(
        "consumer has no group metadata (no group.id?)".into(),
    ))
}
