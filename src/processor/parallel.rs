//! A large batch judged on several threads: its records cut into contiguous runs of about the same
//! length, each run judged on a thread of its own, the verdicts put back in the batch's order.
//!
//! Invariants:
//! - What a batch comes to does not depend on how it was cut: a record is judged against the
//!   store alone, and whether an earlier record of the batch was the same event is settled
//!   afterwards, in order, on the loop's thread (`settle` in the parent module).
//! - The verdicts come back in the batch's order, so commands and store changes are in the order
//!   one thread would have made them.
//! - Only a multi-threaded runtime cuts a batch: the threads wait for the registry on its I/O
//!   driver, which that runtime's workers drive while the loop's thread waits in
//!   `block_in_place`. Runs of fewer than [`MIN_RUN`] records are not worth a thread.

use std::future::Future;

use crate::stage::BatchError;

/// The fewest records a thread is started for: starting one costs about as much as judging a few
/// records.
pub(super) const MIN_RUN: usize = 64;

/// The number of runs `len` records are cut into on at most `threads` threads.
fn runs(len: usize, threads: usize) -> usize {
    threads.min(len / MIN_RUN).max(1)
}

/// Runs `judge` on contiguous runs of `items`, on up to `threads` threads (the first run on the
/// caller's), and returns their results in `items`' order. Runs one after the other where threads
/// cannot be used (a current-thread runtime, or a thread that could not be started).
pub(super) async fn map_parts<'a, T, R, F, Fut>(
    items: &'a [T],
    threads: usize,
    judge: F,
) -> Result<Vec<R>, BatchError>
where
    T: Sync,
    R: Send,
    F: Fn(&'a [T]) -> Fut + Sync,
    Fut: Future<Output = Result<Vec<R>, BatchError>> + Send,
{
    let n = runs(items.len(), threads);
    let rt = tokio::runtime::Handle::current();
    if n < 2 || rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return judge(items).await;
    }
    let mut parts = items.chunks(items.len().div_ceil(n));
    let results = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let first = parts.next().unwrap_or_default();
            let (rt, judge) = (&rt, &judge);
            let spawned: Vec<_> = parts
                .map(|part| {
                    std::thread::Builder::new()
                        .name("onceflow-judge".into())
                        .spawn_scoped(s, move || rt.block_on(judge(part)))
                        .map_err(|e| (part, e))
                })
                .collect();
            let mut results = vec![rt.block_on(judge(first))];
            for t in spawned {
                results.push(match t {
                    Ok(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    // No thread: this run on the caller's, after its own.
                    Err((part, e)) => {
                        tracing::warn!(error = %e, "cannot start a thread; judging on the loop's");
                        rt.block_on(judge(part))
                    }
                });
            }
            results
        })
    });
    let mut all = Vec::with_capacity(items.len());
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_at_least_min_run_records_and_no_more_threads_than_asked() {
        assert_eq!(runs(0, 4), 1);
        assert_eq!(runs(MIN_RUN * 2 - 1, 4), 1);
        assert_eq!(runs(MIN_RUN * 2, 4), 2);
        assert_eq!(runs(5_000, 2), 2);
        assert_eq!(runs(5_000, 0), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_back_in_order_from_several_threads() {
        let items: Vec<u32> = (0..1_000).collect();
        let out = map_parts(&items, 3, |part| async move {
            let name = std::thread::current().name().map(str::to_string);
            Ok(part.iter().map(|i| (*i, name.clone())).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        let order: Vec<u32> = out.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, items);
        let judges = out
            .iter()
            .filter(|(_, n)| n.as_deref() == Some("onceflow-judge"))
            .count();
        assert_eq!(
            judges,
            1_000 - 334,
            "two of three runs on threads of their own"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_in_any_run_is_the_batch_s() {
        let items: Vec<u32> = (0..1_000).collect();
        let out = map_parts(&items, 2, |part| async move {
            if part.contains(&999) {
                return Err(BatchError::Transient("registry down".into()));
            }
            Ok(part.to_vec())
        })
        .await;
        assert!(matches!(out, Err(BatchError::Transient(_))), "{out:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_judges_on_the_caller_s_thread() {
        let items: Vec<u32> = (0..1_000).collect();
        let out = map_parts(&items, 4, |part| async move {
            Ok(vec![(
                part.len(),
                std::thread::current().name().map(str::to_string),
            )])
        })
        .await
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 1_000);
    }
}
