//! The webhook sender: signed webhooks at a steady rate (open loop: event i is due at
//! start + i/rate, whatever happened to the ones before), each retried like a real sender would
//! (no answer, 5xx, 503 and 429 honouring Retry-After) with the same sender id, so every retry
//! carries the same event id and any copy an earlier attempt left is a duplicate downstream.
//! Only a 202 counts as accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use onceflow::ingest::signature;
use onceflow::model::event::now_ms;
use onceflow::model::identity;
use serde_json::json;
use tokio::sync::Mutex;

use super::fleet::{SECRET, SOURCE};

/// What an event is, hence which adapters decide it and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// LeadCaptured: one CRM upsert, one analytics track.
    Lead,
    /// InvoiceRequested: one invoice, one analytics track.
    Invoice,
    /// InvoiceRequested in a currency billing refuses (XTS): billing dead-letters it with a
    /// reason, analytics tracks it.
    RefusedInvoice,
}

/// The `i`-th event of a run: six in ten leads, the others invoices, one invoice in a hundred
/// refused.
pub fn kind_of(i: usize) -> Kind {
    if i % 10 < 6 {
        Kind::Lead
    } else if i % 250 == 6 {
        Kind::RefusedInvoice
    } else {
        Kind::Invoice
    }
}

fn body(run: &str, i: usize) -> (String, String) {
    let id = format!("{run}-{i}");
    let v = match kind_of(i) {
        Kind::Lead => json!({"type": "LeadCaptured", "id": id,
            "data": {"email": format!("{id}@chaos.example"), "form_id": "chaos", "consent_marketing": true}}),
        k => json!({"type": "InvoiceRequested", "id": id,
            "data": {"customer_id": format!("cus_{}", id.replace('-', "")),
                     "customer_email": format!("{id}@billing.example"),
                     "currency": if k == Kind::RefusedInvoice { "XTS" } else { "EUR" },
                     "amount_minor": 1_000 + (i % 5_000) as i64,
                     "description": "chaos plan", "due_at": null}}),
    };
    (id, v.to_string())
}

/// What the sender saw.
#[derive(Debug, Default)]
pub struct Sent {
    /// Accepted event id → its kind (202 received).
    pub accepted: BTreeMap<String, Kind>,
    /// Events never answered with 202 before the sender gave up: sender id → last outcome.
    pub given_up: BTreeMap<String, String>,
    /// Answers other than 202 by status (0: no answer), retries included.
    pub retries: BTreeMap<u16, usize>,
    /// Events sent.
    pub sent: usize,
    /// Events whose 202 named another event id than the one the sender id derives to.
    pub id_mismatch: usize,
    /// Seconds from the first send to the last 202.
    pub seconds: f64,
    /// The largest delay of a send behind its schedule (ms), when the in-flight cap held it.
    pub max_behind_ms: i64,
}

/// Sender knobs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run's name (sender ids are `<run>-<i>`).
    pub run: String,
    /// Ingest's base URL.
    pub base: String,
    /// Events to send.
    pub events: usize,
    /// Events per second.
    pub rate: f64,
    /// At most this many requests in flight (a stalled intake holds the schedule back).
    pub max_in_flight: usize,
    /// Give an event up after this long without a 202.
    pub give_up: Duration,
    /// Test the checker: count every n-th event accepted without sending it (0: off).
    pub mutate_phantom_every: usize,
}

/// Sends `plan.events` webhooks; `progress` counts 202s as they come.
pub async fn run(plan: Plan, progress: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Sent {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let sent = Arc::new(Mutex::new(Sent::default()));
    let limit = Arc::new(tokio::sync::Semaphore::new(plan.max_in_flight));
    let start = tokio::time::Instant::now();
    let start_ms = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.events {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = Duration::from_secs_f64(i as f64 / plan.rate);
        tokio::time::sleep_until(start + due).await;
        let permit = limit.clone().acquire_owned().await.expect("open semaphore");
        let behind = now_ms() - start_ms - due.as_millis() as i64;
        let (id, body) = body(&plan.run, i);
        let kind = kind_of(i);
        if plan.mutate_phantom_every > 0 && i % plan.mutate_phantom_every == 1 {
            let mut s = sent.lock().await;
            s.accepted.insert(identity::event_id(SOURCE, &id), kind);
            progress.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (client, url, sent, progress, give_up) = (
            client.clone(),
            format!("{}/v1/sources/{SOURCE}/events", plan.base),
            sent.clone(),
            progress.clone(),
            plan.give_up,
        );
        {
            let mut s = sent.lock().await;
            s.sent += 1;
            s.max_behind_ms = s.max_behind_ms.max(behind);
        }
        tasks.spawn(async move {
            let _permit = permit;
            let deadline = tokio::time::Instant::now() + give_up;
            let want = identity::event_id(SOURCE, &id);
            loop {
                let t = signature::sign(SECRET.as_bytes(), now_ms() / 1000, body.as_bytes());
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(signature::HEADER, t)
                    .body(body.clone())
                    .send()
                    .await;
                let (status, wait) = match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let got = r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["event_id"].as_str().map(String::from));
                        let mut s = sent.lock().await;
                        if got.as_deref().is_some_and(|g| g != want) {
                            s.id_mismatch += 1;
                        }
                        s.accepted.insert(got.unwrap_or(want), kind);
                        s.seconds = (now_ms() - start_ms) as f64 / 1000.0;
                        progress.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(r) => {
                        let code = r.status().as_u16();
                        let after = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(|s| Duration::from_secs(s.clamp(1, 5)));
                        if !(code == 429 || code == 408 || code >= 500) {
                            // Not something a sender retries: the run's own bug, reported.
                            let text = r.text().await.unwrap_or_default();
                            let mut s = sent.lock().await;
                            *s.retries.entry(code).or_default() += 1;
                            s.given_up.insert(id, format!("{code} {text}"));
                            return;
                        }
                        (code, after.unwrap_or(Duration::from_millis(500)))
                    }
                    Err(_) => (0, Duration::from_millis(500)),
                };
                let mut s = sent.lock().await;
                *s.retries.entry(status).or_default() += 1;
                if tokio::time::Instant::now() + wait > deadline {
                    s.given_up.insert(id, format!("last answer {status}"));
                    return;
                }
                drop(s);
                // A little jitter, as real senders have.
                tokio::time::sleep(wait + Duration::from_millis(fastrand::u64(0..250))).await;
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(sent)
        .map(Mutex::into_inner)
        .unwrap_or_default()
}
