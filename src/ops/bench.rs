//! Benchmark helpers: `onceflow bench fill` pre-fills the ingest topic with distinct, valid events
//! through the real producer API (so a processor benchmark reads what production reads).

use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::ingest::{Producer, PublishError};
use crate::model::{Event, EventType};

/// A failed fill.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// An event was not published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A publishing task panicked or was cancelled.
    #[error("publishing task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Publishes `events` distinct LeadCaptured events with `concurrency` in flight; returns how many
/// the broker acknowledged.
pub async fn fill(
    settings: &Settings,
    events: usize,
    concurrency: usize,
) -> Result<usize, FillError> {
    let producer = Arc::new(Producer::new(settings)?);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let occurred_at = crate::model::event::now_ms();
    let mut in_flight = JoinSet::new();
    let mut done = 0;
    for i in 0..events {
        if in_flight.len() >= concurrency.max(1)
            && let Some(r) = in_flight.join_next().await
        {
            r??;
            done += 1;
        }
        let producer = Arc::clone(&producer);
        let run = run.clone();
        in_flight.spawn(async move {
            let mut map = serde_json::Map::new();
            map.insert(
                "email".into(),
                json!(format!("lead-{i}@bench-{run}.example")),
            );
            map.insert("form_id".into(), json!("bench"));
            map.insert("consent_marketing".into(), json!(i % 2 == 0));
            map.insert("utm_campaign".into(), json!("bench"));
            let event = Event::new(
                EventType::LeadCaptured,
                "bench",
                Some(&format!("{run}-{i}")),
                occurred_at,
                map,
                None,
            );
            producer.publish(&event).await
        });
    }
    while let Some(r) = in_flight.join_next().await {
        r??;
        done += 1;
    }
    Ok(done)
}
