//! `onceflow replay --adapter A --stage process|deliver`: dead letters copied back into that
//! adapter's pipeline, and only that adapter's, by the replay group `<ns>.<adapter>.<stage>.replay`
//! reading the stage's DLQ from its committed offsets (positioned with `offsets reset`, or by
//! `--from`/`--to` bounds given directly).
//!
//! Invariants:
//! - A selected record is copied to the stage's first retry tier (`…<stage>.retry.1`), which only
//!   that adapter's stage reads, at the dead letter's partition number (its origin's, so its
//!   dedupe or ledger partition is the same), with its key, value bytes and own headers unchanged,
//!   its envelope's `not_before` set to now (due at once) and its attempt count kept (failing
//!   again, it goes back to the DLQ), and `onceflow.replay.of`, `.reason`, `.at` replaced.
//! - The copies, the replay group's offsets (with its group metadata: a second replay of the same
//!   DLQ fences the first) and an audit record of the batch are ONE transaction: a replay killed
//!   half-way and started again continues after the last committed batch and never doubles nor
//!   skips a record.
//! - A dry run joins no group, commits nothing, writes nothing: it counts what would be copied.
//! - Records not selected stay in the DLQ (a topic is never rewritten); the replay group moves
//!   past them, like any consumer, so a later replay of them starts from an `offsets reset`. An
//!   explicit `--from` bound (or a one-record replay) may re-read older records, but the group's
//!   offsets never move back.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;

use super::audit::AuditRecord;
use super::dlq::{DeadLetter, Filter};
use crate::codec::AvroCodec;
use crate::config::Settings;
use crate::kafka::client::{self, Isolation, StartAt};
use crate::kafka::names::{Names, Stage};
use crate::kafka::scan::Range;
use crate::kafka::txn::{TxError, TxProducer, group_metadata};
use crate::model::event::now_ms;
use crate::model::headers::{ErrorEnvelope, name};
use crate::stage::fault::{FaultPlan, Point};
use crate::telemetry::metrics;

/// How long a replay waits for its group assignment.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A client call failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A transactional call failed; the batch in flight was not committed (run the replay
    /// again: it continues from the last committed batch).
    #[error(transparent)]
    Tx(#[from] TxError),
    /// `--execute` without `--reason`.
    #[error("an executed replay needs a reason (--reason \"...\")")]
    NoReason,
    /// The replay group got no partitions (another replay of this DLQ holds them).
    #[error(
        "the replay group {0} got no partitions within {JOIN_WAIT:?}; is another replay of this DLQ running?"
    )]
    NoAssignment(String),
    /// The codec could not be built.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// A blocking task failed.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Where a replay starts or stops in every partition of the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Bound {
    /// This offset.
    Offset(i64),
    /// The first record at or after this time (epoch ms).
    Time(i64),
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    /// The adapter.
    pub adapter: String,
    /// The stage whose DLQ is replayed.
    pub stage: Stage,
    /// Which dead letters; its partitions are the only ones read and committed (all when `None`);
    /// its offset bounds are ignored (use `from`/`to`).
    pub filter: Filter,
    /// Start here instead of the replay group's committed offsets.
    pub from: Option<Bound>,
    /// Stop here instead of the DLQ's end as of the start.
    pub to: Option<Bound>,
    /// Copy, or only count (the default).
    pub execute: bool,
    /// Why (required to execute).
    pub reason: Option<String>,
    /// Who.
    pub operator: String,
    /// Records per transaction.
    pub batch: usize,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Nothing was written.
    pub dry_run: bool,
    /// The DLQ read.
    pub dlq: String,
    /// Where copies went.
    pub target: String,
    /// Dead letters read.
    pub scanned: u64,
    /// Selected (copied, or to be copied).
    pub selected: u64,
    /// Selected, by `class: reason`.
    pub by_reason: BTreeMap<String, u64>,
    /// Transactions committed.
    pub transactions: u64,
}

/// Progress of a running replay: (records read, records to read).
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Runs `spec` (see the module invariants).
pub async fn run(
    settings: &Settings,
    spec: &ReplaySpec,
    progress: Progress<'_>,
) -> Result<Summary, ReplayError> {
    if spec.execute && spec.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ReplayError::NoReason);
    }
    let names = Names::new(settings);
    let mut summary = Summary {
        dry_run: !spec.execute,
        dlq: names.dlq(&spec.adapter, spec.stage),
        target: names.retry(&spec.adapter, spec.stage, 1),
        ..Summary::default()
    };
    let codec = AvroCodec::new(&settings.registry)?;
    if spec.execute {
        execute(settings, &names, spec, &codec, &mut summary, progress).await?;
    } else {
        dry_run(settings, &names, spec, &codec, &mut summary, progress).await?;
    }
    Ok(summary)
}

/// Whether `d` is selected (the event-id filter decodes it).
async fn selected(filter: &Filter, codec: &AvroCodec, d: &DeadLetter) -> bool {
    if !filter.matches(d) {
        return false;
    }
    match &filter.event_id {
        None => true,
        Some(id) => super::dlq::preview(codec, d).await.event_id.as_deref() == Some(id.as_str()),
    }
}

/// An offset per partition.
type Offsets = BTreeMap<i32, i64>;

/// Where a replay starts and stops, and the replay group's committed offsets (never moved back).
struct Bounds {
    start: Offsets,
    end: Offsets,
    committed: Offsets,
}

/// Start (per partition) and end offsets of the DLQ for `spec`, the start taken from `committed`
/// where no bound is given (blocking).
fn bounds(
    settings: &Settings,
    group: &str,
    topic: &str,
    spec: &ReplaySpec,
) -> Result<Bounds, KafkaError> {
    let c: rdkafka::consumer::BaseConsumer = client::consumer(
        &settings.kafka,
        "replay.plan",
        group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let timeout = Duration::from_secs(30);
    let metadata = c.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut partitions = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            // A replay restricted to some partitions reads, and moves the group on, only those.
            if spec
                .filter
                .partitions
                .as_ref()
                .is_some_and(|ps| !ps.contains(&p.id()))
            {
                continue;
            }
            tpl.add_partition(topic, p.id());
            partitions.push(p.id());
        }
    }
    let committed = c.committed_offsets(tpl, timeout)?;
    let at_time = |ms: i64| -> Result<BTreeMap<i32, i64>, KafkaError> {
        let mut q = TopicPartitionList::new();
        for p in &partitions {
            q.add_partition_offset(topic, *p, Offset::Offset(ms))?;
        }
        let found = c.offsets_for_times(q, timeout)?;
        let mut out = BTreeMap::new();
        for e in found.elements() {
            let end = c.fetch_watermarks(topic, e.partition(), timeout)?.1;
            let o = match e.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => end,
            };
            out.insert(e.partition(), o);
        }
        Ok(out)
    };
    let mut start = BTreeMap::new();
    let mut end = BTreeMap::new();
    let mut committed_map = BTreeMap::new();
    let from_time = match spec.from {
        Some(Bound::Time(ms)) => Some(at_time(ms)?),
        _ => None,
    };
    let to_time = match spec.to {
        Some(Bound::Time(ms)) => Some(at_time(ms)?),
        _ => None,
    };
    for p in partitions {
        let (low, high) = c.fetch_watermarks(topic, p, timeout)?;
        let committed_at = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        if let Some(o) = committed_at {
            committed_map.insert(p, o);
        }
        let s = match spec.from {
            Some(Bound::Offset(o)) => o,
            Some(Bound::Time(_)) => from_time
                .as_ref()
                .and_then(|m| m.get(&p).copied())
                .unwrap_or(high),
            None => committed_at.unwrap_or(low),
        };
        let e = match spec.to {
            Some(Bound::Offset(o)) => o.min(high),
            Some(Bound::Time(_)) => to_time
                .as_ref()
                .and_then(|m| m.get(&p).copied())
                .unwrap_or(high),
            None => high,
        };
        start.insert(p, s.clamp(low, high));
        end.insert(p, e.max(low));
    }
    Ok(Bounds {
        start,
        end,
        committed: committed_map,
    })
}

fn total(start: &BTreeMap<i32, i64>, end: &BTreeMap<i32, i64>) -> u64 {
    start
        .iter()
        .map(|(p, s)| (end.get(p).copied().unwrap_or(*s) - s).max(0) as u64)
        .sum()
}

async fn dry_run(
    settings: &Settings,
    names: &Names,
    spec: &ReplaySpec,
    codec: &AvroCodec,
    summary: &mut Summary,
    progress: Progress<'_>,
) -> Result<(), ReplayError> {
    let group = names.replay_group(&spec.adapter, spec.stage);
    let (s, g, t, sp) = (settings.clone(), group, summary.dlq.clone(), spec.clone());
    let Bounds { start, end, .. } =
        tokio::task::spawn_blocking(move || bounds(&s, &g, &t, &sp)).await??;
    let want = total(&start, &end);
    let range = Range {
        partitions: spec.filter.partitions.clone(),
        from: start,
        from_all: None,
        from_time: None,
        to: None,
    };
    let (k, t) = (settings.kafka.clone(), summary.dlq.clone());
    let letters = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        crate::kafka::scan::scan(&k, &t, "onceflow.replay.dry-run", &range, |m| {
            if end.get(&m.partition()).is_some_and(|e| m.offset() < *e) {
                out.push(super::dlq::from_message(m));
            }
            true
        })
        .map(|()| out)
    })
    .await??;
    for d in &letters {
        summary.scanned += 1;
        if selected(&spec.filter, codec, d).await {
            summary.selected += 1;
            *summary.by_reason.entry(d.reason()).or_insert(0) += 1;
        }
        progress(summary.scanned, want);
    }
    Ok(())
}

/// The copy of dead letter `d` for `target`: same partition, key, value and own headers; the
/// envelope due now with its attempt count kept; the replay headers replaced.
fn copy(d: &DeadLetter, target: &str, reason: &str, now: i64) -> crate::stage::Out {
    let mut headers = OwnedHeaders::new();
    let replay = [name::REPLAY_OF, name::REPLAY_REASON, name::REPLAY_AT];
    let original = d.owned_headers();
    let envelope = ErrorEnvelope::read(Some(&original)).map(|mut e| {
        e.not_before = now;
        e
    });
    let base = match &envelope {
        Some(e) => e.headers_for(Some(&original)),
        None => original,
    };
    for h in base.iter().filter(|h| !replay.contains(&h.key)) {
        headers = headers.insert(Header {
            key: h.key,
            value: h.value,
        });
    }
    let at = now.to_string();
    let of = d.coordinates();
    for (key, value) in [
        (name::REPLAY_OF, of.as_str()),
        (name::REPLAY_REASON, reason),
        (name::REPLAY_AT, at.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    crate::stage::Out {
        topic: target.to_string(),
        partition: Some(d.partition),
        key: d.key.as_ref().map(|k| k.as_bytes().to_vec()),
        payload: d.value.clone(),
        headers: Some(headers),
    }
}

async fn execute(
    settings: &Settings,
    names: &Names,
    spec: &ReplaySpec,
    codec: &AvroCodec,
    summary: &mut Summary,
    progress: Progress<'_>,
) -> Result<(), ReplayError> {
    let reason = spec.reason.clone().unwrap_or_default();
    let group = names.replay_group(&spec.adapter, spec.stage);
    let role = format!("{}.{}.replay", spec.adapter, spec.stage);
    let tx = TxProducer::init(
        &settings.kafka,
        &role,
        &names.replay_transactional_id(&spec.adapter, spec.stage),
    )
    .await?;
    let (s, g, t, sp) = (
        settings.clone(),
        group.clone(),
        summary.dlq.clone(),
        spec.clone(),
    );
    let Bounds {
        start,
        end,
        committed,
    } = tokio::task::spawn_blocking(move || bounds(&s, &g, &t, &sp)).await??;
    let want = total(&start, &end);
    let consumer: StreamConsumer = client::consumer(
        &settings.kafka,
        &role,
        &group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    consumer.subscribe(&[summary.dlq.as_str()])?;
    // Join: poll until the group hands out the DLQ's partitions, then start where planned.
    let joined = Instant::now();
    while consumer.assignment()?.count() == 0 {
        if joined.elapsed() > JOIN_WAIT {
            return Err(ReplayError::NoAssignment(group));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    for (p, o) in &start {
        consumer.seek(
            &summary.dlq,
            *p,
            Offset::Offset(*o),
            Duration::from_secs(10),
        )?;
    }
    let mut open: HashSet<i32> = start
        .iter()
        .filter(|(p, s)| end.get(p).is_some_and(|e| *s < e))
        .map(|(p, _)| *p)
        .collect();
    let fault = FaultPlan::from_env();
    let audit_topic = names.audit();
    let mut batch_no = 0;
    while !open.is_empty() {
        // Collect one batch from the partitions still open.
        let mut batch: Vec<DeadLetter> = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while batch.len() < spec.batch.max(1) && !open.is_empty() && Instant::now() < deadline {
            let Ok(m) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            else {
                continue;
            };
            let Some(m) = crate::kafka::polled::record(&consumer, m)? else {
                continue;
            };
            let p = m.partition();
            if !open.contains(&p) {
                continue;
            }
            if end.get(&p).is_none_or(|e| m.offset() >= *e) {
                open.remove(&p);
                continue;
            }
            // An explicit bound may re-read older records; the group's offset never moves back.
            let after = (m.offset() + 1).max(committed.get(&p).copied().unwrap_or(0));
            next.insert(p, after);
            if end.get(&p).is_some_and(|e| m.offset() + 1 >= *e) {
                open.remove(&p);
            }
            batch.push(super::dlq::from_message(&m));
        }
        if next.is_empty() {
            // Nothing more arrived: the ends were markers or an open transaction holds the read.
            break;
        }
        batch_no += 1;
        let mut outs = Vec::new();
        let mut replayed = Vec::new();
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let now = now_ms();
        for d in &batch {
            summary.scanned += 1;
            if selected(&spec.filter, codec, d).await {
                outs.push(copy(d, &summary.target, &reason, now));
                replayed.push(d.coordinates());
                *reasons.entry(d.reason()).or_insert(0) += 1;
            }
        }
        for (r, n) in &reasons {
            *summary.by_reason.entry(r.clone()).or_insert(0) += n;
        }
        summary.selected += replayed.len() as u64;
        let skipped = batch.len() - replayed.len();
        if !replayed.is_empty() {
            let record = AuditRecord {
                at: now,
                operator: spec.operator.clone(),
                action: "replay".into(),
                target: format!("{}.{}", spec.adapter, spec.stage),
                reason: Some(reason.clone()),
                detail: json!({
                    "dlq": summary.dlq, "copied_to": summary.target, "replayed": replayed,
                    "count": replayed.len(), "skipped": skipped,
                    "filter": spec.filter, "reasons": reasons,
                }),
            };
            outs.push(record.out(&audit_topic));
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets.add_partition_offset(&summary.dlq, *p, Offset::Offset(*o))?;
        }
        tx.begin().await?;
        for o in &outs {
            tx.send(crate::stage::to_record(o))?;
        }
        let group_meta = group_metadata(&consumer)?;
        tx.send_offsets(offsets, group_meta).await?;
        tx.delivered().await?;
        tx.commit().await?;
        summary.transactions += 1;
        for (outcome, n) in [("replayed", replayed.len()), ("skipped", skipped)] {
            ::metrics::counter!(metrics::REPLAY_RECORDS, "adapter" => spec.adapter.clone(),
                "stage" => spec.stage.as_str(), "outcome" => outcome)
            .increment(n as u64);
        }
        if fault.hit(Point::CrashAfterCommit, batch_no) {
            std::process::abort();
        }
        progress(summary.scanned, want);
    }
    consumer.unsubscribe();
    Ok(())
}
