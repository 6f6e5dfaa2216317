//! Local checkpoints of store partitions: a restart reads a file and the changelog's tail, not the
//! whole changelog (Kafka Streams' `.checkpoint` files, with the state itself in the file).
//!
//! Invariants:
//! - A checkpoint holds a partition's entries and the changelog offset they reflect the changelog
//!   up to ([`InMemory::next_offset`]): the state after every record below that offset, and none
//!   at or above it. That stays true whatever is written to the changelog later, by this instance
//!   or another owner of the partition, so an old checkpoint is never wrong, only longer to catch
//!   up from. A restore loads it, then reads the changelog from its offset.
//! - Two things could make an old file wrong, and both make it unused:
//!   - The compactor drops tombstones after the topic's `delete.retention.ms` (24 h by default).
//!     A file older than [`MAX_AGE`] (12 h) is therefore never loaded, since a tombstone written
//!     after it may be gone.
//!   - An offset outside the changelog's current watermarks means the topic was recreated; such a
//!     file is never loaded either (the caller checks this).
//! - A file is written whole to a temporary name, synced, then renamed: a crash leaves the
//!   previous file or the new one, never half of one. A file that does not parse is ignored
//!   (the restore reads the whole changelog) and never deleted on the way.
//! - The layout: a version line, a JSON header line (topic, partition, offset, time, count), then
//!   per entry the key and the changelog value ([`Entry::encode`]), each as a little-endian `u16`
//!   length and its bytes.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Entry, InMemory};

/// The oldest checkpoint a restore loads (half the default `delete.retention.ms`).
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

const VERSION: &[u8] = b"onceflow-checkpoint 1\n";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    topic: String,
    partition: i32,
    next_offset: i64,
    written_at_ms: i64,
    entries: u64,
}

/// Why a checkpoint was not written or not loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a checkpoint of this partition, or not usable now.
    #[error("checkpoint {path}: {why}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// The file of `topic`'s partition `partition` under `dir`.
pub fn path(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join(topic).join(format!("{partition}.checkpoint"))
}

/// Writes partition `partition` of `topic` (entries remembered at `now`).
pub fn write<E: Entry>(
    dir: &Path,
    topic: &str,
    partition: i32,
    state: &InMemory<E>,
    now: i64,
) -> Result<PathBuf, CheckpointError> {
    let file = path(dir, topic, partition);
    let io = |source| CheckpointError::Io {
        path: file.clone(),
        source,
    };
    let entries: Vec<(String, String)> = state.entries(now).map(|(k, e)| (k, e.encode())).collect();
    let fits = |b: &str| b.len() <= usize::from(u16::MAX);
    if !entries.iter().all(|(k, v)| fits(k) && fits(v)) {
        // Leaving the entry out would make the checkpoint forget a key.
        return Err(CheckpointError::Unusable {
            path: file,
            why: "a key or value is longer than 65 535 bytes".into(),
        });
    }
    let header = Header {
        topic: topic.to_string(),
        partition,
        next_offset: state.next_offset(),
        written_at_ms: now,
        entries: entries.len() as u64,
    };
    if let Some(parent) = file.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = file.with_extension("checkpoint.tmp");
    let mut w = BufWriter::new(File::create(&tmp).map_err(io)?);
    w.write_all(VERSION).map_err(io)?;
    let line = serde_json::to_vec(&header).map_err(|e| io(std::io::Error::other(e)))?;
    w.write_all(&line).map_err(io)?;
    w.write_all(b"\n").map_err(io)?;
    for (k, v) in &entries {
        for part in [k.as_bytes(), v.as_bytes()] {
            let len = u16::try_from(part.len()).unwrap_or(u16::MAX); // checked above
            w.write_all(&len.to_le_bytes()).map_err(io)?;
            w.write_all(part).map_err(io)?;
        }
    }
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &file).map_err(io)?;
    Ok(file)
}

/// The checkpointed state of partition `partition` of `topic`, if a usable file is there
/// (`Ok(None)`: no file). Entries past the TTL at `now` are left out.
pub fn load<E: Entry>(
    dir: &Path,
    topic: &str,
    partition: i32,
    ttl_ms: i64,
    now: i64,
) -> Result<Option<InMemory<E>>, CheckpointError> {
    let file = path(dir, topic, partition);
    let unusable = |why: String| CheckpointError::Unusable {
        path: file.clone(),
        why,
    };
    let io = |source| CheckpointError::Io {
        path: file.clone(),
        source,
    };
    let f = match File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut version = vec![0; VERSION.len()];
    r.read_exact(&mut version).map_err(io)?;
    if version != VERSION {
        return Err(unusable("not a checkpoint of this version".into()));
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        r.read_exact(&mut byte).map_err(io)?;
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let h: Header = serde_json::from_slice(&line).map_err(|e| unusable(format!("header: {e}")))?;
    if h.topic != topic || h.partition != partition {
        return Err(unusable(format!(
            "holds {} partition {}",
            h.topic, h.partition
        )));
    }
    let age = now.saturating_sub(h.written_at_ms);
    let max_age = i64::try_from(MAX_AGE.as_millis()).unwrap_or(i64::MAX);
    if !(-60_000..max_age).contains(&age) {
        return Err(unusable(format!(
            "written {age} ms ago: tombstones may have been compacted away since"
        )));
    }
    fn read_field(r: &mut BufReader<File>, into: &mut Vec<u8>) -> std::io::Result<()> {
        let mut len = [0u8; 2];
        r.read_exact(&mut len)?;
        into.resize(usize::from(u16::from_le_bytes(len)), 0);
        r.read_exact(into)
    }
    let mut state = InMemory::new(ttl_ms);
    let (mut key, mut field) = (Vec::new(), Vec::new());
    for _ in 0..h.entries {
        read_field(&mut r, &mut key).map_err(io)?;
        read_field(&mut r, &mut field).map_err(io)?;
        let (Ok(k), Some(e)) = (
            std::str::from_utf8(&key),
            std::str::from_utf8(&field).ok().and_then(E::decode),
        ) else {
            return Err(unusable("an entry does not decode".into()));
        };
        state.restore(k, Some(e), now);
    }
    if r.read(&mut byte).map_err(io)? != 0 {
        return Err(unusable("bytes after the last entry".into()));
    }
    state.advance(h.next_offset);
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5299580b-3518-53a2-ada8-9caa3a5c9a5c";

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("onceflow-ckpt-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_partition_comes_back_with_its_entries_and_offset() {
        let d = dir();
        let mut p = InMemory::<i64>::new(8_000);
        p.put(ID, &1_000);
        p.put("e-1", &5_000);
        p.advance(42);
        write(&d, "t.dedupe", 3, &p, 6_000).unwrap();
        let back: InMemory<i64> = load(&d, "t.dedupe", 3, 8_000, 6_500).unwrap().unwrap();
        assert_eq!(back.next_offset(), 42);
        assert_eq!(back.len(), 2);
        assert_eq!(back.get(ID, 6_500), p.get(ID, 6_500));
        assert_eq!(back.get("e-1", 6_500), p.get("e-1", 6_500));
        // Expired on the way: written at 1 000 (slice end 1 999), gone at 10 000.
        let later: InMemory<i64> = load(&d, "t.dedupe", 3, 8_000, 10_000).unwrap().unwrap();
        assert_eq!(later.len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_foreign_old_or_torn_file_is_not_used() {
        let d = dir();
        assert!(load::<i64>(&d, "t.dedupe", 0, 8_000, 0).unwrap().is_none());
        let mut p = InMemory::<i64>::new(8_000);
        p.put(ID, &1_000);
        let f = write(&d, "t.dedupe", 0, &p, 1_000).unwrap();
        fs::copy(&f, path(&d, "t.dedupe", 1)).unwrap();
        assert!(
            load::<i64>(&d, "t.dedupe", 1, 8_000, 1_000).is_err(),
            "another partition's"
        );
        let old = 1_000 + MAX_AGE.as_millis() as i64;
        assert!(
            load::<i64>(&d, "t.dedupe", 0, 8_000, old).is_err(),
            "too old"
        );
        let bytes = fs::read(&f).unwrap();
        fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
        assert!(
            load::<i64>(&d, "t.dedupe", 0, 8_000, 1_000).is_err(),
            "torn"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
