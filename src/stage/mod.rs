//! The transactional-stage skeleton shared by the processor (`onceflow process`) and the dispatcher
//! (`onceflow deliver`): consume a batch, let the stage's [`Work`] handle it outside any
//! transaction, then commit its outputs, its changelog-store changes and the batch's input offsets
//! in ONE Kafka transaction (`send_offsets_to_transaction` with the consumer's group metadata, so a
//! zombie of an older generation is fenced: KIP-447).
//!
//! One consumer group per adapter and stage (`<ns>.<adapter>.<stage>`) reads the stage's inputs
//! and its retry topics with `read_committed`.
//!
//! Invariants:
//! - One transaction at a time, and the loop does not wait for it: a batch is collected and
//!   handled outside any transaction, then its transaction (begin, send, offsets, commit) is
//!   handed to the session's committer thread ([`committer`]) while the loop collects and handles
//!   the next batch. That one sees the store with the committing batch's changes
//!   ([`StoreView`]) and is sent only once the committing batch committed; if that failed, both
//!   are redone from the first record of the earlier one.
//! - A revoke waits, in the rebalance callback, for the transaction in flight to be settled:
//!   partitions leave only with their last batch committed or aborted, so a new owner restores a
//!   changelog that holds its entries and starts from offsets past it
//!   (`tests/stage_review.rs`, `a_revoke_while_a_batch_commits_…`). The store follows an
//!   assignment only after the batch in flight was finished.
//! - With a `batch_linger`, a batch closes once the one before it committed and no record came for
//!   the linger (or at `batch_max_records` / `batch_max`): batches adapt to the load, one
//!   transaction in flight at a time.
//! - Records of a partition that was assigned or revoked while a batch was being collected are
//!   dropped from that batch (and the partition rewound to the first of them if it is still ours);
//!   newly owned partitions have their store restored from the changelog before any of their
//!   records is handled.
//! - An abortable error aborts the transaction and the same outputs and offsets are sent again in a
//!   new one (a bounded number of times, [`Work::commit_attempts`]); only then is the batch rewound
//!   and redone. A stage whose work had effects outside Kafka (the dispatcher's calls) therefore
//!   never redoes them because of a transient commit failure; the processor, whose work has none,
//!   is redone from its input at the first abort. A fatal error (fenced by a newer instance, or a
//!   producer gone bad) drops the producer and the consumer, and the loop rejoins with fresh ones;
//!   it never exits the process (only a newer process of the same instance makes it stop, below).
//! - A record on a retry topic that is not yet due pauses only its own partition (rewound to that
//!   record) until its `not_before`; every other partition keeps flowing. A paused partition
//!   that is revoked and later assigned again is resumed (librdkafka would keep it paused with
//!   nobody left to resume it) and pauses again on reading its record, so it is neither stuck nor
//!   handled early.
//! - Records the work defers (a dispatcher whose circuit breaker opened) are not consumed: the
//!   transaction commits each partition's offset up to its first deferred record, and the partition
//!   is rewound there. Records after it that were handled anyway are committed with their store
//!   changes, so when they are read again the store recognises them.
//! - A record with a header name rdkafka cannot read (not UTF-8) never reaches the work, whose
//!   every header access would panic: its readable headers are kept and it goes to the DLQ, class
//!   `decode`, with the reason ([`crate::kafka::headers`]).
//! - Of two processes started with the same instance (one transactional id), one stops and the
//!   other keeps it: with dynamic membership the older, once fenced and having seen the newer
//!   join; with static membership whichever is fenced twice within a minute, its producer once at
//!   least ([`instance`]). Consumer fences alone (librdkafka's own rejoins) never stop a process.
//! - A batch's transaction commits only after the check its work handed over held
//!   ([`Precondition`]: the processor's schema ids confirmed by the registry); the check runs while
//!   the batch waits for its transaction and is sent, and one that failed aborts it.
//! - Store changes reach memory only after their transaction committed; a work may commit changes
//!   ahead of the batch ([`BatchCx::precommit`], the dispatcher's "attempting" marks) in a
//!   transaction of their own, without offsets.

mod commit;
mod committer;
mod context;
pub mod fault;
pub mod instance;
mod precondition;
mod session;

use std::future::Future;
use std::sync::Arc;

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use tokio::sync::watch;
use tracing::{info, warn};

pub use commit::{BatchCx, COMMIT_ATTEMPTS, Failure, Out, Routed, StoreView, to_record};
pub use precondition::Precondition;

use crate::config::{KafkaSettings, StageSettings};
use crate::dedupe::{Backend, Change, DiskError, Entry, RestoreError};
use crate::kafka::names::{Names, Stage};
use crate::kafka::txn::TxError;
use crate::model::headers::ErrorEnvelope;
use crate::retry::RetryPolicy;
use crate::telemetry::metrics::StageMetrics;
use fault::FaultPlan;

/// Pause after a transient failure (registry down, producer rebuilt).
const BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a session (one consumer + producer pair) ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A client call failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A transactional call failed fatally.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// A store could not be restored.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A store partition's file refused a read or a write: the session ends, and the next one
    /// restores from what the file holds durably.
    #[error(transparent)]
    Store(#[from] DiskError),
    /// A blocking task failed.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// Static membership: another consumer joined with this instance's `group.instance.id`.
    #[error("fenced by another consumer of this instance's group.instance.id: {0}")]
    InstanceFenced(String),
    /// The committer thread could not be started, or lost a transaction's outcome (its job
    /// panicked): what became of the transaction is unknown.
    #[error("the committer lost a transaction's outcome")]
    CommitterLost,
}

impl SessionError {
    /// The session's producer was fenced by another producer of its transactional id.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SessionError::Tx(t) if t.is_fenced())
    }
}

/// Why a stage stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A newer process runs the same instance (same `--instance`) and took its transactional id.
    #[error(
        "another process took over instance `{instance}` (member `{by}` of the group, started later); this one stops"
    )]
    Superseded {
        /// The instance id.
        instance: String,
        /// The newer member's client id.
        by: String,
    },
}

/// How a batch failed.
#[derive(Debug)]
pub enum BatchError {
    /// Not the records' fault (registry down): redo the batch after a pause.
    Transient(String),
    /// The transaction was aborted: redo the batch now.
    Aborted(String),
    /// The session cannot go on: rejoin.
    Fatal(SessionError),
}

impl From<SessionError> for BatchError {
    fn from(e: SessionError) -> Self {
        BatchError::Fatal(e)
    }
}

impl From<DiskError> for BatchError {
    fn from(e: DiskError) -> Self {
        BatchError::Fatal(e.into())
    }
}

/// Counts of one batch's records by outcome (and of the outputs written).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Handled successfully: events decided (processor), commands delivered (dispatcher).
    pub ok: u64,
    /// Records written for the stage's consumers: commands (processor), receipts (dispatcher).
    pub outputs: u64,
    /// Duplicates dropped (already in the store).
    pub duplicate: u64,
    /// Records sent to a retry tier.
    pub retry: u64,
    /// Records sent to the DLQ.
    pub dlq: u64,
    /// Commands found in doubt after a crash (dispatcher).
    pub in_doubt: u64,
}

impl Tally {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.outputs += other.outputs;
        self.duplicate += other.duplicate;
        self.retry += other.retry;
        self.dlq += other.dlq;
        self.in_doubt += other.in_doubt;
    }

    /// (outcome label, count) pairs, for the records metric.
    pub fn outcomes(&self) -> [(&'static str, u64); 5] {
        [
            ("ok", self.ok),
            ("duplicate", self.duplicate),
            ("retry", self.retry),
            ("dlq", self.dlq),
            ("in_doubt", self.in_doubt),
        ]
    }
}

/// What a run did, for the caller and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Records by outcome over the run's committed batches.
    pub tally: Tally,
    /// Committed batches.
    pub batches: u64,
    /// Batches begun, over every session of the run: the numbers test faults count.
    pub begun: u64,
    /// Aborted transactions.
    pub aborts: u64,
    /// Sessions ended by a fatal or fencing error (each followed by a rejoin).
    pub rejoins: u64,
    /// Where the loop's time went.
    pub time: LoopTime,
}

/// Where a stage's loop spent its time, over a run: what bounds its rate is the part that is
/// not waiting (bench/PROCESSOR.md reads it from the summary a stage prints on exit).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopTime {
    /// Collecting batches: receiving records, and waiting for them.
    pub collecting: std::time::Duration,
    /// In the work's `handle` (the processor's decode, dedupe, decide, encode).
    pub handling: std::time::Duration,
    /// Waiting for the transaction in flight to commit before the next one may begin.
    pub waiting: std::time::Duration,
}

impl std::fmt::Display for LoopTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} s collecting, {:.1} s handling, {:.1} s waiting for commits",
            self.collecting.as_secs_f64(),
            self.handling.as_secs_f64(),
            self.waiting.as_secs_f64()
        )
    }
}

/// One record of a batch that is due: its retry envelope (when it came from a retry topic) has a
/// `not_before` in the past.
#[derive(Debug)]
pub struct Due<'a> {
    /// The record.
    pub msg: &'a OwnedMessage,
    /// Its error envelope, when it came from one of the stage's retry topics.
    pub envelope: Option<ErrorEnvelope>,
}

/// What a stage's work made of a batch.
#[derive(Debug)]
pub struct Handled<E> {
    /// Records to write in the batch's transaction (outputs, retry and DLQ records).
    pub outs: Vec<Out>,
    /// Store changes to write to the changelog in the same transaction, applied after it.
    pub changes: Vec<Change<E>>,
    /// Records not taken (topic, partition, offset): offsets stop before them and their partitions
    /// are rewound to them.
    pub deferred: Vec<(String, i32, i64)>,
    /// Pause every assigned partition until this time (epoch ms), after the commit.
    pub pause_all_until: Option<i64>,
    /// The batch's counts.
    pub tally: Tally,
    /// A check the batch's transaction commits only after, running meanwhile ([`Precondition`]).
    pub precondition: Option<Precondition>,
}

impl<E> Default for Handled<E> {
    fn default() -> Self {
        Handled {
            outs: Vec::new(),
            changes: Vec::new(),
            deferred: Vec::new(),
            pause_all_until: None,
            tally: Tally::default(),
            precondition: None,
        }
    }
}

impl<E> Handled<E> {
    /// Adds a failed record's retry or DLQ record, and counts it.
    pub fn push_routed(&mut self, routed: Routed) {
        match routed {
            Routed::Retry(out) => {
                self.tally.retry += 1;
                self.outs.push(out);
            }
            Routed::DeadLetter(out) => {
                self.tally.dlq += 1;
                self.outs.push(out);
            }
        }
    }
}

/// The stage-specific part of a transactional stage.
pub trait Work: Send + Sync + 'static {
    /// The entries of the stage's changelog store.
    type Entry: Entry;

    /// The adapter whose stage this is.
    fn adapter(&self) -> &str;

    /// Whether the next batch may be collected and handled while the last one commits (the
    /// default). A work that commits changes ahead of its batch ([`BatchCx::precommit`]) needs
    /// the producer to itself, and says no.
    fn overlaps_commit(&self) -> bool {
        true
    }

    /// How many transactions a batch's outputs are tried in, an abortable failure after another,
    /// before the batch is rewound and handled again ([`COMMIT_ATTEMPTS`] by default). A work
    /// whose outputs are cheap to make again and had no effect elsewhere may say 1: the batch is
    /// then redone from its input at once, as Kafka Streams does, and its records' header lists
    /// are moved into the producer rather than copied.
    fn commit_attempts(&self) -> usize {
        COMMIT_ATTEMPTS
    }

    /// Handles the due records of one batch, in order, outside any transaction. `cx` gives the
    /// store, the retry policy and a way to commit store changes ahead of the batch.
    fn handle(
        &self,
        due: &[Due<'_>],
        cx: &mut BatchCx<'_, Self::Entry>,
    ) -> impl Future<Output = Result<Handled<Self::Entry>, BatchError>> + Send;
}

/// Where a stage reads and what it keeps.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Process or deliver.
    pub stage: Stage,
    /// Topics the stage reads besides its retry topics.
    pub inputs: Vec<String>,
    /// The changelog topic of its store.
    pub changelog: String,
    /// How long the store remembers a key.
    pub ttl: std::time::Duration,
    /// Where the store's local checkpoints (or, on disk, its files) are kept, if anywhere
    /// (`processor.state_dir`, `dispatcher.state_dir`).
    pub state_dir: Option<std::path::PathBuf>,
    /// Where the store's partitions live (`processor.store`, `dispatcher.store`).
    pub store: Backend,
    /// The stage's metric names.
    pub metrics: &'static StageMetrics,
}

/// Runs one stage of one adapter: sessions of a consumer and a (transactional) producer, rejoined
/// after fatal errors, until shutdown.
pub struct Runner<W: Work> {
    work: Arc<W>,
    spec: StageSpec,
    kafka: KafkaSettings,
    loop_settings: StageSettings,
    names: Names,
    retry_topics: Vec<String>,
    dlq: String,
    policy: RetryPolicy,
    fault: FaultPlan,
    readiness: crate::telemetry::endpoint::Readiness,
    /// This runner's incarnation ([`instance`]).
    incarnation: u64,
}

impl<W: Work> Runner<W> {
    /// A runner of `work` as described by `spec`.
    pub fn new(
        work: W,
        spec: StageSpec,
        kafka: &KafkaSettings,
        loop_settings: StageSettings,
        names: Names,
        policy: RetryPolicy,
    ) -> Runner<W> {
        let adapter = work.adapter().to_string();
        Runner {
            retry_topics: (1..=policy.tiers())
                .map(|n| names.retry(&adapter, spec.stage, n))
                .collect(),
            dlq: names.dlq(&adapter, spec.stage),
            work: Arc::new(work),
            spec,
            kafka: kafka.clone(),
            loop_settings,
            names,
            policy,
            fault: FaultPlan::from_env(),
            readiness: crate::telemetry::endpoint::Readiness::new(false),
            incarnation: instance::incarnation(),
        }
    }

    /// Reports on `readiness` whether a session is live (joined; stores restore as partitions
    /// come).
    pub fn with_readiness(mut self, readiness: crate::telemetry::endpoint::Readiness) -> Runner<W> {
        self.readiness = readiness;
        self
    }

    /// Injects `fault` (tests; see [`fault`]).
    pub fn with_fault(mut self, fault: FaultPlan) -> Runner<W> {
        self.fault = fault;
        self
    }

    /// The stage's work.
    pub fn work(&self) -> &W {
        &self.work
    }

    fn adapter(&self) -> &str {
        self.work.adapter()
    }

    /// Runs until `shutdown` turns true; every batch in flight is finished first. Fatal errors
    /// rejoin with a fresh consumer and producer instead of returning; only a newer process of the
    /// same instance ends the run early ([`StageError::Superseded`]).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<Counts, StageError> {
        let mut counts = Counts::default();
        let stage = self.spec.stage.as_str();
        let mut fences = instance::Fences::default();
        while !*shutdown.borrow() {
            match session::run(self, &mut shutdown, &mut counts).await {
                Ok(()) => break,
                Err(e) => {
                    let instance = self.loop_settings.instance_id.clone();
                    let by = match &e {
                        e if e.is_fenced() && !self.loop_settings.static_membership => {
                            self.newer_member().await
                        }
                        // A static member's entry keeps its first client id when another
                        // process takes it over, so the member list tells nothing there: two
                        // processes fence each other in turn, and the first fenced twice within
                        // the window, its producer once at least, stops (instance::Fences).
                        e if e.is_fenced() || matches!(e, SessionError::InstanceFenced(_)) => {
                            let fence = if e.is_fenced() {
                                instance::Fence::Producer
                            } else {
                                instance::Fence::Consumer
                            };
                            fences.fenced(fence, std::time::Instant::now()).then(|| {
                                format!(
                                    "another process of this instance (fenced twice within {:?}, \
                                     its producer too)",
                                    instance::FENCED_TWICE
                                )
                            })
                        }
                        _ => None,
                    };
                    if let Some(by) = by {
                        tracing::error!(adapter = self.adapter(), stage, %instance, newer = %by,
                            error = %e, "fenced by another process of the same instance; stopping");
                        return Err(StageError::Superseded { instance, by });
                    }
                    counts.rejoins += 1;
                    ::metrics::counter!(self.spec.metrics.fencings, "adapter" => self.adapter().to_string())
                        .increment(1);
                    warn!(adapter = self.adapter(), stage, error = %e, "session ended; rejoining with a new consumer and producer");
                    tokio::select! {
                        () = tokio::time::sleep(BACKOFF) => {},
                        _ = shutdown.changed() => {},
                    }
                }
            }
        }
        info!(adapter = self.adapter(), stage, ?counts, "stage stopped");
        Ok(counts)
    }

    /// The client id of a newer process's member of this instance, if one joins within
    /// [`instance::LOOK_FOR`]; a failed look-up counts as none (the session rejoins).
    async fn newer_member(&self) -> Option<String> {
        let stage = self.spec.stage.as_str();
        let group = self.names.group(self.adapter(), self.spec.stage);
        let prefix = instance::member_prefix(
            &self.kafka.client_id,
            self.adapter(),
            stage,
            &self.loop_settings.instance_id,
        );
        let (kafka, ours) = (self.kafka.clone(), self.incarnation);
        tokio::task::spawn_blocking(move || instance::newer_member(&kafka, &group, &prefix, ours))
            .await
            .ok()?
            .unwrap_or_else(|e| {
                warn!(error = %e, "could not list the group's members");
                None
            })
    }
}
