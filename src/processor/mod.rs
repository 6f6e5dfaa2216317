//! `onceflow process --adapter NAME`: the transactional consume → decide → produce loop.
//!
//! One consumer group per adapter (`<ns>.<adapter>.process`) reads the input topics and the
//! adapter's process-stage retry topics with `read_committed`. For every batch (at most N records
//! or T ms) the processor decodes each record, drops duplicates, lets the adapter decide, and then,
//! in ONE Kafka transaction, writes the commands to the outbox, retry and DLQ records, the dedupe
//! changelog records, and the batch's input offsets (`send_offsets_to_transaction` with the
//! consumer's group metadata, so a zombie of an older generation is fenced: KIP-447).
//!
//! Invariants:
//! - A transaction is never open while the consumer polls: a batch is collected first, decided
//!   outside any transaction, and then begun, sent and committed in one step. Rebalance callbacks
//!   only run inside a poll, so a revoke can never find a transaction open: every batch is finished
//!   (committed or aborted) before its partitions can go.
//! - Records of a partition that was assigned or revoked while a batch was being collected are
//!   dropped from that batch (and the partition rewound to the first of them if it is still ours);
//!   newly owned partitions have their dedupe state restored from the changelog before any of
//!   their records is decided.
//! - An abortable error aborts the transaction and rewinds every partition of the batch to its
//!   first record, so the batch is redone and nothing is lost or doubled. A fatal error (fenced by
//!   a newer instance, or a producer gone bad) drops the producer and the consumer, and the loop
//!   rejoins with fresh ones; it never exits the process.
//! - A record on a retry topic that is not yet due pauses only its own partition (rewound to that
//!   record) until its `not_before`; every other partition keeps flowing.
//! - Undecodable records, records of an unknown type and permanent adapter failures go to the DLQ
//!   with their reason; retryable failures walk the retry tiers and then go to the DLQ. Retry and
//!   DLQ records keep the original key, value bytes and headers, carry one replaced error envelope,
//!   and are written to the origin's partition number. A poison record never blocks its partition.
//! - An unreachable schema registry is not the record's fault: the batch is rewound and retried
//!   after a pause, and nothing is dead-lettered for it.
//! - Dedupe state changes reach memory only after their transaction committed.

pub mod fault;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::adapters::{Adapter, AdapterError};
use crate::codec::catalog::Catalog;
use crate::codec::{AvroCodec, Codec, CodecError};
use crate::config::{Guarantee, Settings};
use crate::dedupe::{Change, DedupeStore, RestoreError, restore};
use crate::kafka::client::{self, Isolation, StartAt};
use crate::kafka::names::{Names, Stage};
use crate::kafka::txn::{
    OffsetTracker, TxError, TxErrorKind, TxProducer, await_deliveries, group_metadata,
};
use crate::model::event::now_ms;
use crate::model::headers::{ErrorClass, ErrorEnvelope, Origin};
use crate::model::{Event, EventType};
use crate::retry::{Next, RetryPolicy};
use crate::telemetry::metrics;
use fault::{FaultPlan, Point};

/// How often librdkafka reports statistics (lag) to the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How long the loop waits for a first record before it looks at shutdown and paused partitions.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Pause after a transient failure (registry down, producer rebuilt).
const BACKOFF: Duration = Duration::from_secs(1);
/// How often expired dedupe entries are tombstoned, and how many per transaction at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_LIMIT: usize = 1_000;

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The schema catalog or codec could not be built.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a session (one consumer + producer pair) ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What a run did, for the caller and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Events decided (commands written, possibly none).
    pub ok: u64,
    /// Commands written to the outbox.
    pub commands: u64,
    /// Duplicates dropped.
    pub duplicate: u64,
    /// Records sent to a retry tier.
    pub retry: u64,
    /// Records sent to the DLQ.
    pub dlq: u64,
    /// Committed batches.
    pub batches: u64,
    /// Aborted transactions.
    pub aborts: u64,
    /// Sessions ended by a fatal or fencing error (each followed by a rejoin).
    pub rejoins: u64,
}

/// Rebalance bookkeeping shared with librdkafka's callbacks, and lag metrics from its statistics.
struct ProcessorContext {
    adapter: String,
    epoch: AtomicU64,
    touched: Mutex<HashSet<(String, i32)>>,
}

impl ClientContext for ProcessorContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    ::metrics::gauge!(metrics::PROCESSOR_LAG, "adapter" => self.adapter.clone(),
                        "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                }
            }
            if let Some(tier) = topic
                .rsplit_once(".process.retry.")
                .map(|(_, n)| n.to_string())
            {
                let depth: i64 = t.partitions.values().map(|p| p.consumer_lag.max(0)).sum();
                ::metrics::gauge!(metrics::RETRY_DEPTH, "adapter" => self.adapter.clone(),
                    "stage" => "process", "tier" => tier)
                .set(depth as f64);
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let tpl = match rebalance {
            Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) => *tpl,
            Rebalance::Error(e) => {
                warn!(error = %e, "rebalance error");
                return;
            }
        };
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        for e in tpl.elements() {
            touched.insert((e.topic().to_string(), e.partition()));
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        ::metrics::counter!(metrics::PROCESSOR_REBALANCES, "adapter" => self.adapter.clone())
            .increment(1);
    }
}

type Consumer_ = StreamConsumer<ProcessorContext>;

/// One record to write.
struct Out {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// What one record came to.
enum Verdict {
    Decided(Vec<Out>, Change),
    Duplicate,
    Retry(Out),
    DeadLetter(Out, ErrorClass),
}

/// Why one record failed.
struct Failure<'a> {
    class: ErrorClass,
    message: &'a str,
    retry_after: Option<Duration>,
}

/// A transient failure that is not the record's fault: redo the batch later.
struct Transient(String);

/// The processor of one adapter.
pub struct Processor {
    settings: Settings,
    adapter: Arc<dyn Adapter>,
    codec: AvroCodec,
    catalog: Catalog,
    names: Names,
    inputs: Vec<String>,
    retry_topics: Vec<String>,
    outbox: String,
    dlq: String,
    changelog: String,
    policy: RetryPolicy,
    fault: FaultPlan,
}

impl Processor {
    /// A processor of `adapter` (a built-in from the registry, or any other implementation).
    pub fn new(settings: &Settings, adapter: Arc<dyn Adapter>) -> Result<Processor, ProcessError> {
        let names = Names::new(settings);
        let name = adapter.name().to_string();
        let tiers = settings.retry.tiers.len();
        Ok(Processor {
            codec: AvroCodec::new(&settings.registry)?,
            catalog: Catalog::builtin()?,
            inputs: settings.topics.inputs.clone(),
            retry_topics: (1..=tiers)
                .map(|n| names.retry(&name, Stage::Process, n))
                .collect(),
            outbox: names.outbox(&name),
            dlq: names.dlq(&name, Stage::Process),
            changelog: names.dedupe(&name),
            policy: RetryPolicy::new(settings.retry.tiers.clone()),
            fault: FaultPlan::from_env(),
            names,
            adapter,
            settings: settings.clone(),
        })
    }

    /// Injects `fault` (tests; see [`fault`]).
    pub fn with_fault(mut self, fault: FaultPlan) -> Processor {
        self.fault = fault;
        self
    }

    fn name(&self) -> &str {
        self.adapter.name()
    }

    /// Runs until `shutdown` turns true; every batch in flight is finished first. Fatal errors
    /// rejoin with a fresh consumer and producer instead of returning.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<Counts, ProcessError> {
        let mut counts = Counts::default();
        while !*shutdown.borrow() {
            match self.session(&mut shutdown, &mut counts).await {
                Ok(()) => break,
                Err(e) => {
                    counts.rejoins += 1;
                    ::metrics::counter!(metrics::PROCESSOR_FENCINGS, "adapter" => self.name().to_string())
                        .increment(1);
                    warn!(adapter = self.name(), error = %e, "session ended; rejoining with a new consumer and producer");
                    tokio::select! {
                        () = tokio::time::sleep(BACKOFF) => {},
                        _ = shutdown.changed() => {},
                    }
                }
            }
        }
        info!(adapter = self.name(), ?counts, "processor stopped");
        Ok(counts)
    }

    fn consumer(&self) -> Result<Arc<Consumer_>, KafkaError> {
        let group = self.names.group(self.name(), Stage::Process);
        // The instance in the client id names the member in the group's member list.
        let role = format!(
            "{}.process.{}",
            self.name(),
            self.settings.processor.instance_id
        );
        let mut config = client::consumer(
            &self.settings.kafka,
            &role,
            &group,
            Isolation::ReadCommitted,
            StartAt::Earliest,
        );
        if self.settings.processor.static_membership {
            let member = self.names.static_member(
                self.name(),
                Stage::Process,
                &self.settings.processor.instance_id,
            );
            config = client::with_static_membership(config, &member);
        }
        let config = client::with_statistics(config, STATS_INTERVAL);
        let context = ProcessorContext {
            adapter: self.name().to_string(),
            epoch: AtomicU64::new(0),
            touched: Mutex::new(HashSet::new()),
        };
        let consumer: Consumer_ = config.create_with_context(context)?;
        let topics: Vec<&str> = self
            .inputs
            .iter()
            .chain(&self.retry_topics)
            .map(String::as_str)
            .collect();
        consumer.subscribe(&topics)?;
        Ok(Arc::new(consumer))
    }

    async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        counts: &mut Counts,
    ) -> Result<(), SessionError> {
        let role = format!("{}.process", self.name());
        // The producer first: initialising it fences a previous incarnation of this instance and
        // aborts its open transaction before this one reads anything.
        let (tx, plain) = match self.settings.processor.guarantee {
            Guarantee::ExactlyOnce => {
                let id = self.names.transactional_id(
                    self.name(),
                    Stage::Process,
                    &self.settings.processor.instance_id,
                );
                (
                    Some(TxProducer::init(&self.settings.kafka, &role, &id).await?),
                    None,
                )
            }
            Guarantee::AtLeastOnce => {
                let p: FutureProducer = client::producer(&self.settings.kafka, &role).create()?;
                (None, Some(p))
            }
        };
        let consumer = self.consumer()?;
        let mut s = Session {
            p: self,
            consumer,
            tx,
            plain,
            dedupe: DedupeStore::new(self.settings.processor.dedupe_ttl),
            paused: HashMap::new(),
            epoch: 0,
            batch_no: 0,
            last_sweep: Instant::now(),
        };
        let result = s.run(shutdown, counts).await;
        // Leave the group now (dynamic membership), rather than after the session timeout; the
        // consumer is closed when the session drops it.
        s.consumer.unsubscribe();
        result
    }
}

struct Session<'a> {
    p: &'a Processor,
    consumer: Arc<Consumer_>,
    tx: Option<TxProducer>,
    plain: Option<FutureProducer>,
    dedupe: DedupeStore,
    /// Paused retry partitions and when they are due (epoch ms).
    paused: HashMap<(String, i32), i64>,
    epoch: u64,
    batch_no: u64,
    last_sweep: Instant,
}

impl Session<'_> {
    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        counts: &mut Counts,
    ) -> Result<(), SessionError> {
        while !*shutdown.borrow() {
            self.resume_due()?;
            let mut batch = self.collect().await?;
            let epoch = self.consumer.context().epoch.load(Ordering::SeqCst);
            if epoch != self.epoch {
                self.epoch = epoch;
                let touched: HashSet<(String, i32)> = {
                    let mut t = self
                        .consumer
                        .context()
                        .touched
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    std::mem::take(&mut *t)
                };
                let (keep, dropped): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .partition(|m| !touched.contains(&(m.topic().to_string(), m.partition())));
                batch = keep;
                self.sync_assignment().await?;
                self.rewind(&dropped, true).await?;
            }
            if batch.is_empty() {
                continue;
            }
            self.batch_no += 1;
            match self.process(&batch, counts).await {
                Ok(()) => {}
                Err(BatchError::Transient(reason)) => {
                    warn!(adapter = self.p.name(), %reason, "transient failure; redoing the batch after a pause");
                    self.rewind(&batch, false).await?;
                    tokio::time::sleep(BACKOFF).await;
                }
                Err(BatchError::Aborted(e)) => {
                    counts.aborts += 1;
                    ::metrics::counter!(metrics::PROCESSOR_ABORTS, "adapter" => self.p.name().to_string())
                        .increment(1);
                    warn!(adapter = self.p.name(), error = %e, "transaction aborted; redoing the batch");
                    self.rewind(&batch, false).await?;
                }
                Err(BatchError::Fatal(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Collects up to `batch_max_records` records, for at most `batch_max` after the first one.
    async fn collect(&mut self) -> Result<Vec<OwnedMessage>, SessionError> {
        let settings = &self.p.settings.processor;
        let mut batch = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        while batch.len() < settings.batch_max_records {
            let wait = match deadline {
                None => IDLE_POLL,
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            };
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => {
                    batch.push(m.detach());
                    deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + settings.batch_max);
                }
                Ok(Err(e))
                    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal) =>
                {
                    return Err(e.into());
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "consumer error (librdkafka retries)");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Brings the dedupe store in line with the assignment: restores partitions newly owned, drops
    /// those no longer owned, and forgets pauses of partitions that left.
    async fn sync_assignment(&mut self) -> Result<(), SessionError> {
        let assignment = self.consumer.assignment()?;
        let owned: HashSet<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.paused.retain(|tp, _| owned.contains(tp));
        let wanted: HashSet<i32> = owned.iter().map(|(_, p)| *p).collect();
        let have = self.dedupe.partitions();
        for p in have.difference(&wanted) {
            self.dedupe.drop_partition(*p);
        }
        let missing: Vec<i32> = wanted.difference(&have).copied().collect();
        if !missing.is_empty() {
            let kafka = self.p.settings.kafka.clone();
            let changelog = self.p.changelog.clone();
            let reader = self.p.names.changelog_reader(self.p.name(), Stage::Process);
            let ttl = self.p.settings.processor.dedupe_ttl;
            let max_wait = self.p.settings.kafka.transaction_timeout + Duration::from_secs(30);
            let parts = missing.clone();
            let started = Instant::now();
            let restored = tokio::task::spawn_blocking(move || {
                restore(&kafka, &changelog, &reader, &parts, ttl, now_ms(), max_wait)
            })
            .await??;
            let entries: usize = restored.values().map(HashMap::len).sum();
            for (p, e) in restored {
                self.dedupe.insert_partition(p, e);
            }
            info!(adapter = self.p.name(), partitions = ?missing, entries, took_ms = started.elapsed().as_millis() as u64,
                  "dedupe store restored");
        }
        Ok(())
    }

    /// Seeks every partition of `records` back to its first record there (only those still owned
    /// when `only_owned`), so nothing in `records` is skipped.
    async fn rewind(
        &mut self,
        records: &[OwnedMessage],
        only_owned: bool,
    ) -> Result<(), SessionError> {
        let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in records {
            let e = first
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(m.offset());
            *e = (*e).min(m.offset());
        }
        if first.is_empty() {
            return Ok(());
        }
        let owned: HashSet<(String, i32)> = if only_owned {
            self.consumer
                .assignment()?
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        } else {
            first.keys().cloned().collect()
        };
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
            for ((topic, partition), offset) in first {
                if owned.contains(&(topic.clone(), partition)) {
                    consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(10),
                    )?;
                }
            }
            Ok(())
        })
        .await??;
        Ok(())
    }

    fn resume_due(&mut self) -> Result<(), KafkaError> {
        let now = now_ms();
        let due: Vec<(String, i32)> = self
            .paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &due {
            tpl.add_partition(topic, *partition);
            self.paused.remove(&(topic.clone(), *partition));
        }
        self.consumer.resume(&tpl)
    }

    /// Pauses a retry partition whose head record is not yet due, rewound to that record.
    async fn pause(&mut self, m: &OwnedMessage, not_before: i64) -> Result<(), SessionError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(m.topic(), m.partition());
        self.consumer.pause(&tpl)?;
        self.paused
            .insert((m.topic().to_string(), m.partition()), not_before);
        self.rewind(std::slice::from_ref(m), false).await
    }

    async fn process(
        &mut self,
        batch: &[OwnedMessage],
        counts: &mut Counts,
    ) -> Result<(), BatchError> {
        let p = self.p;
        let now = now_ms();
        // Phase 1, outside any transaction: decide every record.
        let mut outs: Vec<Out> = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut tracker = OffsetTracker::new();
        let mut seen_in_batch: HashSet<(i32, String)> = HashSet::new();
        let mut paused_now: HashSet<(String, i32)> = HashSet::new();
        let mut tally = Counts::default();
        for m in batch {
            let tp = (m.topic().to_string(), m.partition());
            if paused_now.contains(&tp) || self.paused.contains_key(&tp) {
                continue;
            }
            let envelope = if p.retry_topics.iter().any(|t| t == m.topic()) {
                ErrorEnvelope::read(m.headers())
            } else {
                None
            };
            if let Some(env) = &envelope
                && env.not_before > now
            {
                paused_now.insert(tp);
                self.pause(m, env.not_before)
                    .await
                    .map_err(BatchError::Fatal)?;
                continue;
            }
            match p
                .verdict(m, envelope.as_ref(), now, &self.dedupe, &seen_in_batch)
                .await
            {
                Err(Transient(reason)) => return Err(BatchError::Transient(reason)),
                Ok(Verdict::Decided(cmds, change)) => {
                    if let Change::Seen {
                        partition,
                        event_id,
                        ..
                    } = &change
                    {
                        seen_in_batch.insert((*partition, event_id.clone()));
                    }
                    tally.commands += cmds.len() as u64;
                    outs.extend(cmds);
                    changes.push(change);
                    tally.ok += 1;
                }
                Ok(Verdict::Duplicate) => tally.duplicate += 1,
                Ok(Verdict::Retry(out)) => {
                    outs.push(out);
                    tally.retry += 1;
                }
                Ok(Verdict::DeadLetter(out, class)) => {
                    ::metrics::counter!(metrics::DLQ_RECORDS, "adapter" => p.name().to_string(),
                        "stage" => "process", "class" => class.as_str())
                    .increment(1);
                    outs.push(out);
                    tally.dlq += 1;
                }
            }
            tracker.consumed(m);
        }
        if tracker.is_empty() {
            return Ok(());
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            changes.extend(self.dedupe.expired(now, SWEEP_LIMIT));
        }
        for c in &changes {
            let (partition, key, value) = c.record();
            outs.push(Out {
                topic: p.changelog.clone(),
                partition: Some(partition),
                key: Some(key.as_bytes().to_vec()),
                payload: value.map(String::into_bytes),
                headers: None,
            });
        }
        let offsets = tracker.take().map_err(|e| BatchError::Fatal(e.into()))?;

        // Phase 2: write it all, with the offsets, atomically (or, at-least-once, write then commit).
        let started = Instant::now();
        match (&self.tx, &self.plain) {
            (Some(tx), _) => self.commit_transaction(tx, &outs, offsets).await?,
            (None, Some(plain)) => {
                let mut pending = Vec::with_capacity(outs.len());
                for o in &outs {
                    let record = to_record(o);
                    pending.push(
                        plain
                            .send_result(record)
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
                let consumer = Arc::clone(&self.consumer);
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                    .await
                    .map_err(|e| BatchError::Fatal(e.into()))?
                    .map_err(|e| BatchError::Aborted(e.to_string()))?;
            }
            (None, None) => return Err(BatchError::Aborted("no producer".into())),
        }
        ::metrics::histogram!(metrics::PROCESSOR_COMMIT_SECONDS, "adapter" => p.name().to_string())
            .record(started.elapsed().as_secs_f64());
        if p.fault.hit(Point::CrashAfterCommit, self.batch_no) {
            std::process::abort();
        }
        self.dedupe.apply(&changes);
        for (outcome, n) in [
            ("ok", tally.ok),
            ("duplicate", tally.duplicate),
            ("retry", tally.retry),
            ("dlq", tally.dlq),
        ] {
            ::metrics::counter!(metrics::PROCESSOR_RECORDS, "adapter" => p.name().to_string(), "outcome" => outcome)
                .increment(n);
        }
        counts.ok += tally.ok;
        counts.commands += tally.commands;
        counts.duplicate += tally.duplicate;
        counts.retry += tally.retry;
        counts.dlq += tally.dlq;
        counts.batches += 1;
        Ok(())
    }

    async fn commit_transaction(
        &self,
        tx: &TxProducer,
        outs: &[Out],
        offsets: TopicPartitionList,
    ) -> Result<(), BatchError> {
        let classify = |e: TxError| match e.kind {
            TxErrorKind::Fatal => BatchError::Fatal(e.into()),
            TxErrorKind::Abortable | TxErrorKind::Retriable => BatchError::Aborted(e.to_string()),
        };
        tx.begin().await.map_err(classify)?;
        let body = async {
            let mut deliveries = Vec::with_capacity(outs.len());
            for o in outs {
                deliveries.push(tx.send(to_record(o))?);
            }
            let group = group_metadata(self.consumer.as_ref()).map_err(|e| TxError {
                op: "group_metadata",
                kind: TxErrorKind::Abortable,
                source: e,
            })?;
            tx.send_offsets(offsets, group).await?;
            await_deliveries(deliveries).await
        };
        let sent = body.await;
        let fault = &self.p.fault;
        if sent.is_ok() && fault.hit(Point::CrashBeforeCommit, self.batch_no) {
            std::process::abort();
        }
        let result = match sent {
            Err(e) => Err(e),
            Ok(()) if fault.hit(Point::AbortBeforeCommit, self.batch_no) => Err(TxError {
                op: "injected fault",
                kind: TxErrorKind::Abortable,
                source: KafkaError::Canceled,
            }),
            Ok(()) => {
                let mut attempt = 0;
                loop {
                    match tx.commit().await {
                        Err(e) if e.kind == TxErrorKind::Retriable && attempt < 3 => attempt += 1,
                        other => break other,
                    }
                }
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind == TxErrorKind::Fatal => Err(BatchError::Fatal(e.into())),
            Err(e) => {
                if let Err(abort) = tx.abort().await {
                    return Err(if abort.kind == TxErrorKind::Fatal {
                        BatchError::Fatal(abort.into())
                    } else {
                        BatchError::Fatal(SessionError::Tx(abort))
                    });
                }
                Err(BatchError::Aborted(e.to_string()))
            }
        }
    }
}

enum BatchError {
    /// Not the record's fault (registry down): redo later.
    Transient(String),
    /// The transaction was aborted: redo the batch now.
    Aborted(String),
    /// The session cannot go on: rejoin.
    Fatal(SessionError),
}

fn to_record(o: &Out) -> FutureRecord<'_, Vec<u8>, Vec<u8>> {
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
    if let Some(h) = &o.headers {
        r = r.headers(h.clone());
    }
    r
}

impl Processor {
    /// The copy of `m` for `topic`: same key, value bytes and own headers, new envelope, the
    /// origin's partition number.
    fn republish(&self, m: &OwnedMessage, topic: &str, envelope: &ErrorEnvelope) -> Out {
        Out {
            topic: topic.to_string(),
            partition: Some(m.partition()),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: Some(envelope.headers_for(m.headers())),
        }
    }

    fn failure(
        &self,
        m: &OwnedMessage,
        previous: Option<&ErrorEnvelope>,
        Failure {
            class,
            message,
            retry_after,
        }: Failure<'_>,
        correlation_id: Option<String>,
        now: i64,
    ) -> Verdict {
        let attempt = previous.map_or(1, |e| e.attempt + 1);
        let origin = previous.map_or_else(
            || Origin {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
            },
            |e| e.origin.clone(),
        );
        let first_failed_at = previous.map_or(now, |e| e.first_failed_at);
        let next = if class == ErrorClass::Retryable {
            self.policy.next(attempt, retry_after, now, fastrand::f64())
        } else {
            Next::DeadLetter
        };
        let (topic, not_before) = match next {
            Next::Retry { tier, not_before } => (
                self.names.retry(self.name(), Stage::Process, tier),
                not_before,
            ),
            Next::DeadLetter => (self.dlq.clone(), 0),
        };
        let envelope = ErrorEnvelope::new(
            class,
            message,
            attempt,
            first_failed_at,
            not_before,
            origin,
            self.name(),
            Stage::Process,
            correlation_id,
        );
        let out = self.republish(m, &topic, &envelope);
        match next {
            Next::Retry { .. } => Verdict::Retry(out),
            Next::DeadLetter => {
                warn!(adapter = self.name(), class = class.as_str(), topic = m.topic(), partition = m.partition(),
                      offset = m.offset(), error = %envelope.message, "record dead-lettered");
                Verdict::DeadLetter(out, class)
            }
        }
    }

    async fn verdict(
        &self,
        m: &OwnedMessage,
        envelope: Option<&ErrorEnvelope>,
        now: i64,
        dedupe: &DedupeStore,
        seen_in_batch: &HashSet<(i32, String)>,
    ) -> Result<Verdict, Transient> {
        let fail = |class, message: &str, retry_after, corr| {
            Ok(self.failure(
                m,
                envelope,
                Failure {
                    class,
                    message,
                    retry_after,
                },
                corr,
                now,
            ))
        };
        let Some(bytes) = m.payload() else {
            return fail(ErrorClass::Decode, "record has no value", None, None);
        };
        let decoded = match self.codec.decode(bytes).await {
            Ok(d) => d,
            Err(e) if e.is_retriable() => return Err(Transient(e.to_string())),
            Err(e) => return fail(ErrorClass::Decode, &e.to_string(), None, None),
        };
        let Some(event_type) = decoded
            .record_name
            .as_deref()
            .and_then(EventType::from_record_name)
        else {
            let name = decoded
                .record_name
                .unwrap_or_else(|| "an unnamed schema".into());
            return fail(
                ErrorClass::Schema,
                &format!("{name} is not an event type this stage reads"),
                None,
                None,
            );
        };
        let event = match Event::from_avro(&decoded.value) {
            Ok(e) if e.event_type() == Some(event_type) => e,
            Ok(e) => {
                let msg = format!("record {event_type} says its type is {}", e.meta.event_type);
                return fail(ErrorClass::Schema, &msg, None, Some(e.meta.correlation_id));
            }
            Err(e) => return fail(ErrorClass::Schema, &e.to_string(), None, None),
        };
        let partition = m.partition();
        let id = &event.meta.event_id;
        if dedupe.contains(partition, id, now) || seen_in_batch.contains(&(partition, id.clone())) {
            return Ok(Verdict::Duplicate);
        }
        let corr = Some(event.meta.correlation_id.clone());
        let commands = match self.adapter.decide(&event) {
            Ok(c) => c,
            Err(AdapterError::Retry { after, message }) => {
                return fail(ErrorClass::Retryable, &message, after, corr);
            }
            Err(AdapterError::Permanent { reason }) => {
                return fail(ErrorClass::Permanent, &reason, None, corr);
            }
        };
        let mut outs = Vec::with_capacity(commands.len());
        for c in commands {
            let Some((_, schema)) = self.catalog.latest(c.command_type.schema_name()) else {
                return fail(
                    ErrorClass::Permanent,
                    &format!("no schema for {}", c.command_type),
                    None,
                    corr,
                );
            };
            let value = match c.to_avro(schema) {
                Ok(v) => v,
                Err(e) => {
                    return fail(
                        ErrorClass::Permanent,
                        &format!("{}: {e}", c.command_type),
                        None,
                        corr,
                    );
                }
            };
            let payload = match self.codec.encode(&self.outbox, schema, value).await {
                Ok(b) => b,
                Err(e) if e.is_retriable() => return Err(Transient(e.to_string())),
                Err(e) => return fail(ErrorClass::Permanent, &e.to_string(), None, corr),
            };
            outs.push(Out {
                topic: self.outbox.clone(),
                partition: None,
                key: Some(c.key.into_bytes()),
                payload: Some(payload),
                headers: None,
            });
        }
        Ok(Verdict::Decided(
            outs,
            Change::Seen {
                partition,
                event_id: event.meta.event_id,
                at: now,
            },
        ))
    }
}

impl From<SessionError> for BatchError {
    fn from(e: SessionError) -> Self {
        BatchError::Fatal(e)
    }
}
