//! The batch in flight: handed to the committer ([`super::super::committer`]) while the loop
//! collects and handles the next one, and finished ([`Session::finish`]) before the next
//! transaction begins, before the store follows a rebalance, and when the loop idles or ends.
//!
//! Invariants:
//! - A batch's store changes reach the store only once its transaction committed; until then the
//!   next batch sees them through its [`StoreView`](super::super::commit::StoreView).
//! - A batch is sent only after the batch before it committed. If that one failed, both are
//!   redone: the later batch's partitions are rewound by the caller, then the failed batch's
//!   partitions to their first record ([`Session::redo_inflight`]), so nothing of either is
//!   skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::message::OwnedMessage;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

use super::{Session, StageConsumer};
use crate::dedupe::Change;
use crate::kafka::txn::TxProducer;
use crate::stage::commit::{self, Out, Pending};
use crate::stage::fault::{self, FaultPlan, Point};
use crate::stage::precondition::Started;
use crate::stage::{BatchError, Counts, SessionError, Tally, Work};

/// What is left to do for a batch once its transaction committed.
#[derive(Debug)]
pub(super) struct AfterCommit<E> {
    /// Store changes, applied after the commit.
    pub(super) changes: Vec<Change<E>>,
    pub(super) tally: Tally,
    /// Each partition's first deferred record, which it is rewound to.
    pub(super) first_deferred: BTreeMap<(String, i32), i64>,
    pub(super) pause_all_until: Option<i64>,
    pub(super) batch_no: u64,
}

/// A committed transaction: the changelog records' (partition, offset), and how long it took.
#[derive(Debug)]
pub(super) struct Committed {
    pub(super) changelog_at: Vec<(i32, i64)>,
    pub(super) took: Duration,
}

type Outcome = Result<Committed, BatchError>;

/// A batch whose transaction is in the committer's hands.
pub(super) struct InFlight<E> {
    reply: oneshot::Receiver<Outcome>,
    outcome: Option<Outcome>,
    /// Its store changes, for the next batch's view.
    pub(super) pending: Pending<E>,
    after: AfterCommit<E>,
    /// Each partition's first record of the batch, where it is redone from if it failed.
    redo_from: BTreeMap<(String, i32), i64>,
}

impl<E> InFlight<E> {
    /// Waits until the outcome is known (cancel-safe: the outcome is kept).
    pub(super) async fn done(&mut self) {
        if self.outcome.is_none() {
            let outcome = (&mut self.reply)
                .await
                .unwrap_or(Err(BatchError::Fatal(SessionError::CommitterLost)));
            self.outcome = Some(outcome);
        }
    }

    /// Whether the outcome is known (looks without waiting).
    pub(super) fn is_done(&mut self) -> bool {
        if self.outcome.is_none() {
            match self.reply.try_recv() {
                Ok(outcome) => self.outcome = Some(outcome),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.outcome = Some(Err(BatchError::Fatal(SessionError::CommitterLost)));
                }
            }
        }
        self.outcome.is_some()
    }
}

/// The transaction of a batch, as a job for the committer.
#[allow(clippy::too_many_arguments)] // one batch's parts, moved in
async fn transaction(
    tx: TxProducer,
    consumer: Arc<StageConsumer>,
    mut outs: Vec<Out>,
    attempts: usize,
    offsets: TopicPartitionList,
    precondition: Option<Started>,
    fault: FaultPlan,
    batch_no: u64,
    labels: (String, &'static str),
    changelog: String,
) -> Outcome {
    let started = Instant::now();
    if fault.hit(Point::TransactionDelayed, batch_no) {
        tokio::time::sleep(fault::DELAY).await;
    }
    let at = commit::transactional(
        &tx,
        consumer.as_ref(),
        &mut outs,
        attempts,
        &offsets,
        precondition,
        &fault,
        batch_no,
        (&labels.0, labels.1),
    )
    .await?;
    let changelog_at = outs
        .iter()
        .zip(at)
        .filter(|(o, _)| o.topic == changelog)
        .map(|(_, at)| at)
        .collect();
    Ok(Committed {
        changelog_at,
        took: started.elapsed(),
    })
}

impl<W: Work> Session<'_, W> {
    /// Hands a batch's outputs and offsets to the committer; the batch is in flight until
    /// [`Session::finish`].
    pub(super) fn submit(
        &mut self,
        tx: &TxProducer,
        outs: Vec<Out>,
        offsets: TopicPartitionList,
        precondition: Option<Started>,
        after: AfterCommit<W::Entry>,
        redo_from: BTreeMap<(String, i32), i64>,
    ) -> Result<(), BatchError> {
        debug_assert!(self.inflight.is_none(), "one transaction at a time");
        let r = self.r;
        let Some(committer) = &self.committer else {
            return Err(BatchError::Fatal(SessionError::CommitterLost));
        };
        let job = transaction(
            tx.clone(),
            Arc::clone(&self.consumer),
            outs,
            r.work.commit_attempts(),
            offsets,
            precondition,
            r.fault,
            after.batch_no,
            (r.adapter().to_string(), r.spec.stage.as_str()),
            r.spec.changelog.clone(),
        );
        self.inflight = Some(InFlight {
            reply: committer.submit(job),
            outcome: None,
            pending: Pending::of(&after.changes),
            after,
            redo_from,
        });
        Ok(())
    }

    /// Waits for the batch in flight, if any, and finishes it. When its transaction failed, the
    /// error is returned and where to redo it from is kept for [`Session::redo_inflight`].
    pub(super) async fn finish(&mut self, counts: &mut Counts) -> Result<(), BatchError> {
        let Some(mut f) = self.inflight.take() else {
            return Ok(());
        };
        let started = Instant::now();
        f.done().await;
        counts.time.waiting += started.elapsed();
        match f.outcome.take() {
            Some(Ok(committed)) => self.complete(f.after, committed, counts).await,
            Some(Err(e)) => {
                for (tp, offset) in f.redo_from {
                    let first = self.redo.entry(tp).or_insert(offset);
                    *first = (*first).min(offset);
                }
                Err(e)
            }
            None => Err(BatchError::Fatal(SessionError::CommitterLost)),
        }
    }

    /// Rewinds the partitions of a batch whose transaction failed in flight to its first records
    /// (those still owned). Called after the caller rewound its own batch, whose records come
    /// later.
    pub(super) async fn redo_inflight(&mut self) -> Result<(), SessionError> {
        let redo = std::mem::take(&mut self.redo);
        self.seek(redo, true).await
    }

    /// Finishes the batch in flight before the loop handles `collected` (or idles with none, or
    /// the session ends): a failed transaction is counted and its batch redone, and `collected`,
    /// which came after it, is rewound and emptied.
    pub(super) async fn settle(
        &mut self,
        counts: &mut Counts,
        collected: &mut Vec<OwnedMessage>,
    ) -> Result<(), SessionError> {
        match self.finish(counts).await {
            Ok(()) => Ok(()),
            Err(BatchError::Fatal(e)) => Err(e),
            Err(BatchError::Aborted(e) | BatchError::Transient(e)) => {
                self.aborted(counts, &e);
                self.rewind(collected, true).await?;
                collected.clear();
                self.redo_inflight().await
            }
        }
    }

    /// Counts an aborted transaction whose batch is redone.
    pub(super) fn aborted(&self, counts: &mut Counts, error: &str) {
        counts.aborts += 1;
        ::metrics::counter!(self.r.spec.metrics.aborts, "adapter" => self.r.adapter().to_string())
            .increment(1);
        warn!(
            adapter = self.r.adapter(),
            error, "transaction aborted; redoing the batch"
        );
    }

    /// A batch's transaction committed: its changes into the store, its counts, its deferred
    /// records rewound and the pause it asked for.
    pub(super) async fn complete(
        &mut self,
        after: AfterCommit<W::Entry>,
        committed: Committed,
        counts: &mut Counts,
    ) -> Result<(), BatchError> {
        let r = self.r;
        let adapter = r.adapter().to_string();
        ::metrics::histogram!(r.spec.metrics.commit_seconds, "adapter" => adapter.clone())
            .record(committed.took.as_secs_f64());
        if r.fault.hit(Point::CrashAfterCommit, after.batch_no) {
            std::process::abort();
        }
        self.store.apply(&after.changes, &committed.changelog_at)?;
        for (outcome, n) in after.tally.outcomes() {
            if n > 0 {
                ::metrics::counter!(r.spec.metrics.records, "adapter" => adapter.clone(), "outcome" => outcome)
                    .increment(n);
            }
        }
        counts.tally.add(&after.tally);
        counts.batches += 1;
        self.after_commit(after.first_deferred, after.pause_all_until)
            .await
    }
}
