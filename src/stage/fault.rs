//! Test hook: crash or fail a transactional stage (processor or dispatcher) at a chosen point of a
//! chosen batch, so integration tests can prove recovery at exact places (random SIGKILLs cover the
//! rest).
//!
//! `ONCEFLOW_TEST_FAULT=<point>:<batch>` (read once at start-up; unset in production):
//! - `crash_before_commit:N`: after every record and the offsets were sent to the transaction,
//!   the process aborts (SIGABRT, no clean-up, like a power cut); for the dispatcher this is after
//!   the batch's HTTP calls were made and before their results are committed;
//! - `crash_after_marks:N`: right after the dispatcher committed its "attempting" marks and before
//!   it made any call;
//! - `crash_after_commit:N`: right after the commit;
//!
//! each in batch N or, when batch N never gets that far (all its records deferred or paused), the
//! first later batch that does (batches are numbered over the whole run, across rejoins, so a
//! fault that ends a session does not fire again in the next);
//! - `abort_before_commit:N`: in batch N, the transaction is aborted as if the broker had said so,
//!   and the batch is redone from the committed offsets;
//! - `abort_first_attempt:N`: in batch N, only the first transaction is aborted so; a work that
//!   sends its outputs again in a fresh one (the dispatcher,
//!   [`Work::commit_attempts`](super::Work::commit_attempts)) commits them in the second, one that
//!   does not (the processor) redoes the batch;
//! - `commit_times_out:N`: in batch N, the first commit call answers "timed out, retry to resume"
//!   (librdkafka's retriable answer when a commit outlasts the call's time-out) without calling
//!   librdkafka: the outcome is unknown to the stage, as after a broker that stalled past the
//!   call's time-out. A real call with a zero time-out was a race, not a fault: librdkafka looks
//!   for the answer only after sending the request, and on a loaded machine the broker's answer
//!   was often there by then, so the commit succeeded (1 ms was no better);
//! - `send_offsets_hangs:N`: in batch N, the call that sends the offsets to the transaction does
//!   not return for the transaction time-out plus 60 s, as librdkafka's
//!   `send_offsets_to_transaction` did in the chaos run after a coordinator was killed;
//! - `transaction_delayed:N`: batch N's transaction begins [`DELAY`] late on the committer
//!   thread, so that the loop polls, and a rebalance can happen, while it is in flight.
//!
//! Invariant: with the variable unset, [`FaultPlan::hit`] is always false.

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// After sending, before commit: crash.
    CrashBeforeCommit,
    /// Right after the commit: crash.
    CrashAfterCommit,
    /// Before commit: abort the transaction instead.
    AbortBeforeCommit,
    /// Before the first attempt's commit: abort that transaction instead.
    AbortFirstAttempt,
    /// After the "attempting" marks were committed, before any call: crash.
    CrashAfterMarks,
    /// The commit call times out (its outcome unknown).
    CommitTimesOut,
    /// The call sending the offsets hangs in librdkafka.
    SendOffsetsHangs,
    /// The transaction begins [`DELAY`] late.
    TransactionDelayed,
}

/// How late a `transaction_delayed` transaction begins.
pub const DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// The fault to inject, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultPlan {
    fault: Option<(Point, u64)>,
}

/// The environment variable.
pub const VARIABLE: &str = "ONCEFLOW_TEST_FAULT";

impl FaultPlan {
    /// Reads [`VARIABLE`]; an unknown value is ignored with a warning.
    pub fn from_env() -> FaultPlan {
        let Ok(spec) = std::env::var(VARIABLE) else {
            return FaultPlan::default();
        };
        let parsed = spec.split_once(':').and_then(|(point, n)| {
            let point = match point {
                "crash_before_commit" => Point::CrashBeforeCommit,
                "crash_after_commit" => Point::CrashAfterCommit,
                "abort_before_commit" => Point::AbortBeforeCommit,
                "abort_first_attempt" => Point::AbortFirstAttempt,
                "crash_after_marks" => Point::CrashAfterMarks,
                "commit_times_out" => Point::CommitTimesOut,
                "send_offsets_hangs" => Point::SendOffsetsHangs,
                "transaction_delayed" => Point::TransactionDelayed,
                _ => return None,
            };
            Some((point, n.parse().ok()?))
        });
        if parsed.is_none() {
            tracing::warn!(value = %spec, "ignoring unparsable {VARIABLE}");
        }
        FaultPlan { fault: parsed }
    }

    /// `point` in batch `batch` (1-based).
    pub fn at(point: Point, batch: u64) -> FaultPlan {
        FaultPlan {
            fault: Some((point, batch)),
        }
    }

    /// Whether to inject `point` in batch `batch` (1-based). A crash fires at the first time the
    /// point is reached in batch N or later (a batch whose records were all deferred or paused
    /// never reaches a commit, so "exactly batch N" could be skipped); an injected abort or commit
    /// time-out fires in batch N only.
    pub fn hit(&self, point: Point, batch: u64) -> bool {
        match self.fault {
            Some((
                p @ (Point::AbortBeforeCommit
                | Point::AbortFirstAttempt
                | Point::CommitTimesOut
                | Point::SendOffsetsHangs
                | Point::TransactionDelayed),
                n,
            )) => point == p && batch == n,
            Some((p, n)) => p == point && batch >= n,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_fire_from_their_batch_on_and_an_abort_only_in_its_batch() {
        let crash = FaultPlan::at(Point::CrashAfterCommit, 3);
        assert!(!crash.hit(Point::CrashAfterCommit, 2));
        assert!(crash.hit(Point::CrashAfterCommit, 3));
        assert!(
            crash.hit(Point::CrashAfterCommit, 4),
            "batch 3 may never have committed"
        );
        assert!(!crash.hit(Point::CrashBeforeCommit, 4));
        let abort = FaultPlan::at(Point::AbortBeforeCommit, 1);
        assert!(abort.hit(Point::AbortBeforeCommit, 1));
        assert!(
            !abort.hit(Point::AbortBeforeCommit, 2),
            "the redone batch commits"
        );
        let once = FaultPlan::at(Point::AbortFirstAttempt, 2);
        assert!(once.hit(Point::AbortFirstAttempt, 2));
        assert!(!once.hit(Point::AbortFirstAttempt, 3));
        assert!(!once.hit(Point::AbortBeforeCommit, 2));
        assert!(!FaultPlan::default().hit(Point::CrashAfterCommit, 1));
    }
}
