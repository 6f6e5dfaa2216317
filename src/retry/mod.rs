//! Retry policy: which tier a failed record goes to next, and when it becomes due.
//!
//! Invariants:
//! - Attempt 1 is the first processing (from an input topic). After attempt `n` fails with a
//!   retryable error, the record goes to `…retry.<n>` while `n <= tiers`, else to the DLQ.
//! - A record on `…retry.<n>` is due at `failed_at + wait`, where `wait = max(tier[n-1],
//!   retry_after) + U[0, tier[n-1])`: never earlier than the tier (or the sink's Retry-After), and
//!   spread with full jitter over one more tier length so that a burst of failures does not come back
//!   as a burst.
//! - The policy is pure: time and randomness come in as arguments.

use std::time::Duration;

/// Where a failed record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// To `…retry.<tier>` (1-based), due at `not_before` (epoch ms).
    Retry {
        /// Retry topic number.
        tier: usize,
        /// Epoch ms before which the next attempt must not run.
        not_before: i64,
    },
    /// To the dead-letter topic.
    DeadLetter,
}

/// The tiers of one stage.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    tiers: Vec<Duration>,
}

impl RetryPolicy {
    /// A policy with these tier delays.
    pub fn new(tiers: Vec<Duration>) -> RetryPolicy {
        RetryPolicy { tiers }
    }

    /// Number of retry topics.
    pub fn tiers(&self) -> usize {
        self.tiers.len()
    }

    /// Where a record goes after attempt `attempt` (1-based) failed at `failed_at_ms`;
    /// `jitter_unit` is a uniform sample from [0, 1).
    pub fn next(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        failed_at_ms: i64,
        jitter_unit: f64,
    ) -> Next {
        let n = attempt as usize;
        let Some(tier) = self.tiers.get(n.saturating_sub(1)).filter(|_| n >= 1) else {
            return Next::DeadLetter;
        };
        let base = retry_after.map_or(*tier, |r| r.max(*tier));
        let jitter = tier.mul_f64(jitter_unit.clamp(0.0, 1.0));
        let wait = i64::try_from((base + jitter).as_millis()).unwrap_or(i64::MAX);
        Next::Retry {
            tier: n,
            not_before: failed_at_ms.saturating_add(wait),
        }
    }

    /// The bounds of `not_before - failed_at` for a record entering tier `tier` without a
    /// Retry-After: `[tier, 2 × tier)`.
    pub fn window(&self, tier: usize) -> Option<(Duration, Duration)> {
        self.tiers.get(tier.checked_sub(1)?).map(|t| (*t, *t * 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(vec![
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
        ])
    }

    #[test]
    fn attempts_walk_the_tiers_then_dead_letter() {
        let p = policy();
        assert_eq!(
            p.next(1, None, 0, 0.0),
            Next::Retry {
                tier: 1,
                not_before: 1_000
            }
        );
        assert_eq!(
            p.next(2, None, 0, 0.0),
            Next::Retry {
                tier: 2,
                not_before: 10_000
            }
        );
        assert_eq!(
            p.next(3, None, 0, 0.0),
            Next::Retry {
                tier: 3,
                not_before: 60_000
            }
        );
        assert_eq!(p.next(4, None, 0, 0.0), Next::DeadLetter);
        assert_eq!(
            p.next(0, None, 0, 0.0),
            Next::DeadLetter,
            "attempt numbers start at 1"
        );
    }

    #[test]
    fn jitter_stays_within_one_more_tier() {
        let p = policy();
        for unit in [0.0, 0.25, 0.999_999] {
            let Next::Retry { not_before, .. } = p.next(1, None, 5_000, unit) else {
                panic!()
            };
            assert!((6_000..7_000).contains(&not_before), "{unit}: {not_before}");
        }
        assert_eq!(
            p.window(1),
            Some((Duration::from_secs(1), Duration::from_secs(2)))
        );
    }

    #[test]
    fn a_sinks_retry_after_is_honoured_but_never_shortens_the_tier() {
        let p = policy();
        assert_eq!(
            p.next(1, Some(Duration::from_secs(30)), 0, 0.0),
            Next::Retry {
                tier: 1,
                not_before: 30_000
            }
        );
        assert_eq!(
            p.next(2, Some(Duration::from_secs(1)), 0, 0.0),
            Next::Retry {
                tier: 2,
                not_before: 10_000
            }
        );
    }
}
