//! The memory layout of one store partition: keys in time slices ([`super::Partition::Memory`]).
//!
//! Invariants:
//! - Time is cut into slices of `ttl / SLICES_PER_TTL`; an entry lives in the slice of its
//!   [`Entry::at`], and a key is in at most one slice (a put first removes it from the others).
//! - An entry counts as written at its slice's last millisecond: it is remembered for at least the
//!   TTL and at most the TTL plus one slice (an eighth of it). A slice is dropped whole when its
//!   last key is forgotten, so expiry never scans live keys.
//! - A key that is a canonical UUID (lowercase, hyphenated: every event and command id onceflow
//!   derives) is held as its 16 bytes; any other key as its text, so no key is ever confused with
//!   another. A UUID key turns back into exactly the text it came from.
//! - What an entry keeps besides its key and slice is [`Entry::Packed`]: nothing for the dedupe
//!   store, whose entries are times. A dedupe key therefore costs its 16 bytes plus the hash
//!   table's control byte, at a load factor of at least 7/16 per table: under 40 bytes a key.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::Entry;

/// Slices per TTL: the most an entry outlives the TTL is one of them.
pub const SLICES_PER_TTL: i64 = 8;

/// A key as a store holds it (in memory here, as [`Key::bytes`] on disk, [`super::disk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key<'k> {
    Uuid([u8; 16]),
    Text(&'k str),
}

impl<'k> Key<'k> {
    pub(super) fn of(key: &'k str) -> Key<'k> {
        if key.len() == 36
            && let Ok(u) = Uuid::try_parse(key)
        {
            let mut text = [0u8; 36];
            if u.hyphenated().encode_lower(&mut text) == key {
                return Key::Uuid(*u.as_bytes());
            }
        }
        Key::Text(key)
    }

    /// The key as one byte string: a tag (0 for a UUID, 1 for text), then its 16 bytes or its
    /// text, so no two keys share bytes.
    pub(super) fn bytes(self) -> Vec<u8> {
        match self {
            Key::Uuid(b) => std::iter::once(0).chain(b).collect(),
            Key::Text(t) => std::iter::once(1).chain(t.bytes()).collect(),
        }
    }

    /// The text of a key's [`Key::bytes`], if they are a key's.
    pub(super) fn text_of(bytes: &[u8]) -> Option<String> {
        match bytes.split_first()? {
            (0, b) => Some(Uuid::from_slice(b).ok()?.hyphenated().to_string()),
            (1, t) => std::str::from_utf8(t).ok().map(str::to_string),
            _ => None,
        }
    }
}

/// The time slices of a store whose TTL is `ttl_ms`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slicing {
    ttl_ms: i64,
    width_ms: i64,
}

impl Slicing {
    pub(super) fn new(ttl_ms: i64) -> Slicing {
        Slicing {
            ttl_ms,
            width_ms: (ttl_ms / SLICES_PER_TTL).max(1),
        }
    }

    /// The slice of an entry written at `at`.
    pub(super) fn slice_of(self, at: i64) -> i64 {
        at.div_euclid(self.width_ms)
    }

    /// The last millisecond of slice `s`: the time its entries count as written at.
    pub(super) fn last_ms(self, s: i64) -> i64 {
        s.saturating_mul(self.width_ms)
            .saturating_add(self.width_ms - 1)
    }

    /// Whether the entries of slice `s` are remembered at `now`.
    pub(super) fn live(self, s: i64, now: i64) -> bool {
        now.saturating_sub(self.last_ms(s)) < self.ttl_ms
    }
}

/// The keys of one slice.
#[derive(Debug)]
struct Slice<P> {
    /// UUID ids (ingest's, UUIDv5: SHA-1 output), hashed with foldhash: a tenth of SipHash's cost.
    uuids: HashMap<[u8; 16], P, foldhash::fast::RandomState>,
    /// Any other id, chosen by whoever produced the event: kept on SipHash, which resists keys
    /// picked to collide.
    texts: HashMap<Box<str>, P>,
}

impl<P: Copy> Slice<P> {
    fn new() -> Slice<P> {
        Slice {
            uuids: HashMap::default(),
            texts: HashMap::new(),
        }
    }

    fn get(&self, key: Key<'_>) -> Option<P> {
        match key {
            Key::Uuid(b) => self.uuids.get(&b).copied(),
            Key::Text(t) => self.texts.get(t).copied(),
        }
    }

    fn remove(&mut self, key: Key<'_>) -> bool {
        match key {
            Key::Uuid(b) => self.uuids.remove(&b).is_some(),
            Key::Text(t) => self.texts.remove(t).is_some(),
        }
    }

    fn insert(&mut self, key: Key<'_>, packed: P) {
        match key {
            Key::Uuid(b) => {
                self.uuids.insert(b, packed);
            }
            Key::Text(t) => {
                self.texts.insert(t.into(), packed);
            }
        }
    }

    fn len(&self) -> usize {
        self.uuids.len() + self.texts.len()
    }

    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.uuids
            .keys()
            .map(|b| Uuid::from_bytes(*b).hyphenated().to_string())
            .chain(self.texts.keys().map(|t| t.to_string()))
    }
}

/// One partition of a store.
#[derive(Debug)]
pub struct InMemory<E: Entry> {
    clock: Slicing,
    slices: BTreeMap<i64, Slice<E::Packed>>,
    /// The changelog offset this state reflects the changelog up to (exclusive): every record
    /// below it is in, none at or above it (a checkpoint's offset, [`super::checkpoint`]).
    next_offset: i64,
}

impl<E: Entry> InMemory<E> {
    /// An empty partition of a store whose TTL is `ttl_ms`.
    pub fn new(ttl_ms: i64) -> InMemory<E> {
        InMemory {
            clock: Slicing::new(ttl_ms),
            slices: BTreeMap::new(),
            next_offset: 0,
        }
    }

    /// The changelog offset this state reflects the changelog up to (exclusive).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// This state now reflects the changelog up to `next` (exclusive); never moves back.
    pub fn advance(&mut self, next: i64) {
        self.next_offset = self.next_offset.max(next);
    }

    /// Every entry held and still remembered at `now`, with its key.
    pub fn entries(&self, now: i64) -> impl Iterator<Item = (String, E)> + '_ {
        self.slices
            .iter()
            .filter(move |(s, _)| self.clock.live(**s, now))
            .flat_map(move |(s, slice)| {
                let last = self.clock.last_ms(*s);
                slice
                    .uuids
                    .iter()
                    .map(move |(b, p)| (Uuid::from_bytes(*b).hyphenated().to_string(), *p, last))
                    .chain(
                        slice
                            .texts
                            .iter()
                            .map(move |(t, p)| (t.to_string(), *p, last)),
                    )
            })
            .map(|(k, p, last)| (k, E::unpack(p, last)))
    }

    /// The entry of `key`, if it is remembered at `now`.
    pub fn get(&self, key: &str, now: i64) -> Option<E> {
        let k = Key::of(key);
        let (s, packed) = self
            .slices
            .iter()
            .rev()
            .find_map(|(s, slice)| slice.get(k).map(|p| (*s, p)))?;
        self.clock
            .live(s, now)
            .then(|| E::unpack(packed, self.clock.last_ms(s)))
    }

    /// `key` now maps to `entry`.
    pub fn put(&mut self, key: &str, entry: &E) {
        let k = Key::of(key);
        self.remove_key(k);
        let s = self.clock.slice_of(entry.at());
        self.slices
            .entry(s)
            .or_insert_with(Slice::new)
            .insert(k, entry.pack());
    }

    /// Puts `entry` if it is remembered at `now`, else forgets `key` (what a restore does with
    /// each changelog record).
    pub fn restore(&mut self, key: &str, entry: Option<E>, now: i64) {
        match entry {
            Some(e) if self.clock.live(self.clock.slice_of(e.at()), now) => self.put(key, &e),
            _ => self.remove(key),
        }
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        self.remove_key(Key::of(key));
    }

    fn remove_key(&mut self, k: Key<'_>) {
        let emptied = self
            .slices
            .iter_mut()
            .find_map(|(s, slice)| slice.remove(k).then_some((*s, slice.len() == 0)));
        if let Some((s, true)) = emptied {
            self.slices.remove(&s);
        }
    }

    /// Keys no longer remembered at `now`, oldest slices first, at most `limit`.
    pub fn expired(&self, now: i64, limit: usize) -> Vec<String> {
        self.slices
            .iter()
            .take_while(|(s, _)| !self.clock.live(**s, now))
            .flat_map(|(_, slice)| slice.keys())
            .take(limit)
            .collect()
    }

    /// Keys held (expired ones not yet forgotten included).
    pub fn len(&self) -> usize {
        self.slices.values().map(Slice::len).sum()
    }

    /// No keys held.
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5299580b-3518-53a2-ada8-9caa3a5c9a5c";

    #[test]
    fn only_canonical_uuids_are_held_as_bytes_and_each_key_comes_back_as_written() {
        assert!(matches!(Key::of(ID), Key::Uuid(_)));
        for other in [
            "5299580B-3518-53A2-ADA8-9CAA3A5C9A5C",
            "5299580b351853a2ada89caa3a5c9a5c",
            "{5299580b-3518-53a2-ada8-9caa3a5c9a5c}",
            "e-1",
            "",
        ] {
            assert_eq!(Key::of(other), Key::Text(other));
        }
        let mut p = InMemory::<i64>::new(8_000);
        for k in [ID, "5299580B-3518-53A2-ADA8-9CAA3A5C9A5C", "e-1"] {
            p.put(k, &1_000);
        }
        assert_eq!(p.len(), 3, "upper and lower case are different keys");
        let mut keys = p.expired(1_000_000, 10);
        keys.sort();
        assert_eq!(keys, ["5299580B-3518-53A2-ADA8-9CAA3A5C9A5C", ID, "e-1"]);
    }

    #[test]
    fn a_key_lives_in_one_slice_and_the_newest_put_wins() {
        let mut p = InMemory::<i64>::new(8_000); // slices of 1 s
        p.put(ID, &500);
        p.put(ID, &3_500);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.get(ID, 4_000),
            Some(3_999),
            "counted from its slice's last ms"
        );
        p.remove(ID);
        assert!(p.is_empty(), "an emptied slice is dropped");
    }

    #[test]
    fn entries_are_remembered_at_least_the_ttl_and_at_most_a_slice_longer() {
        let mut p = InMemory::<i64>::new(8_000);
        p.put(ID, &1_000); // slice [1000, 1999]
        assert!(p.get(ID, 1_000 + 8_000 - 1).is_some());
        assert!(p.get(ID, 1_999 + 8_000 - 1).is_some());
        assert!(p.get(ID, 1_999 + 8_000).is_none());
        assert_eq!(p.expired(9_998, 10), Vec::<String>::new());
        assert_eq!(p.expired(9_999, 10), vec![ID.to_string()]);
        let mut r = InMemory::<i64>::new(8_000);
        r.restore(ID, Some(1_000), 9_999);
        r.restore("e-1", Some(1_000), 9_998);
        assert_eq!(
            (r.get(ID, 0), r.len()),
            (None, 1),
            "a restore skips the expired"
        );
        r.restore("e-1", None, 9_998);
        assert!(r.is_empty(), "and applies tombstones");
    }
}
