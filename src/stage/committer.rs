//! The committer: the thread a session's transactions run on, so that the stage loop can collect
//! and handle the next batch while the last one commits.
//!
//! Invariants:
//! - At most one job at a time: the session submits a batch's transaction only after it took the
//!   outcome of the one before (one transaction at a time per transactional producer).
//! - The committer has its own thread and its own single-threaded runtime, apart from the stage's
//!   runtime. A revoke, which librdkafka hands to the consumer's poll on a worker of the stage's
//!   runtime, can therefore wait for it ([`Gate::wait_idle`]) without starving it, whatever that
//!   runtime's flavour and however many of its workers wait.
//! - That runtime runs between jobs too, not only while one runs: work a job will wait for,
//!   spawned on it ahead of the job ([`super::precondition`]), goes on while the committer is
//!   idle, as that module promises.
//! - The gate is busy from a job's submission until its transaction is settled (committed,
//!   aborted, given up, or its job panicked): no partition is revoked while records, changelog
//!   entries or offsets of it are in a transaction still open. The new owner then restores a
//!   changelog that holds them and starts from offsets past them.
//! - The committer's transactional calls are bounded ([`crate::kafka::txn`]), so every job ends
//!   and a waiting revoke goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Busy while a transaction is in the committer's hands.
#[derive(Debug, Default)]
pub(super) struct Gate {
    busy: Mutex<bool>,
    idle: Condvar,
}

/// How often a revoke that is still waiting says so.
const WAIT_NOTE: Duration = Duration::from_secs(10);

impl Gate {
    fn set(&self, busy: bool) {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        *b = busy;
        if !busy {
            self.idle.notify_all();
        }
    }

    /// Blocks until no transaction is in the committer's hands.
    pub(super) fn wait_idle(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        while *busy {
            let (b, timeout) = self
                .idle
                .wait_timeout(busy, WAIT_NOTE)
                .unwrap_or_else(|p| p.into_inner());
            busy = b;
            if *busy && timeout.timed_out() {
                warn!(waited = ?started.elapsed(), "a revoke is waiting for the transaction in flight");
            }
        }
    }
}

/// Leaves the gate when dropped, so a job that panicked still lets a revoke go on.
struct Leave(Arc<Gate>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A session's committer thread.
pub(super) struct Committer {
    jobs: mpsc::UnboundedSender<Job>,
    gate: Arc<Gate>,
    /// The committer's runtime, for work a job waits for ([`super::precondition`]); it runs
    /// as long as the committer does.
    runtime: tokio::runtime::Handle,
}

impl Committer {
    /// A committer thread named after `role`, `nice` steps below the caller
    /// ([`crate::priority`]), and the gate a revoke waits on.
    pub(super) fn start(role: &str, nice: i32) -> std::io::Result<Committer> {
        let gate = Arc::new(Gate::default());
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let leave = Arc::clone(&gate);
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(format!("commit {role}"))
            .spawn(move || {
                crate::priority::lower_this_thread(nice);
                // Ends when the session drops its committer (the sender).
                runtime.block_on(async {
                    while let Some(job) = rx.recv().await {
                        let _leave = Leave(Arc::clone(&leave));
                        if std::panic::AssertUnwindSafe(job)
                            .catch_unwind()
                            .await
                            .is_err()
                        {
                            tracing::error!("a transaction's job panicked");
                        }
                    }
                });
                // A call abandoned past its time-out may still block a thread of this runtime's
                // pool ([`crate::kafka::txn`]): not waited for.
                runtime.shutdown_background();
            })?;
        Ok(Committer {
            jobs,
            gate,
            runtime: handle,
        })
    }

    /// The committer's runtime.
    pub(super) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The gate a revoke waits on.
    pub(super) fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }

    /// Runs `job` on the committer thread; its output comes through the receiver (closed
    /// without a value if the job panicked or the thread is gone).
    pub(super) fn submit<T, F>(&self, job: F) -> oneshot::Receiver<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.gate.set(true);
        let job: Job = Box::pin(async move {
            let _ = tx.send(job.await);
        });
        if self.jobs.send(job).is_err() {
            // The thread is gone (it never is while the session holds the sender): the receiver
            // reports the job as lost.
            self.gate.set(false);
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_waits_until_the_job_is_done_and_a_panicking_job_still_frees_it() {
        let c = Committer::start("test", 0).unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let done = c.submit(async move {
            go_rx.lock().unwrap().recv().unwrap();
            7
        });
        let gate = c.gate();
        let waiter = std::thread::spawn(move || {
            gate.wait_idle();
            std::time::Instant::now()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the job is still running");
        let released = std::time::Instant::now();
        go_tx.send(()).unwrap();
        assert!(waiter.join().unwrap() >= released);
        assert_eq!(done.blocking_recv().unwrap(), 7);

        let lost = c.submit(async { panic!("job fails") });
        assert!(
            lost.blocking_recv().is_err(),
            "no value from a panicked job"
        );
        c.gate().wait_idle();
        assert_eq!(c.submit(async { 8 }).blocking_recv().unwrap(), 8);
    }

    #[test]
    fn work_spawned_on_the_committers_runtime_goes_on_while_no_job_runs() {
        let c = Committer::start("test", 0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        c.runtime().spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the spawned work waited for a job"
        );
    }
}
