//! Keyed changelog stores: the processor's dedupe store (event ids seen within a TTL) and the
//! dispatcher's effect ledger (command ids attempting or done) are both a [`Store`] of entries per
//! partition, backed by a compacted changelog topic (`<ns>.<adapter>.dedupe`,
//! `<ns>.<adapter>.ledger`) and restored from it when a partition is assigned.
//!
//! Invariants:
//! - Partition `p` of a store holds the keys of records read from partition `p` of the stage's
//!   inputs (and of its retry topics, whose records keep their origin partition). Every duplicate
//!   of an event, and every copy of a command, has the same key, hence partition, hence meets the
//!   original's entry.
//! - A change reaches the changelog in the same transaction as the outputs and offsets it belongs
//!   to, and reaches the store only after that transaction committed ([`Store::apply`]); an
//!   aborted batch leaves no trace in either.
//! - Restoring a partition reads its changelog from the beginning with `read_committed` up to the
//!   high watermark taken before reading: while a zombie's transaction is open the read waits (the
//!   last stable offset is held back), so entries committed after it are never missed. The wait is
//!   bounded by the transaction timeout.
//! - An entry is remembered for at least the TTL and at most an eighth longer (it counts from the
//!   end of its time slice, [`slices`]); entries past that are dropped on restore and tombstoned
//!   by [`Store::expired`] sweeps, so the compacted changelog does not grow without bound.
//! - Memory holds a canonical UUID key as 16 bytes and a dedupe entry as no bytes at all beyond
//!   its slice ([`slices`]): under 40 bytes a key (`tests/dedupe_memory.rs`).
//! - The changelog value of an entry is its [`Entry::encode`] text; a value that does not decode is
//!   treated as a tombstone. The dedupe store writes a batch's ids of one partition as one record
//!   ([`changelog`]: the first id as its key, the others after the entry in its value), which a
//!   restore reads back as the per-key records it stands for.
//! - Each store partition knows the changelog offset it reflects the changelog up to: the restore's
//!   end, then one past the last changelog record of each commit ([`Store::apply`]). A stage
//!   with a state directory writes that state and offset to a local [`checkpoint`] when the
//!   partition leaves it and when its session ends; a restore then loads it and reads only the
//!   changelog from there.
//! - A partition lives in memory ([`slices`]) or, with [`Backend::Disk`], in a file under the
//!   state directory ([`disk`]) that is its own checkpoint. Both answer every read the same way;
//!   a read or write the disk refuses is an error that ends the session, never a guess (a key
//!   taken as unseen would be decided twice, one taken as seen would be lost).

pub mod changelog;
pub mod checkpoint;
pub mod disk;
mod restore;
mod slices;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::model::event::now_ms;

pub use disk::{DiskError, OnDisk};
pub use restore::{Restore, RestoreError, Restored};
pub use slices::{InMemory, SLICES_PER_TTL};

/// Where a stage keeps its store partitions (`processor.store`, `dispatcher.store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// In memory, with checkpoints when there is a state directory.
    #[default]
    Memory,
    /// In files under the state directory ([`disk`]), for keys that outgrow memory.
    Disk,
}

/// What a store keeps per key.
pub trait Entry: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// What memory keeps of an entry besides its key and its time slice.
    type Packed: Copy + std::fmt::Debug + Send + Sync + 'static;
    /// When the entry was written (epoch ms); the TTL counts from the end of its slice.
    fn at(&self) -> i64;
    /// The entry as memory keeps it.
    fn pack(&self) -> Self::Packed;
    /// The entry of `packed`, kept in the slice whose last millisecond is `slice_last_ms`.
    fn unpack(packed: Self::Packed, slice_last_ms: i64) -> Self;
    /// Whether a batch's keys of one entry may share a changelog record ([`changelog`]): only
    /// for entries never overwritten while remembered.
    const GROUPED: bool = false;
    /// The changelog value.
    fn encode(&self) -> String;
    /// The entry of a changelog value, if it is one.
    fn decode(value: &str) -> Option<Self>;
}

/// The dedupe store's entry: when an event was processed (epoch ms). Its changelog value is the
/// decimal number; memory keeps only its slice, so it reads back as the slice's last millisecond.
impl Entry for i64 {
    type Packed = ();
    /// An id is put once and kept until it expires; a batch's ids share one timestamp.
    const GROUPED: bool = true;

    fn at(&self) -> i64 {
        *self
    }

    fn pack(&self) {}

    fn unpack((): (), slice_last_ms: i64) -> i64 {
        slice_last_ms
    }

    fn encode(&self) -> String {
        self.to_string()
    }

    fn decode(value: &str) -> Option<i64> {
        value.parse().ok()
    }
}

/// One change of a store, as written to the changelog.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<E> {
    /// `key` now maps to `entry`.
    Put {
        /// Partition.
        partition: i32,
        /// Event id or command id.
        key: String,
        /// The entry.
        entry: E,
    },
    /// `key` is forgotten (a tombstone).
    Forget {
        /// Partition.
        partition: i32,
        /// Event id or command id.
        key: String,
    },
}

impl<E: Entry> Change<E> {
    /// Its partition, key and entry (`None`: forgotten).
    pub fn parts(&self) -> (i32, &str, Option<&E>) {
        match self {
            Change::Put {
                partition,
                key,
                entry,
            } => (*partition, key, Some(entry)),
            Change::Forget { partition, key } => (*partition, key, None),
        }
    }
}

/// One partition of a store, where the stage keeps it.
#[derive(Debug)]
pub enum Partition<E: Entry> {
    /// In memory.
    Memory(InMemory<E>),
    /// On disk.
    Disk(Box<OnDisk<E>>),
}

impl<E: Entry> Partition<E> {
    /// The changelog offset this state reflects the changelog up to (exclusive).
    pub fn next_offset(&self) -> i64 {
        match self {
            Partition::Memory(m) => m.next_offset(),
            Partition::Disk(d) => d.next_offset(),
        }
    }

    /// Keys held (expired ones not yet forgotten included).
    pub fn len(&self) -> usize {
        match self {
            Partition::Memory(m) => m.len(),
            Partition::Disk(d) => d.len(),
        }
    }

    /// No keys held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of `key`, if it is remembered at `now`.
    pub fn get(&self, key: &str, now: i64) -> Result<Option<E>, DiskError> {
        match self {
            Partition::Memory(m) => Ok(m.get(key, now)),
            Partition::Disk(d) => d.get(key, now),
        }
    }

    /// Keys no longer remembered at `now`, oldest first, at most `limit`.
    pub fn expired(&self, now: i64, limit: usize) -> Result<Vec<String>, DiskError> {
        match self {
            Partition::Memory(m) => Ok(m.expired(now, limit)),
            Partition::Disk(d) => d.expired(now, limit),
        }
    }

    /// A changelog record read by a restore, at `offset` ([`InMemory::restore`]).
    pub fn restore(
        &mut self,
        key: &str,
        entry: Option<E>,
        offset: i64,
        now: i64,
    ) -> Result<(), DiskError> {
        match self {
            Partition::Memory(m) => {
                m.restore(key, entry, now);
                Ok(())
            }
            Partition::Disk(d) => d.restore(key, entry, offset, now),
        }
    }

    /// The restore read the changelog up to `next` (exclusive).
    pub fn restored(&mut self, next: i64, now: i64) -> Result<(), DiskError> {
        match self {
            Partition::Memory(m) => {
                m.advance(next);
                Ok(())
            }
            Partition::Disk(d) => d.restored(next, now),
        }
    }

    /// Writes committed changes (a key and its entry, or `None` to forget it) and the offset they
    /// bring the state up to.
    fn write(
        &mut self,
        changes: &[(&str, Option<&E>)],
        next: Option<i64>,
        now: i64,
    ) -> Result<(), DiskError> {
        match self {
            Partition::Memory(m) => {
                for (key, entry) in changes {
                    match entry {
                        Some(e) => m.put(key, e),
                        None => m.remove(key),
                    }
                }
                if let Some(n) = next {
                    m.advance(n);
                }
                Ok(())
            }
            Partition::Disk(d) => d.write(changes.iter().copied(), next, now, false),
        }
    }
}

/// The store of the partitions this instance owns.
#[derive(Debug)]
pub struct Store<E: Entry> {
    ttl_ms: i64,
    partitions: HashMap<i32, Partition<E>>,
}

/// The processor's dedupe store: event id → when it was processed.
pub type DedupeStore = Store<i64>;

impl<E: Entry> Store<E> {
    /// An empty store remembering keys for `ttl`.
    pub fn new(ttl: Duration) -> Store<E> {
        Store {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            partitions: HashMap::new(),
        }
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.ttl_ms).unwrap_or(u64::MAX))
    }

    /// Partitions present.
    pub fn partitions(&self) -> HashSet<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Installs a restored partition.
    pub fn insert_partition(&mut self, partition: i32, entries: Partition<E>) {
        self.partitions.insert(partition, entries);
    }

    /// The state of `partition`, if held.
    pub fn partition(&self, partition: i32) -> Option<&Partition<E>> {
        self.partitions.get(&partition)
    }

    /// Forgets a partition this instance no longer owns, and gives its state back.
    pub fn drop_partition(&mut self, partition: i32) -> Option<Partition<E>> {
        self.partitions.remove(&partition)
    }

    /// The entry of `key` on `partition`, if it is remembered at `now`.
    pub fn get(&self, partition: i32, key: &str, now: i64) -> Result<Option<E>, DiskError> {
        match self.partitions.get(&partition) {
            Some(p) => p.get(key, now),
            None => Ok(None),
        }
    }

    /// Whether `key` is remembered on `partition` at `now`.
    pub fn contains(&self, partition: i32, key: &str, now: i64) -> Result<bool, DiskError> {
        Ok(self.get(partition, key, now)?.is_some())
    }

    /// After a transaction committed: applies its changes, and moves each partition whose
    /// changelog it wrote up to offset `o` to `o + 1` (`written`: partition and offset of each
    /// changelog record). On disk, a partition's changes and offset are one write.
    pub fn apply(
        &mut self,
        changes: &[Change<E>],
        written: &[(i32, i64)],
    ) -> Result<(), DiskError> {
        type Writes<'c, E> = (Vec<(&'c str, Option<&'c E>)>, Option<i64>);
        let mut by_partition: BTreeMap<i32, Writes<'_, E>> = BTreeMap::new();
        for c in changes {
            let (partition, key, entry) = c.parts();
            by_partition
                .entry(partition)
                .or_default()
                .0
                .push((key, entry));
        }
        for (partition, offset) in written {
            let next = &mut by_partition.entry(*partition).or_default().1;
            *next = Some(next.map_or(offset + 1, |n: i64| n.max(offset + 1)));
        }
        let now = now_ms();
        for (partition, (writes, next)) in by_partition {
            let ttl_ms = self.ttl_ms;
            let p = match self.partitions.entry(partition) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                // Not restored (the benchmarks' stores): nothing to forget, nothing to advance.
                std::collections::hash_map::Entry::Vacant(v)
                    if writes.iter().any(|(_, e)| e.is_some()) =>
                {
                    v.insert(Partition::Memory(InMemory::new(ttl_ms)))
                }
                std::collections::hash_map::Entry::Vacant(_) => continue,
            };
            p.write(&writes, next, now)?;
        }
        Ok(())
    }

    /// Tombstones for entries no longer remembered at `now` (at most `limit`, to keep
    /// transactions small).
    pub fn expired(&self, now: i64, limit: usize) -> Result<Vec<Change<E>>, DiskError> {
        let mut out = Vec::new();
        for (p, entries) in &self.partitions {
            let room = limit.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            out.extend(
                entries
                    .expired(now, room)?
                    .into_iter()
                    .map(|key| Change::Forget { partition: *p, key }),
            );
        }
        Ok(out)
    }

    /// Entries held, over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(Partition::len).sum()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_expire_after_the_ttl_and_at_most_an_eighth_more() {
        let mut s = DedupeStore::new(Duration::from_secs(10));
        s.apply(
            &[Change::Put {
                partition: 1,
                key: "e".into(),
                entry: 1_000,
            }],
            &[],
        )
        .unwrap();
        // Slices of 1.25 s: written at 1 000, it counts as written at 1 249.
        assert!(s.contains(1, "e", 10_999).unwrap());
        assert!(s.contains(1, "e", 11_248).unwrap());
        assert!(!s.contains(1, "e", 11_249).unwrap());
        assert!(
            !s.contains(2, "e", 1_000).unwrap(),
            "partitions are separate"
        );
        assert!(s.expired(11_248, 10).unwrap().is_empty());
        assert_eq!(
            s.expired(11_249, 10).unwrap(),
            vec![Change::Forget {
                partition: 1,
                key: "e".into()
            }]
        );
        let forget = s.expired(11_249, 10).unwrap();
        s.apply(&forget, &[]).unwrap();
        assert!(s.is_empty());
    }
}
