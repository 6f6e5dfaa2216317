//! The per-adapter circuit breaker, as a pure state machine (time comes in as epoch ms).
//!
//! Hand-written rather than taken from a crate: the one kept crate (failsafe) lets every call
//! through while half-open, and onceflow promises that at most `probes` calls reach a provider
//! until it has recovered.
//!
//! Invariants:
//! - Closed: every call is permitted. It opens after `failures` failed calls in a row, or when the
//!   last `window` calls (once there are that many) failed at `failure_rate` or more.
//! - Open until a time: no call is permitted. At that time it becomes half-open.
//! - Half-open: at most `probes` calls are permitted in all. The first success closes it (and
//!   resets the open interval); a failure opens it again for twice the previous interval, capped
//!   at `max_open`.
//! - Outcomes of calls permitted in an earlier state (still in flight when the state changed) are
//!   ignored while open or half-open: only probes decide.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::BreakerSettings;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// No calls until `until` (epoch ms).
    Open {
        /// When probes may start.
        until: i64,
    },
    /// Up to `probes` calls are let through.
    HalfOpen {
        /// Probes permitted so far.
        admitted: u32,
    },
}

impl State {
    /// The metric value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }

    /// The label of a transition into this state.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen { .. } => "half_open",
            State::Open { .. } => "open",
        }
    }
}

/// Whether a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes.
    Call,
    /// Yes, as a half-open probe.
    Probe,
    /// No; ask again at `until` (epoch ms).
    Reject {
        /// When to ask again.
        until: i64,
    },
}

/// How long a call rejected while half-open (probes in flight) waits before asking again.
const HALF_OPEN_RECHECK_MS: i64 = 250;

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    consecutive: u32,
    recent: VecDeque<bool>,
    open_for: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            open_for: settings.open,
            settings,
            state: State::Closed,
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    /// The current state.
    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go at `now`; the second value is the new state if this changed it.
    pub fn permit(&mut self, now: i64) -> (Permit, Option<State>) {
        match self.state {
            State::Closed => (Permit::Call, None),
            State::Open { until } if now < until => (Permit::Reject { until }, None),
            State::Open { .. } => {
                self.state = State::HalfOpen { admitted: 1 };
                (Permit::Probe, Some(self.state))
            }
            State::HalfOpen { admitted } if admitted < self.settings.probes => {
                self.state = State::HalfOpen {
                    admitted: admitted + 1,
                };
                (Permit::Probe, None)
            }
            State::HalfOpen { .. } => (
                Permit::Reject {
                    until: now + HALF_OPEN_RECHECK_MS,
                },
                None,
            ),
        }
    }

    /// Gives back a probe permit that was not used (the call never went).
    pub fn unprobe(&mut self) {
        if let State::HalfOpen { admitted } = self.state {
            self.state = State::HalfOpen {
                admitted: admitted.saturating_sub(1),
            };
        }
    }

    /// Records a successful call (`probe`: it was permitted as one); the new state if it changed.
    pub fn success(&mut self, probe: bool) -> Option<State> {
        match self.state {
            State::Closed => {
                self.consecutive = 0;
                self.remember(true);
                None
            }
            State::HalfOpen { .. } if probe => {
                self.state = State::Closed;
                self.consecutive = 0;
                self.recent.clear();
                self.open_for = self.settings.open;
                Some(self.state)
            }
            _ => None,
        }
    }

    /// Records a failed call at `now` (`probe`: it was permitted as one); the new state if it
    /// changed.
    pub fn failure(&mut self, probe: bool, now: i64) -> Option<State> {
        match self.state {
            State::Closed => {
                self.consecutive += 1;
                self.remember(false);
                let window = self.settings.window as usize;
                let failed = self.recent.iter().filter(|ok| !**ok).count();
                let rate_tripped = self.recent.len() >= window
                    && failed as f64 >= self.settings.failure_rate * window as f64;
                if self.consecutive >= self.settings.failures || rate_tripped {
                    self.state = State::Open {
                        until: now + ms(self.open_for),
                    };
                    return Some(self.state);
                }
                None
            }
            State::HalfOpen { .. } if probe => {
                self.open_for = (self.open_for * 2).min(self.settings.max_open);
                self.state = State::Open {
                    until: now + ms(self.open_for),
                };
                Some(self.state)
            }
            _ => None,
        }
    }

    fn remember(&mut self, ok: bool) {
        self.recent.push_back(ok);
        while self.recent.len() > self.settings.window as usize {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, probes: u32) -> Breaker {
        Breaker::new(BreakerSettings {
            failures,
            failure_rate: 0.5,
            window: 10,
            open: Duration::from_millis(1_000),
            max_open: Duration::from_millis(3_000),
            probes,
        })
    }

    #[test]
    fn a_run_of_failures_opens_it_and_nothing_passes_until_the_interval_ends() {
        let mut b = breaker(3, 1);
        assert_eq!(b.failure(false, 0), None);
        assert_eq!(b.failure(false, 0), None);
        assert_eq!(b.failure(false, 10), Some(State::Open { until: 1_010 }));
        assert_eq!(b.permit(500).0, Permit::Reject { until: 1_010 });
        assert_eq!(
            b.success(false),
            None,
            "a late success of an old call changes nothing"
        );
    }

    #[test]
    fn half_open_lets_exactly_the_probes_through_and_one_success_closes_it() {
        let mut b = breaker(1, 2);
        b.failure(false, 0);
        assert_eq!(
            b.permit(1_000),
            (Permit::Probe, Some(State::HalfOpen { admitted: 1 }))
        );
        assert_eq!(b.permit(1_001).0, Permit::Probe);
        assert!(
            matches!(b.permit(1_002).0, Permit::Reject { .. }),
            "only 2 probes"
        );
        assert_eq!(
            b.failure(false, 1_003),
            None,
            "a non-probe outcome decides nothing"
        );
        assert_eq!(b.success(true), Some(State::Closed));
        assert_eq!(b.permit(1_004).0, Permit::Call);
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
        let mut b = breaker(1, 1);
        b.failure(false, 0);
        for (now, until) in [(1_000, 3_000), (3_000, 6_000), (6_000, 9_000)] {
            assert_eq!(b.permit(now).0, Permit::Probe);
            assert_eq!(b.failure(true, now), Some(State::Open { until }));
        }
        assert_eq!(b.permit(9_000).0, Permit::Probe);
        b.success(true);
        b.failure(false, 10_000);
        assert_eq!(
            b.state(),
            State::Open { until: 11_000 },
            "closing resets the interval"
        );
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_it_without_a_run() {
        let mut b = breaker(100, 1);
        for i in 0..9 {
            if i % 2 == 0 {
                assert_eq!(b.failure(false, i), None);
            } else {
                b.success(false);
            }
        }
        // 10 calls, 5 failed: 50 %.
        assert!(matches!(b.failure(false, 9), Some(State::Open { .. })));
    }
}
