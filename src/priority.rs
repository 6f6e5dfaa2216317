//! A stage's loop ahead of its helper threads on the CPU.
//!
//! A stage runs as fast as its loop: one thread collects, decodes, decides and encodes batch
//! after batch, while librdkafka's threads and the committer send and commit the batch before
//! (bench/PROCESSOR.md). When every core is busy, the scheduler shares them evenly among runnable
//! threads, and the loop waited in the run queue for a third of a 1 M-event run while helpers
//! that had a whole batch's time to spare ran. Helpers therefore run some steps of nice lower
//! (`processor.helper_nice`, `dispatcher.helper_nice`): they get what the loop leaves, which
//! is most of a core, and the loop the rest.
//!
//! Invariants:
//! - A priority is only ever lowered, never raised: nothing here needs a privilege, and a
//!   process started under `nice` keeps its own level as the floor.
//! - librdkafka's threads take the nice of the thread that creates their client (and the broker
//!   threads it starts later, of its main thread): a stage's clients are created on a lowered
//!   thread ([`lowered`]); the committer lowers itself ([`lower_this_thread`]).
//! - Only on Linux, where nice is a thread's. Elsewhere it is the whole process's, and nothing
//!   is changed.

/// Lowers the calling thread's priority by `steps` of nice (capped at 19). A refusal is logged
/// and otherwise ignored: it only costs speed.
pub fn lower_this_thread(steps: i32) {
    if steps <= 0 || !cfg!(target_os = "linux") {
        return;
    }
    if let Err(e) = rustix::process::nice(steps) {
        tracing::warn!(error = %e, steps, "could not lower a helper thread's priority");
    }
}

/// Runs `create` on a thread of its own, lowered by `steps` and inside the caller's tokio
/// runtime if there is one, and returns what it made: the threads a Kafka client starts there
/// inherit the lowered priority.
pub fn lowered<T: Send>(steps: i32, create: impl FnOnce() -> T + Send) -> T {
    if steps <= 0 {
        return create();
    }
    // A client may spawn tasks (rdkafka's stream consumer does): in the caller's runtime.
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            lower_this_thread(steps);
            create()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(None).unwrap()
    }

    #[test]
    fn threads_started_on_a_lowered_thread_inherit_its_priority_and_the_caller_keeps_its_own() {
        let before = nice_of_this_thread();
        let (own, child) = lowered(5, || {
            let child = std::thread::spawn(nice_of_this_thread).join().unwrap();
            (nice_of_this_thread(), child)
        });
        assert_eq!((own, child), ((before + 5).min(19), (before + 5).min(19)));
        assert_eq!(nice_of_this_thread(), before, "the caller is not lowered");
        assert_eq!(lowered(0, nice_of_this_thread), before, "0 runs in place");
    }
}
