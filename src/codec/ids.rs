//! Schema ids the registry still has. A registry that lost its schemas (its storage wiped or
//! replaced) leaves every cached id dangling: records encoded with one decode nowhere. Before a
//! record is acknowledged, [`Verifier::check`] confirms its id with a lookup that *started after*
//! the record was encoded.
//!
//! Invariant: one lookup in flight per id. Concurrent checks queue behind it and a lookup covers
//! every record encoded before it started, so the registry sees at most one request per id at a
//! time however many records wait, and each record waits at most two lookups.

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

/// Confirms schema ids against the registry.
#[derive(Debug)]
pub struct Verifier {
    http: reqwest::Client,
    url: String,
    /// Per id: when the last successful lookup started.
    ids: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl Verifier {
    /// A verifier for the registry at `url`.
    pub fn new(url: &str) -> Verifier {
        Verifier {
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
        if last.is_some_and(|t| t >= encoded_at) {
            return Ok(Check::Known);
        }
        let started = Instant::now();
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
                *last = Some(started);
                Ok(Check::Known)
            }
            404 => {
                *last = None;
                Ok(Check::Gone)
            }
            status => Err(unavailable(format!(
                "the registry answered {status} when asked for it"
            ))),
        }
    }
}
