//! `onceflow deliver --adapter NAME`: the dispatcher, the stage that delivers an adapter's outbox
//! to its external API. It runs on the same transactional-stage skeleton as the processor
//! ([`crate::stage`]) over `<ns>.<adapter>.outbox` and the deliver retry tiers, in the consumer
//! group `<ns>.<adapter>.deliver`; its store is the effect ledger ([`ledger`]).
//!
//! Per batch: decode each command; drop those the ledger knows as done; settle those it knows as
//! attempting (in doubt) by the adapter's policy; let the adapter plan each request; commit
//! "attempting" marks first where the policy needs them; make the calls ([`calls`]: concurrent
//! across entity keys, ordered within one, through the rate limit and the circuit breaker); then
//! commit, in one transaction, the receipts to `<ns>.<adapter>.results`, the ledger's `done`
//! records, retry and DLQ records and the outbox offsets.
//!
//! Invariants:
//! - The command id is the provider's idempotency key; a command the ledger knows as done is never
//!   sent again. Where the provider honours the key, a resend after a crash has no second effect.
//! - Where the provider cannot tell a duplicate (or the policy is `park`), an "attempting" mark is
//!   committed before the call. A command found attempting-but-not-done follows the in-doubt
//!   policy: `resend` (at-least-once) or `park` (DLQ class `in_doubt`: at-most-once, an operator
//!   decides). An answer lost after the request went out (time-out, reset) is in doubt too.
//! - 2xx → receipt and `done`; 408, 429, 5xx, time-outs and connection errors → the deliver retry
//!   tiers (honouring Retry-After), then the DLQ; any other 4xx → the DLQ with the status and a
//!   masked excerpt of the body. A 429 slows the adapter down (the gate) rather than using a tier.
//! - While the circuit breaker is open no call is made: the batch's remaining commands are deferred
//!   (not consumed, not dead-lettered) and every partition is paused until the breaker may probe.
//!   A partition is consumed only up to its first deferred command; of the commands after it (read
//!   again later) only delivered ones are settled, since the ledger will recognise them, and the
//!   others are deferred too, so nothing is routed twice.
//! - `dry_run`: everything but the call happens; the receipt says `dry_run`.

mod breaker;
mod calls;
mod gate;
mod http;
pub mod ledger;
mod results;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::adapters::Adapter;
use crate::adapters::delivery::{CallContext, DeliveryError, Idempotency, Plan};
use crate::codec::{AvroCodec, Codec, CodecError};
use crate::config::{ConfigError, InDoubt, Settings};
use crate::dedupe::Change;
use crate::kafka::names::{Names, Stage};
use crate::model::command::{Command, CommandType};
use crate::model::datum_json::EnvelopeError;
use crate::model::headers::{self, ErrorClass};
use crate::retry::RetryPolicy;
use crate::stage::fault::{FaultPlan, Point};
use crate::stage::{BatchCx, BatchError, Counts, Due, Failure, Handled, Runner, StageSpec, Work};
use crate::telemetry::metrics;
use calls::{Call, Outcome};
use gate::Gate;
use ledger::{LedgerEntry, State};
use results::{ReceiptStatus, Results};

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A setting it needs is missing or unreadable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The schema catalog or codec could not be built.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The dispatcher of one adapter.
pub struct Dispatcher {
    runner: Runner<Deliver>,
}

impl Dispatcher {
    /// A dispatcher of `adapter` as configured under `[adapters.<name>]` and `[dispatcher]`:
    /// needs the adapter's `base_url`, and reads its credentials now (a missing one stops start-up
    /// naming its key).
    pub fn new(
        settings: &Settings,
        adapter: Arc<dyn Adapter>,
    ) -> Result<Dispatcher, DispatchError> {
        let names = Names::new(settings);
        let name = adapter.name().to_string();
        let config = settings.adapters.get(&name).cloned().unwrap_or_default();
        let base_url = config
            .base_url
            .clone()
            .ok_or_else(|| ConfigError::Invalid {
                key: format!("adapters.{name}.base_url"),
                reason: "the dispatcher needs the provider's base URL".into(),
            })?;
        let credentials = match &config.credentials {
            Some(secret) => Some(secret.resolve(&format!("adapters.{name}.credentials_env"))?),
            None => None,
        };
        let d = &settings.dispatcher;
        let in_doubt = config
            .in_doubt
            .unwrap_or_else(|| adapter.default_in_doubt());
        let work = Deliver {
            http: http::Http::new(
                &base_url,
                d.connect_timeout,
                d.request_timeout,
                d.concurrency,
            )?,
            gate: Gate::new(&name, &config),
            results: Results::new(&settings.registry, names.results(&name))?,
            codec: AvroCodec::new(&settings.registry)?,
            marks: in_doubt == InDoubt::Park || adapter.idempotency() == Idempotency::None,
            in_doubt,
            dry_run: config.dry_run,
            credentials,
            concurrency: d.concurrency,
            max_wait: d.max_wait,
            adapter,
        };
        info!(adapter = %name, base_url = %base_url, in_doubt = in_doubt.as_str(), marks = work.marks,
              dry_run = work.dry_run, "dispatcher configured");
        let spec = StageSpec {
            stage: Stage::Deliver,
            inputs: vec![names.outbox(&name)],
            changelog: names.ledger(&name),
            ttl: d.ledger_ttl,
            state_dir: d.state_dir.clone(),
            store: d.store,
            metrics: &metrics::DISPATCHER,
        };
        Ok(Dispatcher {
            runner: Runner::new(
                work,
                spec,
                &settings.kafka,
                d.stage(),
                names,
                RetryPolicy::new(settings.retry.tiers.clone()),
            ),
        })
    }

    /// Reports on `readiness` whether it is processing (for `/readyz`).
    pub fn with_readiness(self, readiness: crate::telemetry::endpoint::Readiness) -> Dispatcher {
        Dispatcher {
            runner: self.runner.with_readiness(readiness),
        }
    }

    /// Injects `fault` (tests; see [`crate::stage::fault`]).
    pub fn with_fault(self, fault: FaultPlan) -> Dispatcher {
        Dispatcher {
            runner: self.runner.with_fault(fault),
        }
    }

    /// Runs until `shutdown` turns true; the batch in flight (its calls included) is finished
    /// first.
    pub async fn run(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Counts, crate::stage::StageError> {
        self.runner.run(shutdown).await
    }
}

/// The dispatcher's work.
struct Deliver {
    adapter: Arc<dyn Adapter>,
    codec: AvroCodec,
    http: http::Http,
    gate: Gate,
    results: Results,
    in_doubt: InDoubt,
    /// Commit "attempting" marks before calls.
    marks: bool,
    dry_run: bool,
    credentials: Option<String>,
    concurrency: usize,
    max_wait: std::time::Duration,
}

/// One decoded command of the batch, with what its record carried.
struct Decoded {
    command: Command,
    hop: u32,
    traceparent: Option<String>,
    received_at: Option<i64>,
    /// An attempting mark for it is in the ledger (from an earlier attempt or this batch's marks).
    marked: bool,
}

impl Work for Deliver {
    type Entry = LedgerEntry;

    fn adapter(&self) -> &str {
        self.adapter.name()
    }

    /// Not where "attempting" marks are committed ahead of a batch: they need the producer.
    fn overlaps_commit(&self) -> bool {
        !self.marks
    }

    async fn handle(
        &self,
        due: &[Due<'_>],
        cx: &mut BatchCx<'_, LedgerEntry>,
    ) -> Result<Handled<LedgerEntry>, BatchError> {
        let mut h = Handled::default();
        let mut seen: HashSet<String> = HashSet::new();
        // Commands to call: (position in `due`, decoded command, request).
        let mut to_call: Vec<(usize, Decoded, crate::adapters::delivery::Request)> = Vec::new();
        for (i, d) in due.iter().enumerate() {
            let Some(mut decoded) = self.decode(d, cx, &mut h).await? else {
                continue;
            };
            let m = d.msg;
            let id = decoded.command.meta.command_id.clone();
            let entry = cx.store().get(m.partition(), &id, cx.now())?;
            if matches!(
                entry,
                Some(LedgerEntry {
                    state: State::Done,
                    ..
                })
            ) || !seen.insert(id.clone())
            {
                ::metrics::counter!(metrics::LEDGER_DUPLICATES, "adapter" => self.adapter().to_string())
                    .increment(1);
                h.tally.duplicate += 1;
                continue;
            }
            if entry.is_some() {
                // Attempted by a predecessor whose outcome never got committed.
                decoded.marked = true;
                h.tally.in_doubt += 1;
                self.in_doubt_noted(
                    &decoded.command,
                    "a call was attempted and its outcome never committed",
                );
                if self.in_doubt == InDoubt::Park {
                    let msg = "in doubt: a call was attempted and its outcome never committed; parked for an operator";
                    self.route_failure(
                        cx,
                        &mut h,
                        d,
                        &decoded,
                        ErrorClass::InDoubt,
                        msg,
                        None,
                        None,
                    );
                    continue;
                }
            }
            if self.dry_run {
                self.delivered(cx, &mut h, m, &decoded, ReceiptStatus::DryRun, None, None)
                    .await?;
                continue;
            }
            let call_cx = CallContext {
                credentials: self.credentials.as_deref(),
                hop: decoded.hop,
                now_ms: cx.now(),
            };
            match self.adapter.plan(&decoded.command, &call_cx) {
                Ok(Plan::Call(request)) => to_call.push((i, decoded, request)),
                Ok(Plan::Wait(until)) => {
                    h.outs.push(cx.delay(m, d.envelope.as_ref(), until));
                    h.tally.retry += 1;
                    self.forget_mark(&mut h, m, &decoded);
                }
                Err(refusal) => self.route_refusal(cx, &mut h, d, &decoded, refusal),
            }
        }
        if to_call.is_empty() {
            return Ok(h);
        }

        // The window of doubt opens: marks first, committed on their own.
        if self.marks {
            let marks: Vec<Change<LedgerEntry>> = to_call
                .iter()
                .filter(|(_, d, _)| !d.marked)
                .map(|(i, d, _)| Change::Put {
                    partition: due[*i].msg.partition(),
                    key: d.command.meta.command_id.clone(),
                    entry: LedgerEntry::attempting(cx.now()),
                })
                .collect();
            cx.precommit(marks).await?;
            for (_, d, _) in &mut to_call {
                d.marked = true;
            }
            if cx.fault(Point::CrashAfterMarks) {
                std::process::abort();
            }
        }

        let calls: Vec<Call> = to_call
            .iter()
            .enumerate()
            .map(|(n, (i, d, request))| Call {
                index: n,
                key: due[*i].msg.key().map(<[u8]>::to_vec).unwrap_or_default(),
                command: d.command.clone(),
                request: request.clone(),
                parent: d.traceparent.clone(),
            })
            .collect();
        let env = calls::Env {
            adapter: self.adapter.as_ref(),
            http: &self.http,
            gate: &self.gate,
            concurrency: self.concurrency,
            deadline: tokio::time::Instant::now() + self.max_wait,
        };
        let (mut outcomes, resume_at) = calls::run(calls, &env).await;
        outcomes.sort_by_key(|(n, _)| *n);
        h.pause_all_until = resume_at;
        // A partition is consumed only up to its first deferred record; records after it are read
        // again, so only what the ledger will recognise may be settled for them.
        let mut first_deferred: HashMap<(&str, i32), i64> = HashMap::new();
        for (n, o) in &outcomes {
            if matches!(o, Outcome::Deferred) {
                let m = due[to_call[*n].0].msg;
                let first = first_deferred
                    .entry((m.topic(), m.partition()))
                    .or_insert(m.offset());
                *first = (*first).min(m.offset());
            }
        }
        for (n, outcome) in outcomes {
            let (i, decoded, _) = &to_call[n];
            let d = &due[*i];
            let behind = first_deferred
                .get(&(d.msg.topic(), d.msg.partition()))
                .is_some_and(|first| d.msg.offset() > *first);
            let outcome = match outcome {
                Outcome::Delivered { .. } => outcome,
                // Its mark stays: read again, it is in doubt and its policy decides.
                Outcome::Unknown(_) if behind => {
                    h.deferred
                        .push((d.msg.topic().to_string(), d.msg.partition(), d.msg.offset()));
                    continue;
                }
                _ if behind => Outcome::Deferred,
                _ => outcome,
            };
            self.settle(cx, &mut h, d, decoded, outcome).await?;
        }
        Ok(h)
    }
}

impl Deliver {
    /// Decodes a due record into a command; an undecodable one is routed to the DLQ (`None`).
    async fn decode(
        &self,
        d: &Due<'_>,
        cx: &BatchCx<'_, LedgerEntry>,
        h: &mut Handled<LedgerEntry>,
    ) -> Result<Option<Decoded>, BatchError> {
        let m = d.msg;
        let fail = |h: &mut Handled<LedgerEntry>, class: ErrorClass, message: &str| {
            let routed = cx.fail(
                m,
                d.envelope.as_ref(),
                Failure {
                    class,
                    message,
                    retry_after: None,
                    correlation_id: None,
                    http_status: None,
                },
            );
            h.push_routed(routed);
        };
        let Some(bytes) = m.payload() else {
            fail(h, ErrorClass::Decode, "record has no value");
            return Ok(None);
        };
        let written = match self.codec.written(bytes).await {
            Ok(w) => w,
            Err(e) if e.is_retriable() => return Err(BatchError::Transient(e.to_string())),
            Err(e) => {
                fail(h, ErrorClass::Decode, &e.to_string());
                return Ok(None);
            }
        };
        let Some(command_type) = written
            .reader
            .record_name()
            .and_then(CommandType::from_record_name)
        else {
            let name = written.reader.record_name().unwrap_or("an unnamed schema");
            fail(
                h,
                ErrorClass::Schema,
                &format!("{name} is not a command type"),
            );
            return Ok(None);
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let command = match Command::from_written(&written, command_type, key) {
            Ok(c) if c.meta.adapter == self.adapter() => c,
            Ok(c) => {
                let msg = format!(
                    "a command of adapter {} in the outbox of {}",
                    c.meta.adapter,
                    self.adapter()
                );
                fail(h, ErrorClass::Schema, &msg);
                return Ok(None);
            }
            Err(EnvelopeError::Decode(e)) => {
                fail(h, ErrorClass::Decode, &e.to_string());
                return Ok(None);
            }
            Err(EnvelopeError::Field(e)) => {
                fail(h, ErrorClass::Schema, &e.to_string());
                return Ok(None);
            }
        };
        let header = |k: &str| headers::get(m.headers(), k);
        Ok(Some(Decoded {
            command,
            hop: header(headers::name::HOP)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            traceparent: header(headers::name::TRACEPARENT).map(str::to_string),
            received_at: header(headers::name::EVENT_RECEIVED_AT).and_then(|v| v.parse().ok()),
            marked: false,
        }))
    }

    /// Turns a call's outcome into outputs and ledger changes.
    async fn settle(
        &self,
        cx: &BatchCx<'_, LedgerEntry>,
        h: &mut Handled<LedgerEntry>,
        d: &Due<'_>,
        decoded: &Decoded,
        outcome: Outcome,
    ) -> Result<(), BatchError> {
        let m = d.msg;
        match outcome {
            Outcome::Delivered { receipt, status } => {
                tracing::debug!(adapter = self.adapter(), command_id = %decoded.command.meta.command_id,
                    correlation_id = %decoded.command.meta.correlation_id,
                    trace_id = decoded.traceparent.as_deref().and_then(headers::trace_id).unwrap_or(""),
                    status, provider_id = receipt.provider_id.as_deref().unwrap_or(""), "command delivered");
                if let Some(received) = decoded.received_at {
                    ::metrics::histogram!(metrics::END_TO_END_SECONDS, "adapter" => self.adapter().to_string())
                        .record((crate::model::event::now_ms() - received).max(0) as f64 / 1_000.0);
                }
                let status_kind = if receipt.replayed {
                    ReceiptStatus::Replayed
                } else {
                    ReceiptStatus::Delivered
                };
                self.delivered(
                    cx,
                    h,
                    m,
                    decoded,
                    status_kind,
                    receipt.provider_id,
                    Some(status),
                )
                .await?;
            }
            Outcome::Refused(refusal) => self.route_refusal(cx, h, d, decoded, refusal),
            Outcome::Unknown(message) => {
                h.tally.in_doubt += 1;
                self.in_doubt_noted(&decoded.command, &message);
                let (class, text) = match self.in_doubt {
                    InDoubt::Park => (
                        ErrorClass::InDoubt,
                        format!("in doubt: {message}; parked for an operator"),
                    ),
                    InDoubt::Resend => (
                        ErrorClass::Timeout,
                        format!("answer lost: {message}; sent again"),
                    ),
                };
                self.route_failure(cx, h, d, decoded, class, &text, None, None);
            }
            Outcome::Held => {
                let msg = "held behind an earlier command of the same entity that failed";
                self.route_failure(cx, h, d, decoded, ErrorClass::Retryable, msg, None, None);
            }
            Outcome::Deferred => {
                h.deferred
                    .push((m.topic().to_string(), m.partition(), m.offset()));
                self.forget_mark(h, m, decoded);
            }
        }
        Ok(())
    }

    /// Records a delivered (or dry-run) command: receipt, `done`, counts.
    #[allow(clippy::too_many_arguments)]
    async fn delivered(
        &self,
        cx: &BatchCx<'_, LedgerEntry>,
        h: &mut Handled<LedgerEntry>,
        m: &OwnedMessage,
        decoded: &Decoded,
        status: ReceiptStatus,
        provider_id: Option<String>,
        http_status: Option<u16>,
    ) -> Result<(), BatchError> {
        let attempt = headers::ErrorEnvelope::read(m.headers()).map_or(1, |e| e.attempt + 1);
        let out = self
            .results
            .receipt(
                m,
                &decoded.command,
                status,
                provider_id,
                http_status,
                attempt,
                cx.now(),
            )
            .await
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        h.outs.push(out);
        h.changes.push(Change::Put {
            partition: m.partition(),
            key: decoded.command.meta.command_id.clone(),
            entry: LedgerEntry::done(cx.now()),
        });
        h.tally.ok += 1;
        h.tally.outputs += 1;
        Ok(())
    }

    /// Routes a failed command to its next tier or the DLQ, and clears its mark: its outcome is
    /// settled.
    #[allow(clippy::too_many_arguments)]
    fn route_failure(
        &self,
        cx: &BatchCx<'_, LedgerEntry>,
        h: &mut Handled<LedgerEntry>,
        d: &Due<'_>,
        decoded: &Decoded,
        class: ErrorClass,
        message: &str,
        retry_after: Option<std::time::Duration>,
        http_status: Option<u16>,
    ) {
        let routed = cx.fail(
            d.msg,
            d.envelope.as_ref(),
            Failure {
                class,
                message,
                retry_after,
                correlation_id: Some(decoded.command.meta.correlation_id.clone()),
                http_status,
            },
        );
        h.push_routed(routed);
        self.forget_mark(h, d.msg, decoded);
    }

    /// Routes a command the provider (or the adapter) refused: retryable through the tiers,
    /// permanent to the DLQ.
    fn route_refusal(
        &self,
        cx: &BatchCx<'_, LedgerEntry>,
        h: &mut Handled<LedgerEntry>,
        d: &Due<'_>,
        decoded: &Decoded,
        refusal: DeliveryError,
    ) {
        match refusal {
            DeliveryError::Permanent { reason, status } => {
                self.route_failure(
                    cx,
                    h,
                    d,
                    decoded,
                    ErrorClass::Permanent,
                    &reason,
                    None,
                    status,
                );
            }
            DeliveryError::Retry {
                after,
                message,
                status,
            } => {
                self.route_failure(
                    cx,
                    h,
                    d,
                    decoded,
                    ErrorClass::Retryable,
                    &message,
                    after,
                    status,
                );
            }
        }
    }

    fn forget_mark(&self, h: &mut Handled<LedgerEntry>, m: &OwnedMessage, decoded: &Decoded) {
        if decoded.marked {
            h.changes.push(Change::Forget {
                partition: m.partition(),
                key: decoded.command.meta.command_id.clone(),
            });
        }
    }

    fn in_doubt_noted(&self, command: &Command, why: &str) {
        ::metrics::counter!(metrics::IN_DOUBT, "adapter" => self.adapter().to_string(),
            "action" => self.in_doubt.as_str())
        .increment(1);
        warn!(adapter = self.adapter(), command_id = %command.meta.command_id,
              correlation_id = %command.meta.correlation_id, action = self.in_doubt.as_str(),
              why, "command in doubt");
    }
}
