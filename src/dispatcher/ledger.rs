//! The dispatcher's effect ledger: per command id, whether a call is being attempted or is done,
//! kept in a keyed changelog store ([`crate::dedupe::Store`]) on `<ns>.<adapter>.ledger`.
//!
//! Invariants:
//! - `done` is written in the same transaction as the command's receipt and its outbox offset: a
//!   command found done is never sent again.
//! - `attempting` is written (where the adapter needs it) in a transaction of its own BEFORE the
//!   call, and replaced by `done` or removed in the transaction that records the outcome: a
//!   command found attempting after a crash is in doubt, exactly the window between the call and
//!   the commit.
//! - The changelog value is `attempting:<epoch ms>` or `done:<epoch ms>`.

use crate::dedupe::{Entry, Store};

/// What the ledger knows of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A call was about to be made; its outcome was not committed.
    Attempting,
    /// The provider's effect is recorded.
    Done,
}

/// One ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Attempting or done.
    pub state: State,
    /// When (epoch ms).
    pub at: i64,
}

impl LedgerEntry {
    /// An "attempting" mark at `at`.
    pub fn attempting(at: i64) -> LedgerEntry {
        LedgerEntry {
            state: State::Attempting,
            at,
        }
    }

    /// A "done" record at `at`.
    pub fn done(at: i64) -> LedgerEntry {
        LedgerEntry {
            state: State::Done,
            at,
        }
    }
}

impl Entry for LedgerEntry {
    /// The ledger keeps its entries whole: its keys are few next to the dedupe store's.
    type Packed = LedgerEntry;
    /// Not grouped: an entry is overwritten (attempting, then done).
    const GROUPED: bool = false;

    fn at(&self) -> i64 {
        self.at
    }

    fn pack(&self) -> LedgerEntry {
        *self
    }

    fn unpack(packed: LedgerEntry, _slice_last_ms: i64) -> LedgerEntry {
        packed
    }

    fn encode(&self) -> String {
        match self.state {
            State::Attempting => format!("attempting:{}", self.at),
            State::Done => format!("done:{}", self.at),
        }
    }

    fn decode(value: &str) -> Option<LedgerEntry> {
        let (state, at) = value.split_once(':')?;
        let state = match state {
            "attempting" => State::Attempting,
            "done" => State::Done,
            _ => return None,
        };
        Some(LedgerEntry {
            state,
            at: at.parse().ok()?,
        })
    }
}

/// The ledger of the partitions this instance owns.
pub type Ledger = Store<LedgerEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_changelog_value() {
        for e in [
            LedgerEntry::attempting(7),
            LedgerEntry::done(1_795_000_000_000),
        ] {
            assert_eq!(LedgerEntry::decode(&e.encode()), Some(e));
        }
        assert_eq!(LedgerEntry::decode("done"), None);
        assert_eq!(LedgerEntry::decode("maybe:1"), None);
        assert_eq!(LedgerEntry::decode("done:x"), None);
    }

    #[test]
    fn ledger_records_are_one_a_key_since_an_entry_is_overwritten() {
        // A grouped record could be compacted away by a later record of its first key while
        // another of its keys still counts (attempting, then done).
        let put = |key: &str| crate::dedupe::Change::Put {
            partition: 0,
            key: key.into(),
            entry: LedgerEntry::attempting(7),
        };
        let records = crate::dedupe::changelog::records(&[put("a"), put("b")]);
        let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(records[1].value.as_deref(), Some("attempting:7"));
    }
}
