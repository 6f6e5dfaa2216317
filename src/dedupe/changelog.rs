//! The changelog's records: how a batch's store changes are written, and read back by a restore.
//!
//! A store whose entries are never overwritten while remembered ([`Entry::GROUPED`], the dedupe
//! store) writes the keys a batch puts on one partition with one entry as one record: its key is
//! the first of them, its value the entry's text followed by the other keys, each after a
//! newline. A record of one key is therefore the plain per-key record (`key` → `entry`), which is
//! also how a key holding a newline is written, alone. Every other change is a record of its own:
//! `key` → entry text, or a tombstone.
//!
//! Invariants:
//! - Compaction never takes a grouped record while one of its keys is remembered. It keeps the
//!   last record of a record key, and a later record with a grouped record's key is either that
//!   key's tombstone (written once it expired) or a new put of it (decided anew once it was
//!   forgotten). Either way the key expired, and so did every other key of the record: they
//!   share its entry, hence its expiry.
//! - A grouped record holds at most [`MAX_KEYS`] keys, so it stays far below the broker's
//!   1 MB message limit (36-character ids: about 74 kB).
//! - Reading back, a record yields the same (key, entry) pairs, in the order written, that the
//!   per-key records would have: a restore does not tell the two formats apart.

use super::{Change, Entry};

/// Keys in one grouped record at most.
pub const MAX_KEYS: usize = 2_000;

const SEPARATOR: char = '\n';

/// One changelog record: partition, key, value (`None`: a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Key.
    pub key: String,
    /// Value; `None` is a tombstone.
    pub value: Option<String>,
}

/// The changelog records of a batch's `changes`. A key's records keep the order of its changes:
/// a grouped record stands where its first key's change stood, and a record of its own ends the
/// groups open on its partition.
pub fn records<E: Entry>(changes: &[Change<E>]) -> Vec<Record> {
    let mut out = Vec::new();
    // Open groups: (partition, entry) → index in `out` of the record being filled, its keys.
    let mut open: Vec<(i32, &E, usize, usize)> = Vec::new();
    for c in changes {
        let (partition, key, entry) = c.parts();
        let Some(entry) = entry.filter(|_| E::GROUPED && !key.contains(SEPARATOR)) else {
            // Later puts of the partition go after this record: one of them may be its key's.
            open.retain(|(p, _, _, _)| *p != partition);
            out.push(Record {
                partition,
                key: key.to_string(),
                value: entry.map(Entry::encode),
            });
            continue;
        };
        match open
            .iter_mut()
            .find(|(p, e, _, n)| *p == partition && *e == entry && *n < MAX_KEYS)
        {
            Some((_, _, at, n)) => {
                if let Some(v) = out[*at].value.as_mut() {
                    v.reserve(key.len() + 1);
                    v.push(SEPARATOR);
                    v.push_str(key);
                }
                *n += 1;
            }
            None => {
                open.retain(|(p, e, _, _)| !(*p == partition && *e == entry));
                open.push((partition, entry, out.len(), 1));
                out.push(Record {
                    partition,
                    key: key.to_string(),
                    value: Some(entry.encode()),
                });
            }
        }
    }
    out
}

/// The (key, entry) pairs of the record `key` → `value` (`None`: a tombstone, or a value that
/// does not decode, of `key` alone).
pub fn read<'r, E: Entry>(
    key: &'r str,
    value: Option<&'r str>,
) -> (Option<E>, impl Iterator<Item = &'r str>) {
    let (entry, rest) = match value {
        Some(v) if E::GROUPED => match v.split_once(SEPARATOR) {
            Some((entry, rest)) => (E::decode(entry), Some(rest)),
            None => (E::decode(v), None),
        },
        Some(v) => (E::decode(v), None),
        None => (None, None),
    };
    // A grouped value that does not decode forgets its record key only: the others were never
    // remembered through it.
    let others = rest
        .filter(|_| entry.is_some())
        .into_iter()
        .flat_map(|r| r.split(SEPARATOR));
    (entry, std::iter::once(key).chain(others))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(partition: i32, key: &str, entry: i64) -> Change<i64> {
        Change::Put {
            partition,
            key: key.into(),
            entry,
        }
    }

    fn back(records: &[Record]) -> Vec<(i32, String, Option<i64>)> {
        let mut pairs = Vec::new();
        for r in records {
            let (entry, keys) = read::<i64>(&r.key, r.value.as_deref());
            pairs.extend(keys.map(|k| (r.partition, k.to_string(), entry)));
        }
        pairs
    }

    #[test]
    fn a_batchs_keys_of_one_partition_and_entry_are_one_record_that_reads_back_as_each() {
        let changes = vec![
            put(0, "a", 7),
            put(1, "b", 7),
            put(0, "c", 7),
            Change::Forget {
                partition: 0,
                key: "old".into(),
            },
            put(0, "d", 8),
            put(0, "e", 7),
        ];
        let recs = records(&changes);
        let got: Vec<(i32, &str, Option<&str>)> = recs
            .iter()
            .map(|r| (r.partition, r.key.as_str(), r.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "a", Some("7\nc")),
                (1, "b", Some("7")),
                (0, "old", None),
                (0, "d", Some("8")),
                (0, "e", Some("7")),
            ]
        );
        let want: Vec<(i32, String, Option<i64>)> = vec![
            (0, "a".into(), Some(7)),
            (0, "c".into(), Some(7)),
            (1, "b".into(), Some(7)),
            (0, "old".into(), None),
            (0, "d".into(), Some(8)),
            (0, "e".into(), Some(7)),
        ];
        assert_eq!(back(&recs), want);
    }

    #[test]
    fn a_key_forgotten_then_put_again_in_one_batch_is_remembered_on_restore() {
        let changes = vec![
            put(0, "a", 7),
            Change::Forget {
                partition: 0,
                key: "k".into(),
            },
            put(0, "k", 7),
        ];
        let pairs = back(&records(&changes));
        assert_eq!(
            pairs.iter().rev().find(|(_, k, _)| k == "k"),
            Some(&(0, "k".to_string(), Some(7))),
            "{pairs:?}"
        );
    }

    #[test]
    fn groups_are_bounded_and_a_key_with_a_newline_goes_alone() {
        let changes: Vec<Change<i64>> = (0..MAX_KEYS + 1)
            .map(|i| put(2, &format!("k{i}"), 5))
            .chain([put(2, "x\ny", 5)])
            .collect();
        let recs = records(&changes);
        assert_eq!(
            recs.len(),
            3,
            "{} keys, then one, then the odd key",
            MAX_KEYS
        );
        assert_eq!(recs[0].value.as_ref().unwrap().lines().count(), MAX_KEYS);
        assert_eq!(recs[1].key, format!("k{MAX_KEYS}"));
        assert_eq!(
            (recs[2].key.as_str(), recs[2].value.as_deref()),
            ("x\ny", Some("5"))
        );
        let pairs = back(&recs);
        assert_eq!(pairs.len(), MAX_KEYS + 2);
        assert!(pairs.iter().all(|(_, _, e)| *e == Some(5)));
        assert_eq!(pairs.last().unwrap().1, "x\ny");
    }

    #[test]
    fn per_key_and_undecodable_values_read_as_before() {
        fn one(v: Option<&str>) -> (Option<i64>, Vec<&str>) {
            let (e, keys) = read::<i64>("k", v);
            (e, keys.collect())
        }
        assert_eq!(one(Some("42")), (Some(42), vec!["k"]));
        assert_eq!(one(None), (None, vec!["k"]));
        assert_eq!(
            one(Some("x\nother")),
            (None, vec!["k"]),
            "only its own key forgotten"
        );
    }
}
