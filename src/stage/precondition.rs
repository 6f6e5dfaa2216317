//! A check a batch's transaction commits only after: the processor's "the registry still has
//! every schema id this batch's commands were encoded with".
//!
//! Invariants:
//! - A transactional stage starts the check as soon as the work handed it over (right after the
//!   batch was handled), on the committer's runtime ([`super::committer`]), where it runs while
//!   the batch waits for the transaction before it and while its records are sent: the loop
//!   never waits for it, and a revoke that waits for the committer never starves it (the
//!   committer's runtime is not the stage's).
//! - A transaction commits only after its batch's check held. A check that failed (or whose task
//!   failed) aborts it, and the batch is redone after a pause like any transient failure: nothing
//!   of it is committed. At-least-once (no transaction) runs the check before it writes anything.
//! - A batch that is dropped (a rebalance, the batch before it failed) stops its check.

use std::future::Future;
use std::pin::Pin;

use tokio::runtime::Handle;
use tokio::task::{JoinError, JoinHandle};

use super::BatchError;

type Check = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// A check not yet started; `Err` carries why the batch may not commit.
pub struct Precondition(Check);

impl std::fmt::Debug for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Precondition")
    }
}

impl Precondition {
    /// A check of `check`, started by the stage ([`Precondition::start`]).
    pub fn new<F>(check: F) -> Precondition
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        Precondition(Box::pin(check))
    }

    /// Starts the check on `runtime`.
    pub(super) fn start(self, runtime: &Handle) -> Started {
        Started(Some(runtime.spawn(self.0)))
    }

    /// Runs the check here: Ok when it held, a transient failure of the batch otherwise.
    pub(super) async fn holds(self) -> Result<(), BatchError> {
        verdict(Ok(self.0.await))
    }
}

/// A check running in the background.
#[derive(Debug)]
pub(super) struct Started(Option<JoinHandle<Result<(), String>>>);

impl Started {
    /// Waits for the check: Ok when it held, a transient failure of the batch otherwise.
    pub(super) async fn holds(mut self) -> Result<(), BatchError> {
        match self.0.take() {
            Some(task) => verdict(task.await),
            None => Ok(()),
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

fn verdict(outcome: Result<Result<(), String>, JoinError>) -> Result<(), BatchError> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(BatchError::Transient(reason)),
        Err(e) => Err(BatchError::Transient(format!(
            "the check before the commit did not finish: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_failed_is_a_transient_failure_of_the_batch() {
        let runtime = Handle::current();
        let ok = Precondition::new(async { Ok(()) });
        assert!(ok.start(&runtime).holds().await.is_ok());
        let gone = || Precondition::new(async { Err("schema id 7 is gone".to_string()) });
        for outcome in [gone().start(&runtime).holds().await, gone().holds().await] {
            match outcome {
                Err(BatchError::Transient(reason)) => assert_eq!(reason, "schema id 7 is gone"),
                other => panic!("expected a transient failure, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_check_that_panicked_does_not_let_the_batch_commit() {
        let panicked = Precondition::new(async { panic!("the check panicked") });
        assert!(matches!(
            panicked.start(&Handle::current()).holds().await,
            Err(BatchError::Transient(_))
        ));
    }

    #[tokio::test]
    async fn dropping_a_started_check_stops_it() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let started = Precondition::new(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
            Ok(())
        })
        .start(&Handle::current());
        drop(started);
        // The task was aborted, so its sender is dropped and the receiver sees it.
        assert!(rx.await.is_err());
    }
}
