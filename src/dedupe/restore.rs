//! Restoring store partitions when they are assigned: from a local checkpoint or a file on disk
//! and the changelog's tail, or from the whole changelog (the invariants are in [`super`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{Backend, DiskError, Entry, InMemory, OnDisk, Partition, checkpoint};
use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A client call failed.
    #[error("restoring a changelog store: {0}")]
    Kafka(#[from] KafkaError),
    /// A store file could not be read or written.
    #[error("restoring a changelog store: {0}")]
    Disk(#[from] DiskError),
    /// The changelog did not become readable up to its end in time (an open transaction).
    #[error(
        "restoring a changelog store: {topic} partition {partition} stuck below offset {target} after {waited:?}"
    )]
    Stuck {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset the read had to reach.
        target: i64,
        /// How long it waited.
        waited: Duration,
    },
}

/// A restore of store partitions from their changelog (and local checkpoints, when a directory
/// is given).
#[derive(Debug, Clone)]
pub struct Restore<'a> {
    /// The cluster.
    pub kafka: &'a KafkaSettings,
    /// The changelog topic.
    pub changelog: &'a str,
    /// An id for the reader (it assigns, never joins nor commits).
    pub reader_group: &'a str,
    /// The partitions to restore.
    pub partitions: &'a [i32],
    /// The store's TTL.
    pub ttl: Duration,
    /// Now (epoch ms).
    pub now: i64,
    /// How long to wait for the changelog to become readable up to its end: the longest the read
    /// may go without a record while short of it.
    pub max_wait: Duration,
    /// The stage's state directory, if it has one: where checkpoints ([`checkpoint`]) or, with
    /// [`Backend::Disk`], the partitions' files ([`super::disk`]) are.
    pub state_dir: Option<&'a Path>,
    /// Where the restored partitions are kept.
    pub backend: Backend,
}

/// What a restore produced.
#[derive(Debug)]
pub struct Restored<E: Entry> {
    /// The store partitions.
    pub partitions: HashMap<i32, Partition<E>>,
    /// Entries loaded from checkpoints, or found in files on disk.
    pub from_checkpoints: usize,
    /// Changelog records read.
    pub records_read: usize,
}

impl Restore<'_> {
    /// Reads the partitions (blocking; run it on a blocking thread): each from its checkpoint and
    /// the changelog from the checkpoint's offset, or the whole changelog without a usable one.
    pub fn run<E: Entry>(&self) -> Result<Restored<E>, RestoreError> {
        let (kafka, changelog) = (self.kafka, self.changelog);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut out = Restored {
            partitions: HashMap::new(),
            from_checkpoints: 0,
            records_read: 0,
        };
        if self.partitions.is_empty() {
            return Ok(out);
        }
        // The target is the high watermark as a read_uncommitted reader sees it: everything
        // written so far, open transactions included.
        let probe: BaseConsumer = client::consumer(
            kafka,
            "dedupe.restore",
            self.reader_group,
            Isolation::ReadUncommitted,
            StartAt::Earliest,
        )
        .create()?;
        let mut targets = HashMap::new();
        let mut starts = HashMap::new();
        for p in self.partitions {
            let (low, high) = probe.fetch_watermarks(changelog, *p, Duration::from_secs(10))?;
            let state = match (self.backend, self.state_dir) {
                (Backend::Disk, Some(dir)) => {
                    Partition::Disk(Box::new(self.open_file(dir, *p, ttl_ms, (low, high))?))
                }
                (_, dir) => Partition::Memory(
                    dir.and_then(|dir| self.checkpoint(dir, *p, ttl_ms, (low, high)))
                        .unwrap_or_else(|| InMemory::new(ttl_ms)),
                ),
            };
            out.from_checkpoints += state.len();
            starts.insert(
                *p,
                match state.next_offset() {
                    0 => Offset::Beginning,
                    o => Offset::Offset(o),
                },
            );
            if high > state.next_offset() {
                targets.insert(*p, high);
            }
            out.partitions.insert(*p, state);
        }
        if targets.is_empty() {
            return Ok(out);
        }
        let reader: BaseConsumer = client::consumer(
            kafka,
            "dedupe.restore",
            self.reader_group,
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()?;
        if self.backend == Backend::Disk {
            // One partition at a time: a file is written in large chunks (fewer rewrites of the
            // same pages), and only one partition's chunk is held at once.
            for (p, target) in &targets {
                self.read(&reader, &mut out, &HashMap::from([(*p, *target)]), &starts)?;
            }
        } else {
            self.read(&reader, &mut out, &targets, &starts)?;
        }
        Ok(out)
    }

    /// Reads the changelog of the partitions of `targets`, each from its start up to its target.
    fn read<E: Entry>(
        &self,
        reader: &BaseConsumer,
        out: &mut Restored<E>,
        targets: &HashMap<i32, i64>,
        starts: &HashMap<i32, Offset>,
    ) -> Result<(), RestoreError> {
        let changelog = self.changelog;
        let mut tpl = TopicPartitionList::new();
        for p in targets.keys() {
            tpl.add_partition_offset(changelog, *p, starts[p])?;
        }
        reader.assign(&tpl)?;
        // The wait bound is on a stall (no record while some partition is below its target: an
        // open transaction holds the last stable offset back), not on the whole read, which
        // takes as long as the changelog is big.
        let mut progress = Instant::now();
        loop {
            if let Some(polled) = reader.poll(Duration::from_millis(100)) {
                let Some(m) = crate::kafka::polled::record(reader, polled)? else {
                    continue;
                };
                progress = Instant::now();
                out.records_read += 1;
                let Some(state) = out.partitions.get_mut(&m.partition()) else {
                    continue;
                };
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                // A value that is not text forgets its key, as one that does not decode.
                let value = m.payload().map(|v| std::str::from_utf8(v).unwrap_or(""));
                let (entry, keys) = super::changelog::read::<E>(key, value);
                for key in keys {
                    state.restore(key, entry.clone(), m.offset(), self.now)?;
                }
                continue;
            }
            let position = reader.position()?;
            let pending: Vec<(i32, i64)> = targets
                .iter()
                .filter(|(p, target)| {
                    !matches!(position.find_partition(changelog, **p).map(|e| e.offset()),
                              Some(Offset::Offset(o)) if o >= **target)
                })
                .map(|(p, t)| (*p, *t))
                .collect();
            let Some((partition, target)) = pending.first().copied() else {
                // Read up to the target: the state reflects everything below it (transaction
                // markers and aborted records included, which a reader skips).
                for (p, target) in targets {
                    if let Some(state) = out.partitions.get_mut(p) {
                        state.restored(*target, self.now)?;
                    }
                }
                return Ok(());
            };
            if progress.elapsed() > self.max_wait {
                return Err(RestoreError::Stuck {
                    topic: changelog.into(),
                    partition,
                    target,
                    waited: progress.elapsed(),
                });
            }
        }
    }

    /// The usable checkpoint of partition `p`, if there is one.
    fn checkpoint<E: Entry>(
        &self,
        dir: &Path,
        p: i32,
        ttl_ms: i64,
        (low, high): (i64, i64),
    ) -> Option<InMemory<E>> {
        let changelog = self.changelog;
        match checkpoint::load::<E>(dir, changelog, p, ttl_ms, self.now) {
            Ok(Some(state)) if (low..=high).contains(&state.next_offset()) => Some(state),
            Ok(Some(state)) => {
                tracing::warn!(
                    changelog,
                    partition = p,
                    offset = state.next_offset(),
                    low,
                    high,
                    "checkpoint offset outside the changelog (topic recreated?); reading it whole"
                );
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint not used; reading the changelog whole");
                None
            }
        }
    }

    /// Partition `p`'s file, cleared unless it can be caught up from ([`OnDisk::usable`]).
    fn open_file<E: Entry>(
        &self,
        dir: &Path,
        p: i32,
        ttl_ms: i64,
        (low, high): (i64, i64),
    ) -> Result<OnDisk<E>, DiskError> {
        let mut file = OnDisk::open(dir, self.changelog, p, ttl_ms)?;
        if !file.usable(low, high, self.now) {
            tracing::warn!(
                changelog = self.changelog,
                partition = p,
                offset = file.next_offset(),
                low,
                high,
                "store file too old or outside the changelog (topic recreated?); reading the changelog whole"
            );
            file.clear()?;
        }
        Ok(file)
    }
}
