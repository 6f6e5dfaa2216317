//! A store partition on disk (`store: disk`), for keys that outgrow memory, as Kafka Streams keeps
//! state in RocksDB: one redb database per changelog partition, `<state_dir>/<changelog>/<p>.redb`.
//!
//! Invariants:
//! - Every write is one redb transaction carrying its entries and the changelog offset they reflect
//!   the changelog up to, so the two never disagree: the file is always a checkpoint, and the
//!   invariants of [`super::checkpoint`] hold for it (an old file is only longer to catch up from;
//!   one past [`super::checkpoint::MAX_AGE`] or outside the changelog's watermarks is cleared and
//!   the changelog read whole).
//! - Writes are committed without an fsync (redb's `Durability::None`), and durably at least every
//!   [`DURABLE_EVERY`] and whenever the partition leaves or the session ends. A crash loses the
//!   commits since the last durable one: the file opens as that commit, an older checkpoint.
//! - A restore writes in chunks, each moving the offset past its last record, then a last write
//!   moves it to the restore's end: a restore cut off resumes where its last chunk got to.
//! - A file may hold changes past its offset (the benchmarks' at-least-once stage writes changes
//!   without offsets). It is still right to catch up from: reading the changelog from its offset
//!   writes those keys again, in order, and a key's last record wins.
//! - Memory holds redb's page cache ([`CACHE_BYTES`] a partition) and what was written since the
//!   last durable commit, not the keys: the process's RSS does not grow with the key count.
//! - A key is held as [`Key::bytes`] (16 bytes and a tag for a UUID); its value is its slice
//!   (8 bytes, big-endian) then its changelog value ([`Entry::encode`]). A second table indexes
//!   (slice, key), so an expiry sweep reads the oldest slices and never scans live keys.
//! - Reads see every committed write: they go through a snapshot taken after each commit. An
//!   entry past the TTL reads as absent until a sweep forgets it, as in memory.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    Builder, Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};

use super::Entry;
use super::checkpoint::MAX_AGE;
use super::slices::{Key, Slicing};

/// The longest a partition goes between durable commits while it is written.
pub const DURABLE_EVERY: Duration = Duration::from_secs(5);

/// redb's page cache for one partition.
pub const CACHE_BYTES: usize = 4 << 20;

/// Records a restore writes in one transaction: the larger, the fewer times the same pages are
/// rewritten (800 000 random keys into one file: 9.7 s in chunks of 20 000, 4.4 s in chunks of
/// 100 000, for 18 and 35 MB of RSS).
const RESTORE_CHUNK: usize = 100_000;

const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const BY_SLICE: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("by_slice");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

type Keys = ReadOnlyTable<&'static [u8], &'static [u8]>;
type BySlice = ReadOnlyTable<(i64, &'static [u8]), ()>;

/// A redb call on a partition's file failed.
#[derive(Debug, thiserror::Error)]
#[error("store partition on disk {path}: {source}")]
pub struct DiskError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: redb::Error,
}

/// The file of `topic`'s partition `partition` under `dir`.
pub fn path(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join(topic).join(format!("{partition}.redb"))
}

/// One partition of a store, on disk.
pub struct OnDisk<E: Entry> {
    db: Database,
    path: PathBuf,
    partition: i32,
    clock: Slicing,
    next_offset: i64,
    written_at_ms: i64,
    len: u64,
    keys: Keys,
    by_slice: BySlice,
    last_durable: Instant,
    /// Restored keys not yet written ([`OnDisk::restore`]).
    pending: Vec<(String, Option<E>)>,
    _entry: PhantomData<fn() -> E>,
}

impl<E: Entry> std::fmt::Debug for OnDisk<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDisk")
            .field("path", &self.path)
            .field("next_offset", &self.next_offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<E: Entry> OnDisk<E> {
    /// Opens (or creates) the file of partition `partition` of `topic` under `dir`.
    pub fn open(dir: &Path, topic: &str, partition: i32, ttl_ms: i64) -> Result<Self, DiskError> {
        let path = path(dir, topic, partition);
        let err = |source: redb::Error| DiskError {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(redb::Error::Io(e)))?;
        }
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| err(e.into()))?;
        let init = || -> Result<(i64, i64, Option<i64>), redb::Error> {
            let txn = db.begin_write()?;
            let (next, at, owner) = {
                txn.open_table(KEYS)?;
                txn.open_table(BY_SLICE)?;
                let meta = txn.open_table(META)?;
                let get = |k: &str| -> Result<Option<i64>, redb::Error> {
                    Ok(meta.get(k)?.map(|v| v.value()))
                };
                (
                    get("next_offset")?,
                    get("written_at_ms")?,
                    get("partition")?,
                )
            };
            txn.commit()?;
            Ok((next.unwrap_or(0), at.unwrap_or(0), owner))
        };
        let (next_offset, written_at_ms, owner) = init().map_err(err)?;
        let (keys, by_slice) = snapshot(&db).map_err(err)?;
        let len = keys.len().map_err(|e| err(e.into()))?;
        let mut d = OnDisk {
            db,
            path,
            partition,
            clock: Slicing::new(ttl_ms),
            next_offset,
            written_at_ms,
            len,
            keys,
            by_slice,
            last_durable: Instant::now(),
            pending: Vec::new(),
            _entry: PhantomData,
        };
        if owner.is_some_and(|o| o != i64::from(partition)) {
            tracing::warn!(path = %d.path.display(), partition, owner, "store file holds another partition; cleared");
            d.clear()?;
        }
        Ok(d)
    }

    /// The changelog offset the file reflects the changelog up to (exclusive).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Keys held (expired ones not yet forgotten included).
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    /// No keys held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file may be caught up from its offset, given the changelog's watermarks now
    /// (see the module's invariants); an empty file at offset 0 always may.
    pub fn usable(&self, low: i64, high: i64, now: i64) -> bool {
        if self.len == 0 && self.next_offset == 0 {
            return true;
        }
        let age = now.saturating_sub(self.written_at_ms);
        let max_age = i64::try_from(MAX_AGE.as_millis()).unwrap_or(i64::MAX);
        (low..=high).contains(&self.next_offset) && (-60_000..max_age).contains(&age)
    }

    /// Forgets everything, offset included.
    pub fn clear(&mut self) -> Result<(), DiskError> {
        let run = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            txn.delete_table(KEYS)?;
            txn.delete_table(BY_SLICE)?;
            txn.delete_table(META)?;
            txn.open_table(KEYS)?;
            txn.open_table(BY_SLICE)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|e| self.err(e))?;
        self.next_offset = 0;
        self.len = 0;
        self.refresh()
    }

    /// The entry of `key`, if it is remembered at `now`.
    pub fn get(&self, key: &str, now: i64) -> Result<Option<E>, DiskError> {
        let k = Key::of(key).bytes();
        let Some(v) = self
            .keys
            .get(k.as_slice())
            .map_err(|e| self.err(e.into()))?
        else {
            return Ok(None);
        };
        let Some((s, value)) = split(v.value()) else {
            return Ok(None);
        };
        if !self.clock.live(s, now) {
            return Ok(None);
        }
        let entry = std::str::from_utf8(value).ok().and_then(E::decode);
        Ok(entry.map(|e| E::unpack(e.pack(), self.clock.last_ms(s))))
    }

    /// Keys no longer remembered at `now`, oldest slices first, at most `limit`.
    pub fn expired(&self, now: i64, limit: usize) -> Result<Vec<String>, DiskError> {
        let mut out = Vec::new();
        for row in self.by_slice.iter().map_err(|e| self.err(e.into()))? {
            let (k, _) = row.map_err(|e| self.err(e.into()))?;
            let (s, key) = k.value();
            if out.len() >= limit || self.clock.live(s, now) {
                break;
            }
            out.extend(Key::text_of(key));
        }
        Ok(out)
    }

    /// Writes `changes` (a key and its entry, or `None` to forget it) and moves the offset to
    /// `next` (never back), in one transaction; durably when `durable` or when the last durable
    /// commit is [`DURABLE_EVERY`] old.
    pub fn write<'c>(
        &mut self,
        changes: impl IntoIterator<Item = (&'c str, Option<&'c E>)>,
        next: Option<i64>,
        now: i64,
        durable: bool,
    ) -> Result<(), DiskError> {
        let durable = durable || self.last_durable.elapsed() >= DURABLE_EVERY;
        let next_offset = next.map_or(self.next_offset, |n| n.max(self.next_offset));
        let (clock, partition) = (self.clock, self.partition);
        let run = || -> Result<i64, redb::Error> {
            let mut txn = self.db.begin_write()?;
            if durable {
                txn.set_quick_repair(true);
            } else {
                txn.set_durability(Durability::None)?;
            }
            let mut grown = 0i64;
            {
                let mut keys = txn.open_table(KEYS)?;
                let mut by_slice = txn.open_table(BY_SLICE)?;
                // In key order (stable: a key's later change still wins), so neighbouring
                // changes share pages.
                let mut changes: Vec<(Vec<u8>, Option<&E>)> = changes
                    .into_iter()
                    .map(|(key, entry)| (Key::of(key).bytes(), entry))
                    .collect();
                changes.sort_by(|a, b| a.0.cmp(&b.0));
                let mut value = Vec::new();
                for (k, entry) in &changes {
                    let k = k.as_slice();
                    let old = match entry {
                        Some(e) => {
                            let s = clock.slice_of(e.at());
                            value.clear();
                            value.extend_from_slice(&s.to_be_bytes());
                            value.extend_from_slice(e.encode().as_bytes());
                            by_slice.insert((s, k), ())?;
                            grown += 1;
                            keys.insert(k, value.as_slice())?
                        }
                        None => keys.remove(k)?,
                    }
                    .and_then(|v| split(v.value()).map(|(s, _)| s));
                    if let Some(s) = old {
                        grown -= 1;
                        if entry.is_none_or(|e| clock.slice_of(e.at()) != s) {
                            by_slice.remove((s, k))?;
                        }
                    }
                }
                let mut meta = txn.open_table(META)?;
                meta.insert("next_offset", next_offset)?;
                meta.insert("written_at_ms", now)?;
                meta.insert("partition", i64::from(partition))?;
            }
            txn.commit()?;
            Ok(grown)
        };
        let grown = run().map_err(|e| self.err(e))?;
        self.len = self.len.saturating_add_signed(grown);
        self.next_offset = next_offset;
        self.written_at_ms = now;
        if durable {
            self.last_durable = Instant::now();
        }
        self.refresh()
    }

    /// A key of the changelog record at `offset`, read by a restore: `entry` if it is remembered
    /// at `now`, else `key` is forgotten. Written in durable chunks; [`OnDisk::restored`] writes
    /// the rest. A chunk counts as reflecting the changelog up to `offset` only, not past it: a
    /// grouped record's other keys may not be in it yet, and reading the record again is
    /// harmless.
    pub fn restore(
        &mut self,
        key: &str,
        entry: Option<E>,
        offset: i64,
        now: i64,
    ) -> Result<(), DiskError> {
        let entry = entry.filter(|e| self.clock.live(self.clock.slice_of(e.at()), now));
        self.pending.push((key.to_string(), entry));
        if self.pending.len() >= RESTORE_CHUNK {
            self.flush_restored(Some(offset), now)?;
        }
        Ok(())
    }

    /// The restore read the changelog up to `next` (exclusive): writes what it read, durably.
    pub fn restored(&mut self, next: i64, now: i64) -> Result<(), DiskError> {
        self.flush_restored(Some(next), now)
    }

    fn flush_restored(&mut self, next: Option<i64>, now: i64) -> Result<(), DiskError> {
        let pending = std::mem::take(&mut self.pending);
        self.write(
            pending.iter().map(|(k, e)| (k.as_str(), e.as_ref())),
            next,
            now,
            true,
        )
    }

    /// Commits durably what was written since the last durable commit (before the file is left).
    pub fn flush(&mut self, now: i64) -> Result<(), DiskError> {
        self.write(std::iter::empty(), None, now, true)
    }

    fn refresh(&mut self) -> Result<(), DiskError> {
        let (keys, by_slice) = snapshot(&self.db).map_err(|e| self.err(e))?;
        self.keys = keys;
        self.by_slice = by_slice;
        Ok(())
    }

    fn err(&self, source: redb::Error) -> DiskError {
        DiskError {
            path: self.path.clone(),
            source,
        }
    }
}

fn snapshot(db: &Database) -> Result<(Keys, BySlice), redb::Error> {
    let txn = db.begin_read()?;
    Ok((txn.open_table(KEYS)?, txn.open_table(BY_SLICE)?))
}

/// A stored value's slice and changelog value.
fn split(value: &[u8]) -> Option<(i64, &[u8])> {
    let (s, rest) = value.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*s), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5299580b-3518-53a2-ada8-9caa3a5c9a5c";

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("onceflow-disk-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn entries_and_offset_survive_a_reopen_and_expire_like_memory() {
        let d = dir();
        let mut p = OnDisk::<i64>::open(&d, "t.dedupe", 2, 8_000).unwrap();
        assert!(p.usable(0, 0, 5_000), "a new file");
        p.write(
            [(ID, Some(&1_000)), ("e-1", Some(&5_000))],
            Some(7),
            6_000,
            false,
        )
        .unwrap();
        p.write([("e-1", Some(&5_500))], None, 6_000, false)
            .unwrap();
        assert_eq!((p.len(), p.next_offset()), (2, 7), "a put replaces");
        assert_eq!(p.get(ID, 6_000).unwrap(), Some(1_999), "slice's last ms");
        p.flush(6_000).unwrap();
        drop(p);
        let mut p = OnDisk::<i64>::open(&d, "t.dedupe", 2, 8_000).unwrap();
        assert_eq!((p.len(), p.next_offset()), (2, 7));
        assert!(p.get(ID, 9_998).unwrap().is_some());
        assert_eq!(p.get(ID, 9_999).unwrap(), None, "past the TTL");
        assert_eq!(p.expired(9_999, 10).unwrap(), vec![ID.to_string()]);
        p.write([(ID, None)], Some(8), 9_999, false).unwrap();
        assert_eq!(
            (p.len(), p.expired(20_000, 10).unwrap()),
            (1, vec!["e-1".into()])
        );
        assert!(
            p.usable(0, 8, 10_000) && !p.usable(9, 12, 10_000),
            "offset inside the changelog"
        );
        assert!(
            !p.usable(0, 8, 10_000 + MAX_AGE.as_millis() as i64),
            "too old"
        );
        p.clear().unwrap();
        assert_eq!(
            (p.len(), p.next_offset(), p.get("e-1", 6_000).unwrap()),
            (0, 0, None)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_restore_writes_in_chunks_skips_the_expired_and_applies_tombstones() {
        let d = dir();
        let mut p = OnDisk::<i64>::open(&d, "t.dedupe", 0, 8_000).unwrap();
        let n = RESTORE_CHUNK + 5;
        for i in 0..n {
            p.restore(&format!("k-{i}"), Some(5_000), i as i64, 6_000)
                .unwrap();
        }
        assert_eq!(
            p.next_offset(),
            RESTORE_CHUNK as i64 - 1,
            "a chunk moves the offset up to the record it ended in (its other keys may follow)"
        );
        p.restore("old", Some(10), n as i64, 9_000).unwrap();
        p.restore("k-3", None, n as i64 + 1, 6_000).unwrap();
        p.restored(n as i64 + 5, 6_000).unwrap();
        assert_eq!((p.len(), p.next_offset()), (n - 1, n as i64 + 5));
        assert!(p.get("k-3", 6_000).unwrap().is_none() && p.get("k-4", 6_000).unwrap().is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
