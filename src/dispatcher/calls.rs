//! The calls of one batch: concurrent across entity keys, one at a time and in batch order within
//! a key, each through the adapter's [`Gate`].
//!
//! Invariants:
//! - At most `concurrency` calls are in flight; commands of one entity key never overlap and never
//!   overtake each other (a CRM create must not overtake the update that follows it).
//! - Once a command of a key fails retryably or its outcome is unknown, the key's later commands in
//!   the batch are not called ([`Outcome::Held`]): they follow it through the retry tiers.
//! - A call that would wait past the batch's deadline, or that the open breaker refuses, is not
//!   made ([`Outcome::Deferred`]); neither is any later command of its key. A failed breaker probe
//!   that surely did not act (an answer of 408/5xx, or no connection) is deferred too, so probes
//!   never walk a command towards the DLQ.
//! - A 429 is not a failure: the gate blocks the adapter for the `Retry-After` and the same command
//!   is tried again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::gate::{Admit, Gate};
use super::http::{Http, Trace, Transport};
use crate::adapters::Adapter;
use crate::adapters::delivery::{DeliveryError, Receipt, Request};
use crate::model::command::Command;
use crate::model::event::now_ms;
use crate::telemetry::{metrics, trace};

/// One call to make.
#[derive(Debug)]
pub struct Call {
    /// Its position among the batch's commands.
    pub index: usize,
    /// The entity key (the record key).
    pub key: Vec<u8>,
    /// The command.
    pub command: Command,
    /// The request the adapter built.
    pub request: Request,
    /// The command's traceparent: each attempt is a span of its own, its child.
    pub parent: Option<String>,
}

/// What came of one call.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The provider performed it.
    Delivered {
        /// What it said.
        receipt: Receipt,
        /// Its status.
        status: u16,
    },
    /// The provider did not perform it (it said so, or the request never reached it).
    Refused(DeliveryError),
    /// The request may have reached the provider; its answer is lost.
    Unknown(String),
    /// Not called (breaker open, or a wait past the deadline).
    Deferred,
    /// Not called: an earlier command of the same key failed.
    Held,
}

/// What the calls share.
pub struct Env<'a> {
    /// The adapter (request built already; reads the answer).
    pub adapter: &'a dyn Adapter,
    /// The client.
    pub http: &'a Http,
    /// The adapter's gate.
    pub gate: &'a Gate,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// No call starts after this.
    pub deadline: Instant,
}

/// Runs `calls`; returns each outcome by index, and the time before which the adapter should not
/// be called again when some were deferred (epoch ms).
pub async fn run(calls: Vec<Call>, env: &Env<'_>) -> (Vec<(usize, Outcome)>, Option<i64>) {
    let mut chains: Vec<Vec<Call>> = Vec::new();
    let mut by_key: HashMap<Vec<u8>, usize> = HashMap::new();
    for c in calls {
        let i = *by_key.entry(c.key.clone()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[i].push(c);
    }
    let resume_at = Mutex::new(None::<i64>);
    let outcomes: Vec<Vec<(usize, Outcome)>> = futures_util::stream::iter(chains)
        .map(|chain| chain_run(chain, env, &resume_at))
        .buffer_unordered(env.concurrency.max(1))
        .collect()
        .await;
    let resume = *resume_at.lock().unwrap_or_else(|p| p.into_inner());
    (outcomes.into_iter().flatten().collect(), resume)
}

async fn chain_run(
    chain: Vec<Call>,
    env: &Env<'_>,
    resume_at: &Mutex<Option<i64>>,
) -> Vec<(usize, Outcome)> {
    let mut out = Vec::with_capacity(chain.len());
    let mut blocked: Option<Outcome> = None;
    for call in chain {
        if let Some(b) = &blocked {
            out.push((call.index, b.clone()));
            continue;
        }
        let o = one(&call, env, resume_at).await;
        match &o {
            Outcome::Deferred => blocked = Some(Outcome::Deferred),
            Outcome::Refused(DeliveryError::Retry { .. }) | Outcome::Unknown(_) => {
                blocked = Some(Outcome::Held);
            }
            _ => {}
        }
        out.push((call.index, o));
    }
    out
}

fn defer_until(resume_at: &Mutex<Option<i64>>, until: i64) {
    let mut r = resume_at.lock().unwrap_or_else(|p| p.into_inner());
    *r = Some(r.map_or(until, |t| t.max(until)));
}

fn count(adapter: &str, outcome: &'static str) {
    ::metrics::counter!(metrics::DELIVERY_CALLS, "adapter" => adapter.to_string(), "outcome" => outcome)
        .increment(1);
}

async fn one(call: &Call, env: &Env<'_>, resume_at: &Mutex<Option<i64>>) -> Outcome {
    let name = env.adapter.name();
    loop {
        let now = now_ms();
        let probe = match env.gate.admit(now) {
            Admit::Open(until) => {
                defer_until(resume_at, until);
                return Outcome::Deferred;
            }
            Admit::Wait(d, reason) => {
                if Instant::now() + d > env.deadline {
                    let wait = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    defer_until(resume_at, now.saturating_add(wait));
                    return Outcome::Deferred;
                }
                env.gate.waited(d, reason);
                tokio::time::sleep(d).await;
                continue;
            }
            Admit::Go { probe } => probe,
        };
        let mut span = trace::hop(
            "onceflow.deliver",
            trace::SpanKind::Client,
            call.parent.as_deref(),
            || {
                vec![
                    trace::KeyValue::new("onceflow.adapter", name.to_string()),
                    trace::KeyValue::new(
                        "onceflow.command_id",
                        call.command.meta.command_id.clone(),
                    ),
                ]
            },
        );
        let sent_with = Trace {
            command_id: &call.command.meta.command_id,
            correlation_id: &call.command.meta.correlation_id,
            traceparent: span.traceparent(),
        };
        let started = Instant::now();
        let sent = env.http.send(&call.request, &sent_with).await;
        match &sent {
            Ok(r) => {
                span.set(trace::KeyValue::new(
                    "http.response.status_code",
                    i64::from(r.status),
                ));
                if r.status >= 400 {
                    span.fail(format!("HTTP {}", r.status));
                }
            }
            Err(Transport::NotSent(m) | Transport::MaybeSent(m)) => span.fail(m.clone()),
        }
        drop(span);
        ::metrics::histogram!(metrics::DELIVERY_CALL_SECONDS, "adapter" => name.to_string())
            .record(started.elapsed().as_secs_f64());
        let now = now_ms();
        let r = match sent {
            Err(Transport::NotSent(message)) => {
                env.gate.failure(probe, now);
                count(name, "not_sent");
                if probe {
                    return Outcome::Deferred;
                }
                return Outcome::Refused(DeliveryError::Retry {
                    after: None,
                    message,
                    status: None,
                });
            }
            Err(Transport::MaybeSent(message)) => {
                env.gate.failure(probe, now);
                count(name, "unknown");
                return Outcome::Unknown(message);
            }
            Ok(r) => r,
        };
        env.gate.observe(&r, now);
        if r.status == 429 {
            // The provider is up and asks to slow down: not a failure, and not a retry tier.
            env.gate.success(probe);
            env.gate
                .block(now, r.retry_after(now).unwrap_or(Duration::from_secs(1)));
            count(name, "rate_limited");
            continue;
        }
        let failed = r.status == 408 || r.status >= 500;
        if failed {
            env.gate.failure(probe, now);
        } else {
            env.gate.success(probe);
        }
        return match env.adapter.receipt(&call.command, &r, now) {
            Ok(receipt) => {
                count(name, "ok");
                Outcome::Delivered {
                    receipt,
                    status: r.status,
                }
            }
            Err(e @ DeliveryError::Retry { .. }) => {
                count(name, "retry");
                if probe && failed {
                    Outcome::Deferred
                } else {
                    Outcome::Refused(e)
                }
            }
            Err(e @ DeliveryError::Permanent { .. }) => {
                count(name, "permanent");
                Outcome::Refused(e)
            }
        };
    }
}
