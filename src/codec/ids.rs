//! Schema ids the registry still gives to the schema a record was encoded with. A registry that
//! lost its schemas (its storage wiped or replaced) leaves every cached id dangling, or hands it
//! to the next schema registered there: records encoded with it decode nowhere, or as something
//! else. Before a record is acknowledged, [`Verifier::check`] confirms its id with a lookup that
//! *started after* the record was encoded, and compares the schema the registry gives for it
//! with the record's (their Avro parsing canonical forms).
//!
//! Invariants:
//! - One lookup in flight per id. Concurrent checks queue behind it and a lookup covers every
//!   record encoded before it started, so the registry sees at most one request per id at a time
//!   however many records wait, and each record waits at most two lookups.
//! - A verifier of every record ([`Verifier::new`], ingest's) starts the lookups of one id at
//!   least [`MIN_GAP`] apart: under load a record waits up to that much longer, and one lookup
//!   covers every record encoded in the gap. Back to back, the lookups of an intake at 2 000
//!   requests/s kept the registry and its database at a third of a core of this 2-core machine,
//!   and every stage waited for CPU (bench/DELIVERY.md). A lone request after a quiet spell does
//!   not wait.
//! - A verifier of batches ([`Verifier::per_batch`], a stage's) waits no gap: a stage confirms a
//!   batch once, one transaction at a time, so its lookups are no more than its transactions,
//!   and a gap would only hold each transaction back (it held the processor's for about 12 ms
//!   each; bench/DELIVERY.md).
//! - An id is [`Check::Known`] only if the registry's schema under it has the canonical form of
//!   the record's schema; one it cannot parse as Avro counts as another schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::CodecError;

/// What the registry says of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// It has the id, for the record's schema.
    Known,
    /// It does not (404): the id is dangling.
    Gone,
    /// It gives the id to another schema (registered after it lost the record's).
    Other,
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
    /// The canonical form of the schema that lookup found (`None`: not an Avro schema).
    schema: Option<String>,
    /// When the last lookup, successful or not, started.
    started: Option<Instant>,
}

impl Lookups {
    /// What the last successful lookup says of a record whose schema's canonical form is
    /// `expected`.
    fn says(&self, expected: &str) -> Check {
        match &self.schema {
            Some(found) if found == expected => Check::Known,
            _ => Check::Other,
        }
    }
}

/// The registry's answer for one id.
#[derive(serde::Deserialize)]
struct Answer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

impl Answer {
    /// The canonical form of the schema, if it is an Avro one.
    fn canonical(&self) -> Option<String> {
        if self.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
            return None;
        }
        apache_avro::Schema::parse_str(&self.schema)
            .ok()
            .map(|s| s.canonical_form())
    }
}

impl Verifier {
    /// A verifier of every record, for the registry at `url`: lookups of one id start at least
    /// [`MIN_GAP`] apart.
    pub fn new(url: &str) -> Verifier {
        Verifier::with_gap(url, MIN_GAP)
    }

    /// A verifier of batches, one at a time, for the registry at `url`: no gap between lookups.
    pub fn per_batch(url: &str) -> Verifier {
        Verifier::with_gap(url, Duration::ZERO)
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

    /// Whether the registry has `id` for the schema whose canonical form is `expected`, by a
    /// lookup that started at or after `encoded_at`.
    pub async fn check(
        &self,
        id: u32,
        expected: &str,
        encoded_at: Instant,
    ) -> Result<Check, CodecError> {
        let slot = {
            let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(ids.entry(id).or_default())
        };
        let mut last = slot.lock().await;
        if last.confirmed.is_some_and(|t| t >= encoded_at) {
            return Ok(last.says(expected));
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
                let found: Answer = answer.json().await.map_err(|e| {
                    unavailable(format!("reading the registry's answer for it: {e}"))
                })?;
                last.confirmed = Some(started);
                last.schema = found.canonical();
                Ok(last.says(expected))
            }
            404 => {
                last.confirmed = None;
                last.schema = None;
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

    const LEAD: &str =
        r#"{"type":"record","name":"Lead","fields":[{"name":"id","type":"string"}]}"#;

    /// The canonical form of `schema`.
    fn canonical(schema: &str) -> String {
        apache_avro::Schema::parse_str(schema)
            .unwrap()
            .canonical_form()
    }

    /// A registry that gives every id to `schema` and notes when each lookup arrived.
    async fn registry_of(schema: &'static str) -> (String, Arc<Mutex<Vec<Instant>>>) {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&arrivals);
        let app = axum::Router::new().route(
            "/schemas/ids/{id}",
            axum::routing::get(move || {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(Instant::now());
                    axum::Json(serde_json::json!({ "schema": schema }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, arrivals)
    }

    /// A registry that gives every id to [`LEAD`].
    async fn registry() -> (String, Arc<Mutex<Vec<Instant>>>) {
        registry_of(LEAD).await
    }

    /// Checks of [`LEAD`] records encoded every millisecond for 200 ms; each check's encoding
    /// time and the time its answer came.
    async fn busy(verifier: Arc<Verifier>) -> Vec<(Instant, Instant)> {
        let expected = Arc::new(canonical(LEAD));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let v = Arc::clone(&verifier);
            let expected = Arc::clone(&expected);
            tasks.push(tokio::spawn(async move {
                let encoded = Instant::now();
                assert_eq!(v.check(7, &expected, encoded).await.unwrap(), Check::Known);
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
    async fn an_id_the_registry_gives_another_schema_is_not_known() {
        let other = r#"{"type":"record","name":"Other","fields":[]}"#;
        let (url, _) = registry_of(other).await;
        let verifier = Verifier::with_gap(&url, Duration::from_millis(1));
        let lead = canonical(LEAD);
        assert_eq!(
            verifier.check(7, &lead, Instant::now()).await.unwrap(),
            Check::Other
        );
        // A record encoded before the last lookup gets that lookup's answer.
        assert_eq!(
            verifier
                .check(7, &lead, Instant::now() - Duration::from_secs(1))
                .await
                .unwrap(),
            Check::Other
        );
        assert_eq!(
            verifier
                .check(7, &canonical(other), Instant::now())
                .await
                .unwrap(),
            Check::Known
        );
        // The same schema written differently (field order of the JSON object, a doc) is the
        // same schema; a text that is not Avro is another schema.
        let same = r#"{"fields":[{"type":"string","name":"id"}],"doc":"a lead","name":"Lead","type":"record"}"#;
        assert_eq!(first_check(same, &lead).await, Check::Known);
        assert_eq!(first_check("not a schema", &lead).await, Check::Other);
    }

    /// What a fresh verifier says of a record of `expected` whose id the registry gives `schema`.
    async fn first_check(schema: &'static str, expected: &str) -> Check {
        let (url, _) = registry_of(schema).await;
        Verifier::new(&url)
            .check(7, expected, Instant::now())
            .await
            .unwrap()
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
