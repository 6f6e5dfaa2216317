//! Fault knobs per provider, and the checks every provider call passes before the provider's own
//! logic, in this order: credentials → the provider's rate limit → 5xx (storm, burst, random) →
//! random 429 → random reset. The latency is spent where the provider does its work
//! ([`CallCx::work`], after an idempotency key is taken, so concurrent requests with one key
//! overlap). After the provider's logic, an answer may be lost: the effect is kept, the connection
//! held `hang_ms` and then dropped without an answer.
//!
//! The provider's own rate limit is a token bucket (`per_second` refill, `burst` capacity); every
//! answer of a rate-limited provider carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset` (seconds until a token is free).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::Provider;
use crate::server::DropConnection;
use crate::state::{Call, State, now_ms};

/// A provider's own rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens per second.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

/// The fault knobs of one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The provider's own rate limit (429 with Retry-After past it).
    pub rate_limit: Option<RateLimit>,
    /// Probability of an injected 429.
    pub p_429: f64,
    /// The Retry-After of an injected 429, in seconds.
    pub retry_after_s: u64,
    /// Probability of an injected 500, 502 or 503 (nothing performed).
    pub p_5xx: f64,
    /// The next N calls get 503.
    pub burst_5xx: u32,
    /// While true every call gets 503.
    pub storm: bool,
    /// Uniform delay in [lo, hi] ms before each call is handled.
    pub latency_ms: Option<(u64, u64)>,
    /// Probability that the effect is performed and the answer lost (held `hang_ms`, dropped).
    pub p_timeout_after_effect: f64,
    /// How long a lost answer holds the connection before dropping it.
    pub hang_ms: u64,
    /// Probability that the connection is dropped before anything is performed.
    pub p_reset: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: None,
            p_429: 0.0,
            retry_after_s: 1,
            p_5xx: 0.0,
            burst_5xx: 0,
            storm: false,
            latency_ms: None,
            p_timeout_after_effect: 0.0,
            hang_ms: 30_000,
            p_reset: 0.0,
        }
    }
}

/// How a provider expects its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <api key>`.
    Bearer,
    /// HTTP Basic, the API key as user name.
    Basic,
    /// None (the webhook receiver checks signatures instead).
    None,
}

/// A JSON error in `provider`'s own shape.
pub fn error(provider: Provider, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match provider {
        Provider::Crm => json!({"status": "error", "category": code, "message": message}),
        Provider::Email => json!({"statusCode": status.as_u16(), "name": code, "message": message}),
        Provider::Billing => json!({"error": {"type": code, "message": message}}),
        Provider::Analytics => json!({"success": false, "code": code, "message": message}),
        Provider::Webhook => json!({"error": code, "detail": message}),
    };
    (status, axum::Json(body)).into_response()
}

/// A response the server answers by dropping the connection.
pub fn dropped() -> Response {
    let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    r.extensions_mut().insert(DropConnection);
    r
}

/// One call in progress, past the fault checks.
pub struct CallCx {
    state: Arc<State>,
    provider: Provider,
    at_ms: i64,
    command_id: Option<String>,
    /// The call's idempotency key, where the provider has one.
    pub idempotency_key: Option<String>,
    lose_answer: bool,
    hang: Duration,
    latency: Option<(u64, u64)>,
    rate: Option<(u32, u32, f64)>,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn authorised(state: &State, headers: &HeaderMap, auth: Auth) -> bool {
    let given = header(headers, "authorization").unwrap_or_default();
    match auth {
        Auth::None => true,
        Auth::Bearer => given == format!("Bearer {}", state.api_key),
        Auth::Basic => {
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:", state.api_key));
            given == format!("Basic {expected}")
        }
    }
}

impl CallCx {
    /// Runs the fault checks of a call; `Err` is the answer to give at once (already logged).
    pub async fn begin(
        state: &Arc<State>,
        provider: Provider,
        headers: &HeaderMap,
        auth: Auth,
        idempotency_key: Option<String>,
    ) -> Result<CallCx, Response> {
        let faults = state.faults(provider);
        let mut cx = CallCx {
            state: Arc::clone(state),
            provider,
            at_ms: now_ms(),
            command_id: header(headers, "x-onceflow-command-id"),
            idempotency_key,
            lose_answer: false,
            hang: Duration::from_millis(faults.hang_ms),
            latency: faults.latency_ms,
            rate: None,
        };
        if !authorised(state, headers, auth) {
            let r = error(
                provider,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key",
            );
            return Err(cx.log(r, "unauthorized"));
        }
        if let Some(limit) = faults.rate_limit {
            match state.take_token(provider, limit.per_second, limit.burst) {
                Ok(remaining) => cx.rate = Some((limit.per_second, remaining, 0.0)),
                Err(wait) => {
                    cx.rate = Some((limit.per_second, 0, wait));
                    let mut r = error(
                        provider,
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many requests",
                    );
                    let seconds = (wait.ceil() as u64).max(1);
                    r.headers_mut()
                        .insert("retry-after", HeaderValue::from(seconds));
                    return Err(cx.log(r, "rate_limited"));
                }
            }
        }
        let failure = if faults.storm {
            Some((StatusCode::SERVICE_UNAVAILABLE, "storm_5xx"))
        } else if state.take_burst(provider) {
            Some((StatusCode::SERVICE_UNAVAILABLE, "injected_5xx"))
        } else if state.roll(faults.p_5xx) {
            let s = [500, 502, 503][state.uniform(0, 2) as usize];
            Some((
                StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "injected_5xx",
            ))
        } else {
            None
        };
        if let Some((status, outcome)) = failure {
            let r = error(
                provider,
                status,
                "unavailable",
                "the service is unavailable, try again",
            );
            return Err(cx.log(r, outcome));
        }
        if state.roll(faults.p_429) {
            let mut r = error(
                provider,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "slow down",
            );
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from(faults.retry_after_s.max(1)),
            );
            return Err(cx.log(r, "injected_429"));
        }
        if state.roll(faults.p_reset) {
            cx.record(0, "reset");
            return Err(dropped());
        }
        cx.lose_answer = state.roll(faults.p_timeout_after_effect);
        Ok(cx)
    }

    /// The provider's work takes the configured latency.
    pub async fn work(&self) {
        if let Some((lo, hi)) = self.latency {
            tokio::time::sleep(Duration::from_millis(self.state.uniform(lo, hi))).await;
        }
    }

    /// The `X-Onceflow-Command-Id` of the call.
    pub fn command_id(&self) -> Option<String> {
        self.command_id.clone()
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Records an effect of this call.
    pub fn effect(&self, key: &str, provider_id: Option<String>, kind: &str, detail: Json) {
        self.state.effect(crate::Effect {
            provider: self.provider,
            at_ms: now_ms(),
            command_id: self.command_id.clone(),
            key: key.to_string(),
            provider_id,
            kind: kind.into(),
            detail,
        });
    }

    fn record(&self, status: u16, outcome: &str) {
        self.state.call(Call {
            provider: self.provider,
            at_ms: self.at_ms,
            command_id: self.command_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            status,
            outcome: outcome.into(),
        });
    }

    fn log(&self, mut r: Response, outcome: &str) -> Response {
        if let Some((limit, remaining, reset)) = self.rate {
            let h = r.headers_mut();
            h.insert("x-ratelimit-limit", HeaderValue::from(limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
            h.insert("x-ratelimit-reset", HeaderValue::from(reset.ceil() as u64));
        }
        self.record(r.status().as_u16(), outcome);
        r
    }

    /// Ends the call with `r`; when `performed` and the dice said so, the answer is lost instead.
    pub async fn finish(self, r: Response, outcome: &str, performed: bool) -> Response {
        if self.lose_answer && performed {
            self.record(0, "timeout_after_effect");
            tokio::time::sleep(self.hang).await;
            return dropped();
        }
        self.log(r, outcome)
    }
}
