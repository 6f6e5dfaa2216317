//! Schema ids the registry still has. A registry that lost its schemas (its storage wiped or
//! replaced) leaves every cached id dangling: records encoded with one decode nowhere. Before a
//! record is acknowledged, [`Verifier::check`] confirms its id with a lookup that *started after*
//! the record was encoded.
//!
//! Invariants:
//! - One lookup in flight per id. Concurrent checks queue behind it and a lookup covers every
//!   record encoded before it started, so the registry sees at most one request per id at a time
//!   however many records wait, and each record waits at most two lookups.
//! - Lookups of one id start at least [`MIN_GAP`] apart: under load a record waits up to that
//!   much longer, and one lookup covers every record encoded in the gap. Back to back, the lookups
//!   of an intake at 2 000 requests/s kept the registry and its database at a third of a core of
//!   this 2-core machine, and every stage waited for CPU (bench/DELIVERY.md). A lone request
//!   after a quiet spell does not wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::CodecError;

/// What the registry says of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// It has the id.
    Known,
    /// It does not (404): the id is dangling.
    Gone,
}

/// The least time between the starts of two lookups of one id.
pub const MIN_GAP: Duration = Duration::from_millis(25);

/// Confirms schema ids against the registry.
#[derive(Debug)]
pub struct Verifier {
    http: reqwest::Client,
    url: String,
    gap: Duration,
    /// Per id, its lookups.
    ids: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Lookups>>>>,
}

/// The lookups of one id so far.
#[derive(Debug, Default)]
struct Lookups {
    /// When the last successful lookup started.
    confirmed: Option<Instant>,
    /// When the last lookup, successful or not, started.
    started: Option<Instant>,
}

impl Verifier {
    /// A verifier for the registry at `url`.
    pub fn new(url: &str) -> Verifier {
        Verifier::with_gap(url, MIN_GAP)
    }

    /// A verifier whose lookups of one id start at least `gap` apart.
    pub fn with_gap(url: &str, gap: Duration) -> Verifier {
        Verifier {
            gap,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            url: url.trim_end_matches('/').to_string(),
            ids: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the registry has `id`, by a lookup that started at or after `encoded_at`.
    pub async fn check(&self, id: u32, encoded_at: Instant) -> Result<Check, CodecError> {
        let slot = {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(ids.entry(id).or_default())
        };
        let mut last = slot.lock().await;
        if last.confirmed.is_some_and(|t| t >= encoded_at) {
            return Ok(Check::Known);
        }
        if let Some(previous) = last.started {
            tokio::time::sleep_until(previous + self.gap).await;
        }
        let started = Instant::now();
        last.started = Some(started);
        let unavailable = |reason: String| CodecError::Encode {
            subject: format!("schema id {id}"),
            reason,
            retriable: true,
        };
        let answer = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.url))
            .send()
            .await
            .map_err(|e| unavailable(format!("checking it with the registry: {e}")))?;
        match answer.status().as_u16() {
            200 => {
                last.confirmed = Some(started);
                Ok(Check::Known)
            }
            404 => {
                last.confirmed = None;
                Ok(Check::Gone)
            }
            status => Err(unavailable(format!(
                "the registry answered {status} when asked for it"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that knows every id and notes when each lookup arrived.
    async fn registry() -> (String, Arc<Mutex<Vec<Instant>>>) {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&arrivals);
        let app = axum::Router::new().route(
            "/schemas/ids/{id}",
            axum::routing::get(move || {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(Instant::now());
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, arrivals)
    }

    /// Checks of records encoded every millisecond for 200 ms; each check's encoding time and
    /// the time its answer came.
    async fn busy(verifier: Arc<Verifier>) -> Vec<(Instant, Instant)> {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let v = Arc::clone(&verifier);
            tasks.push(tokio::spawn(async move {
                let encoded = Instant::now();
                assert_eq!(v.check(7, encoded).await.unwrap(), Check::Known);
                (encoded, Instant::now())
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        done
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_check_waits_for_a_lookup_that_arrived_after_its_record_was_encoded() {
        let (url, arrivals) = registry().await;
        let checks = busy(Arc::new(Verifier::new(&url))).await;
        let arrivals = arrivals.lock().unwrap().clone();
        for (encoded, answered) in checks {
            assert!(
                arrivals.iter().any(|a| *a >= encoded && *a <= answered),
                "a check was answered without a lookup that started after its record"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_of_one_id_start_at_least_the_gap_apart() {
        let (url, arrivals) = registry().await;
        let gap = Duration::from_millis(25);
        let started = Instant::now();
        busy(Arc::new(Verifier::with_gap(&url, gap))).await;
        let lookups = arrivals.lock().unwrap().len() as u128;
        // Back to back a local lookup takes well under a millisecond: without the gap this is
        // one lookup per check or close to it.
        let most = started.elapsed().as_millis() / gap.as_millis() + 2;
        assert!(
            lookups <= most,
            "{lookups} lookups, at most {most} expected"
        );
    }
}
