//! One session of a stage: a (transactional) producer and a consumer, from joining the group until
//! shutdown or a fatal error. See the invariants of the [`stage`](super) module.

mod inflight;
mod positions;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::commit::{self, BatchCx, Failure, Pending, Routed, changelog_outs};
use super::committer::{Committer, Gate};
use super::context::StageContext;
use super::{BACKOFF, BatchError, Counts, Due, Runner, SessionError, Work};
use crate::config::Guarantee;
use crate::dedupe::Store;
use crate::kafka::client::{self, Isolation, StartAt};
use crate::kafka::txn::{OffsetTracker, TxProducer};
use crate::model::event::now_ms;
use crate::model::headers::{ErrorClass, ErrorEnvelope};
use inflight::{AfterCommit, Committed, InFlight};
use positions::first_offsets;

/// How often librdkafka reports statistics (lag) to the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How long the loop waits for a first record before it looks at shutdown and paused partitions.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often the DLQ depth gauge is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(30);
/// How often expired store entries are tombstoned, and how many per transaction at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_LIMIT: usize = 1_000;

type StageConsumer = StreamConsumer<StageContext>;

struct Session<'r, W: Work> {
    r: &'r Runner<W>,
    consumer: Arc<StageConsumer>,
    tx: Option<TxProducer>,
    plain: Option<FutureProducer>,
    store: Store<W::Entry>,
    /// Paused partitions and when they are due (epoch ms).
    paused: HashMap<(String, i32), i64>,
    epoch: u64,
    batch_no: u64,
    last_sweep: Instant,
    last_depth: Option<Instant>,
    /// Records collected with header names rdkafka cannot read (dropped): how many, per record.
    unreadable: HashMap<(String, i32, i64), usize>,
    /// The thread transactions commit on (transactional sessions).
    committer: Option<Committer>,
    /// The batch whose transaction is committing.
    inflight: Option<InFlight<W::Entry>>,
    /// Where to rewind partitions of a batch whose transaction failed in flight.
    redo: BTreeMap<(String, i32), i64>,
}

/// Runs one session until shutdown (Ok) or a fatal error (Err: the caller rejoins).
pub(super) async fn run<W: Work>(
    r: &Runner<W>,
    shutdown: &mut watch::Receiver<bool>,
    counts: &mut Counts,
) -> Result<(), SessionError> {
    let adapter = r.adapter().to_string();
    let stage = r.spec.stage;
    let role = format!("{adapter}.{stage}");
    let instance = &r.loop_settings.instance_id;
    // The producer first: initialising it fences a previous incarnation of this instance and
    // aborts its open transaction before this one reads anything.
    let (tx, plain, committer) = match r.loop_settings.guarantee {
        Guarantee::ExactlyOnce => {
            let id = r.names.transactional_id(&adapter, stage, instance);
            let nice = r.loop_settings.helper_nice;
            let tx = TxProducer::init_lowered(&r.kafka, &role, &id, nice).await?;
            let committer = Committer::start(&role, nice).map_err(|e| {
                warn!(error = %e, "could not start the committer thread");
                SessionError::CommitterLost
            })?;
            (Some(tx), None, Some(committer))
        }
        Guarantee::AtLeastOnce => {
            let config = client::producer(&r.kafka, &role);
            let p: FutureProducer =
                crate::priority::lowered(r.loop_settings.helper_nice, || config.create())?;
            (None, Some(p), None)
        }
    };
    let consumer = consumer(r, committer.as_ref().map(Committer::gate))?;
    let mut s = Session {
        r,
        consumer,
        tx,
        plain,
        store: Store::new(r.spec.ttl),
        paused: HashMap::new(),
        epoch: 0,
        batch_no: 0,
        last_sweep: Instant::now(),
        last_depth: None,
        unreadable: HashMap::new(),
        committer,
        inflight: None,
        redo: BTreeMap::new(),
    };
    r.readiness.set(true);
    let mut result = s.run(shutdown, counts).await;
    // The batch in flight is finished whatever ended the session, so that the store and the
    // checkpoints below reflect it.
    let settled = s.settle(counts, &mut Vec::new()).await;
    if result.is_ok() {
        result = settled;
    }
    r.readiness.set(false);
    // The state reflects what was committed, whatever ended the session.
    let all: Vec<i32> = s.store.partitions().into_iter().collect();
    s.checkpoint(&all).await;
    // Leave the group now (dynamic membership), rather than after the session timeout; the
    // consumer is closed when the session drops it.
    s.consumer.unsubscribe();
    result
}

fn consumer<W: Work>(
    r: &Runner<W>,
    gate: Option<Arc<Gate>>,
) -> Result<Arc<StageConsumer>, KafkaError> {
    let adapter = r.adapter();
    let stage = r.spec.stage;
    let group = r.names.group(adapter, stage);
    let instance = &r.loop_settings.instance_id;
    // The instance and the incarnation in the client id name the member in the group's member
    // list (super::instance).
    let role = super::instance::role(adapter, stage.as_str(), instance, r.incarnation);
    let mut config = client::consumer(
        &r.kafka,
        &role,
        &group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    );
    if r.loop_settings.static_membership {
        let member = r.names.static_member(adapter, stage, instance);
        config = client::with_static_membership(config, &member);
    }
    let config = client::with_statistics(config, STATS_INTERVAL);
    let context = StageContext {
        adapter: adapter.to_string(),
        instance: instance.to_string(),
        stage,
        metrics: r.spec.metrics,
        epoch: AtomicU64::new(0),
        touched: Mutex::new(HashSet::new()),
        gate,
    };
    let consumer: StageConsumer = crate::priority::lowered(r.loop_settings.helper_nice, || {
        config.create_with_context(context)
    })?;
    let topics: Vec<&str> = r
        .spec
        .inputs
        .iter()
        .chain(&r.retry_topics)
        .map(String::as_str)
        .collect();
    consumer.subscribe(&topics)?;
    Ok(Arc::new(consumer))
}

impl<W: Work> Session<'_, W> {
    async fn run(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        counts: &mut Counts,
    ) -> Result<(), SessionError> {
        let adapter = self.r.adapter().to_string();
        while !*shutdown.borrow() {
            self.resume_due()?;
            self.refresh_dlq_depth();
            let started = Instant::now();
            let mut batch = self.collect().await?;
            counts.time.collecting += started.elapsed();
            let epoch = self.consumer.context().epoch();
            if epoch != self.epoch {
                // The store follows the assignment only with the batch in flight in it.
                self.settle(counts, &mut batch).await?;
                self.epoch = epoch;
                let touched = self.consumer.context().take_touched();
                let (keep, dropped): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .partition(|m| !touched.contains(&(m.topic().to_string(), m.partition())));
                batch = keep;
                self.sync_assignment().await?;
                self.rewind(&dropped, true).await?;
            }
            if batch.is_empty() {
                // Idle: the batch in flight is finished once it committed; until then the loop
                // keeps polling (a revoke waits for it in the callback).
                if self.inflight.as_mut().is_some_and(InFlight::is_done) {
                    self.settle(counts, &mut batch).await?;
                }
                continue;
            }
            counts.begun += 1;
            self.batch_no = counts.begun;
            match self.batch(&batch, counts).await {
                Ok(()) => {}
                Err(BatchError::Transient(reason)) => {
                    warn!(adapter, %reason, "transient failure; redoing the batch after a pause");
                    self.rewind(&batch, false).await?;
                    self.redo_inflight().await?;
                    tokio::time::sleep(BACKOFF).await;
                }
                Err(BatchError::Aborted(e)) => {
                    self.aborted(counts, &e);
                    self.rewind(&batch, false).await?;
                    self.redo_inflight().await?;
                }
                Err(BatchError::Fatal(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every [`DEPTH_EVERY`], in the background: the dead letters not yet replayed (beyond the
    /// replay group's committed offsets) as a gauge.
    fn refresh_dlq_depth(&mut self) {
        if self.last_depth.is_some_and(|t| t.elapsed() < DEPTH_EVERY) {
            return;
        }
        self.last_depth = Some(Instant::now());
        let r = self.r;
        let (kafka, adapter, stage) = (r.kafka.clone(), r.adapter().to_string(), r.spec.stage);
        let group = r.names.replay_group(&adapter, stage);
        let dlq = r.dlq.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(depth) = crate::kafka::admin::group_lag(&kafka, &group, &[dlq]) {
                ::metrics::gauge!(crate::telemetry::metrics::DLQ_DEPTH, "adapter" => adapter,
                    "stage" => stage.as_str())
                .set(depth as f64);
            }
        });
    }

    /// Collects up to `batch_max_records` records, for at most `batch_max` after the first one,
    /// and, with a `batch_linger`, only while the next record comes within the linger or the
    /// batch before it is still committing: a batch closes once its predecessor committed and
    /// the records stopped coming, so light traffic goes at once, one transaction in flight at
    /// a time, and heavy traffic fills batches.
    async fn collect(&mut self) -> Result<Vec<OwnedMessage>, SessionError> {
        let settings = &self.r.loop_settings;
        let mut batch = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        while batch.len() < settings.batch_max_records {
            // A record already fetched is taken at once, without a timer: the timed wait below
            // would take it as well (a time-out polls its future first), for two clock reads and
            // a timer a record.
            let got = match self.consumer.recv().now_or_never() {
                Some(got) => Ok(got),
                None => {
                    let committing = self.inflight.as_mut().is_some_and(|f| !f.is_done());
                    let wait = match deadline {
                        None => IDLE_POLL,
                        Some(d) => {
                            let left = d.saturating_duration_since(tokio::time::Instant::now());
                            match settings.batch_linger {
                                Some(l) if !committing => l.min(left),
                                _ => left,
                            }
                        }
                    };
                    let next = tokio::time::timeout(wait, self.consumer.recv());
                    match self.inflight.as_mut() {
                        Some(f)
                            if committing
                                && deadline.is_some()
                                && settings.batch_linger.is_some() =>
                        {
                            tokio::select! {
                                biased;
                                got = next => got,
                                // The batch before committed: from now on the linger counts.
                                () = f.done() => continue,
                            }
                        }
                        _ => next.await,
                    }
                }
            };
            match got {
                Err(_) => break,
                Ok(Ok(m)) => {
                    let (m, dropped) = crate::kafka::headers::readable(m.detach());
                    if dropped > 0 {
                        self.unreadable
                            .insert((m.topic().to_string(), m.partition(), m.offset()), dropped);
                    }
                    batch.push(m);
                    deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + settings.batch_max);
                }
                Ok(Err(e)) => {
                    // A fatal error carries the underlying code (`FencedInstanceId`), not
                    // `Fatal`: the client is asked, since a consumer in that state never
                    // delivers again and the session would spin idle.
                    match self.consumer.client().fatal_error() {
                        // Static membership: a consumer joined with this instance's
                        // group.instance.id (another process, or librdkafka's own rejoin after a
                        // session timeout).
                        Some((rdkafka::types::RDKafkaErrorCode::FencedInstanceId, reason)) => {
                            return Err(SessionError::InstanceFenced(reason));
                        }
                        Some(_) => return Err(e.into()),
                        None => {}
                    }
                    debug!(error = %e, "consumer error (librdkafka retries)");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Brings the store in line with the assignment: restores partitions newly owned, drops those
    /// no longer owned, and forgets pauses of partitions that left.
    async fn sync_assignment(&mut self) -> Result<(), SessionError> {
        let owned = self.assigned()?;
        self.paused.retain(|tp, _| owned.contains(tp));
        // librdkafka keeps an application pause on a partition across its revocation and a later
        // assignment, but this session forgot the pause when the partition left: nothing would
        // ever resume it. Every owned partition not paused on purpose is resumed (a no-op for
        // those not paused); its not-yet-due record, read again, pauses it again until it is due.
        let mut unpaused = TopicPartitionList::new();
        for (topic, partition) in owned.iter().filter(|tp| !self.paused.contains_key(*tp)) {
            unpaused.add_partition(topic, *partition);
        }
        self.consumer.resume(&unpaused)?;
        let wanted: HashSet<i32> = owned.iter().map(|(_, p)| *p).collect();
        let have = self.store.partitions();
        let gone: Vec<i32> = have.difference(&wanted).copied().collect();
        self.checkpoint(&gone).await;
        let missing: Vec<i32> = wanted.difference(&have).copied().collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.restore(missing).await
    }

    async fn batch(
        &mut self,
        batch: &[OwnedMessage],
        counts: &mut Counts,
    ) -> Result<(), BatchError> {
        let r = self.r;
        let now = now_ms();
        // Due records only: a retry record whose time has not come pauses its partition there.
        let mut due = Vec::with_capacity(batch.len());
        let mut paused_now: HashSet<(String, i32)> = HashSet::new();
        // Records of a partition paused by an earlier batch that were fetched before the pause:
        // not handled now, so their partition is rewound to the first of them.
        let mut fetched_while_paused: BTreeMap<(String, i32), i64> = BTreeMap::new();
        // Records whose headers could not all be read: dead-lettered by the stage itself.
        let mut unreadable: Vec<(&OwnedMessage, usize)> = Vec::new();
        // The (topic, partition) keys below are built only when a map holds anything: most
        // batches pause nothing and read every header, and a String per record adds up.
        let tp_of = |m: &OwnedMessage| (m.topic().to_string(), m.partition());
        for m in batch {
            if !paused_now.is_empty() && paused_now.contains(&tp_of(m)) {
                continue;
            }
            if !self.paused.is_empty() && self.paused.contains_key(&tp_of(m)) {
                let first = fetched_while_paused.entry(tp_of(m)).or_insert(m.offset());
                *first = (*first).min(m.offset());
                continue;
            }
            if !self.unreadable.is_empty()
                && let Some(dropped) =
                    self.unreadable
                        .remove(&(m.topic().to_string(), m.partition(), m.offset()))
            {
                unreadable.push((m, dropped));
                continue;
            }
            let envelope = if r.retry_topics.iter().any(|t| t == m.topic()) {
                ErrorEnvelope::read(m.headers())
            } else {
                None
            };
            if let Some(env) = &envelope
                && env.not_before > now
            {
                let tp = tp_of(m);
                self.pause(std::slice::from_ref(&tp), env.not_before)
                    .map_err(|e| BatchError::Fatal(e.into()))?;
                self.rewind(std::slice::from_ref(m), false).await?;
                paused_now.insert(tp);
                continue;
            }
            due.push(Due { msg: m, envelope });
        }
        self.seek(fetched_while_paused, false).await?;
        if due.is_empty() && unreadable.is_empty() {
            return Ok(());
        }

        // Phase 1, outside any transaction: the stage's work, while the batch before it may still
        // be committing (its changes seen through the store view).
        let overlaps = r.work.overlaps_commit();
        if !overlaps {
            self.finish(counts).await?;
        }
        let mut cx = BatchCx {
            store: &mut self.store,
            pending: self.inflight.as_ref().map(|f| &f.pending),
            tx: self.tx.as_ref(),
            changelog: &r.spec.changelog,
            names: &r.names,
            adapter: r.adapter(),
            stage: r.spec.stage,
            policy: &r.policy,
            dlq: &r.dlq,
            fault: r.fault,
            batch_no: self.batch_no,
            now,
        };
        let started = Instant::now();
        let handled = r.work.handle(&due, &mut cx).await;
        counts.time.handling += started.elapsed();
        let mut handled = handled?;
        // The work's check before the commit starts now, on the committer's runtime, and runs
        // while the batch before this one commits (super::precondition). At-least-once runs it
        // before writing.
        let mut precondition = handled.precondition.take();
        let check = match &self.committer {
            Some(c) => precondition.take().map(|p| p.start(c.runtime())),
            None => None,
        };
        for (m, dropped) in &unreadable {
            let message = format!(
                "{dropped} header name(s) are not UTF-8; rdkafka cannot read them, so they were dropped"
            );
            let failure = Failure {
                class: ErrorClass::Decode,
                message: &message,
                retry_after: None,
                correlation_id: None,
                http_status: None,
            };
            match cx.fail(m, None, failure) {
                Routed::Retry(out) | Routed::DeadLetter(out) => handled.outs.push(out),
            }
            handled.tally.dlq += 1;
        }

        // Offsets: past every due record, but no further than a partition's first deferred one.
        let mut first_deferred: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, partition, offset) in &handled.deferred {
            let e = first_deferred
                .entry((topic.clone(), *partition))
                .or_insert(*offset);
            *e = (*e).min(*offset);
        }
        let mut tracker = OffsetTracker::new();
        for (m, _) in &unreadable {
            tracker.consumed(*m);
        }
        for d in &due {
            let limit = match first_deferred.is_empty() {
                true => None,
                false => first_deferred.get(&tp_of(d.msg)),
            };
            if limit.is_none_or(|first| d.msg.offset() < *first) {
                tracker.consumed(d.msg);
            }
        }

        // One transaction at a time: the batch before this one commits first, and its changes
        // reach the store (if it failed, this batch is redone with it).
        self.finish(counts).await?;
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            // Not a key this batch writes again (expired, then seen anew): its tombstone would
            // follow the new entry and erase it.
            let written = Pending::of(&handled.changes);
            let expired = self.store.expired(now, SWEEP_LIMIT)?;
            handled.changes.extend(expired.into_iter().filter(|c| {
                let (partition, key, _) = c.parts();
                !written.has(partition, key)
            }));
        }
        if tracker.is_empty() && handled.outs.is_empty() && handled.changes.is_empty() {
            // Nothing consumed nor written (everything deferred): only rewind and pause.
            return self
                .after_commit(first_deferred, handled.pause_all_until)
                .await;
        }
        let mut outs = std::mem::take(&mut handled.outs);
        outs.extend(changelog_outs(&r.spec.changelog, &handled.changes));
        let offsets = tracker.take().map_err(|e| BatchError::Fatal(e.into()))?;
        // A batch that defers or pauses is finished before the next poll, which must read from
        // where it rewound.
        let settle_now =
            !overlaps || !first_deferred.is_empty() || handled.pause_all_until.is_some();
        let after = AfterCommit {
            changes: handled.changes,
            tally: handled.tally,
            first_deferred,
            pause_all_until: handled.pause_all_until,
            batch_no: self.batch_no,
        };

        // Phase 2: write it all, with the offsets, atomically (or, at-least-once, write then commit).
        match (&self.tx, &self.plain) {
            (Some(tx), _) => {
                let tx = tx.clone();
                self.submit(&tx, outs, offsets, check, after, first_offsets(batch))?;
                if settle_now {
                    self.finish(counts).await?;
                }
                Ok(())
            }
            // Benchmarks only: the store's offsets stay where the restore left them (an offset
            // too low only makes a checkpoint's catch-up longer).
            (None, Some(plain)) => {
                let started = Instant::now();
                if let Some(p) = precondition {
                    p.holds().await?;
                }
                commit::at_least_once(plain, Arc::clone(&self.consumer), &outs, offsets).await?;
                let committed = Committed {
                    changelog_at: Vec::new(),
                    took: started.elapsed(),
                };
                self.complete(after, committed, counts).await
            }
            (None, None) => Err(BatchError::Aborted("no producer".into())),
        }
    }

    /// Rewinds partitions to their first deferred record and pauses everything when asked.
    async fn after_commit(
        &mut self,
        first_deferred: BTreeMap<(String, i32), i64>,
        pause_all_until: Option<i64>,
    ) -> Result<(), BatchError> {
        if let Some(until) = pause_all_until {
            let all: Vec<(String, i32)> = self
                .assigned()
                .map_err(|e| BatchError::Fatal(e.into()))?
                .into_iter()
                .collect();
            self.pause(&all, until)
                .map_err(|e| BatchError::Fatal(e.into()))?;
        }
        self.seek(first_deferred, true).await?;
        Ok(())
    }
}
