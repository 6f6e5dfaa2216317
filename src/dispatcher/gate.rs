//! The gate every call of one adapter passes: its circuit breaker, the provider's own "slow down"
//! (429 with `Retry-After`, `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`), and onceflow's
//! token bucket (governor, GCRA) for `adapters.<name>.rate_per_second` / `burst`.
//!
//! Invariants:
//! - A call goes only when the breaker permits it, the provider's block has passed and the bucket
//!   has a token: the bucket is never overdrawn, so onceflow never exceeds the configured rate.
//! - A provider's "slow down" blocks every call of the adapter (not only the one that got it) until
//!   the time the provider named.
//! - Every breaker transition is a metric and a log line.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tracing::{info, warn};

use super::breaker::{Breaker, Permit, State};
use crate::adapters::delivery::Response;
use crate::config::AdapterSettings;
use crate::telemetry::metrics;

/// What a call may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go (`probe`: as a half-open probe of the breaker).
    Go {
        /// A breaker probe.
        probe: bool,
    },
    /// Wait this long, then ask again (rate limit or the provider's block).
    Wait(Duration, &'static str),
    /// The breaker is open: do not call before this time (epoch ms).
    Open(i64),
}

/// The gate of one adapter.
pub struct Gate {
    adapter: String,
    bucket: DefaultDirectRateLimiter,
    breaker: Mutex<Breaker>,
    /// The provider asked not to be called before this time (epoch ms).
    blocked_until: Mutex<i64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gate {
    /// The gate of `adapter` as configured.
    pub fn new(adapter: &str, settings: &AdapterSettings) -> Gate {
        let rate = NonZeroU32::new(settings.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
        ::metrics::gauge!(metrics::BREAKER_STATE, "adapter" => adapter.to_string()).set(0.0);
        Gate {
            adapter: adapter.to_string(),
            bucket: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            breaker: Mutex::new(Breaker::new(settings.breaker.clone())),
            blocked_until: Mutex::new(0),
        }
    }

    /// Whether a call may go at `now` (epoch ms). A `Go` has taken its token.
    pub fn admit(&self, now: i64) -> Admit {
        let blocked = *lock(&self.blocked_until);
        if blocked > now {
            let wait = u64::try_from(blocked - now).unwrap_or(0);
            return Admit::Wait(Duration::from_millis(wait), "retry_after");
        }
        let probe = {
            let mut b = lock(&self.breaker);
            let (permit, changed) = b.permit(now);
            if let Some(state) = changed {
                self.transition(state);
            }
            match permit {
                Permit::Call => false,
                Permit::Probe => true,
                Permit::Reject { until } => return Admit::Open(until),
            }
        };
        match self.bucket.check() {
            Ok(()) => Admit::Go { probe },
            Err(not_until) => {
                if probe {
                    // Give the probe slot back: it was not used.
                    lock(&self.breaker).unprobe();
                }
                Admit::Wait(
                    not_until.wait_time_from(DefaultClock::default().now()),
                    "bucket",
                )
            }
        }
    }

    /// Reads the provider's rate-limit headers: `X-RateLimit-Remaining: 0` blocks until the reset.
    pub fn observe(&self, r: &Response, now: i64) {
        let remaining = r
            .header("x-ratelimit-remaining")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if remaining == Some(0) {
            let reset_s = r
                .header("x-ratelimit-reset")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0)
                // Some providers send an epoch second instead of a delay; never wait a day.
                .clamp(0.0, 3_600.0);
            self.block(now, Duration::from_secs_f64(reset_s));
        }
    }

    /// Blocks every call for `wait` from `now` (a 429's Retry-After).
    pub fn block(&self, now: i64, wait: Duration) {
        let until = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        let mut b = lock(&self.blocked_until);
        if until > *b {
            *b = until;
        }
    }

    /// Records a successful call (the provider is up).
    pub fn success(&self, probe: bool) {
        let changed = lock(&self.breaker).success(probe);
        if let Some(state) = changed {
            self.transition(state);
        }
    }

    /// Records a failed call (5xx, 408, a time-out, a connection error).
    pub fn failure(&self, probe: bool, now: i64) {
        let changed = lock(&self.breaker).failure(probe, now);
        if let Some(state) = changed {
            self.transition(state);
        }
    }

    /// Counts time spent waiting for the rate limit.
    pub fn waited(&self, d: Duration, reason: &'static str) {
        ::metrics::histogram!(metrics::DELIVERY_RATE_LIMIT_WAIT_SECONDS,
            "adapter" => self.adapter.clone(), "reason" => reason)
        .record(d.as_secs_f64());
    }

    fn transition(&self, state: State) {
        ::metrics::gauge!(metrics::BREAKER_STATE, "adapter" => self.adapter.clone())
            .set(state.gauge());
        ::metrics::counter!(metrics::BREAKER_TRANSITIONS, "adapter" => self.adapter.clone(),
            "to" => state.label())
        .increment(1);
        match state {
            State::Open { until } => {
                warn!(adapter = %self.adapter, state = state.label(), until, "circuit breaker opened");
            }
            _ => {
                info!(adapter = %self.adapter, state = state.label(), "circuit breaker changed state")
            }
        }
    }
}
