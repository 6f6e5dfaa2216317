//! Transactional loop helpers: a transactional producer whose blocking calls run off the async
//! runtime, the offsets a batch consumed, and the classification of transaction errors.
//!
//! Invariants:
//! - `init_transactions`, `begin`, `send_offsets_to_transaction`, `commit` and `abort` block in
//!   librdkafka; they always run on tokio's blocking pool, never on an async worker.
//! - No stage waits on such a call for more than its time-out plus [`STUCK_GRACE`]. librdkafka
//!   does not always honour the time-out: `send_offsets_to_transaction` can wait forever for a
//!   group coordinator after one was killed (librdkafka #5456 and #5511, open in 2.12 and 2.14;
//!   seen in the chaos run). Past the grace the call is abandoned as `Fatal`: the session ends and
//!   its successor's producer, with the same transactional id, fences this one. The abandoned
//!   producer stays alive with its blocked thread (it cannot be dropped under it); the process
//!   does not wait for such threads when it exits.
//! - Offsets sent with a transaction are the *next* offsets to read (last consumed + 1), per
//!   partition, and carry the consumer's group metadata, so a zombie from an older generation is
//!   fenced by the group coordinator (KIP-447).
//! - Before a commit, the caller awaits every delivery of the transaction
//!   ([`TxProducer::delivered`], counted by the producer's context, [`super::deliveries`]).
//!   rdkafka's `commit_transaction` flushes first, and its flush waits for outstanding records by
//!   polling a queue that the producer's own polling thread drains, so with records still in
//!   flight every commit stalls a full 100 ms poll interval; awaited deliveries leave nothing to
//!   flush (and a failed delivery aborts the batch before the commit is even tried). A delivery
//!   is reported before librdkafka releases its message, though, and a flush that finds one not
//!   yet released stalls just the same (1 commit in 100 at 2 000 events/s): the commit first
//!   waits, briefly, until librdkafka's out-queue is empty ([`OUTQ_DRAIN`]).
//! - Every failure is classified once ([`TxErrorKind`]): `Fatal` (including fenced) means the producer
//!   must be dropped and a new one initialised; `Abortable` means abort, rewind the consumer to the
//!   committed offsets and redo the batch; `Retriable` means the same call may be repeated.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, FutureRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::deliveries::Deliveries;
use crate::config::KafkaSettings;

/// The librdkafka producer under a [`TxProducer`]: its polling thread reports deliveries to
/// [`Deliveries`].
pub type Inner = ThreadedProducer<Deliveries>;

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

/// How long past its own time-out a blocking transactional call may take before it is abandoned.
pub const STUCK_GRACE: Duration = Duration::from_secs(10);

/// A transactional producer. Cheap to clone; clones share one librdkafka producer.
#[derive(Clone)]
pub struct TxProducer {
    inner: Arc<Inner>,
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
        Self::init_lowered(settings, role, transactional_id, 0).await
    }

    /// [`TxProducer::init`], with librdkafka's threads of the producer `nice` steps below the
    /// caller ([`crate::priority`]).
    pub async fn init_lowered(
        settings: &KafkaSettings,
        role: &str,
        transactional_id: &str,
        nice: i32,
    ) -> Result<TxProducer, TxError> {
        let config = super::client::transactional_producer(settings, role, transactional_id);
        let producer: Inner =
            crate::priority::lowered(nice, || config.create_with_context(Deliveries::default()))
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
        F: FnOnce(&Inner, Duration) -> Result<(), KafkaError> + Send + 'static,
    {
        self.started(op, f).await
    }

    /// Starts `f` (given the producer and the transaction time-out) on the blocking pool now (not
    /// when the future is first polled); the future waits for it at most that time-out plus
    /// [`STUCK_GRACE`].
    fn started<F>(
        &self,
        op: &'static str,
        f: F,
    ) -> impl std::future::Future<Output = Result<(), TxError>> + Send + 'static
    where
        F: FnOnce(&Inner, Duration) -> Result<(), KafkaError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let timeout = self.timeout;
        let call = tokio::task::spawn_blocking(move || f(&inner, timeout));
        async move {
            let unusable = TxError {
                op,
                kind: TxErrorKind::Fatal,
                source: KafkaError::Canceled,
            };
            match tokio::time::timeout(timeout + STUCK_GRACE, call).await {
                Ok(Ok(result)) => result.map_err(|e| TxError::new(op, e)),
                // The closure panicked or the runtime is shutting down: nothing about the
                // transaction is known, so treat the producer as unusable.
                Ok(Err(_)) => Err(unusable),
                Err(_) => {
                    tracing::error!(op, waited = ?(timeout + STUCK_GRACE),
                        "librdkafka did not return from a transactional call within its time-out \
                         (librdkafka #5456, #5511); abandoning this producer");
                    Err(unusable)
                }
            }
        }
    }

    /// Begins a transaction (and a new count of deliveries).
    pub async fn begin(&self) -> Result<(), TxError> {
        self.blocking("begin_transaction", |p, _| {
            p.begin_transaction()?;
            p.context().begin();
            Ok(())
        })
        .await
    }

    /// Enqueues a record in the open transaction; [`TxProducer::delivered`] waits for every record
    /// enqueued since `begin`, and `commit` flushes them too.
    pub fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<(), TxError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let deliveries = self.inner.context();
        let mut base = BaseRecord::with_opaque_to(record.topic, deliveries.next());
        base.partition = record.partition;
        base.payload = record.payload;
        base.key = record.key;
        base.timestamp = record.timestamp;
        base.headers = record.headers;
        self.inner.send(base).map_err(|(e, _)| {
            deliveries.unsend();
            TxError::new("send", e)
        })
    }

    /// Waits for every record sent since `begin` to be acknowledged (see the module invariants);
    /// the (partition, offset) each was written at, in the order they were sent.
    pub async fn delivered(&self) -> Result<Vec<(i32, i64)>, TxError> {
        self.inner
            .context()
            .all()
            .await
            .map_err(|e| TxError::new("delivery", e))
    }

    /// Adds the consumer's offsets to the open transaction. The call starts at once, so records
    /// may be sent while its requests (AddOffsetsToTxn, TxnOffsetCommit) are under way; no other
    /// transactional call may be made before the returned future is done.
    pub fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> impl std::future::Future<Output = Result<(), TxError>> + Send + 'static {
        self.started("send_offsets_to_transaction", move |p, t| {
            p.send_offsets_to_transaction(&offsets, &group, t)
        })
    }

    /// Commits the open transaction (flushing every enqueued record first).
    pub async fn commit(&self) -> Result<(), TxError> {
        self.blocking("commit_transaction", |p, t| {
            drain_outq(p);
            p.commit_transaction(t)
        })
        .await
    }

    /// Test hook (fault `send_offsets_hangs`): a `send_offsets_to_transaction` that does not
    /// return for `hang`, as librdkafka's did after a coordinator was killed (#5456, #5511).
    pub async fn send_offsets_hanging(&self, hang: Duration) -> Result<(), TxError> {
        self.blocking("send_offsets_to_transaction", move |_, _| {
            std::thread::sleep(hang);
            Ok(())
        })
        .await
    }

    /// Aborts the open transaction; its records stay invisible to `read_committed` readers.
    pub async fn abort(&self) -> Result<(), TxError> {
        self.blocking("abort_transaction", |p, t| p.abort_transaction(t))
            .await
    }

    /// The time-out each blocking call passes to librdkafka (the transaction time-out).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying producer, for calls this wrapper does not cover.
    pub fn producer(&self) -> &Inner {
        &self.inner
    }
}

/// Longest a commit waits for librdkafka to release delivered messages before it calls
/// `commit_transaction` anyway (which then flushes as before).
pub const OUTQ_DRAIN: Duration = Duration::from_millis(100);

/// Waits, at most [`OUTQ_DRAIN`], until librdkafka's out-queue is empty: the messages whose
/// deliveries were awaited are released by the producer's polling thread right after their
/// reports, and rdkafka's flush, finding one not yet released, would wait out a whole 100 ms poll.
fn drain_outq(p: &Inner) {
    let started = std::time::Instant::now();
    while p.in_flight_count() > 0 && started.elapsed() < OUTQ_DRAIN {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Tracks the next offset to commit per partition over a batch of consumed records.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    /// By topic, then partition: looked up by `&str`, so a record of a topic already seen
    /// allocates nothing.
    next: std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// Records that `message` was consumed: its partition's next offset is at least `offset + 1`.
    pub fn consumed<M: Message>(&mut self, message: &M) {
        let next = message.offset() + 1;
        let partitions = match self.next.get_mut(message.topic()) {
            Some(p) => p,
            None => self.next.entry(message.topic().to_string()).or_default(),
        };
        let slot = partitions.entry(message.partition()).or_insert(next);
        *slot = (*slot).max(next);
    }

    /// Nothing consumed since the last `take`.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// The offsets to commit, and a fresh start.
    pub fn take(&mut self) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in std::mem::take(&mut self.next) {
            for (partition, next) in partitions {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(next))?;
            }
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
